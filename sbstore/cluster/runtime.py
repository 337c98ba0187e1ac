"""Everything cluster mode adds to a daemon, in the order the daemon needs it.

``ClusterRuntime(config)`` before the control service exists (its device hook must know the
cluster volumes when the service restores exports); ``prepare(service)`` after the restore and
before the listeners open (cluster exports start inaccessible); ``await start()`` once the
daemon serves (the replication listener, the node's lease, the reconcile loop);
``await stop()`` on the way out (the lease is revoked, so a survivor takes over at once
instead of after the TTL).
"""
from __future__ import annotations

import logging
from typing import Any

from sbstore.cluster import cntlid
from sbstore.cluster.device import ClusterDevices, LocalRegistry
from sbstore.cluster.etcd import EtcdClient, EtcdError
from sbstore.cluster.manager import ClusterManager, replica_resolver
from sbstore.cluster.membership import NodeSession
from sbstore.cluster.replica_server import ReplicaServer
from sbstore.config import ClusterConfig, Config
from target.blockdev import BlockDevice

log = logging.getLogger("sbstore.cluster")

ETCD_TIMEOUT_S = 2.0
DeviceHook = Any  # (pool name, volume, device) -> device: sbstore.control.service.DeviceWrapper


class ClusterRuntime:
    def __init__(self, config: Config) -> None:
        assert config.cluster is not None
        self.config: ClusterConfig = config.cluster
        self.registry = LocalRegistry(config.state_dir / "cluster.json")
        self._slot_file = config.state_dir / "cluster-cntlid.json"
        self.cntlid_range: tuple[int, int] | None = None
        self.devices = ClusterDevices(self.registry)
        self.client = EtcdClient(list(self.config.etcd), timeout=ETCD_TIMEOUT_S)
        self.replica_server: ReplicaServer | None = None
        self.manager: ClusterManager | None = None

    def device_hook(self, outer: DeviceHook | None) -> DeviceHook:
        """The service's device hook: cluster volumes get their role device inside ``outer``
        (QoS), so a refused I/O never takes a tenant's turn at the device."""
        devices = self.devices

        def wrap(pool_name: str, vol: Any, inner: BlockDevice) -> BlockDevice:
            device = devices.wrap(pool_name, vol, inner)
            return outer(pool_name, vol, device) if outer is not None else device
        return wrap

    async def reserve_controller_ids(self) -> tuple[int, int] | None:
        """This node's controller-id range, which its cluster exports give out (call before
        ``prepare``): from the slot kept in the state directory, else one claimed in etcd
        (sbstore.cluster.cntlid). None when neither is possible yet (etcd down at a first
        start): the manager claims it in its first pass, before it serves any export.
        NoFreeSlot: every slot is taken."""
        try:
            return await self._claim_controller_ids()
        except EtcdError as exc:
            log.warning("cluster: no controller-id slot yet (%s); it is claimed when etcd "
                        "answers, before any cluster export is served", exc)
            return None

    async def _claim_controller_ids(self) -> tuple[int, int]:
        cc = self.config
        slot = cntlid.read_cached(self._slot_file, cc.node)
        if slot is None:
            slot = await cntlid.claim_slot(self.client, cc.prefix, cc.node)
            cntlid.write_cached(self._slot_file, cc.node, slot)
        self.cntlid_range = cntlid.cntlid_range(slot)
        log.info("cluster: node %s gives out controller ids %d..%d (slot %d)", cc.node,
                 *self.cntlid_range, slot)
        return self.cntlid_range

    def prepare(self, service: Any) -> ClusterManager:
        cc = self.config
        self.replica_server = ReplicaServer(replica_resolver(service, self.registry),
                                            node=cc.node)
        manager: ClusterManager | None = None

        def info() -> dict[str, Any]:
            assert manager is not None
            return manager.node_info()
        session = NodeSession(self.client, cc.node, prefix=cc.prefix, ttl=cc.lease_ttl,
                              info=info)
        manager = ClusterManager(cc, self.client, session, service, self.replica_server,
                                 self.devices)
        manager.cntlid_range = self.cntlid_range
        manager.claim_cntlids = self._claim_controller_ids
        manager.prepare()
        self.manager = manager
        return manager

    async def start(self) -> None:
        assert self.replica_server is not None and self.manager is not None
        host, port = self.config.peer_address
        await self.replica_server.start(host, port)  # OSError: the daemon says why
        log.info("cluster: node %s, replication on %s:%d, etcd %s", self.config.node, host,
                 port, ", ".join(self.config.etcd))
        await self.manager.start()

    async def stop(self) -> None:
        if self.manager is not None:
            try:
                await self.manager.stop()
            except Exception:  # stop the rest too
                log.exception("cluster: stopping the manager failed")
        if self.replica_server is not None:
            await self.replica_server.close()
        await self.client.close()
