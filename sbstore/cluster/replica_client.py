"""One pipelined connection from a primary to one peer, for one volume.

Rules of this module:
- Every request gets a tag and a future; answers complete futures by tag, in any order.
- Frames are sent in call order: the ``start_*`` methods put the frame on the connection before
  they return, so a caller that starts a peer write and then writes locally keeps one order on
  both sides. Frames started in one loop iteration leave in one ``writelines`` (one syscall for
  a queue of 32 writes), at the cost of one loop iteration of latency.
- Failures are exceptions the mirror can act on: :class:`PeerUnavailable` (refused, lost, or no
  answer within ``timeout``: the connection is then dropped and every request on it fails),
  :class:`StaleEpoch` (the peer knows a newer primary: we are deposed) and
  :class:`ReplicaIOError` (the peer answered with an error). Once lost, a client stays lost:
  reconnecting is a new client (the manager makes one to resynchronise the peer).
- Busy-polling (``busy_poll_s``, off by default): each request sent keeps the loop polling for
  that long, so its answer is found by a running loop rather than one woken from sleep.
- Timeouts: one timer per connection, not per request. It looks at the oldest unanswered request
  (dicts keep insertion order) and declares the peer unavailable when that one is older than
  ``timeout``.
"""
from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any, cast

from sbstore.cluster.wire import (
    FLAG_FUA,
    HELLO_PAYLOAD,
    MAX_DATA_BYTES,
    Chunk,
    FrameBatcher,
    Op,
    Request,
    ResponseDecoder,
    Status,
    WireError,
    request_header,
)
from target.busypoll import BusyPoller

U32 = 1 << 32


class ReplicaError(Exception):
    """Base of the client's failures."""


class PeerUnavailable(ReplicaError):
    """The peer cannot be reached, or stopped answering, or the connection broke."""


class StaleEpoch(ReplicaError):
    """The peer knows a higher epoch than ours: another node has become primary."""

    def __init__(self, message: str, *, known_epoch: int) -> None:
        super().__init__(message)
        self.known_epoch = known_epoch


class ReplicaIOError(ReplicaError):
    """The peer answered with an error status (its device failed, a range it lacks, ...)."""

    def __init__(self, message: str, *, status: Status) -> None:
        super().__init__(message)
        self.status = status


