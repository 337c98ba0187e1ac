"""One read of the whole prefix, parsed: what the reconcile loop, the API and status look at.

Pure. A key that does not parse is logged once per (key, revision) and left out: one bad
record must not stop a node from serving every other volume.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from sbstore.cluster.etcd import KeyValue
from sbstore.cluster.keys import (
    BadRecord,
    ExportSpec,
    InSync,
    Keys,
    NodeInfo,
    VolumeSpec,
    primary_node,
)

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
                elif kind == "insync":
                    view.insync[name] = InSync.from_json(data, kv.key)
                    view.insync_revision[name] = kv.mod_revision
            except (BadRecord, ValueError) as exc:
                if (kv.key, kv.mod_revision) not in _reported:
                    _reported.add((kv.key, kv.mod_revision))
                    log.error("ignoring %s: %s", kv.key, exc)
        return view

    def exports_of(self, volume: str) -> list[str]:
        return sorted(nqn for nqn, e in self.exports.items() if volume in e.volumes)
