"""The cluster manager: this node's reconcile loop over the desired state in etcd, primary
election, ANA, fencing and resync of its replicated volumes (docs/cluster.md).

Theory of operation. Every ``poll_s`` the loop reads the whole prefix (one range request) and
makes this node match it, idempotently, in this order:

1. volumes whose ``replicas`` name this node exist in a local pool, with the volume's name,
   size and uuid (the uuid makes the namespace identity hosts see the same on every node); a
   clone's copy is a local clone of this node's copy of the snapshot, or empty (and out of
   ``insync``) when this node lacks it;
2. exports whose volumes are all here exist locally with the same NQN, namespaces and hosts
   (through the control service, as an admin would make them); a new one shows ANA
   inaccessible on every listener before it has a namespace;
3. local replicas of volumes no longer here (deleted, moved while this node watched) are
   deleted; a replica from a previous life that etcd does not list is only forgotten (kept
   as a plain local volume: deleting data on that evidence alone is too dangerous);
4. roles: the epoch of each volume's primary goes to the replica server (fencing); a node in
   ``insync/V`` campaigns when ``primary/V`` is absent; the winner connects to its in-sync
   peers, drops from ``insync`` those it cannot reach (and the previous primary, which may hold
   writes it never acknowledged), and serves through a ``MirroredDevice``; a primary whose key
   is gone (lease lost, deleted) stops serving at once;
5. as primary: a replica missing from ``insync`` whose node is live again is resynchronised,
   then added back to ``insync``;
6. ANA: an export is optimized here when this node is the primary of all its volumes, else
   inaccessible (forced on every listener, never stored: the role is etcd's, not the state
   database's);
7. snapshots (``snaps/``): the primary takes a requested one with the hosts' writes held
   above the mirror, the replicas take theirs while it is frozen; a grown volume: replicas
   grow their copies first, the primary last;
8. around those: tenants first (a replica is created under its volume's tenant), each
   export's hosts with their DH-HMAC-CHAP secrets (step 2), the listeners asked of this node
   last (``sbstore.cluster.tenants``, ``hostkeys``, ``listeners``).

Safety does not rest on this loop being fast: a primary acknowledges a write only while its
lease clock runs (the mirror checks it per write), and a replica refuses frames of an epoch
lower than the highest it knows. The loop only decides who serves, and demoting is always safe,
so when in doubt (etcd unreachable past the lease clock, a new lease) it demotes.

Rules: only this module writes ``primary/`` and ``insync/`` (the admin writes ``insync`` once,
when it creates a volume or a clone); every write of ``insync`` is a txn guarded by
``create_revision(primary/V) == epoch``, so a deposed primary cannot change it. One exception:
a node listed in a clone's ``insync`` that lacks the snapshot takes itself out (guarded by the
key's revision) *before* its empty copy exists; a primary that counted it in sync from an older
read finds it missing and gives it a full copy (a peer is re-added only after this primary's
own resync of it).
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
import uuid as uuid_mod
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from sbstore.cluster import hostkeys
from sbstore.cluster.admin import ClusterAdmin
from sbstore.cluster.device import ClusterDevices, LocalRegistry
from sbstore.cluster.etcd import Compare, EtcdClient, EtcdError, Op
from sbstore.cluster.keys import InSync, Keys, VolumeSpec, primary_value
from sbstore.cluster.membership import NodeNameInUse, NodeSession
from sbstore.cluster.replica import Deposed, LeaseFence, LocalReplica
from sbstore.cluster.replica_server import ReplicaServer
from sbstore.cluster.listeners import ListenerAdmin, ListenerSync, published
from sbstore.cluster.snapshots import SnapshotCoordinator
from sbstore.cluster.tenants import TenantAdmin, TenantSync
from sbstore.cluster.view import ClusterView
from sbstore.config import ClusterConfig
from sbstore.control.service import ControlError, ControlService, ErrorCode
from sbstore.volume_device import VolumeDevice
from target.nvme.spec import AnaState

log = logging.getLogger("sbstore.cluster.manager")

POLL_S = 0.4
RESYNC_RETRY_S = 1.0
START_RETRY_S = 1.0
MAX_REPORTED = 1000
INSYNC_TRIES = 5  # read-modify-write rounds of insync/V lost to concurrent changes
PROGRESS_S = 1.0  # how often a degraded volume's dirty bytes are republished at most
PEERS_READY_S = 5.0  # a first campaign waits at most this long for the peers' copies


class ClusterManager:
    """Build it, ``await start()`` (returns at once; the session and the loop start in the
    background, retrying while etcd is unreachable), ``await stop()`` at the end."""

    def __init__(self, config: ClusterConfig, client: EtcdClient, session: NodeSession,
                 service: ControlService, replica_server: ReplicaServer,
                 devices: ClusterDevices, *, poll_s: float = POLL_S) -> None:
        self.config = config
        self.node = config.node
        self.client = client
        self.session = session
        self.service = service
        self.replica_server = replica_server
        self.devices = devices
        self.registry: LocalRegistry = devices.registry
        self.keys = Keys(config.prefix)
        self.admin = ClusterAdmin(client, self.keys, self.local_status)
        self.snapshots = SnapshotCoordinator(self.node, client, self.keys, service, devices,
                                             self._find_local)
        self.tenants = TenantAdmin(client, self.keys, self.admin.view, service)
        self.hostkeys = hostkeys.HostKeyAdmin(self.admin)
        self._tenant_sync = TenantSync(service)
        self.listeners = ListenerAdmin(client, self.keys, self.admin.view, self.node)
        self._listener_sync = ListenerSync(service)
        self.poll_s = poll_s
        self.view = ClusterView()
        self._replicas: dict[str, LocalReplica] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._outage_since: float | None = None
        self._reported: set[str] = set()  # problems logged once until they change
        self._pending: set[asyncio.Task[Any]] = set()
        # Exports this node serves and the ANA state it shows for each.
        self._ana: dict[str, AnaState] = {}
        self._last_info: dict[str, Any] | None = None
        # The controller ids this node gives out for every cluster export: its own slot's
        # (sbstore.cluster.cntlid, set by the runtime before any export is served), disjoint
        # from every other node's, since a Linux host refuses a second path of a subsystem
        # whose controller id it already has there ("Duplicate cntlid").
        # None until known: a node that first starts while etcd is down claims its slot in
        # the first pass that reads etcd (``claim_cntlids``), before it serves any export.
        self.cntlid_range: tuple[int, int] | None = None
        self.claim_cntlids: Callable[[], Coroutine[Any, Any, tuple[int, int]]] | None = None
        session.on_new_lease(self._new_lease)

    # === lifecycle ===============================================================================

    def prepare(self) -> None:
        """Before the listeners open: every export the registry names shows inaccessible
        until the role is known (an old primary restarted must never take a write)."""
        for nqn in self.registry.exports:
            self._show(nqn, AnaState.INACCESSIBLE)
            self._use_cntlids(nqn)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster manager")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for rep in list(self._replicas.values()):
            await self._demote(rep, "stopping", quiet=True)
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        await self.session.stop()

    async def _run(self) -> None:
        await self._start_session()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                kvs, revision = await self.client.get_prefix(self.keys.root)
            except EtcdError as exc:
                await self._etcd_lost(exc)
            else:
                if self._outage_since is not None:
                    log.warning("cluster: etcd answers again after %.1f s",
                                time.monotonic() - self._outage_since)
                    self._outage_since = None
                try:
                    await self._reconcile(ClusterView.parse(self.keys, kvs, revision))
                except Exception:  # a bug must not end the loop that keeps roles safe
                    log.exception("cluster: reconcile failed; trying again")
            wait = max(0.05, self.poll_s - (time.monotonic() - started))
            try:
                await asyncio.wait_for(self._stop.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def _start_session(self) -> None:
        """Register this node (grant its lease); retried until it works or the daemon stops:
        etcd may be down at start, or this node's previous life may still hold its key."""
        first = True
        while not self._stop.is_set():
            try:
                await self.session.start()
                log.info("cluster: node %s registered (lease %x, ttl %d s)", self.node,
                         self.session.lease_id or 0, self.config.lease_ttl)
                return
            except (EtcdError, NodeNameInUse) as exc:
                if first:
                    log.warning("cluster: cannot register node %s yet (%s); retrying",
                                self.node, exc)
                    first = False
            try:
                await asyncio.wait_for(self._stop.wait(), START_RETRY_S)
            except asyncio.TimeoutError:
                pass

    async def _etcd_lost(self, exc: Exception) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("cluster: etcd unreachable (%s); serving on while the lease clock "
                        "allows (%.1f s)", exc, self.session.valid_for())
        if not self.session.may_acknowledge():
            for rep in self._replicas.values():
                if rep.role == "primary":
                    await self._demote(rep, "cut off from etcd past the lease clock")

    async def _new_lease(self) -> None:
        """The old lease is gone, and every primary key this node held went with it."""
        for rep in self._replicas.values():
            if rep.role == "primary":
                await self._demote(rep, "this node's lease expired")

    # === the reconcile pass ======================================================================

    async def _reconcile(self, view: ClusterView) -> None:
        self.view = view
        if self.cntlid_range is None and self.claim_cntlids is not None:
            self.cntlid_range = await self.claim_cntlids()  # EtcdError: next pass
            for nqn in self.registry.exports:
                self._use_cntlids(nqn)
        mine = {n: s for n, s in view.volumes.items() if self.node in s.replicas}
        # tenants first: a replica is created under its volume's tenant
        await self._guarded("tenants", self._tenant_sync.reconcile(view.tenants))
        for spec in mine.values():
            await self._guarded(f"volume {spec.name}", self._ensure_volume(spec))
            if spec.name in self._replicas:
                await self._guarded(f"volume {spec.name}", self._tenant_sync.place(
                    spec.name, self._replicas[spec.name].pool, spec.tenant))
        await self._guarded("exports", self._reconcile_exports(view))
        for name in [n for n in self._replicas if n not in mine
                     or mine[n].uuid != self._replicas[n].spec.uuid]:
            await self._guarded(f"volume {name}", self._drop(self._replicas.pop(name)))
        for uuid, name in list(self.registry.volumes.items()):
            if not any(s.uuid == uuid for s in mine.values()):
                self._forget(uuid, name)
        for rep in list(self._replicas.values()):
            await self._guarded(f"volume {rep.spec.name}", self._reconcile_role(rep, view))
            await self._guarded(f"volume {rep.spec.name} snapshots",
                                self.snapshots.reconcile(rep, view))
        await self._guarded("listeners", self._listener_sync.reconcile(
            {w: s for (n, w), s in view.listeners.items() if n == self.node}))
        self._apply_ana(view)
        if self.session.lease_id is not None and self._info_changed():
            await self._guarded("node info", self.session.refresh_info())

    async def _guarded(self, what: str, step: Any) -> None:
        """Run one step; its failure is logged (once per message) and the pass goes on."""
        try:
            await step
        except Exception as exc:  # one step's failure must not stop the others
            message = f"{what}: {exc!r}"
            if message not in self._reported:
                if len(self._reported) >= MAX_REPORTED:
                    self._reported.clear()  # bounded: an old problem may be logged again
                self._reported.add(message)
                expected = isinstance(exc, (ControlError, EtcdError, Deposed, OSError))
                log.log(logging.ERROR, "cluster: %s", message, exc_info=not expected)

    # --- volumes --------------------------------------------------------------------------------

    def _find_local(self, uuid: str) -> tuple[str, Any] | None:
        return self.service.find_by_uuid(uuid)

    async def _ensure_volume(self, spec: VolumeSpec) -> None:
        rep = self._replicas.get(spec.name)
        if rep is not None:
            rep.spec = spec
            if rep.role != "primary":  # a primary grows last (_grow_when_replicas_have)
                await self._grow(rep)
            return
        found = self._find_local(spec.uuid)
        if found is None:
            if not self.service.pools:
                raise ControlError(ErrorCode.FAILED_PRECONDITION, "this node has no pool")
            pool_name = max(self.service.pools,
                            key=lambda p: (self.service.pools[p].stats().free_bytes, p))
            source = self._clone_source(spec) if spec.clone_of is not None else None
            if spec.clone_of is not None and source is None:
                # An empty copy is not the clone's data: out of sync before any peer can
                # reach it (a full copy from the primary follows).
                await self._leave_insync(spec)
            # Registered first: the device hook must know it is a cluster volume before any
            # export serves it.
            self.registry.add_volume(spec.uuid, spec.name)
            tenants = {t["name"] for t in self.service.list_tenants()}
            tenant = spec.tenant if spec.tenant in tenants else "default"
            if source is not None:
                pool_name, snap = source
                await self.service.create_clone(snap, spec.name, pool_name, tenant=tenant,
                                                uuid=spec.uuid)
                log.info("cluster: volume %s: replica created in pool %s as a clone of "
                         "snapshot %s", spec.name, pool_name, snap)
            else:
                await self.service.create_volume(
                    spec.name, spec.size_bytes, pool=pool_name, block_size=spec.block_size,
                    tenant=tenant, uuid=spec.uuid)
                log.info("cluster: volume %s: replica created in pool %s", spec.name,
                         pool_name)
        else:
            pool_name, vol = found
            if vol.name != spec.name:
                raise ControlError(ErrorCode.FAILED_PRECONDITION,
                                   f"the local volume with uuid {spec.uuid} is named "
                                   f"{vol.name!r}, not {spec.name!r}")
            self.registry.add_volume(spec.uuid, spec.name)
        self._replicas[spec.name] = LocalReplica(spec, pool_name)

    def _clone_source(self, spec: VolumeSpec) -> tuple[str, str] | None:
        """(pool, snapshot) of this node's copy of the snapshot a clone is made of: in the
        history of this node's copy of the source volume; None when this node lacks it."""
        assert spec.clone_of is not None
        volume, snap = spec.clone_of
        source = self.view.volumes.get(volume)
        found = self._find_local(source.uuid) if source is not None else None
        if found is None or snap not in SnapshotCoordinator.local_snapshots(found[1]):
            return None
        return found[0], snap

    async def _leave_insync(self, spec: VolumeSpec) -> None:
        """Take this node out of ``insync/V`` before its (empty) copy of a clone exists: no
        peer can have counted that copy in sync yet, so no primary's mirror disagrees."""
        ikey = self.keys.insync(spec.name)
        for _ in range(INSYNC_TRIES):
            kv = await self.client.get(ikey)
            cur = InSync.from_json(kv.json(), kv.key) if kv is not None else InSync(())
            if self.node not in cur.nodes:
                return
            nodes = tuple(n for n in cur.nodes if n != self.node)
            result = await self.client.txn(
                [Compare.mod_revision(ikey, "==", kv.mod_revision if kv else 0)],
                [Op.put(ikey, InSync(nodes, cur.epoch, cur.resync_bytes).to_json())])
            if result.succeeded:
                # and this pass, which read the set before, does not campaign on it
                self.view.insync[spec.name] = InSync(nodes, cur.epoch, cur.resync_bytes)
                log.warning("cluster: volume %s: this node lacks snapshot %s; its copy starts "
                            "empty and out of sync (a full copy follows)%s", spec.name,
                            "/".join(spec.clone_of or ()),
                            "" if nodes else "; NO copy is in sync now")
                return
        raise EtcdError(f"insync/{spec.name} kept changing; will try again")

    async def _grow(self, rep: LocalReplica) -> bool:
        """Grow the local copy to the volume's size; True when it is (now) that large."""
        found = self._find_local(rep.spec.uuid)
        if found is None:
            return False
        pool_name, vol = found
        if vol.size_bytes >= rep.spec.size_bytes:
            return True
        await self.service.resize_volume(vol.name, rep.spec.size_bytes, pool_name)
        log.info("cluster: volume %s: replica grown to %d bytes", rep.spec.name,
                 rep.spec.size_bytes)
        if self.session.lease_id is not None:
            await self.session.refresh_info()  # the primary waits for this to grow its own
        return True

    async def _grow_when_replicas_have(self, rep: LocalReplica, view: ClusterView) -> None:
        found = self._find_local(rep.spec.uuid)
        if found is None or found[1].size_bytes >= rep.spec.size_bytes:
            return
        behind = [p for p in rep.mirror.in_sync
                  if view.nodes.get(p) is None
                  or view.nodes[p].replica_sizes.get(rep.spec.name, 0) < rep.spec.size_bytes]
        if not behind:
            await self._grow(rep)  # hosts are told (Namespace Attribute Changed)

    async def _drop(self, rep: LocalReplica) -> None:
        was_primary = rep.role == "primary"
        await self._demote(rep, "the volume is no longer on this node", quiet=True)
        await self.snapshots.drop(rep)
        if was_primary:
            # Resign: the key would otherwise live as long as this node's lease, and no
            # remaining replica could be elected.
            key = self.keys.primary(rep.spec.name)
            await self.client.txn([Compare.create_revision(key, "==", rep.epoch)],
                                  [Op.delete(key)])
        await self._delete_local(rep.spec.uuid, rep.spec.name)

    def _forget(self, uuid: str, name: str) -> None:
        """A replica from this node's previous life that etcd does not list (deleted while
        the node was down, or the node now reads another cluster's prefix). Its data is not
        deleted on that evidence alone: it becomes a plain local volume, which an admin can
        look at and delete."""
        self.devices.refuse(uuid)
        self.registry.remove_volume(uuid)
        if self._find_local(uuid) is not None:
            log.warning("cluster: volume %s (uuid %s) was a replica here but etcd does not "
                        "list it; kept as a plain local volume (delete it with 'sbstore "
                        "volume delete %s' if it is not wanted)", name, uuid, name)

    async def _delete_local(self, uuid: str, name: str) -> None:
        found = self._find_local(uuid)
        if found is not None:
            pool_name, vol = found
            await self.service.delete_volume(vol.name, pool_name, force=True)
            log.info("cluster: volume %s: local replica deleted", name)
        self.devices.refuse(uuid)
        self.registry.remove_volume(uuid)

    # --- exports --------------------------------------------------------------------------------

    async def _reconcile_exports(self, view: ClusterView) -> None:
        # Served here: exports whose volumes all have a copy here (made, and still this
        # node's in etcd: a replica being removed stops serving before its copy goes).
        wanted = {nqn: e for nqn, e in view.exports.items()
                  if e.volumes and all(v in self._replicas and v in view.volumes
                                       and self.node in view.volumes[v].replicas
                                       for v in e.volumes)}
        local = {e["nqn"]: e for e in self.service.list_exports()}
        for nqn in sorted(self.registry.exports - set(wanted)):
            if nqn in local:
                await self.service.delete_export(nqn, force=True)
                log.info("cluster: export %s deleted here", nqn)
            self._show(nqn, None)
            self.registry.remove_export(nqn)
        for nqn, e in sorted(wanted.items()):
            if nqn not in self.registry.exports:
                if nqn in local:
                    raise ControlError(ErrorCode.ALREADY_EXISTS,
                                       f"export {nqn} exists here as a local export; the "
                                       f"cluster's is not served by this node")
                self._show(nqn, AnaState.INACCESSIBLE)  # before it has any namespace
                self.registry.add_export(nqn)
            if nqn not in local:
                await self.service.create_export(nqn, hosts=e.hosts,
                                                 allow_any_host=e.allow_any_host)
                log.info("cluster: export %s created here", nqn)
            self._use_cntlids(nqn)
            info = self.service.show_export(nqn)
            await self._sync_namespaces(nqn, info, e.namespaces)
            await self._sync_hosts(nqn, info, e.hosts, e.allow_any_host)

    def _use_cntlids(self, nqn: str) -> None:
        """The export gives out this node's controller ids (``cntlid_range``)."""
        subsystem = self.service.target.find_subsystem(nqn)
        if (self.cntlid_range is not None and subsystem is not None
                and subsystem.cntlid_range != self.cntlid_range):
            subsystem.set_cntlid_range(*self.cntlid_range)

    async def _sync_namespaces(self, nqn: str, info: dict[str, Any],
                               wanted: tuple[tuple[int, str], ...]) -> None:
        want = {nsid: self._replicas[v] for nsid, v in wanted}
        for ns in info["namespaces"]:
            rep = want.get(ns["nsid"])
            if rep is None or rep.spec.uuid != ns["uuid"]:
                await self.service.remove_namespace(nqn, nsid=ns["nsid"])
        have = {ns["nsid"] for ns in self.service.show_export(nqn)["namespaces"]}
        for nsid, rep in sorted(want.items()):
            if nsid not in have:
                await self.service.add_namespace(nqn, rep.spec.name, pool=rep.pool, nsid=nsid)

    async def _sync_hosts(self, nqn: str, info: dict[str, Any], hosts: tuple[str, ...],
                          allow_any_host: bool) -> None:
        if allow_any_host != info["allow_any_host"] and not allow_any_host:
            await self.service.set_export(nqn, allow_any_host=False)
        for host in sorted(set(info["hosts"]) - set(hosts)):
            await self.service.remove_host(nqn, host)
        for host in sorted(set(hosts) - set(info["hosts"])):
            # with its secrets at once: never allowed here without them
            await self.service.add_host(nqn, host, hostkeys.auth_request(
                self.view.hostkeys.get((nqn, host))))
        await hostkeys.sync(self.service, nqn, tuple(h for h in hosts if h in info["hosts"]),
                            self.view.hostkeys)
        if allow_any_host and not info["allow_any_host"]:
            await self.service.set_export(nqn, allow_any_host=True)

    # --- roles ----------------------------------------------------------------------------------

    async def _reconcile_role(self, rep: LocalReplica, view: ClusterView) -> None:
        name = rep.spec.name
        primary = view.primaries.get(name)
        if primary is not None:
            self.replica_server.set_epoch(rep.uuid, primary.epoch)
        if rep.role == "primary":
            if primary is None or primary.epoch != rep.epoch \
                    or primary.lease != self.session.lease_id:
                await self._demote(rep, "its primary key is gone")
            else:
                await self._primary_duties(rep, view)
            return
        if primary is not None:
            if primary.node != self.node:
                if rep.role != "replica" or rep.last_primary != primary.node:
                    log.info("cluster: volume %s: replica here; primary %s (epoch %d)", name,
                             primary.node, primary.epoch)
                rep.role, rep.last_primary = "replica", primary.node
            elif primary.lease == self.session.lease_id:
                await self._take_over(rep, view, primary.epoch)  # won, not yet serving
            # else: this node's previous life holds it until that lease lapses
            return
        insync = view.insync.get(name)
        if insync is not None and self.node in insync.nodes and self.session.may_acknowledge() \
                and self._peers_ready(rep, view, insync):
            await self._campaign(rep, view)

    def _peers_ready(self, rep: LocalReplica, view: ClusterView, insync: InSync) -> bool:
        """Every live in-sync peer has its copy (it publishes its size), or this node has
        waited PEERS_READY_S for them: a new volume's first primary then starts with every
        copy in sync instead of dropping the ones not created yet."""
        if time.monotonic() - rep.seen_at >= PEERS_READY_S:
            return True
        return all(rep.spec.name in view.nodes[p].replica_sizes for p in insync.nodes
                   if p != self.node and p in view.nodes)

    async def _campaign(self, rep: LocalReplica, view: ClusterView) -> None:
        lease = self.session.lease_id
        if lease is None:
            return
        key = self.keys.primary(rep.spec.name)
        # Only on the in-sync set this pass read: a node that left it since (a clone's copy
        # made empty) must not win on an old read.
        ikey = self.keys.insync(rep.spec.name)
        await self.client.txn([Compare.create_revision(key, "==", 0),
                               Compare.mod_revision(ikey, "==",
                                                    view.insync_revision.get(rep.spec.name, 0))],
                              [Op.put(key, primary_value(self.node), lease)])
        # Read back, whatever the txn said: a retried request may report a win as a loss.
        kv = await self.client.get(key)
        if kv is None or kv.lease != lease:
            return
        await self._take_over(rep, view, kv.create_revision)

    async def _take_over(self, rep: LocalReplica, view: ClusterView, epoch: int) -> None:
        from sbstore.cluster.mirror import MirroredDevice
        from sbstore.cluster.replica_client import ReplicaClient, ReplicaError

        started = time.monotonic()
        name = rep.spec.name
        self.replica_server.set_epoch(rep.uuid, epoch)  # the old primary's frames: refused
        rep.epoch = epoch
        insync = view.insync.get(name, InSync(()))
        peers: dict[str, Any] = {}
        dropped: list[str] = []
        for peer in rep.spec.replicas:
            if peer == self.node or peer not in insync.nodes:
                continue
            info = view.nodes.get(peer)
            # The previous primary may hold writes it never acknowledged (and never sent
            # here): it is resynchronised even when it is reachable.
            if info is not None and peer != rep.last_primary:
                client = ReplicaClient(info.peer_address, rep.uuid, rep.spec.block_size)
                try:
                    await client.connect()
                    await client.ping(epoch)
                    peers[peer] = client
                    continue
                except ReplicaError as exc:
                    client.close()
                    log.warning("cluster: volume %s: in-sync peer %s unreachable at takeover "
                                "(%s)", name, peer, exc)
            dropped.append(peer)
        # What the old primary may lack: every block this node received from it lately.
        recent = self.replica_server.recent_writes(rep.uuid,
                                                   seconds=self.config.lease_ttl + 3.0)
        initial_dirty: dict[str, Iterable[tuple[int, int]]] = {
            peer: list(recent) for peer in dropped}
        try:
            if dropped:
                await self._write_insync(rep, remove=dropped)
        except (Deposed, EtcdError):
            for client in peers.values():
                client.close()
            raise
        found = self._find_local(rep.spec.uuid)
        if found is None:
            raise ControlError(ErrorCode.NOT_FOUND, f"volume {name}: the local replica is gone")
        rep.tracked = set(initial_dirty)
        rep.caught_up = set()
        rep.mirror = MirroredDevice(
            VolumeDevice(found[1]), fence=LeaseFence(epoch, self.session.may_acknowledge),
            peers=peers, in_sync=set(peers),
            on_peer_lost=functools.partial(self._peer_lost, rep),
            on_deposed=functools.partial(self._deposed, rep),
            initial_dirty=initial_dirty)
        for peer in dropped:  # a dirty map, even an empty one: its resync is incremental
            rep.mirror.mark_dirty(peer, 0, 0)
        rep.role = "primary"
        self.devices.serve(rep.spec.uuid, rep.mirror)
        self._apply_ana(self.view)
        log.warning("cluster: volume %s: primary here (epoch %d) after %.3f s; in sync: %s%s",
                    name, epoch, time.monotonic() - started,
                    ", ".join([self.node, *sorted(peers)]),
                    f"; dropped {', '.join(dropped)} (resync follows)" if dropped else "")

    async def _demote(self, rep: LocalReplica, why: str, *, quiet: bool = False) -> None:
        was_primary = rep.role == "primary"
        rep.role = "unknown"
        self.devices.refuse(rep.spec.uuid)
        for nqn in self._exports_of(rep.spec.name):
            self._show(nqn, AnaState.INACCESSIBLE)
        for task in [*rep.resyncs.values(), *rep.snapshotting.values()]:
            task.cancel()
        rep.resyncs.clear()
        rep.snapshotting.clear()
        for d in self.devices.devices(rep.spec.uuid):
            d.release()
        if rep.mirror is not None:
            for client in rep.mirror.peers.values():
                client.close()
        rep.mirror = None
        rep.published = None
        if was_primary and not quiet:
            log.warning("cluster: volume %s: no longer primary here: %s", rep.spec.name, why)

    def _deposed(self, rep: LocalReplica) -> None:
        """A peer knows a newer epoch: stop serving now, tidy up in a task."""
        if rep.role != "primary":
            return
        self.devices.refuse(rep.spec.uuid)
        for nqn in self._exports_of(rep.spec.name):
            self._show(nqn, AnaState.INACCESSIBLE)
        self._spawn(self._demote(rep, "a peer knows a newer epoch (deposed)"))

    async def _peer_lost(self, rep: LocalReplica, peer: str) -> None:
        """The mirror lost ``peer``: it leaves ``insync`` before the write that found out
        completes (raises when that cannot be recorded: the write then fails)."""
        await self._write_insync(rep, remove=[peer])
        rep.caught_up.discard(peer)
        rep.tracked.add(peer)  # the mirror keeps its dirty map from now on
        rep.retry_at[peer] = time.monotonic() + RESYNC_RETRY_S
        log.warning("cluster: volume %s: peer %s lost; degraded (its writes are tracked for "
                    "resync)", rep.spec.name, peer)

    async def _write_insync(self, rep: LocalReplica, *, remove: Iterable[str] = (),
                            add: str | None = None, resync_bytes: int | None = None) -> None:
        """Rewrite ``insync/V`` without ``remove`` and with ``add``: a txn guarded by this
        node's epoch (a deposed primary changes nothing) and by the revisions it read (an
        admin's concurrent change of the replicas is not overwritten; a node the admin just
        removed from the volume is not added back)."""
        name = rep.spec.name
        ikey, vkey, pkey = self.keys.insync(name), self.keys.volume(name), self.keys.primary(name)
        removed = set(remove)
        async with rep.lock:
            for _ in range(INSYNC_TRIES):
                kv = await self.client.get(ikey)
                vol = await self.client.get(vkey)
                if vol is None:
                    raise Deposed(f"volume {name} was deleted")
                replicas = VolumeSpec.from_json(vol.json(), vol.key).replicas
                cur = InSync.from_json(kv.json(), kv.key) if kv is not None else InSync(())
                nodes = [n for n in cur.nodes if n not in removed]
                if add is not None and add not in nodes and add in replicas:
                    nodes.append(add)
                resync = {n: b for n, b in cur.resync_bytes.items() if n in replicas}
                if add is not None and resync_bytes is not None:
                    resync[add] = resync_bytes
                value = InSync(tuple(nodes), rep.epoch, resync).to_json()
                result = await self.client.txn(
                    [Compare.create_revision(pkey, "==", rep.epoch),
                     Compare.mod_revision(ikey, "==", kv.mod_revision if kv else 0),
                     Compare.mod_revision(vkey, "==", vol.mod_revision)],
                    [Op.put(ikey, value)])
                if result.succeeded:
                    return
                primary = await self.client.get(pkey)
                if primary is None or primary.create_revision != rep.epoch:
                    raise Deposed(f"volume {name}: epoch {rep.epoch} is no longer the "
                                  f"primary's")
            raise EtcdError(f"insync/{name} kept changing; will try again")

    async def _primary_duties(self, rep: LocalReplica, view: ClusterView) -> None:
        insync = view.insync.get(rep.spec.name, InSync(()))
        for peer in sorted((set(rep.mirror.peers) | rep.tracked) - set(rep.spec.replicas)):
            await self._forget_peer(rep, peer, insync)
        await self._grow_when_replicas_have(rep, view)
        await self._publish_progress(rep)
        for snap in view.snaps_of(rep.spec.name):
            task = rep.snapshotting.get(snap.name)
            if task is not None and not task.done():
                continue
            if snap.state == "requested":
                rep.snapshotting[snap.name] = self._spawn(self.snapshots.take(rep, snap))
            elif snap.state == "frozen" and snap.epoch != rep.epoch:
                # Its primary died holding the writes: nobody knows which copies have it.
                await self.snapshots.put(rep, dataclasses.replace(snap, state="failed"))
        now = time.monotonic()
        for peer in rep.spec.replicas:
            if peer == self.node:
                continue
            task = rep.resyncs.get(peer)
            if task is not None and not task.done():
                continue
            in_mirror = peer in rep.mirror.in_sync
            if in_mirror and peer in insync.nodes:
                rep.caught_up.discard(peer)
                continue
            if in_mirror and peer in rep.caught_up:
                # caught up, but recording it failed: record it again
                await self._write_insync(rep, add=peer)
                continue
            if in_mirror:
                # Counted in sync at takeover from an in-sync set read just before the peer
                # left it (a clone's copy made empty, lacking the snapshot): it is not. It
                # gets a full copy.
                rep.mirror.forget_peer(peer)
                rep.tracked.discard(peer)
                log.warning("cluster: volume %s: %s left the in-sync set itself; giving it a "
                            "full copy", rep.spec.name, peer)
                continue
            info = view.nodes.get(peer)
            if info is None or now < rep.retry_at.get(peer, 0.0):
                continue  # not live (or it failed a moment ago)
            rep.resyncs[peer] = self._spawn(self._resync(rep, peer, info.peer_address))

    async def _forget_peer(self, rep: LocalReplica, peer: str, insync: InSync) -> None:
        """The admin took ``peer`` off the volume (a move, a replacement): stop replicating to
        it and drop its dirty map. It leaves ``insync`` first (the admin's txn did that already
        unless this races with it)."""
        task = rep.resyncs.pop(peer, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if peer in insync.nodes:
            await self._write_insync(rep, remove=[peer])
        rep.mirror.forget_peer(peer)
        rep.tracked.discard(peer)
        rep.caught_up.discard(peer)
        log.warning("cluster: volume %s: %s is no longer one of its replicas; not replicating "
                    "to it any more", rep.spec.name, peer)

    async def _publish_progress(self, rep: LocalReplica) -> None:
        """``progress/V`` (under this node's lease, so it dies with the primaryship): the
        missing replicas' dirty bytes and the resyncs running, for status on every node.
        Written when the resyncs change, else at most every PROGRESS_S while it changes."""
        now = time.monotonic()
        status = self.local_status(rep.spec.name)
        if not status.get("dirty_bytes") and not status.get("resyncing") \
                and rep.published is None:
            return
        value = {"node": self.node, **status}
        last = rep.published
        if last == value or (last is not None and last.get("resyncing") == value["resyncing"]
                             and now - rep.published_at < PROGRESS_S):
            return
        lease = self.session.lease_id
        if lease is None:
            return
        await self.client.put(self.keys.progress(rep.spec.name), json.dumps(value),
                              lease=lease)
        rep.published, rep.published_at = value, now

    async def _resync(self, rep: LocalReplica, peer: str, address: tuple[str, int]) -> None:
        from sbstore.cluster.replica_client import ReplicaClient, ReplicaError

        name = rep.spec.name
        mirror = rep.mirror
        client = ReplicaClient(address, rep.uuid, rep.spec.block_size)
        full = peer not in rep.tracked
        started = time.monotonic()
        try:
            await client.connect()
            log.info("cluster: volume %s: resynchronising %s (%s)", name, peer,
                     "full copy" if full else f"{mirror.dirty_bytes(peer)} dirty bytes")
            sent = await mirror.resync(peer, client, full=full)
            if rep.mirror is not mirror:
                raise Deposed(f"volume {name}: demoted during the resync")
            rep.caught_up.add(peer)
            await self._write_insync(rep, add=peer, resync_bytes=sent)
        except (ReplicaError, EtcdError, Deposed, OSError) as exc:
            client.close()
            rep.retry_at[peer] = time.monotonic() + RESYNC_RETRY_S
            log.warning("cluster: volume %s: resync of %s failed (%s); retrying", name, peer,
                        exc)
            return
        rep.tracked.discard(peer)
        rep.resync_bytes_total += sent
        rep.last_resync_bytes[peer] = sent
        log.warning("cluster: volume %s: %s is in sync again; resync moved %d bytes (%s) in "
                    "%.2f s", name, peer, sent, "full" if full else "incremental",
                    time.monotonic() - started)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    # --- ANA ------------------------------------------------------------------------------------

    def _exports_of(self, volume: str) -> list[str]:
        return [nqn for nqn in self.registry.exports
                if nqn in self.view.exports and volume in self.view.exports[nqn].volumes]

    def _apply_ana(self, view: ClusterView) -> None:
        for nqn in self.registry.exports:
            e = view.exports.get(nqn)
            serving = e is not None and bool(e.volumes) and all(
                v in self._replicas and self._replicas[v].role == "primary" for v in e.volumes)
            self._show(nqn, AnaState.OPTIMIZED if serving else AnaState.INACCESSIBLE)

    def _show(self, nqn: str, state: AnaState | None) -> None:
        if state is None:
            self._ana.pop(nqn, None)
        elif self._ana.get(nqn) == state:
            return
        else:
            self._ana[nqn] = state
            log.info("cluster: export %s: ANA %s on this node", nqn, state.name.lower())
        self.service.listeners.force_ana(nqn, state)

    # === what the node publishes, status, metrics ================================================

    def node_info(self) -> dict[str, Any]:
        host, port = self.config.peer_address
        listeners = sorted({f"{b['address']}:{b['port']}" for x in self.service.list_listeners()
                            for b in x["bound"]})
        pools = {}
        for name, pool in self.service.pools.items():
            st = pool.stats()
            pools[name] = {"size_bytes": st.capacity_bytes, "free_bytes": st.free_bytes}
        sizes = {}
        for name, rep in self._replicas.items():
            found = self._find_local(rep.spec.uuid)
            if found is not None:
                sizes[name] = found[1].size_bytes
        return {"node": self.node, "peer_address": f"{host}:{port}", "listeners": listeners,
                "pools": pools, "started": self.service.started, "replica_sizes": sizes,
                "listener_info": published(self.service)}

    def _info_changed(self) -> bool:
        """Free space changes as volumes fill: republish when it moved by more than 1%, or
        when the listeners changed."""
        info = self.node_info()
        last = self._last_info
        self._last_info = info
        if last is None:
            return True  # registered before the first pass found this node's replicas
        if info["listeners"] != last["listeners"] or set(info["pools"]) != set(last["pools"]) \
                or info["listener_info"] != last["listener_info"] \
                or info["replica_sizes"] != last["replica_sizes"]:
            return True
        return any(abs(p["free_bytes"] - last["pools"][n]["free_bytes"]) > p["size_bytes"] // 100
                   for n, p in info["pools"].items())

    def local_status(self, volume: str) -> dict[str, Any]:
        rep = self._replicas.get(volume)
        if rep is None or rep.role != "primary" or rep.mirror is None:
            return {}
        return {"dirty_bytes": {p: rep.mirror.dirty_bytes(p) for p in rep.spec.replicas
                                if p != self.node and p not in rep.mirror.in_sync},
                "resyncing": sorted(p for p, t in rep.resyncs.items() if not t.done())}

    async def is_replicated(self, name: str) -> bool:
        """Is ``name`` a replicated volume (etcd says)? When etcd cannot say: yes for this
        node's own replicas (so nothing acts on one copy), no for other names."""
        try:
            return await self.admin.is_replicated(name)
        except ControlError:
            return name in self.registry.volumes.values()

    async def is_cluster_snapshot(self, name: str) -> bool:
        try:
            return await self.admin.find_snapshot(name) is not None
        except ControlError:
            return False

    async def is_cluster_export(self, nqn: str) -> bool:
        try:
            return await self.admin.is_cluster_export(nqn)
        except ControlError:
            return nqn in self.registry.exports

    async def status(self) -> dict[str, Any]:
        out = await self.admin.status(node=self.node, lease_left_s=self.session.valid_for())
        out["local"] = {name: {"role": rep.role, "epoch": rep.epoch or None, "pool": rep.pool,
                               "resync_bytes_total": rep.resync_bytes_total}
                        for name, rep in sorted(self._replicas.items())}
        return out

    def metric_samples(self) -> list[tuple[str, bool, int, bool]]:
        """(volume, degraded, resync bytes total, primary here) per local replica."""
        out = []
        for name, rep in sorted(self._replicas.items()):
            insync = self.view.insync.get(name)
            degraded = insync is None or any(n not in insync.nodes for n in rep.spec.replicas)
            out.append((name, degraded, rep.resync_bytes_total, rep.role == "primary"))
        return out


ResolveFn = Callable[[uuid_mod.UUID], Any]


def replica_resolver(service: ControlService, registry: LocalRegistry) -> ResolveFn:
    """The replica server's lookup: a cluster volume's local replica as a plain device (the
    primary's frames bypass the role device, which refuses the hosts of a non-primary)."""
    def resolve(volume_uuid: uuid_mod.UUID) -> Any:
        if str(volume_uuid) not in registry.volumes:
            return None  # a peer may write only to cluster volumes
        found = service.find_by_uuid(str(volume_uuid))
        return VolumeDevice(found[1]) if found is not None else None
    return resolve
