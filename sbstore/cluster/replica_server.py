"""The peer-facing listener: a primary's replication stream applied to this node's replicas.

Rules of this module:
- One TCP connection carries one volume (its HELLO says which). Frames are pipelined: each one
  is applied as soon as it arrives and answered by its tag when its I/O completes, so answers
  may come back out of order. Each frame's I/O is started the moment the frame is parsed, run
  inline until it first waits (``target.eager``: no Task, no extra loop iteration), so frames
  start in arrival order, which keeps two overlapping writes of the primary in the primary's
  order on a device that applies a write at its first step (RamDevice, page-cache files).
- Fencing (docs/cluster.md, "Replica side"): per volume, the highest epoch known, from frames
  and from :meth:`ReplicaServer.set_epoch` (the manager, watching etcd). A frame with a lower
  epoch is refused STALE_EPOCH and touches nothing; a higher one raises the known epoch. Every
  answer carries the known epoch.
- Bad input: a malformed frame is answered BAD_REQUEST (when its tag could be read) and that
  connection alone is closed; a device error is answered IO_ERROR / OUT_OF_RANGE and the
  connection goes on.
- Busy-polling (``busy_poll_s``, off by default; :mod:`target.busypoll`): every receive keeps
  the loop polling for that long, so the next frame of a queue-depth-1 stream does not have to
  wake a sleeping loop on another CPU (in a VM, most of a loopback round trip). It burns the
  CPU while the primary keeps writing.
- Bounded: at most :data:`MAX_IN_FLIGHT` frames per connection are being applied; beyond that
  the frames already received wait in order and the connection stops being read (TCP
  back-pressure on the primary). The record of recent
  writes (for takeover dirty marking) is a bounded deque per volume; when it overflows inside
  the window asked for, :meth:`ReplicaServer.recent_writes` answers the whole volume, which is
  always safe (it only costs a larger resync).
"""
from __future__ import annotations

import asyncio
import collections
import functools
import logging
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from sbstore.cluster.wire import (
    Chunk,
    FrameBatcher,
    Op,
    Request,
    RequestDecoder,
    Response,
    Status,
    WireError,
    encode_response,
    hello_fields,
)
from target.blockdev import BlockDevice, OutOfRangeError, as_blockdev_error
from target.busypoll import BusyPoller
from target.eager import Driver, run_eagerly

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 256
RECENT_WRITES_MAX = 65536
RECENT_WINDOW_S = 10.0


@dataclass
class ReplicaServerStats:
    frames: int = 0
    bytes: int = 0  # WRITE payload bytes applied
    stale_refusals: int = 0
    bad_requests: int = 0
    io_errors: int = 0
    connections: int = 0


class _RecentWrites:
    """What a volume was sent lately: ``(monotonic time, lba, nblocks)``, oldest first."""

    def __init__(self, maxlen: int) -> None:
        self.entries: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=maxlen)
        self.lost_after = float("-inf")  # the newest time an entry was pushed out of the deque

    def add(self, now: float, lba: int, nblocks: int) -> None:
        entries = self.entries
        if len(entries) == entries.maxlen:
            self.lost_after = entries[0][0]
        entries.append((now, lba, nblocks))


