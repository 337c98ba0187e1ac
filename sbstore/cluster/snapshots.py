"""Snapshots of replicated volumes (``snaps/`` and ``snapped/``, docs/cluster.md): taken on
every in-sync copy at one point of the hosts' writes.

Theory of operation. The admin writes ``snaps/V/S`` (requested). The primary holds new host
writes in the role devices (above the mirror), waits for those in flight (a mirrored write
completes only once every in-sync copy has it, so every copy now holds the same writes),
snapshots its copy, marks the record ``frozen`` with its epoch, and waits (bounded) for the
in-sync replicas' ``snapped/V/S/<node>`` keys; each replica takes its snapshot in its reconcile
pass while the record is frozen by the current primary. Then the writes go on and the record
says ``done`` or ``partial``. A primary that dies holding the writes leaves it ``frozen``; the
next primary marks it ``failed``. A snapshot that leaves etcd is deleted on every node that took
it (and only those: a local snapshot an admin or a schedule took is not the cluster's).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from sbstore.cluster.device import ClusterDevices
from sbstore.cluster.etcd import Compare, EtcdClient, EtcdError, Op
from sbstore.cluster.keys import InSync, Keys, SnapSpec
from sbstore.cluster.replica import Deposed, LocalReplica
from sbstore.cluster.view import ClusterView
from sbstore.control.service import ControlError, ControlService, ErrorCode

log = logging.getLogger("sbstore.cluster.snapshots")

SNAP_DRAIN_S = 5.0  # a snapshot waits this long at most for the writes in flight
SNAP_WAIT_S = 5.0  # ... and this long for the replicas' snapshots, holding the hosts' writes
MAX_CHAIN = 100_000  # a volume's history is shorter than this (a bound on the walk)


class SnapshotCoordinator:
    """This node's part in the cluster's snapshots; the manager calls it per volume."""

    def __init__(self, node: str, client: EtcdClient, keys: Keys, service: ControlService,
                 devices: ClusterDevices,
                 find_local: Callable[[str], tuple[str, Any] | None]) -> None:
        self.node = node
        self.client = client
        self.keys = keys
        self.service = service
        self.devices = devices
        self.find_local = find_local

    async def take(self, rep: LocalReplica, snap: SnapSpec) -> None:
        """As primary: hold the hosts' writes above the mirror, let those in flight finish
        (a mirrored write completes only once every in-sync copy has it), snapshot the local
        copy, mark it ``frozen`` for the replicas, wait for theirs, release the writes."""
        name, uuid = rep.spec.name, rep.spec.uuid
        devices = self.devices.devices(uuid)
        started = time.monotonic()
        for d in devices:
            d.hold()
        peers = set(rep.mirror.in_sync) if rep.mirror is not None else set()
        have: set[str] = set()
        try:
            await asyncio.wait_for(asyncio.gather(*(d.drained() for d in devices)),
                                   SNAP_DRAIN_S)
            await self.snapshot_local(rep, snap.name)
            have.add(self.node)
            await self.put(rep, SnapSpec(name, snap.name, "frozen", rep.epoch,
                                               (self.node,)), snapped=True)
            deadline = time.monotonic() + SNAP_WAIT_S
            prefix = self.keys.snapped(name, snap.name, "")
            while time.monotonic() < deadline:  # bounded
                kvs, _ = await self.client.get_prefix(prefix)
                have |= {kv.key[len(prefix):] for kv in kvs} & peers
                if peers <= have:
                    break
                await asyncio.sleep(0.05)
        except (asyncio.TimeoutError, ControlError, EtcdError, Deposed) as exc:
            log.error("cluster: volume %s: snapshot %s failed: %s", name, snap.name, exc)
            if self.node not in have:
                with contextlib.suppress(EtcdError, Deposed):
                    await self.put(rep, dataclasses.replace(snap, state="failed"))
                return
        finally:
            for d in devices:
                d.release()
        held = time.monotonic() - started
        nodes = tuple(sorted(have))
        state = "done" if peers <= have else "partial"
        try:
            await self.put(rep, SnapSpec(name, snap.name, state, rep.epoch, nodes))
        except (EtcdError, Deposed) as exc:
            log.error("cluster: volume %s: snapshot %s: recording it failed: %s", name,
                      snap.name, exc)
            return
        log.info("cluster: volume %s: snapshot %s %s on %s (writes held %.3f s)", name,
                 snap.name, state, ", ".join(nodes), held)

    async def put(self, rep: LocalReplica, snap: SnapSpec, *, snapped: bool = False) -> None:
        """Write the snapshot's record, only while this node is the primary of that epoch and
        the record was not deleted meanwhile."""
        key = self.keys.snap(rep.spec.name, snap.name)
        ops = [Op.put(key, snap.to_json())]
        if snapped:
            ops.append(Op.put(self.keys.snapped(rep.spec.name, snap.name, self.node), "{}"))
        result = await self.client.txn(
            [Compare.create_revision(self.keys.primary(rep.spec.name), "==", rep.epoch),
             Compare.version(key, ">", 0)], ops)
        if not result.succeeded:
            raise Deposed(f"volume {rep.spec.name}: snapshot {snap.name}: not the primary of "
                          f"epoch {rep.epoch} any more, or the snapshot was deleted")

    async def snapshot_local(self, rep: LocalReplica, snap: str) -> None:
        found = self.find_local(rep.spec.uuid)
        if found is None:
            raise ControlError(ErrorCode.NOT_FOUND, f"volume {rep.spec.name}: no local copy")
        pool_name, vol = found
        if snap in self.local_snapshots(vol):
            return  # taken before a restart or a retry
        await self.service.create_snapshot(vol.name, snap, pool_name)

    @staticmethod
    def local_snapshots(vol: Any) -> list[str]:
        """The snapshots in the volume's history (its parent chain), newest first."""
        out = []
        parent = vol.parent
        for _ in range(MAX_CHAIN):  # bounded: a chain has no cycles
            if parent is None:
                break
            out.append(parent.name)
            parent = parent.parent
        return out

    async def reconcile(self, rep: LocalReplica, view: ClusterView) -> None:
        """Every node: take the snapshots a primary froze for this copy; delete the local
        snapshots of the volume that etcd no longer lists."""
        name = rep.spec.name
        wanted = {s.name: s for s in view.snaps_of(name)}
        rep.known_snaps |= set(wanted)
        primary = view.primaries.get(name)
        found = self.find_local(rep.spec.uuid)
        if found is None:
            return
        pool_name, vol = found
        insync = view.insync.get(name, InSync(()))
        if rep.role != "primary" and primary is not None and self.node in insync.nodes:
            # (a copy out of sync would snapshot data that is not the volume's)
            for snap in wanted.values():
                if snap.state == "frozen" and snap.epoch == primary.epoch and self.node \
                        not in view.snapped.get((name, snap.name), set()):
                    # The primary holds the writes: this copy is at the same point as its.
                    await self.snapshot_local(rep, snap.name)
                    await self.client.put(self.keys.snapped(name, snap.name, self.node), "{}")
                    log.info("cluster: volume %s: snapshot %s taken here", name, snap.name)
        for local in self.local_snapshots(vol):
            if local in rep.known_snaps and local not in wanted:
                rep.known_snaps.discard(local)
                await self.service.delete_volume(local, pool_name, force=True, kind="snapshot")
                log.info("cluster: volume %s: snapshot %s deleted here", name, local)

    async def drop(self, rep: LocalReplica) -> None:
        """The volume leaves this node: the cluster's snapshots of it go with it."""
        found = self.find_local(rep.spec.uuid)
        if found is None:
            return
        for snap in self.local_snapshots(found[1]):
            if snap in rep.known_snaps:
                await self.service.delete_volume(snap, found[0], force=True, kind="snapshot")
