"""One read of the whole prefix, parsed: what the reconcile loop, the API and status look at.

Pure. A key that does not parse is logged once per (key, revision) and left out: one bad
record must not stop a node from serving every other volume.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sbstore.cluster import hostkeys
from sbstore.cluster.etcd import KeyValue
from sbstore.cluster.keys import (
    BadRecord,
    ExportSpec,
    InSync,
    Keys,
    NodeInfo,
    SnapSpec,
    VolumeSpec,
    primary_node,
)
from sbstore.cluster.listeners import ListenerSpec
from sbstore.cluster.tenants import TenantSpec
from sbstore.control.state import HostAuthRecord

log = logging.getLogger("sbstore.cluster.view")
_reported: set[tuple[str, int]] = set()


@dataclass(frozen=True)
class Primary:
    node: str
    epoch: int  # the key's create_revision
    lease: int


@dataclass
class ClusterView:
    revision: int = 0
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    node_leases: dict[str, int] = field(default_factory=dict)
    volumes: dict[str, VolumeSpec] = field(default_factory=dict)
    exports: dict[str, ExportSpec] = field(default_factory=dict)
    primaries: dict[str, Primary] = field(default_factory=dict)
    insync: dict[str, InSync] = field(default_factory=dict)
    insync_revision: dict[str, int] = field(default_factory=dict)  # mod_revision
    snaps: dict[tuple[str, str], SnapSpec] = field(default_factory=dict)  # (volume, snap)
    snapped: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # -> nodes
    # volume -> what its primary publishes about its missing replicas (dirty bytes, resyncs)
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    tenants: dict[str, TenantSpec] = field(default_factory=dict)
    listeners: dict[tuple[str, str], ListenerSpec] = field(default_factory=dict)  # node, where
    # (export nqn, host nqn) -> the host's DH-HMAC-CHAP secrets (its repr hides them)
    hostkeys: dict[tuple[str, str], HostAuthRecord] = field(default_factory=dict)

    @classmethod
    def parse(cls, keys: Keys, kvs: Iterable[KeyValue], revision: int) -> ClusterView:
        view = cls(revision=revision)
        for kv in kvs:
            where = keys.split(kv.key)
            if where is None:
                continue
            kind, name = where
            try:
                data = kv.json()
                if kind == "nodes":
                    view.nodes[name] = NodeInfo.from_json(data, kv.key)
                    view.node_leases[name] = kv.lease
                elif kind == "volumes":
                    view.volumes[name] = VolumeSpec.from_json(data, kv.key)
                elif kind == "exports":
                    view.exports[name] = ExportSpec.from_json(data, kv.key)
                elif kind == "primary":
                    view.primaries[name] = Primary(primary_node(data, kv.key),
                                                   kv.create_revision, kv.lease)
                elif kind == "snaps":
                    spec = SnapSpec.from_json(data, kv.key)
                    view.snaps[(spec.volume, spec.name)] = spec
                elif kind == "snapped":
                    volume, snap, node = name.split("/", 2)
                    view.snapped.setdefault((volume, snap), set()).add(node)
                elif kind == "progress":
                    if isinstance(data, dict):
                        view.progress[name] = data
                elif kind == "listeners":
                    listener = ListenerSpec.from_json(data, kv.key)
                    if name != f"{listener.node}/{listener.where}":
                        raise BadRecord(f"{kv.key}: names another node or listener")
                    view.listeners[(listener.node, listener.where)] = listener
                elif kind == "tenants":
                    view.tenants[name] = TenantSpec.from_json(data, kv.key)
                elif kind == "hostkeys":
                    rec = hostkeys.from_json(data, kv.key)
                    if name != f"{rec.subsystem}/{rec.host_nqn}":
                        raise BadRecord(f"{kv.key}: names another export or host")
                    view.hostkeys[(rec.subsystem, rec.host_nqn)] = rec
                elif kind == "insync":
                    view.insync[name] = InSync.from_json(data, kv.key)
                    view.insync_revision[name] = kv.mod_revision
            except (BadRecord, ValueError) as exc:
                if (kv.key, kv.mod_revision) not in _reported:
                    _reported.add((kv.key, kv.mod_revision))
                    log.error("ignoring %s: %s", kv.key, exc)
        return view

    def snaps_of(self, volume: str) -> list[SnapSpec]:
        return [s for (v, _), s in sorted(self.snaps.items()) if v == volume]

    def exports_of(self, volume: str) -> list[str]:
        return sorted(nqn for nqn, e in self.exports.items() if volume in e.volumes)
