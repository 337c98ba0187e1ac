"""The cluster's admin operations, on any node: they validate and write desired state to etcd
(``volumes/``, ``insync/``, ``exports/``); every node's manager then reconciles its pool and
target to it. Errors are the control service's :class:`ControlError`, so the API answers
them as it answers every other refusal.

Writes are etcd transactions guarded by the key's revision (created only when absent,
changed only when unchanged since read), so two admins on two nodes cannot both create a
volume of one name, or lose each other's change to an export.
"""
from __future__ import annotations

import asyncio
import dataclasses
import re
import time
import uuid as uuid_mod
from collections.abc import Callable, Iterable
from typing import Any

from sbstore.cluster import hostkeys
from sbstore.cluster.etcd import Compare, EtcdClient, EtcdError, EtcdUnavailable, Op
from sbstore.cluster.keys import ExportSpec, InSync, Keys, SnapSpec, VolumeSpec
from sbstore.cluster.placement import PlacementError, place
from sbstore.cluster.tenants import TenantAdmin
from sbstore.cluster.view import ClusterView
from sbstore.control.service import ControlError, ErrorCode, check_nqn, invalid
from target.subsystem import MAX_NAMESPACES

# Volume names become etcd key segments and local volume names on every node.
VOLUME_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
MAX_REPLICAS = 5
SNAP_WAIT_S = 15.0  # how long creating a snapshot waits for the copies to take it


def _unavailable(exc: EtcdError) -> ControlError:
    return ControlError(ErrorCode.FAILED_PRECONDITION, f"the cluster's etcd is unreachable or "
                        f"refused the change: {exc}")