class ReplicaClient:
    """A connection to ``address`` bound to one volume (``connect`` sends the HELLO)."""

    def __init__(self, address: tuple[str, int], volume_uuid: uuid.UUID, block_size: int, *,
                 timeout: float = 2.0, busy_poll_s: float = 0.0) -> None:
        self.address = address
        self.volume_uuid = volume_uuid
        self.block_size = block_size
        self.timeout = timeout
        self.busy_poll_s = busy_poll_s
        self.peer_epoch = 0  # the highest epoch the peer said it knows
        self._protocol: _ClientProtocol | None = None
        self._lost: PeerUnavailable | None = None

    @property
    def connected(self) -> bool:
        return self._protocol is not None and self._lost is None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _ClientProtocol(self), *self.address),
                self.timeout)
        except (TimeoutError, OSError) as e:
            raise PeerUnavailable(f"cannot connect to {self.address}: {e!r}") from e
        self._protocol = protocol
        hello = HELLO_PAYLOAD.pack(self.volume_uuid.bytes, self.block_size)
        try:
            await protocol.submit(Op.HELLO, 0, 0, 0, 0, hello)
        except ReplicaError:
            self.close()
            raise

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.fail_all(PeerUnavailable("client closed"))
            self._protocol.close()
        if self._lost is None:
            self._lost = PeerUnavailable("client closed")

    # --- requests: start_* send now and return the future of the answer ---------------------
    def start_write(self, epoch: int, lba: int, data: bytes | bytearray | memoryview,
                    fua: bool = False) -> asyncio.Future[Any]:
        bs = self.block_size
        nblocks = len(data) // bs
        if nblocks * bs != len(data) or nblocks == 0:
            raise ValueError(f"write of {len(data)} bytes is not whole {bs}-byte blocks")
        flags = FLAG_FUA if fua else 0
        if len(data) <= MAX_DATA_BYTES:
            return self._submit(Op.WRITE, epoch, lba, nblocks, flags, data)
        # Longer than one frame: several frames, one future for all of them.
        per = MAX_DATA_BYTES // bs
        view = memoryview(data)
        parts = [self._submit(Op.WRITE, epoch, lba + i, min(per, nblocks - i), flags,
                              view[i * bs:(i + min(per, nblocks - i)) * bs])
                 for i in range(0, nblocks, per)]
        return asyncio.gather(*parts)

    def start_write_zeroes(self, epoch: int, lba: int, nblocks: int) -> asyncio.Future[Any]:
        return self._submit(Op.WRITE_ZEROES, epoch, lba, nblocks)

    def start_deallocate(self, epoch: int, lba: int, nblocks: int) -> asyncio.Future[Any]:
        return self._submit(Op.DEALLOCATE, epoch, lba, nblocks)

    def start_flush(self, epoch: int) -> asyncio.Future[Any]:
        return self._submit(Op.FLUSH, epoch)

    # --- the same, awaited -----------------------------------------------------------------
    async def write(self, epoch: int, lba: int, data: bytes | bytearray | memoryview,
                    fua: bool = False) -> None:
        await self.start_write(epoch, lba, data, fua)

    async def write_zeroes(self, epoch: int, lba: int, nblocks: int) -> None:
        await self._submit(Op.WRITE_ZEROES, epoch, lba, nblocks)

    async def deallocate(self, epoch: int, lba: int, nblocks: int) -> None:
        await self._submit(Op.DEALLOCATE, epoch, lba, nblocks)

    async def flush(self, epoch: int) -> None:
        await self._submit(Op.FLUSH, epoch)

    async def ping(self, epoch: int) -> None:
        await self._submit(Op.PING, epoch)

    def _submit(self, op: Op, epoch: int, lba: int = 0, nblocks: int = 0, flags: int = 0,
                data: bytes | bytearray | memoryview = b"") -> asyncio.Future[Any]:
        if self._lost is not None:
            raise self._lost
        if self._protocol is None:
            raise PeerUnavailable(f"not connected to {self.address}")
        # The frame keeps a reference to the caller's buffer until it is sent; the mirror does
        # not reuse write buffers, and the target's are not recycled before the write completes.
        return self._protocol.submit(op, epoch, lba, nblocks, flags, data)

    def _on_lost(self, error: PeerUnavailable) -> None:
        if self._lost is None:
            self._lost = error


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, client: ReplicaClient) -> None:
        self._client = client
        self._decoder = ResponseDecoder()
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, tuple[asyncio.Future[Any], float, Op]] = {}
        self._next_tag = 0
        self._loop = asyncio.get_running_loop()
        self._out = FrameBatcher(self._write_lines, self._loop.call_soon)
        self._timer: asyncio.TimerHandle | None = None
        self._poller = BusyPoller(self._loop, client.busy_poll_s) if client.busy_poll_s > 0 \
            else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail_all(PeerUnavailable(f"connection to {self._client.address} lost: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        try:
            responses = self._decoder.feed(data)
        except WireError as e:
            self.fail_all(PeerUnavailable(f"garbage from {self._client.address}: {e}"))
            self.close()
            return
        client = self._client
        for resp in responses:
            client.peer_epoch = max(client.peer_epoch, resp.epoch)
            entry = self._pending.pop(resp.tag, None)
            if entry is None:
                continue  # answer to a request already failed (or a confused peer)
            fut, _, op = entry
            if fut.done():
                continue
            if resp.status == Status.OK:
                fut.set_result(None)
            elif resp.status == Status.STALE_EPOCH:
                fut.set_exception(StaleEpoch(f"peer {client.address} knows epoch {resp.epoch}",
                                             known_epoch=resp.epoch))
            else:
                fut.set_exception(ReplicaIOError(
                    f"peer {client.address}: {op.name} failed with {resp.status.name}",
                    status=resp.status))

    # --- sending -----------------------------------------------------------------------------
    def submit(self, op: Op, epoch: int, lba: int, nblocks: int, flags: int,
               data: bytes | bytearray | memoryview) -> asyncio.Future[Any]:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise PeerUnavailable(f"connection to {self._client.address} closed")
        tag = self._new_tag()
        header = request_header(Request(op, tag, epoch, lba, nblocks, flags, data))
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._pending[tag] = (fut, time.monotonic(), op)
        if data:
            self._out.send(header, data)
        else:
            self._out.send(header)
        if self._timer is None:
            self._arm_timer()
        if self._poller is not None:
            self._poller.kick()
        return fut

    def _new_tag(self) -> int:
        # Bounded: at most len(pending) + 1 candidates are tried.
        for _ in range(len(self._pending) + 1):
            tag = self._next_tag
            self._next_tag = (tag + 1) % U32
            if tag not in self._pending:
                return tag
        raise AssertionError("unreachable: more pending requests than tags")

    def _write_lines(self, parts: Sequence[Chunk]) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.writelines(parts)

    # --- timeouts ----------------------------------------------------------------------------
    def _arm_timer(self) -> None:
        self._timer = self._loop.call_later(self._client.timeout / 4, self._check_timeout)

    def _check_timeout(self) -> None:
        self._timer = None
        if not self._pending:
            return
        _, sent_at, op = next(iter(self._pending.values()))
        if time.monotonic() - sent_at > self._client.timeout:
            self.fail_all(PeerUnavailable(
                f"peer {self._client.address} did not answer a {op.name} "
                f"within {self._client.timeout} s"))
            self.close()
            return
        self._arm_timer()

    def fail_all(self, error: PeerUnavailable) -> None:
        self._client._on_lost(error)
        pending, self._pending = self._pending, {}
        for fut, _, _ in pending.values():
            if not fut.done():
                fut.set_exception(error)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        if self._poller is not None:
            self._poller.close()
        if self._transport is not None:
            self._transport.abort()