class ReplicaServer:
    """Serves replication streams for the volumes ``resolve`` knows (by uuid)."""

    def __init__(self, resolve: Callable[[uuid.UUID], BlockDevice | None], *, node: str,
                 recent_writes_max: int = RECENT_WRITES_MAX, busy_poll_s: float = 0.0) -> None:
        self._resolve = resolve
        self.node = node
        self._epochs: dict[uuid.UUID, int] = {}
        self._recent: dict[uuid.UUID, _RecentWrites] = {}
        self._recent_max = recent_writes_max
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_ReplicaConnection] = set()
        self._busy_poll_s = busy_poll_s
        self.poller: BusyPoller | None = None
        self.stats = ReplicaServerStats()

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; returns the bound address (``port=0`` picks a free port)."""
        loop = asyncio.get_running_loop()
        if self._busy_poll_s > 0 and self.poller is None:
            self.poller = BusyPoller(loop, self._busy_poll_s)
        self._server = await loop.create_server(lambda: _ReplicaConnection(self), host, port,
                                                reuse_address=True)
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self.poller is not None:
            self.poller.close()

    # --- epochs ------------------------------------------------------------------------------
    def set_epoch(self, volume_uuid: uuid.UUID, epoch: int) -> None:
        """The current primary's epoch for a volume (from etcd); the known epoch never falls."""
        if epoch > self._epochs.get(volume_uuid, 0):
            self._epochs[volume_uuid] = epoch

    def known_epoch(self, volume_uuid: uuid.UUID) -> int:
        return self._epochs.get(volume_uuid, 0)

    # --- takeover ----------------------------------------------------------------------------
    def recent_writes(self, volume_uuid: uuid.UUID,
                      seconds: float = RECENT_WINDOW_S) -> list[tuple[int, int]]:
        """``(lba, nblocks)`` of every write, write-zeroes and deallocate received for the volume
        in the last ``seconds``: what the old primary may hold that this replica's new peers
        lack. The whole volume if the bounded record lost an entry inside that window."""
        recent = self._recent.get(volume_uuid)
        if recent is None:
            return []
        since = time.monotonic() - seconds
        if recent.lost_after >= since:
            device = self._resolve(volume_uuid)
            return [(0, device.num_blocks)] if device is not None else []
        out = [(lba, n) for t, lba, n in reversed(recent.entries) if t >= since]
        out.reverse()
        return out

    # --- used by connections -----------------------------------------------------------------
    def _check_epoch(self, volume_uuid: uuid.UUID, epoch: int) -> int | None:
        """None if a frame with ``epoch`` may be applied, else the (higher) known epoch."""
        known = self._epochs.get(volume_uuid, 0)
        if epoch < known:
            self.stats.stale_refusals += 1
            return known
        if epoch > known:
            self._epochs[volume_uuid] = epoch
        return None

    def _note_write(self, volume_uuid: uuid.UUID, lba: int, nblocks: int) -> None:
        recent = self._recent.get(volume_uuid)
        if recent is None:
            recent = self._recent[volume_uuid] = _RecentWrites(self._recent_max)
        recent.add(time.monotonic(), lba, nblocks)