class ClusterAdmin:
    """``view()`` reads the prefix; the operations write it. ``local`` (a callable giving the
    manager's status of one volume) adds what only the primary knows to status."""

    def __init__(self, client: EtcdClient, keys: Keys,
                 local_status: Callable[[str], dict[str, Any]] | None = None) -> None:
        self.client = client
        self.keys = keys
        self.local_status = local_status

    async def view(self) -> ClusterView:
        try:
            kvs, revision = await self.client.get_prefix(self.keys.root)
        except EtcdError as exc:
            raise _unavailable(exc) from None
        return ClusterView.parse(self.keys, kvs, revision)

    async def is_replicated(self, name: str) -> bool:
        try:
            return await self.client.get(self.keys.volume(name)) is not None
        except EtcdError as exc:
            raise _unavailable(exc) from None

    async def is_cluster_export(self, nqn: str) -> bool:
        try:
            return await self.client.get(self.keys.export(nqn)) is not None
        except EtcdError as exc:
            raise _unavailable(exc) from None

    # --- volumes ------------------------------------------------------------------------------

    async def create_volume(self, name: str, size_bytes: int, replicas: int, *,
                            block_size: int = 4096, tenant: str = "default") -> dict[str, Any]:
        if not isinstance(name, str) or not VOLUME_NAME_RE.fullmatch(name):
            raise invalid(f"volume name {name!r} must be 1 to 64 letters, digits, '_', '.', "
                          f"':' or '-', starting with a letter or digit")
        if type(replicas) is not int or not 1 <= replicas <= MAX_REPLICAS:
            raise invalid(f"replicas must be from 1 to {MAX_REPLICAS}, not {replicas!r}")
        if block_size not in (512, 4096):
            raise invalid(f"block_size must be 512 or 4096, not {block_size!r}")
        if type(size_bytes) is not int or size_bytes <= 0 or size_bytes % block_size:
            raise invalid(f"size_bytes must be a positive multiple of {block_size}, "
                          f"not {size_bytes!r}")
        view = await self.view()
        if name in view.volumes:
            raise ControlError(ErrorCode.ALREADY_EXISTS, f"replicated volume {name!r} exists")
        try:
            nodes = place(replicas, view.nodes)
        except PlacementError as exc:
            raise ControlError(ErrorCode.FAILED_PRECONDITION, str(exc)) from None
        spec = VolumeSpec(name, str(uuid_mod.uuid4()), size_bytes, block_size, tuple(nodes),
                          tenant)
        # The tenant must exist, and still exist when the volume is written (tenants.py).
        guard, touch = await TenantAdmin(self.client, self.keys, self.view).touch(tenant)
        try:
            # A new volume's copies are all empty, so all are in sync: any may become primary.
            result = await self.client.txn(
                [Compare.create_revision(self.keys.volume(name), "==", 0), *guard],
                [Op.put(self.keys.volume(name), spec.to_json()),
                 Op.put(self.keys.insync(name), InSync(tuple(nodes)).to_json()), *touch])
        except EtcdError as exc:
            raise _unavailable(exc) from None
        if not result.succeeded:
            if not await self.is_replicated(name):
                raise ControlError(ErrorCode.BUSY, f"tenant {tenant!r} changed meanwhile; "
                                   f"try again")
            raise ControlError(ErrorCode.ALREADY_EXISTS, f"replicated volume {name!r} exists")
        return self._volume_info(spec, view)

    async def delete_volume(self, name: str, *, force: bool = False) -> None:
        view = await self.view()
        if name not in view.volumes:
            raise ControlError(ErrorCode.NOT_FOUND, f"no replicated volume {name!r}")
        exports = view.exports_of(name)
        if exports and not force:
            raise ControlError(ErrorCode.FAILED_PRECONDITION,
                               f"replicated volume {name!r} is exported by {', '.join(exports)}:"
                               f" delete the export first, or delete with --force")
        ops = [Op.delete(self.keys.volume(name)), Op.delete(self.keys.insync(name)),
               Op.delete(self.keys.primary(name))]
        for nqn in exports:
            e = view.exports[nqn]
            kept = tuple(ns for ns in e.namespaces if ns[1] != name)
            ops.append(Op.put(self.keys.export(nqn), ExportSpec(
                e.nqn, kept, e.hosts, e.allow_any_host).to_json()))
        try:
            await self.client.txn([], ops)
            # Its snapshots go with it (every node deletes its copies).
            await self.client.delete_prefix(self.keys.snap(name, ""))
            await self.client.delete_prefix(self.keys.snapped(name, "", "")[:-1])
        except EtcdError as exc:
            raise _unavailable(exc) from None

    async def change_replicas(self, name: str, *, add: str | None = None,
                              remove: str | None = None) -> dict[str, Any]:
        """Add a replica on a live node (the primary gives it a full copy, then counts it in
        sync), and/or take one off (it leaves ``insync`` at once; its node deletes its copy).
        Both at once replace a node an admin says is gone; a move is add, wait until in sync,
        remove (``sbstore cluster move``)."""
        if add is None and remove is None:
            raise invalid("give a node to add, to remove, or both")
        if add is not None and add == remove:
            raise invalid("the node to add is the node to remove")
        vkey, ikey = self.keys.volume(name), self.keys.insync(name)
        for _ in range(5):  # a concurrent change: read again and retry, a few times
            view = await self.view()
            spec = view.volumes.get(name)
            vkv, ikv = await self._get(vkey), await self._get(ikey)
            if spec is None or vkv is None:
                raise ControlError(ErrorCode.NOT_FOUND, f"no replicated volume {name!r}")
            insync = view.insync.get(name, InSync(()))
            replicas = list(spec.replicas)
            if add is not None:
                if add in replicas:
                    raise ControlError(ErrorCode.ALREADY_EXISTS,
                                       f"{add} already holds a replica of {name!r}")
                if len(replicas) >= MAX_REPLICAS:
                    raise ControlError(ErrorCode.FAILED_PRECONDITION,
                                       f"{name!r} has {len(replicas)} replicas, the most a "
                                       f"volume may have")
                if add not in view.nodes:
                    raise ControlError(ErrorCode.FAILED_PRECONDITION,
                                       f"node {add!r} is not live (live: "
                                       f"{', '.join(sorted(view.nodes)) or 'none'})")
                replicas.append(add)
            nodes = list(insync.nodes)
            if remove is not None:
                if remove not in replicas:
                    raise ControlError(ErrorCode.NOT_FOUND,
                                       f"{remove} holds no replica of {name!r}")
                replicas.remove(remove)
                nodes = [n for n in nodes if n != remove]
                if not nodes:
                    raise ControlError(ErrorCode.FAILED_PRECONDITION,
                                       f"{remove} holds the only in-sync copy of {name!r}; "
                                       f"add a replica and let it catch up first")
            new = dataclasses.replace(spec, replicas=tuple(replicas))
            ops = [Op.put(vkey, new.to_json())]
            if remove is not None:
                ops.append(Op.put(ikey, InSync(tuple(nodes), insync.epoch, {
                    n: b for n, b in insync.resync_bytes.items() if n != remove}).to_json()))
            try:
                result = await self.client.txn(
                    [Compare.mod_revision(vkey, "==", vkv.mod_revision),
                     Compare.mod_revision(ikey, "==", ikv.mod_revision if ikv else 0)], ops)
            except EtcdError as exc:
                raise _unavailable(exc) from None
            if result.succeeded:
                return self._volume_info(new, view)
        raise ControlError(ErrorCode.BUSY, f"volume {name!r} kept changing; try again")

    async def resize_volume(self, name: str, size_bytes: int) -> dict[str, Any]:
        """Grow a replicated volume. Every replica grows its copy when it sees the new size;
        the primary grows its own (and so what hosts see) only once every in-sync replica
        has, so no write past the old end reaches a copy too small for it."""
        vkey = self.keys.volume(name)
        for _ in range(5):
            view = await self.view()
            spec = view.volumes.get(name)
            vkv = await self._get(vkey)
            if spec is None or vkv is None:
                raise ControlError(ErrorCode.NOT_FOUND, f"no replicated volume {name!r}")
            if type(size_bytes) is not int or size_bytes <= 0 \
                    or size_bytes % spec.block_size:
                raise invalid(f"size_bytes must be a positive multiple of {spec.block_size}, "
                              f"not {size_bytes!r}")
            if size_bytes < spec.size_bytes:
                raise ControlError(ErrorCode.FAILED_PRECONDITION,
                                   f"shrinking a replicated volume is not supported "
                                   f"({name!r} is {spec.size_bytes} bytes)")
            new = dataclasses.replace(spec, size_bytes=size_bytes)
            try:
                result = await self.client.txn(
                    [Compare.mod_revision(vkey, "==", vkv.mod_revision)],
                    [Op.put(vkey, new.to_json())])
            except EtcdError as exc:
                raise _unavailable(exc) from None
            if result.succeeded:
                return self._volume_info(new, view)
        raise ControlError(ErrorCode.BUSY, f"volume {name!r} kept changing; try again")

    # --- snapshots ----------------------------------------------------------------------------

    async def create_snapshot(self, volume: str, name: str, *,
                              wait_s: float = SNAP_WAIT_S) -> dict[str, Any]:
        """Ask the volume's primary for a snapshot on every in-sync copy; wait (at most
        ``wait_s``) until it is done and answer its state."""
        from sbstore.store.pool import check_name
        try:
            check_name(name)
        except ValueError as exc:
            raise invalid(str(exc).replace("volume name", "snapshot name")) from None
        view = await self.view()
        if volume not in view.volumes:
            raise ControlError(ErrorCode.NOT_FOUND, f"no replicated volume {volume!r}")
        if any(s == name for _, s in view.snaps) or name in view.volumes:
            raise ControlError(ErrorCode.ALREADY_EXISTS, f"a snapshot or replicated volume "
                               f"named {name!r} exists")
        if volume not in view.primaries:
            raise ControlError(ErrorCode.FAILED_PRECONDITION,
                               f"replicated volume {volume!r} has no primary now (no copy "
                               f"serves it): try again when it has")
        key = self.keys.snap(volume, name)
        try:
            result = await self.client.txn([Compare.create_revision(key, "==", 0)],
                                           [Op.put(key, SnapSpec(volume, name).to_json())])
        except EtcdError as exc:
            raise _unavailable(exc) from None
        if not result.succeeded:
            raise ControlError(ErrorCode.ALREADY_EXISTS, f"snapshot {name!r} exists")
        deadline = time.monotonic() + wait_s
        snap = SnapSpec(volume, name)
        while time.monotonic() < deadline:  # bounded
            kv = await self._get(key)
            if kv is None:
                raise ControlError(ErrorCode.NOT_FOUND, f"snapshot {name!r} was deleted")
            snap = SnapSpec.from_json(kv.json(), kv.key)
            if snap.state in ("done", "partial", "failed"):
                break
            await asyncio.sleep(0.1)
        if snap.state == "failed":
            raise ControlError(ErrorCode.INTERNAL, f"snapshot {name!r} of {volume!r} failed "
                               f"(see the primary's log); delete it and try again")
        return self._snap_info(snap)

    async def find_snapshot(self, name: str) -> SnapSpec | None:
        view = await self.view()
        return next((s for (_, n), s in view.snaps.items() if n == name), None)

    async def delete_snapshot(self, name: str) -> None:
        """Every node deletes its copy of the snapshot."""
        snap = await self.find_snapshot(name)
        if snap is None:
            raise ControlError(ErrorCode.NOT_FOUND, f"no snapshot {name!r} of a replicated "
                               f"volume")
        try:
            await self.client.delete(self.keys.snap(snap.volume, name))
            await self.client.delete_prefix(self.keys.snapped(snap.volume, name, ""))
        except EtcdError as exc:
            raise _unavailable(exc) from None

    async def create_clone(self, snapshot: str, name: str, *,
                           tenant: str | None = None) -> dict[str, Any]:
        """A replicated volume ``name`` made of snapshot ``snapshot`` of a replicated volume:
        its replicas are the nodes that hold the snapshot (each makes its copy as a local
        clone of its copy of the snapshot), all in sync; the source's size, block size and
        (unless ``tenant``) tenant."""
        if not isinstance(name, str) or not VOLUME_NAME_RE.fullmatch(name):
            raise invalid(f"volume name {name!r} must be 1 to 64 letters, digits, '_', '.', "
                          f"':' or '-', starting with a letter or digit")
        view = await self.view()
        snap = next((s for (_, n), s in view.snaps.items() if n == snapshot), None)
        if snap is None:
            raise ControlError(ErrorCode.NOT_FOUND, f"no snapshot {snapshot!r} of a "
                               f"replicated volume")
        source = view.volumes.get(snap.volume)
        if source is None:
            raise ControlError(ErrorCode.NOT_FOUND, f"snapshot {snapshot!r}: its volume "
                               f"{snap.volume!r} is gone")
        if snap.state not in ("done", "partial"):
            raise ControlError(ErrorCode.FAILED_PRECONDITION,
                               f"snapshot {snapshot!r} is {snap.state}, not taken: only a "
                               f"done or partial snapshot can be cloned")
        if name in view.volumes or any(n == name for _, n in view.snaps):
            raise ControlError(ErrorCode.ALREADY_EXISTS, f"a replicated volume or snapshot "
                               f"named {name!r} exists")
        # The copies that took it (and still hold it: a node taken off the volume deleted
        # its snapshots with its copy).
        holders = [n for n in snap.nodes if n in source.replicas
                   and n in view.snapped.get((snap.volume, snapshot), set())]
        live = [n for n in holders if n in view.nodes]
        if not live:
            raise ControlError(ErrorCode.FAILED_PRECONDITION,
                               f"no live node holds snapshot {snapshot!r} (held by "
                               f"{', '.join(holders) or 'none'}; live: "
                               f"{', '.join(sorted(view.nodes)) or 'none'})")
        tenant = source.tenant if tenant is None else tenant
        spec = VolumeSpec(name, str(uuid_mod.uuid4()), source.size_bytes, source.block_size,
                          tuple(holders), tenant, (snap.volume, snapshot))
        guard, touch = await TenantAdmin(self.client, self.keys, self.view).touch(tenant)
        skey = self.keys.snap(snap.volume, snapshot)
        try:
            # Every holder's copy is the snapshot, so all are in sync: any may become primary.
            result = await self.client.txn(
                [Compare.create_revision(self.keys.volume(name), "==", 0),
                 Compare.version(skey, ">", 0), *guard],
                [Op.put(self.keys.volume(name), spec.to_json()),
                 Op.put(self.keys.insync(name), InSync(tuple(holders)).to_json()), *touch])
        except EtcdError as exc:
            raise _unavailable(exc) from None
        if not result.succeeded:
            if await self.is_replicated(name):
                raise ControlError(ErrorCode.ALREADY_EXISTS,
                                   f"replicated volume {name!r} exists")
            if await self._get(skey) is None:
                raise ControlError(ErrorCode.NOT_FOUND,
                                   f"snapshot {snapshot!r} was deleted meanwhile")
            raise ControlError(ErrorCode.BUSY, f"tenant {tenant!r} changed meanwhile; "
                               f"try again")
        return self._volume_info(spec, await self.view())  # with its in-sync set

    @staticmethod
    def _snap_info(snap: SnapSpec) -> dict[str, Any]:
        return {"name": snap.name, "volume": snap.volume, "kind": "snapshot",
                "state": snap.state, "nodes": list(snap.nodes)}

    # --- exports ------------------------------------------------------------------------------

    async def create_export(self, nqn: str, volumes: Iterable[str], *,
                            hosts: Iterable[str] = (), allow_any_host: bool = False
                            ) -> dict[str, Any]:
        check_nqn(nqn, "subsystem NQN")
        volumes, hosts = list(volumes), list(hosts)
        for host in hosts:
            check_nqn(host, "host NQN")
        if hosts and allow_any_host:
            raise invalid("give host NQNs or allow any host, not both")
        if len(set(volumes)) != len(volumes) or len(set(hosts)) != len(hosts):
            raise invalid("a volume or a host is listed twice")
        if len(volumes) > MAX_NAMESPACES:
            raise invalid(f"at most {MAX_NAMESPACES} namespaces per subsystem")
        view = await self.view()
        missing = [v for v in volumes if v not in view.volumes]
        if missing:
            raise ControlError(ErrorCode.NOT_FOUND, f"no replicated volume {missing[0]!r} "
                               f"(an export in cluster mode serves replicated volumes)")
        if len(volumes) != 1:
            # Each volume elects its own primary and ANA is shown per export here: two
            # volumes whose primaries landed on different nodes would be inaccessible on both.
            raise invalid("an export of replicated volumes has exactly one volume (one "
                          "export per replicated volume)")
        spec = ExportSpec(nqn, tuple(enumerate(volumes, start=1)), tuple(sorted(hosts)),
                          allow_any_host)
        try:
            result = await self.client.txn(
                [Compare.create_revision(self.keys.export(nqn), "==", 0)],
                [Op.put(self.keys.export(nqn), spec.to_json())])
        except EtcdError as exc:
            raise _unavailable(exc) from None
        if not result.succeeded:
            raise ControlError(ErrorCode.ALREADY_EXISTS, f"export {nqn!r} exists")
        return self._export_info(spec, view)

    async def delete_export(self, nqn: str, *, force: bool = False) -> None:
        view = await self.view()
        e = view.exports.get(nqn)
        if e is None:
            raise ControlError(ErrorCode.NOT_FOUND, f"no cluster export {nqn!r}")
        if e.namespaces and not force:
            raise ControlError(ErrorCode.FAILED_PRECONDITION,
                               f"export {nqn!r} still has {len(e.namespaces)} namespace(s): "
                               f"delete with --force")
        try:
            await self.client.delete(self.keys.export(nqn))
            await self.client.delete_prefix(self.keys.hostkey(nqn, ""))  # its hosts' secrets
        except EtcdError as exc:
            raise _unavailable(exc) from None

    async def change_export(self, nqn: str, *, add_host: str | None = None,
                            remove_host: str | None = None,
                            allow_any_host: bool | None = None,
                            extra_ops: Iterable[Op] = ()) -> dict[str, Any]:
        """Allow or disallow one host, or any host, on a cluster export (every node follows).
        ``extra_ops`` go in the same txn (a host's secrets, sbstore.cluster.hostkeys); a
        removed host's secrets are deleted with it."""
        extra = list(extra_ops)
        for host in (add_host, remove_host):
            if host is not None:
                check_nqn(host, "host NQN")
        key = self.keys.export(nqn)
        for _ in range(5):  # a concurrent change: read again and retry, a few times
            view = await self.view()
            e = view.exports.get(nqn)
            kv = await self._get(key)
            if e is None or kv is None:
                raise ControlError(ErrorCode.NOT_FOUND, f"no cluster export {nqn!r}")
            hosts, any_host = set(e.hosts), e.allow_any_host
            if add_host is not None:
                if any_host:
                    raise ControlError(ErrorCode.FAILED_PRECONDITION,
                                       f"{nqn} allows any host; to restrict it, turn that off "
                                       f"first (sbstore export set {nqn} --no-allow-any-host)")
                if add_host in hosts:
                    raise ControlError(ErrorCode.ALREADY_EXISTS,
                                       f"{add_host} may already connect to {nqn}")
                hosts.add(add_host)
            if remove_host is not None:
                if remove_host not in hosts:
                    raise ControlError(ErrorCode.NOT_FOUND, f"{remove_host} is not among "
                                       f"{nqn}'s hosts")
                hosts.discard(remove_host)
            if allow_any_host is not None:
                if allow_any_host and hosts:
                    raise invalid(f"export {nqn!r} lists hosts; remove them before allowing "
                                  f"any host")
                any_host = allow_any_host
            spec = ExportSpec(nqn, e.namespaces, tuple(sorted(hosts)), any_host)
            ops = [Op.put(key, spec.to_json()), *extra]
            if remove_host is not None:
                ops.append(Op.delete(self.keys.hostkey(nqn, remove_host)))
            try:
                result = await self.client.txn([Compare.mod_revision(key, "==", kv.mod_revision)],
                                               ops)
            except EtcdError as exc:
                raise _unavailable(exc) from None
            if result.succeeded:
                return self._export_info(spec, await self.view() if extra or remove_host
                                         else view)
        raise ControlError(ErrorCode.BUSY, f"export {nqn!r} kept changing; try again")

    async def _get(self, key: str) -> Any:
        try:
            return await self.client.get(key)
        except EtcdError as exc:
            raise _unavailable(exc) from None

    # --- status -------------------------------------------------------------------------------

    async def status(self, *, node: str, lease_left_s: float | None,
                     known_nodes: Iterable[str] = ()) -> dict[str, Any]:
        view = await self.view()
        names = set(view.nodes) | set(known_nodes) | {
            n for s in view.volumes.values() for n in s.replicas}
        nodes = []
        for name in sorted(names):
            info = view.nodes.get(name)
            nodes.append({
                "name": name, "live": info is not None, "self": name == node,
                "peer_address": (f"{info.peer_address[0]}:{info.peer_address[1]}"
                                 if info else None),
                "listeners": list(info.listeners) if info else [],
                "free_bytes": info.free_bytes if info else None,
                "lease_left_s": (round(lease_left_s, 3) if name == node and
                                 lease_left_s is not None else None)})
        volumes = [self._volume_info(spec, view) for _, spec in sorted(view.volumes.items())]
        exports = [self._export_info(e, view) for _, e in sorted(view.exports.items())]
        return {"node": node, "revision": view.revision, "nodes": nodes, "volumes": volumes,
                "exports": exports}

    def _volume_info(self, spec: VolumeSpec, view: ClusterView) -> dict[str, Any]:
        primary = view.primaries.get(spec.name)
        insync = view.insync.get(spec.name, InSync(()))
        local = self.local_status(spec.name) if self.local_status else {}
        published = view.progress.get(spec.name, {})
        if not local and primary is not None and published.get("node") == primary.node:
            local = published  # the primary's, from any node
        in_sync = [n for n in spec.replicas if n in insync.nodes]
        if local.get("resyncing"):
            state = "resyncing"
        elif len(in_sync) == len(spec.replicas):
            state = "healthy" if primary is not None else "no primary"
        else:
            state = "degraded"
        return {"name": spec.name, "uuid": spec.uuid, "size_bytes": spec.size_bytes,
                "block_size": spec.block_size, "tenant": spec.tenant,
                "replicas": list(spec.replicas), "primary": primary.node if primary else None,
                "epoch": primary.epoch if primary else None, "in_sync": in_sync,
                "state": state, "exports": view.exports_of(spec.name),
                "dirty_bytes": local.get("dirty_bytes"),
                "resyncing": local.get("resyncing", []),
                "snapshots": [self._snap_info(s) for s in view.snaps_of(spec.name)],
                "last_resync_bytes": dict(insync.resync_bytes),
                "clone_of": ({"volume": spec.clone_of[0], "snapshot": spec.clone_of[1]}
                             if spec.clone_of else None)}

    @staticmethod
    def _export_info(e: ExportSpec, view: ClusterView) -> dict[str, Any]:
        return {"nqn": e.nqn, "namespaces": [{"nsid": n, "volume": v} for n, v in e.namespaces],
                "hosts": list(e.hosts), "allow_any_host": e.allow_any_host,
                "host_auth": hostkeys.public(view.hostkeys, e.nqn),  # never the secrets
                "nodes": sorted({n for _, v in e.namespaces if v in view.volumes
                                 for n in view.volumes[v].replicas})}


__all__ = ["ClusterAdmin", "EtcdUnavailable"]
