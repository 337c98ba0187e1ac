"""The initiator's view of one NVMe controller: an admin queue, N I/O queues, namespaces.

Bring-up follows what the Linux host does (drivers/nvme/host/fabrics.c, core.c): ICReq, Connect
on qid 0 (dynamic controller id), Property Get CAP, Property Set CC.EN, Property Get CSTS until
RDY, Identify Controller, Set Features Number of Queues, Identify the active namespaces, then
one connection per I/O queue (Connect with the controller id the admin Connect returned), and a
Keep Alive every KATO/2 while connected.

Usage::

    async with await Controller.connect("127.0.0.1", 4420, "nqn...:demo", nr_io_queues=4) as c:
        await c.write(1, 0, b"x" * 4096)
        data = await c.read(1, 0, 8)
"""
from __future__ import annotations

import asyncio
import itertools
import uuid as uuid_mod
from typing import TYPE_CHECKING, Sequence

from target.host import commands as cmd
from target.host.auth import HostAuth, Outcome, authenticate
from target.host.queue_client import Completion, QueueClient
from target.nvme.identify import (
    IdentifyController,
    IdentifyNamespace,
    pull_identify_controller,
    pull_identify_namespace,
    pull_namespace_list,
    pull_ns_id_descriptors,
)
from target.nvme.reservations import (
    ReservationStatus,
    pull_report,
    push_key,
    push_key_pair,
)
from target.nvme.spec import (
    CC_EN,
    CC_SHN_SHIFT,
    CNTLID_DYNAMIC,
    CONNECT_AUTHREQ_ATR,
    CSTS_RDY,
    CSTS_SHST_SHIFT,
    DISCOVERY_NQN,
    SHST_COMPLETE,
    AcquireAction,
    FeatureId,
    IdentifyCns,
    Property,
    RegisterAction,
    ReleaseAction,
)
from target.nvme.structs import Sqe

if TYPE_CHECKING:
    from target.host.tls import ClientPsk, HostTls

CC_IOSQES_IOCQES = (6 << 16) | (4 << 20)  # 64-byte SQEs, 16-byte CQEs
ADMIN_DEPTH = 32