class _ReplicaConnection(asyncio.Protocol):
    """One primary's stream for one volume."""

    def __init__(self, server: ReplicaServer) -> None:
        self._server = server
        self._decoder = RequestDecoder()
        self._transport: asyncio.Transport | None = None
        self._volume: uuid.UUID | None = None
        self._device: BlockDevice | None = None
        self._in_flight = 0
        self._held: collections.deque[Request] = collections.deque()  # parsed, beyond the cap
        self._draining = False
        self._waiting: set[Driver] = set()  # frames whose I/O is waiting on the device
        self._out = FrameBatcher(self._write_lines, asyncio.get_running_loop().call_soon)
        self._paused = False
        self._closing = False

    # --- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server._connections.add(self)
        self._server.stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._server._connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._server.poller is not None:
            self._server.poller.kick()
        try:
            requests = self._decoder.feed(data)
        except WireError as e:
            for request in e.frames:
                self._dispatch(request)
            self._server.stats.bad_requests += 1
            log.warning("replication stream from %s: %s; closing it", self._peer(), e)
            if e.tag is not None:
                self._send(Response(e.tag, Status.BAD_REQUEST, self._known()))
            self._close_after_send()
            return
        for request in requests:
            if self._held or self._in_flight >= MAX_IN_FLIGHT:
                self._held.append(request)
            else:
                self._dispatch(request)
        if self._held and not self._paused and self._transport is not None:
            # Frames already received wait here (at most one read's worth); the next ones
            # wait in TCP.
            self._paused = True
            self._transport.pause_reading()

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    # --- frames --------------------------------------------------------------------------
    def _dispatch(self, request: Request) -> None:
        server = self._server
        server.stats.frames += 1
        if request.op == Op.HELLO:
            self._hello(request)
            return
        volume = self._volume
        assert volume is not None  # the decoder refuses frames before HELLO
        stale = server._check_epoch(volume, request.epoch)
        if stale is not None:
            self._send(Response(request.tag, Status.STALE_EPOCH, stale))
            return
        if request.op == Op.PING:
            self._send(Response(request.tag, Status.OK, self._known()))
            return
        if request.op in (Op.WRITE, Op.WRITE_ZEROES, Op.DEALLOCATE):
            server._note_write(volume, request.lba, request.nblocks)
        self._in_flight += 1
        run_eagerly(self._apply(request), functools.partial(self._applied, request), self._waiting)

    def _hello(self, request: Request) -> None:
        volume, block_size = hello_fields(request)
        device = self._server._resolve(volume)
        if device is None:
            self._send(Response(request.tag, Status.NO_VOLUME, 0))
            self._close_after_send()
            return
        if device.block_size != block_size:
            log.warning("replication stream from %s: block size %d, volume %s has %d",
                        self._peer(), block_size, volume, device.block_size)
            self._server.stats.bad_requests += 1
            self._send(Response(request.tag, Status.BAD_REQUEST, self._server.known_epoch(volume)))
            self._close_after_send()
            return
        self._volume, self._device = volume, device
        # HELLO's epoch is not checked: connecting writes nothing, and the answer tells the
        # primary the epoch this replica knows.
        self._send(Response(request.tag, Status.OK, self._known()))

    async def _apply(self, request: Request) -> Status:
        device = self._device
        assert device is not None and self._volume is not None
        status = Status.OK
        try:
            if request.lba + request.nblocks > device.num_blocks:
                raise OutOfRangeError(f"blocks {request.lba}+{request.nblocks} beyond "
                                      f"{device.num_blocks}")
            op = request.op
            if op == Op.WRITE:
                await device.write(request.lba, request.data, request.fua)
                self._server.stats.bytes += len(request.data)
            elif op == Op.WRITE_ZEROES:
                await device.write_zeroes(request.lba, request.nblocks)
            elif op == Op.DEALLOCATE:
                await device.deallocate([(request.lba, request.nblocks)])
            else:  # FLUSH
                await device.flush()
        except Exception as e:  # every device failure becomes a status; the stream goes on
            err = as_blockdev_error(e)
            if isinstance(err, OutOfRangeError):
                status = Status.OUT_OF_RANGE
            else:
                status = Status.IO_ERROR
                if err is None:
                    log.exception("replica volume %s: %s failed", self._volume, request.op.name)
            self._server.stats.io_errors += 1
        return status

    def _applied(self, request: Request, status: Status | None, exc: BaseException | None) -> None:
        self._in_flight -= 1
        if exc is not None:  # _apply turns device errors into statuses: this is a bug
            log.error("replica volume %s: %s failed", self._volume, request.op.name, exc_info=exc)
            status = Status.IO_ERROR
        assert status is not None
        self._send(Response(request.tag, status, self._known()))
        held = self._held
        if self._draining:  # a frame of the loop below completed at once: that loop goes on
            return
        self._draining = True
        try:
            while held and self._in_flight < MAX_IN_FLIGHT and not self._closing:  # ≤ len(held)
                self._dispatch(held.popleft())
        finally:
            self._draining = False
        if self._paused and not held and self._in_flight < MAX_IN_FLIGHT // 2 \
                and not self._closing and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    # --- output: answers of one loop iteration leave in one writelines ----------------------
    def _send(self, response: Response) -> None:
        self._out.send(encode_response(response))

    def _write_lines(self, parts: Sequence[Chunk]) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.writelines(parts)

    def _close_after_send(self) -> None:
        self._closing = True
        self._out.flush()
        if self._transport is not None:
            self._transport.close()  # sends what is buffered, then closes
        # Frames already started finish on the device (their answers are dropped): stopping a
        # write half way would gain nothing, and the primary counts it as not received anyway.

    def _known(self) -> int:
        return self._server.known_epoch(self._volume) if self._volume is not None else 0

    def _peer(self) -> object:
        return self._transport.get_extra_info("peername") if self._transport else None
