"""What one node knows and runs for its copy of one replicated volume (the manager's per-volume
state), and the small types the manager's parts share."""
from __future__ import annotations

import asyncio
import time
import uuid as uuid_mod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sbstore.cluster.keys import VolumeSpec


class Deposed(Exception):
    """This node is no longer the volume's primary (its epoch's key is gone or replaced)."""


class LeaseFence:
    """What the mirror checks per write: the epoch it sends, and the lease clock."""

    def __init__(self, epoch: int, may_acknowledge: Callable[[], bool]) -> None:
        self.epoch = epoch
        self.may_acknowledge = may_acknowledge


@dataclass
class LocalReplica:
    """What this node knows and runs for its replica of one cluster volume."""

    spec: VolumeSpec
    pool: str
    role: str = "unknown"  # unknown (refusing) | replica | primary
    epoch: int = 0
    mirror: Any = None
    tracked: set[str] = field(default_factory=set)  # peers the mirror keeps a dirty map for
    # peers this primary's resync brought up to date, until insync/V records them
    caught_up: set[str] = field(default_factory=set)
    resyncs: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    snapshotting: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # Cluster snapshots of this volume seen in etcd: only those are deleted here when etcd
    # drops them (a local snapshot an admin or a schedule took is not the cluster's business).
    known_snaps: set[str] = field(default_factory=set)
    published: dict[str, Any] | None = None  # the last progress/V written, and when
    published_at: float = 0.0
    retry_at: dict[str, float] = field(default_factory=dict)
    last_primary: str | None = None
    resync_bytes_total: int = 0
    last_resync_bytes: dict[str, int] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # insync/V read-modify-write
    seen_at: float = field(default_factory=time.monotonic)  # when this node took it up

    @property
    def uuid(self) -> uuid_mod.UUID:
        return uuid_mod.UUID(self.spec.uuid)
