"""The cluster's keys in etcd and their JSON records (docs/cluster.md, "Keys").

Rules of this module:
- Pure: names and records, no I/O. Every other part builds a key with :class:`Keys` and reads
  a value with the ``from_json`` of its record, so the layout is written down once.
- A record read from etcd is checked as it is parsed: a value another version or a person
  wrote wrongly raises :class:`BadRecord` (the manager logs it and skips that key) instead of
  failing later, halfway through acting on it.
"""
from __future__ import annotations

import json
import uuid as uuid_mod
from dataclasses import dataclass, field
from typing import Any


class BadRecord(ValueError):
    """A value under the prefix is not the record its key says."""


def _field(data: Any, name: str, kind: type | tuple[type, ...], key: str) -> Any:
    if not isinstance(data, dict):
        raise BadRecord(f"{key}: not a JSON object")
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise BadRecord(f"{key}: field {name!r} is missing or of the wrong type")
    return value


def _names(value: Any, key: str, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise BadRecord(f"{key}: {what} must be a list of names")
    return tuple(value)


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str = "/sbstore"

    @property
    def root(self) -> str:
        return self.prefix + "/"

    def node(self, name: str) -> str:
        return f"{self.prefix}/nodes/{name}"

    def volume(self, name: str) -> str:
        return f"{self.prefix}/volumes/{name}"

    def export(self, nqn: str) -> str:
        return f"{self.prefix}/exports/{nqn}"

    def primary(self, volume: str) -> str:
        return f"{self.prefix}/primary/{volume}"

    def insync(self, volume: str) -> str:
        return f"{self.prefix}/insync/{volume}"

    def snap(self, volume: str, snap: str) -> str:
        return f"{self.prefix}/snaps/{volume}/{snap}"

    def snapped(self, volume: str, snap: str, node: str) -> str:
        return f"{self.prefix}/snapped/{volume}/{snap}/{node}"

    def progress(self, volume: str) -> str:
        return f"{self.prefix}/progress/{volume}"

    def listener(self, node: str, where: str) -> str:
        """A listener asked of ``node`` through the cluster (sbstore.cluster.listeners)."""
        return f"{self.prefix}/listeners/{node}/{where}"

    def tenant(self, name: str) -> str:
        return f"{self.prefix}/tenants/{name}"

    def hostkey(self, nqn: str, host: str) -> str:
        """A host's DH-HMAC-CHAP secrets on one cluster export (sbstore.cluster.hostkeys)."""
        return f"{self.prefix}/hostkeys/{nqn}/{host}"

    def split(self, key: str) -> tuple[str, str] | None:
        """``(kind, name)`` of a key under the prefix (kind: nodes, volumes, ...), or None."""
        if not key.startswith(self.root):
            return None
        kind, sep, name = key[len(self.root):].partition("/")
        return (kind, name) if sep and name else None


@dataclass(frozen=True)
class VolumeSpec:
    name: str
    uuid: str
    size_bytes: int
    block_size: int
    replicas: tuple[str, ...]
    tenant: str = "default"
    # A clone: (volume, snapshot) it was made of. Each replica that holds that snapshot makes
    # its copy as a local clone of it; one that does not makes an empty copy (out of sync).
    clone_of: tuple[str, str] | None = None

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "name": self.name, "uuid": self.uuid, "size_bytes": self.size_bytes,
            "block_size": self.block_size, "replicas": list(self.replicas),
            "tenant": self.tenant}
        if self.clone_of is not None:
            data["clone_of"] = {"volume": self.clone_of[0], "snapshot": self.clone_of[1]}
        return json.dumps(data)

    @classmethod
    def from_json(cls, data: Any, key: str) -> VolumeSpec:
        name = _field(data, "name", str, key)
        raw_uuid = _field(data, "uuid", str, key)
        try:
            uuid_text = str(uuid_mod.UUID(raw_uuid))
        except ValueError:
            raise BadRecord(f"{key}: uuid {raw_uuid!r} is not a UUID") from None
        size = _field(data, "size_bytes", int, key)
        block_size = _field(data, "block_size", int, key)
        replicas = _names(data.get("replicas"), key, "replicas")
        if size <= 0 or block_size not in (512, 4096) or size % block_size:
            raise BadRecord(f"{key}: size_bytes {size} / block_size {block_size} are not valid")
        if not replicas or len(set(replicas)) != len(replicas):
            raise BadRecord(f"{key}: replicas must name distinct nodes")
        tenant = data.get("tenant", "default")
        clone_of = None
        if data.get("clone_of") is not None:
            clone_of = (_field(data["clone_of"], "volume", str, key),
                        _field(data["clone_of"], "snapshot", str, key))
        return cls(name, uuid_text, size, block_size, replicas,
                   tenant if isinstance(tenant, str) else "default", clone_of)