class Controller:
    """A connected controller. Make one with :meth:`connect`."""

    def __init__(self, admin: QueueClient, *, host: str, port: int, subnqn: str, hostnqn: str,
                 hostid: uuid_mod.UUID, hdgst: bool, ddgst: bool, kato_ms: int,
                 auth: HostAuth | None = None, authenticate: bool = True) -> None:
        self.admin = admin
        self.auth = auth
        self._authenticate = authenticate  # False: skip it even if asked (negative tests)
        self.auth_required = False  # the admin Connect's response set AUTHREQ.ATR
        self.auth_outcome: Outcome | None = None
        self.io_queues: list[QueueClient] = []
        self.host, self.port, self.subnqn = host, port, subnqn
        self.hostnqn, self.hostid = hostnqn, hostid
        self.hdgst, self.ddgst = hdgst, ddgst
        self.kato_ms = kato_ms
        self.cntlid = -1
        self.info: IdentifyController | None = None
        self.namespaces: dict[int, IdentifyNamespace] = {}
        self._next_queue = itertools.cycle([0])
        self._keep_alive_task: asyncio.Task[None] | None = None
        self._tls: ClientPsk | None = None

    # -- bring-up -----------------------------------------------------------------------------
    @classmethod
    async def connect(cls, host: str, port: int, subnqn: str, *, hostnqn: str | None = None,
                      hostid: uuid_mod.UUID | None = None, nr_io_queues: int = 1,
                      queue_size: int = 128, hdgst: bool = False, ddgst: bool = False,
                      kato_ms: int = 30_000, keep_alive: bool = True,
                      disable_sq_flow_control: bool = True,
                      timeout_s: float = 10.0, auth: HostAuth | None = None,
                      authenticate: bool = True, tls: HostTls | None = None) -> Controller:
        """Connect and bring up a controller. ``auth``: the host's DH-HMAC-CHAP credentials,
        used on every queue whose Connect response asks for authentication;
        ``authenticate=False`` skips it even then (to see the target refuse). ``tls``: open
        every queue inside TLS 1.3 with this host's PSK."""
        hostid = hostid or uuid_mod.uuid4()
        hostnqn = hostnqn or cmd.default_hostnqn(hostid)
        client_psk = tls.for_subsystem(hostnqn, subnqn) if tls is not None else None
        admin = await QueueClient.open(host, port, hdgst=hdgst, ddgst=ddgst, depth=ADMIN_DEPTH,
                                       timeout_s=timeout_s, tls=client_psk)
        ctrl = cls(admin, host=host, port=port, subnqn=subnqn, hostnqn=hostnqn, hostid=hostid,
                   hdgst=hdgst, ddgst=ddgst, kato_ms=kato_ms, auth=auth,
                   authenticate=authenticate)
        ctrl._tls = client_psk
        try:
            await ctrl._bring_up(nr_io_queues, queue_size, disable_sq_flow_control, timeout_s)
        except BaseException:
            await ctrl.close(shutdown=False)
            raise
        if keep_alive and kato_ms:
            ctrl._keep_alive_task = asyncio.get_running_loop().create_task(ctrl._keep_alive())
        return ctrl

    async def _bring_up(self, nr_io_queues: int, queue_size: int, no_sq_fc: bool,
                        timeout_s: float) -> None:
        self.cntlid = await self._connect_queue(self.admin, 0, ADMIN_DEPTH, CNTLID_DYNAMIC,
                                                no_sq_fc=False)
        await self.enable(timeout_s)
        self.info = pull_identify_controller(
            (await self.admin_cmd(cmd.identify(0, IdentifyCns.CONTROLLER), read_len=4096)).payload)
        # IOCCSZ counts 16-byte units of the whole capsule: the 64-byte SQE plus data.
        in_capsule = max(0, self.info.ioccsz * 16 - 64)
        if self.subnqn == DISCOVERY_NQN:
            return  # a discovery controller has no I/O queues and no namespaces
        if nr_io_queues:
            granted = await self.set_number_of_queues(nr_io_queues)
            for qid in range(1, min(nr_io_queues, granted) + 1):
                q = await QueueClient.open(self.host, self.port, hdgst=self.hdgst,
                                           ddgst=self.ddgst, depth=queue_size,
                                           timeout_s=timeout_s, tls=self._tls)
                self.io_queues.append(q)
                await self._connect_queue(q, qid, queue_size, self.cntlid, no_sq_fc=no_sq_fc)
                q.incapsule_limit = in_capsule
            self._next_queue = itertools.cycle(range(len(self.io_queues)))
        await self.refresh_namespaces()

    async def _connect_queue(self, q: QueueClient, qid: int, depth: int, cntlid: int, *,
                             no_sq_fc: bool) -> int:
        data = cmd.connect_data(hostid=self.hostid, cntlid=cntlid, subnqn=self.subnqn,
                                hostnqn=self.hostnqn)
        # The admin queue's in-capsule limit is the transport's minimum (8 KiB on Linux).
        q.incapsule_limit = max(q.incapsule_limit, len(data))
        sqe = cmd.connect(0, qid=qid, sqsize=depth, kato_ms=self.kato_ms if qid == 0 else 0,
                          disable_sq_flow_control=no_sq_fc)
        done = (await q.submit(sqe, data=data)).check(f"Connect (qid {qid})")
        q.qid = qid
        if done.cqe.dw0 & CONNECT_AUTHREQ_ATR:
            if qid == 0:
                self.auth_required = True
            if self.auth is not None and self._authenticate:
                outcome = await authenticate(q, self.auth, subnqn=self.subnqn,
                                             hostnqn=self.hostnqn)
                if qid == 0:
                    self.auth_outcome = outcome
        return done.cqe.dw0 & 0xFFFF

    async def reauthenticate(self, auth: HostAuth | None = None) -> None:
        """Authenticate every queue again (with new credentials if given), as the Linux
        host does when its secret changes."""
        if auth is not None:
            self.auth = auth
        if self.auth is None:
            raise ValueError("no DH-HMAC-CHAP credentials")
        for q in [self.admin, *self.io_queues]:
            outcome = await authenticate(q, self.auth, subnqn=self.subnqn, hostnqn=self.hostnqn)
            if q is self.admin:
                self.auth_outcome = outcome

    async def enable(self, timeout_s: float = 10.0) -> None:
        await self.property_get(Property.CAP, 8)
        await self.property_set(Property.CC, CC_EN | CC_IOSQES_IOCQES)
        await self._wait_csts(lambda csts: bool(csts & CSTS_RDY), "CSTS.RDY", timeout_s)

    async def _wait_csts(self, ready: object, what: str, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            csts = await self.property_get(Property.CSTS)
            if ready(csts):  # type: ignore[operator]
                return
            if loop.time() > deadline:
                raise TimeoutError(f"controller did not report {what} (CSTS {csts:#x})")
            await asyncio.sleep(0.01)

    async def refresh_namespaces(self) -> dict[int, IdentifyNamespace]:
        listing = await self.admin_cmd(cmd.identify(0, IdentifyCns.ACTIVE_NAMESPACE_LIST),
                                       read_len=4096)
        found = {}
        for nsid in pull_namespace_list(listing.payload):
            found[nsid] = await self.identify_namespace(nsid)
        self.namespaces = found
        return found

    # -- admin --------------------------------------------------------------------------------
    async def admin_cmd(self, sqe: Sqe, data: object = None, read_len: int = 0,
                        check: bool = True) -> Completion:
        done = await self.admin.submit(sqe, data=data, read_len=read_len)
        return done.check(f"admin opcode {sqe.opcode:#x}") if check else done

    async def property_get(self, offset: int, size: int = 4) -> int:
        done = await self.admin_cmd(cmd.property_get(0, offset, size))
        return done.cqe.dw0 | (done.cqe.dw1 << 32 if size == 8 else 0)

    async def property_set(self, offset: int, value: int, size: int = 4) -> None:
        await self.admin_cmd(cmd.property_set(0, offset, value, size))

    async def identify_namespace(self, nsid: int) -> IdentifyNamespace:
        done = await self.admin_cmd(cmd.identify(0, IdentifyCns.NAMESPACE, nsid=nsid),
                                    read_len=4096)
        return pull_identify_namespace(done.payload)

    async def ns_descriptors(self, nsid: int) -> dict[int, bytes]:
        done = await self.admin_cmd(cmd.identify(0, IdentifyCns.NS_ID_DESCRIPTORS, nsid=nsid),
                                    read_len=4096)
        return pull_ns_id_descriptors(done.payload)

    async def set_number_of_queues(self, count: int) -> int:
        value = (count - 1) | ((count - 1) << 16)
        done = await self.admin_cmd(cmd.set_features(0, FeatureId.NUMBER_OF_QUEUES, value))
        nsqa, ncqa = (done.cqe.dw0 & 0xFFFF) + 1, (done.cqe.dw0 >> 16) + 1
        return min(nsqa, ncqa)

    async def get_log_page(self, lid: int, nbytes: int, *, offset: int = 0,
                           nsid: int = 0xFFFFFFFF, rae: bool = False,
                           lsp: int = 0) -> memoryview:
        done = await self.admin_cmd(cmd.get_log_page(0, lid, nbytes, offset=offset, nsid=nsid,
                                                     rae=rae, lsp=lsp), read_len=nbytes)
        return done.payload

    async def keep_alive_once(self) -> None:
        await self.admin_cmd(cmd.keep_alive(0))

    async def _keep_alive(self) -> None:
        interval = self.kato_ms / 2000
        while not self.admin.closed:
            await asyncio.sleep(interval)
            try:
                await self.keep_alive_once()
            except (ConnectionError, asyncio.TimeoutError):
                return

    # -- I/O ----------------------------------------------------------------------------------
    def queue(self, index: int | None = None) -> QueueClient:
        if not self.io_queues:
            raise RuntimeError("this controller has no I/O queues")
        return self.io_queues[next(self._next_queue) if index is None else index]

    def block_size(self, nsid: int) -> int:
        return self.namespaces[nsid].block_size

    async def read(self, nsid: int, lba: int, nblocks: int, *, queue: int | None = None,
                   check: bool = True) -> memoryview:
        bs = self.block_size(nsid)
        done = await self.queue(queue).submit(cmd.read(0, nsid, lba, nblocks, bs),
                                              read_len=nblocks * bs)
        if check:
            done.check("Read")
        return done.data if done.data is not None else memoryview(b"")

    async def write(self, nsid: int, lba: int, data: bytes | bytearray | memoryview, *,
                    fua: bool = False, queue: int | None = None) -> None:
        bs = self.block_size(nsid)
        if len(data) % bs:
            raise ValueError(f"write of {len(data)} bytes is not a multiple of {bs}")
        (await self.queue(queue).submit(cmd.write(0, nsid, lba, len(data) // bs, bs, fua),
                                        data=data)).check("Write")

    async def flush(self, nsid: int, *, queue: int | None = None) -> None:
        (await self.queue(queue).submit(cmd.flush(0, nsid))).check("Flush")

    async def write_zeroes(self, nsid: int, lba: int, nblocks: int, *, deallocate: bool = True,
                           queue: int | None = None) -> None:
        (await self.queue(queue).submit(cmd.write_zeroes(0, nsid, lba, nblocks, deallocate))
         ).check("Write Zeroes")

    async def deallocate(self, nsid: int, ranges: Sequence[tuple[int, int]], *,
                         queue: int | None = None) -> None:
        (await self.queue(queue).submit(cmd.dataset_management(0, nsid, len(ranges)),
                                        data=cmd.dsm_ranges(ranges))).check("Deallocate")

    # -- reservations (Base 2.0 §8.19): ``check=False`` returns the completion instead of
    # raising, so a caller can look at a Reservation Conflict -----------------------------------
    async def resv_register(self, nsid: int, *, action: int = RegisterAction.REGISTER,
                            crkey: int = 0, nrkey: int = 0, iekey: bool = False,
                            cptpl: int = 0, check: bool = True) -> Completion:
        done = await self.queue().submit(cmd.resv_register(0, nsid, action, iekey=iekey,
                                                           cptpl=cptpl),
                                         data=push_key_pair(crkey, nrkey))
        return done.check("Reservation Register") if check else done

    async def resv_acquire(self, nsid: int, rtype: int, *, crkey: int, prkey: int = 0,
                           action: int = AcquireAction.ACQUIRE, check: bool = True
                           ) -> Completion:
        done = await self.queue().submit(cmd.resv_acquire(0, nsid, action, rtype),
                                         data=push_key_pair(crkey, prkey))
        return done.check("Reservation Acquire") if check else done

    async def resv_release(self, nsid: int, rtype: int, *, crkey: int,
                           action: int = ReleaseAction.RELEASE, check: bool = True
                           ) -> Completion:
        done = await self.queue().submit(cmd.resv_release(0, nsid, action, rtype),
                                         data=push_key(crkey))
        return done.check("Reservation Release") if check else done

    async def resv_report(self, nsid: int, nbytes: int = 4096, *,
                          extended: bool = True) -> ReservationStatus:
        done = await self.queue().submit(cmd.resv_report(0, nsid, nbytes, extended=extended),
                                         read_len=nbytes)
        return pull_report(done.check("Reservation Report").payload, extended=extended)

    # -- teardown -----------------------------------------------------------------------------
    async def close(self, *, shutdown: bool = True, timeout_s: float = 5.0) -> None:
        """Normal shutdown (CC.SHN, wait for SHST complete), then close every connection."""
        if self._keep_alive_task is not None:
            self._keep_alive_task.cancel()
            self._keep_alive_task = None
        for q in self.io_queues:
            q.close()
        if shutdown and not self.admin.closed:
            try:
                await self.property_set(Property.CC, CC_IOSQES_IOCQES | CC_EN
                                        | (1 << CC_SHN_SHIFT))
                await self._wait_csts(
                    lambda csts: (csts >> CSTS_SHST_SHIFT) & 3 == SHST_COMPLETE,
                    "shutdown complete", timeout_s)
            except (ConnectionError, asyncio.TimeoutError, TimeoutError):
                pass
        self.admin.close()

    async def __aenter__(self) -> Controller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
