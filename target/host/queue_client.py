"""One NVMe queue of the initiator: a TCP connection driven by the sans-I/O ``HostQueue``.

Rules: this module owns the socket and the futures; the PDU work is ``target.tcp``'s. Commands
are pipelined up to the queue depth (command ids are recycled from a free list); each
``submit`` waits, bounded by a timeout, for its own completion. When the connection goes,
every waiting command fails with ``ConnectionError``.
"""
from __future__ import annotations

import asyncio
import functools
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from target.nvme.status import NvmeError, split_status
from target.nvme.structs import Cqe, Sqe, pull_cqe, push_sqe
from target.tcp.queue import (
    Established,
    HostQueue,
    PeerTerminated,
    ProtocolFailed,
    ResponseReceived,
)

if TYPE_CHECKING:
    from target.host.tls import ClientPsk

DEFAULT_TIMEOUT_S = 30.0


class CommandFailed(NvmeError):
    """A command completed with a non-zero status (``sct``/``sc`` are the target's)."""


@dataclass(frozen=True, slots=True)
class Completion:
    cqe: Cqe
    data: memoryview | None

    @property
    def ok(self) -> bool:
        return self.cqe.status == 0

    @property
    def sct(self) -> int:
        return split_status(self.cqe.status)[0]

    @property
    def sc(self) -> int:
        return split_status(self.cqe.status)[1]

    @property
    def dnr(self) -> bool:
        return split_status(self.cqe.status)[2]

    @property
    def payload(self) -> memoryview:
        """The controller-to-host data; a command that asked for data always has it."""
        if self.data is None:
            raise ValueError("this command returned no data")
        return self.data

    def check(self, what: str = "command") -> Completion:
        """Return self, or raise CommandFailed carrying the status."""
        if self.cqe.status:
            sct, sc, dnr = split_status(self.cqe.status)
            raise CommandFailed(f"{what} failed: sct {sct:#x} sc {sc:#04x}{' dnr' if dnr else ''}",
                                sct=sct, sc=sc, dnr=dnr)
        return self


class QueueClient(asyncio.BufferedProtocol):
    """An NVMe/TCP queue seen from the host. Make one with :meth:`open`."""

    def __init__(self, *, hdgst: bool, ddgst: bool, depth: int) -> None:
        self._hq = HostQueue(hdgst=hdgst, ddgst=ddgst)
        self._transport: asyncio.Transport | None = None
        self._established: asyncio.Future[Established] = \
            asyncio.get_running_loop().create_future()
        self._pending: dict[int, asyncio.Future[Completion]] = {}
        self._free_cids = list(range(depth - 1, -1, -1))
        self._slots = asyncio.Semaphore(depth)
        self._closed_exc: Exception | None = None
        self.depth = depth
        self.qid = -1
        self.params: Established | None = None

    @classmethod
    async def open(cls, host: str, port: int, *, hdgst: bool = False, ddgst: bool = False,
                   depth: int = 128, timeout_s: float = 10.0,
                   tls: ClientPsk | None = None) -> QueueClient:
        """Connect over TCP (inside TLS 1.3 with ``tls``'s PSK) and complete the
        ICReq/ICResp exchange."""
        loop = asyncio.get_running_loop()
        factory: Callable[[], QueueClient] = functools.partial(cls, hdgst=hdgst, ddgst=ddgst,
                                                               depth=depth)
        if tls is not None:
            from target.host.tls import (
                TlsQueueClient,  # plain clients never load OpenSSL
            )
            factory = functools.partial(TlsQueueClient, hdgst=hdgst, ddgst=ddgst, depth=depth,
                                        psk=tls)
        _, proto = await asyncio.wait_for(loop.create_connection(factory, host, port), timeout_s)
        try:
            proto.params = await asyncio.wait_for(asyncio.shield(proto._established), timeout_s)
        except BaseException:
            proto.close()
            raise
        return proto

    # -- asyncio.BufferedProtocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._hq.initiate()
        self._flush()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._hq.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._hq.buffer_updated(nbytes)
        self._process_events()

    def _process_events(self) -> None:
        hq = self._hq
        while True:
            event = hq.next_event()
            if event is None:
                break
            if type(event) is ResponseReceived:
                fut = self._pending.pop(event.cid, None)
                if fut is not None and not fut.done():
                    fut.set_result(Completion(pull_cqe(event.cqe), event.data))
            elif type(event) is Established:
                if not self._established.done():
                    self._established.set_result(event)
            elif type(event) in (ProtocolFailed, PeerTerminated):
                self._fail(ConnectionError(f"NVMe/TCP connection terminated: {event}"))
                self._flush()
                self.close()
                return
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection lost: {exc}" if exc else "connection closed"))

    def _fail(self, exc: Exception) -> None:
        if self._closed_exc is None:
            self._closed_exc = exc
        if not self._established.done():
            self._established.set_exception(exc)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()

    def _flush(self) -> None:
        data = self._hq.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.writelines(data)

    # -- commands -----------------------------------------------------------------------------
    @property
    def incapsule_limit(self) -> int:
        return self._hq.incapsule_limit

    @incapsule_limit.setter
    def incapsule_limit(self, nbytes: int) -> None:
        self._hq.incapsule_limit = nbytes

    async def submit(self, sqe: Sqe, data: Any = None, read_len: int = 0,
                     timeout_s: float | None = DEFAULT_TIMEOUT_S) -> Completion:
        """Send one command (``sqe.cid`` is replaced) and wait for its completion."""
        if self._closed_exc is not None:
            raise self._closed_exc
        async with self._slots:
            cid = self._free_cids.pop()
            fut: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
            self._pending[cid] = fut
            try:
                raw = bytearray(push_sqe(sqe))
                raw[2:4] = cid.to_bytes(2, "little")
                self._hq.send_command(bytes(raw), data=data, read_len=read_len)
                self._flush()
                if timeout_s is None:
                    return await fut
                return await asyncio.wait_for(fut, timeout_s)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                # The target may still answer this cid; forget it so the cid can be reused.
                self._hq.abandon(cid)
                raise
            finally:
                self._pending.pop(cid, None)
                self._free_cids.append(cid)

    def send_raw(self, data: bytes) -> None:
        """Put arbitrary bytes on the wire (tests of bad input)."""
        if self._transport is not None:
            self._transport.write(data)

    @property
    def closed(self) -> bool:
        return self._closed_exc is not None

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    async def wait_closed(self, timeout_s: float = 5.0) -> bool:
        """Wait (bounded) for the peer to close the connection; True if it did."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._closed_exc is None and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return self._closed_exc is not None