@dataclass(frozen=True)
class ExportSpec:
    nqn: str
    namespaces: tuple[tuple[int, str], ...]  # (nsid, volume name)
    hosts: tuple[str, ...] = ()
    allow_any_host: bool = False

    @property
    def volumes(self) -> tuple[str, ...]:
        return tuple(v for _, v in self.namespaces)

    def to_json(self) -> str:
        return json.dumps({"nqn": self.nqn,
                           "namespaces": [{"nsid": n, "volume": v} for n, v in self.namespaces],
                           "hosts": list(self.hosts), "allow_any_host": self.allow_any_host})

    @classmethod
    def from_json(cls, data: Any, key: str) -> ExportSpec:
        nqn = _field(data, "nqn", str, key)
        raw = data.get("namespaces", [])
        if not isinstance(raw, list):
            raise BadRecord(f"{key}: namespaces must be a list")
        namespaces = []
        for ns in raw:
            namespaces.append((_field(ns, "nsid", int, key), _field(ns, "volume", str, key)))
        if len({n for n, _ in namespaces}) != len(namespaces):
            raise BadRecord(f"{key}: an nsid is used twice")
        return cls(nqn, tuple(sorted(namespaces)), _names(data.get("hosts", []), key, "hosts"),
                   data.get("allow_any_host") is True)


@dataclass(frozen=True)
class NodeInfo:
    """What a node publishes about itself under ``nodes/<node>`` (with its lease)."""

    node: str
    peer_address: tuple[str, int]
    listeners: tuple[str, ...] = ()
    pools: dict[str, dict[str, int]] = field(default_factory=dict)
    started: float = 0.0
    # volume -> size of this node's replica: a primary grows its copy (what hosts see) only
    # once every in-sync replica's is as large
    replica_sizes: dict[str, int] = field(default_factory=dict)
    # what it listens on (sbstore.cluster.listeners.published)
    listener_info: tuple[dict[str, Any], ...] = ()

    @property
    def free_bytes(self) -> int:
        return sum(int(p.get("free_bytes", 0)) for p in self.pools.values())

    def to_dict(self) -> dict[str, Any]:
        host, port = self.peer_address
        return {"node": self.node, "peer_address": f"{host}:{port}",
                "listeners": list(self.listeners), "pools": self.pools, "started": self.started,
                "replica_sizes": self.replica_sizes, "listener_info": list(self.listener_info)}

    @classmethod
    def from_json(cls, data: Any, key: str) -> NodeInfo:
        node = _field(data, "node", str, key)
        peer = _field(data, "peer_address", str, key)
        host, sep, port = peer.rpartition(":")
        if not sep or not port.isdigit():
            raise BadRecord(f"{key}: peer_address {peer!r} is not HOST:PORT")
        pools = data.get("pools", {})
        if not isinstance(pools, dict):
            raise BadRecord(f"{key}: pools must be an object")
        started = data.get("started", 0.0)
        sizes = data.get("replica_sizes", {})
        details = data.get("listener_info", [])
        return cls(node, (host.strip("[]"), int(port)),
                   _names(data.get("listeners", []), key, "listeners"),
                   {k: v for k, v in pools.items() if isinstance(v, dict)},
                   float(started) if isinstance(started, (int, float)) else 0.0,
                   {str(k): v for k, v in sizes.items() if type(v) is int}
                   if isinstance(sizes, dict) else {},
                   tuple(x for x in details if isinstance(x, dict))
                   if isinstance(details, list) else ())


@dataclass(frozen=True)
class InSync:
    """``insync/<volume>``: the replicas that hold every acknowledged write, and the epoch of
    the primary that wrote it (0: written when the volume was created)."""

    nodes: tuple[str, ...]
    epoch: int = 0
    # node -> bytes its last resync moved (written by the primary with the node's return, so
    # every node's status shows it)
    resync_bytes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"nodes": list(self.nodes), "epoch": self.epoch,
                           "resync_bytes": self.resync_bytes})

    @classmethod
    def from_json(cls, data: Any, key: str) -> InSync:
        epoch = data.get("epoch", 0) if isinstance(data, dict) else 0
        nodes = _names(_field(data, "nodes", list, key), key, "nodes")
        raw = data.get("resync_bytes", {})
        resync = {str(k): v for k, v in raw.items() if type(v) is int} \
            if isinstance(raw, dict) else {}
        return cls(nodes, epoch if isinstance(epoch, int) else 0, resync)


def primary_value(node: str) -> str:
    return json.dumps({"node": node})


def primary_node(data: Any, key: str) -> str:
    return str(_field(data, "node", str, key))


SNAP_STATES = ("requested", "frozen", "done", "partial", "failed")


@dataclass(frozen=True)
class SnapSpec:
    """``snaps/<volume>/<snap>``: a snapshot of a replicated volume, taken on every in-sync copy
    at one point of its writes. ``requested`` by an admin; ``frozen`` while the primary holds
    the hosts' writes (``epoch``: that primary's) and the replicas take theirs; then ``done``
    (every in-sync copy has it), ``partial`` (``nodes`` have it) or ``failed``."""

    volume: str
    name: str
    state: str = "requested"
    epoch: int = 0
    nodes: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps({"volume": self.volume, "name": self.name, "state": self.state,
                           "epoch": self.epoch, "nodes": list(self.nodes)})

    @classmethod
    def from_json(cls, data: Any, key: str) -> SnapSpec:
        state = _field(data, "state", str, key)
        if state not in SNAP_STATES:
            raise BadRecord(f"{key}: state {state!r} is not one of {', '.join(SNAP_STATES)}")
        epoch = data.get("epoch", 0)
        return cls(_field(data, "volume", str, key), _field(data, "name", str, key), state,
                   epoch if type(epoch) is int else 0,
                   _names(data.get("nodes", []), key, "nodes"))
