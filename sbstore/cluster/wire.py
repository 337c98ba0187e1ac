"""The replication stream's frames (docs/cluster.md, "Replication stream"), sans-I/O.

Rules of this module:
- Bytes in, frames out; frames in, bytes out. No sockets, no asyncio, no clock (h11's model):
  the server and client around it are thin loops, and the tests feed byte strings.
- A decoder never trusts a length it has not checked: a WRITE's payload is ``nblocks *
  block_size`` with the block size bound by the connection's HELLO, and at most
  :data:`MAX_DATA_BYTES`; anything else is a :class:`WireError` before a byte of payload is
  buffered, so a peer cannot make us allocate more than one frame's worth.
- The request decoder knows the one piece of connection state framing needs: HELLO comes first
  and binds the block size; every other frame before it (or a second HELLO) is malformed.
- After a :class:`WireError` a decoder is dead: the connection is closed, never resynchronised
  (there is no way to find the next frame boundary in a corrupt stream).

Layouts, all little-endian:
  request  (32 bytes): magic b"SBRQ", op u8, flags u8, reserved u16, tag u32, epoch u64,
                       lba u64, nblocks u32; then nblocks * block_size bytes for WRITE, or the
                       20-byte HELLO payload (volume uuid 16 bytes, block size u32).
  response (24 bytes): magic b"SBRS", tag u32, status u16, reserved u16, epoch u64,
                       reserved u32.
"""
from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import NamedTuple

REQUEST_MAGIC = b"SBRQ"
RESPONSE_MAGIC = b"SBRS"
REQUEST_HEADER = struct.Struct("<4sBBHIQQI")
RESPONSE_FRAME = struct.Struct("<4sIHHQI")
HELLO_PAYLOAD = struct.Struct("<16sI")
assert REQUEST_HEADER.size == 32 and RESPONSE_FRAME.size == 24 and HELLO_PAYLOAD.size == 20

# The largest WRITE payload one frame may carry; a client splits longer writes. 1 MiB is well
# above the target's MDTS and bounds what a (possibly hostile) peer makes us buffer.
MAX_DATA_BYTES = 1 << 20
BLOCK_SIZES = (512, 4096)
FLAG_FUA = 0x01
_KNOWN_FLAGS = FLAG_FUA
U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF


class Op(IntEnum):
    HELLO = 1
    WRITE = 2
    WRITE_ZEROES = 3
    DEALLOCATE = 4
    FLUSH = 5
    PING = 6


class Status(IntEnum):
    OK = 0
    STALE_EPOCH = 1
    NO_VOLUME = 2
    IO_ERROR = 3
    BAD_REQUEST = 4
    OUT_OF_RANGE = 5


# Code -> member by dict lookup: calling the Enum class costs about a microsecond per frame.
_OPS: dict[int, Op] = {int(op): op for op in Op}
_STATUSES: dict[int, Status] = {int(s): s for s in Status}


class WireError(Exception):
    """A malformed frame. ``tag`` is the frame's tag when its header could be read (the server
    then answers BAD_REQUEST with it before closing), else None. ``frames`` are the good
    frames that came before the bad one in the same :meth:`RequestDecoder.feed`: they were
    sent in good faith and are still served."""

    def __init__(self, message: str, *, tag: int | None = None) -> None:
        super().__init__(message)
        self.tag = tag
        self.frames: list[Request] = []


class Request(NamedTuple):
    """One request frame. ``data`` is the WRITE payload or the HELLO payload, else empty.
    (A NamedTuple rather than a frozen dataclass: built once per frame, it costs a third.)"""

    op: Op
    tag: int
    epoch: int
    lba: int = 0
    nblocks: int = 0
    flags: int = 0
    data: bytes | bytearray | memoryview = b""

    @property
    def fua(self) -> bool:
        return bool(self.flags & FLAG_FUA)


class Response(NamedTuple):
    tag: int
    status: Status
    epoch: int


def hello_request(tag: int, volume_uuid: uuid.UUID, block_size: int, epoch: int = 0) -> Request:
    """The first frame of a connection: it binds the connection to one volume."""
    return Request(Op.HELLO, tag, epoch, data=HELLO_PAYLOAD.pack(volume_uuid.bytes, block_size))


def hello_fields(request: Request) -> tuple[uuid.UUID, int]:
    """(volume uuid, block size) of a HELLO request."""
    raw_uuid, block_size = HELLO_PAYLOAD.unpack(request.data)
    return uuid.UUID(bytes=raw_uuid), block_size


def request_header(request: Request) -> bytes:
    """The 32-byte header alone, so that a sender can ``writelines([header, data])`` without
    joining the payload into a new buffer. Raises ValueError on a frame we must not send."""
    op, data = request.op, request.data
    if op == Op.WRITE:
        if request.nblocks < 1 or not data or len(data) > MAX_DATA_BYTES \
                or len(data) % request.nblocks:
            raise ValueError(f"WRITE of {len(data)} bytes in {request.nblocks} blocks")
    elif op == Op.HELLO:
        if len(data) != HELLO_PAYLOAD.size:
            raise ValueError("HELLO payload must be 20 bytes")
    elif data:
        raise ValueError(f"{op.name} carries no data")
    if request.flags & ~_KNOWN_FLAGS & 0xFF:
        raise ValueError(f"unknown flags {request.flags:#x}")
    return REQUEST_HEADER.pack(REQUEST_MAGIC, op, request.flags, 0, request.tag, request.epoch,
                               request.lba, request.nblocks)


def encode_request(request: Request) -> bytes:
    return request_header(request) + request.data


def encode_response(response: Response) -> bytes:
    return RESPONSE_FRAME.pack(RESPONSE_MAGIC, response.tag, response.status, 0, response.epoch, 0)


class RequestDecoder:
    """Incremental request parser for one connection (the replica's side)."""

    def __init__(self, *, max_data_bytes: int = MAX_DATA_BYTES) -> None:
        self._buf = bytearray()
        self._max_data = max_data_bytes
        self.block_size: int | None = None  # bound by HELLO
        self._broken: WireError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Request]:
        """Every complete request in the bytes received so far; partial frames stay buffered.
        Raises WireError on a malformed frame (and on every call after that)."""
        if self._broken is not None:
            raise self._broken
        # Whole frames are parsed straight from ``data`` when nothing is buffered (the common
        # case): only a partial tail is copied into the buffer.
        src: bytes | bytearray | memoryview
        if self._buf:
            self._buf += data
            src = self._buf
        else:
            src = data
        out: list[Request] = []
        pos = 0
        try:
            # Each pass consumes one whole frame or stops: the loop is bounded by len(src) / 32.
            while len(src) - pos >= REQUEST_HEADER.size:
                request, size = self._parse_one(src, pos)
                if request is None:
                    break
                out.append(request)
                pos += size
        except WireError as e:
            self._broken = WireError(str(e), tag=e.tag)  # what later calls raise: no frames
            self._buf = bytearray()
            e.frames = out
            raise
        if src is self._buf:
            del self._buf[:pos]
        elif pos < len(src):
            self._buf += src[pos:]
        return out

    def _parse_one(self, buf: bytes | bytearray | memoryview,
                   pos: int) -> tuple[Request | None, int]:
        magic, op, flags, reserved, tag, epoch, lba, nblocks = REQUEST_HEADER.unpack_from(buf, pos)
        if magic != REQUEST_MAGIC:
            raise WireError(f"bad request magic {bytes(magic)!r}")
        if op not in _OPS:
            raise WireError(f"unknown op {op}", tag=tag)
        if reserved or flags & ~_KNOWN_FLAGS:
            raise WireError(f"reserved bits set (flags {flags:#x}, reserved {reserved:#x})", tag=tag)
        if op == Op.HELLO:
            if self.block_size is not None:
                raise WireError("second HELLO on a bound connection", tag=tag)
            payload_len = HELLO_PAYLOAD.size
        else:
            if self.block_size is None:
                raise WireError(f"op {Op(op).name} before HELLO", tag=tag)
            if op == Op.WRITE:
                if nblocks < 1 or nblocks * self.block_size > self._max_data:
                    raise WireError(f"WRITE of {nblocks} blocks of {self.block_size} bytes "
                                    f"(at most {self._max_data} bytes per frame)", tag=tag)
                payload_len = nblocks * self.block_size
            else:
                payload_len = 0
        start = pos + REQUEST_HEADER.size
        if len(buf) - start < payload_len:
            return None, 0
        # One copy, whatever ``buf`` is (the temporary view is released at once, so the buffer
        # can still be resized).
        payload = bytes(memoryview(buf)[start:start + payload_len]) if payload_len else b""
        if op == Op.HELLO:
            block_size = HELLO_PAYLOAD.unpack(payload)[1]
            if block_size not in BLOCK_SIZES:
                raise WireError(f"HELLO with block size {block_size}", tag=tag)
            self.block_size = block_size
        return Request(_OPS[op], tag, epoch, lba, nblocks, flags, payload), start + payload_len - pos


class ResponseDecoder:
    """Incremental response parser (the primary's side)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._broken: WireError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Response]:
        if self._broken is not None:
            raise self._broken
        buf = self._buf
        buf += data
        out: list[Response] = []
        pos = 0
        size = RESPONSE_FRAME.size
        while len(buf) - pos >= size:  # bounded: each pass consumes 24 bytes or raises
            magic, tag, status, reserved, epoch, reserved2 = RESPONSE_FRAME.unpack_from(buf, pos)
            if magic != RESPONSE_MAGIC or status not in _STATUSES or reserved or reserved2:
                self._broken = WireError(f"bad response frame {bytes(buf[pos:pos + size]).hex()}")
                self._buf = bytearray()
                raise self._broken
            out.append(Response(tag, _STATUSES[status], epoch))
            pos += size
        if pos:
            del buf[:pos]
        return out


Chunk = bytes | bytearray | memoryview


class FrameBatcher:
    """Coalesces outgoing frames per event-loop iteration without delaying a lone one.

    The first frame of a burst is written at once (a queue-depth-1 stream pays no extra
    latency); frames sent after it in the same iteration wait for ``call_soon``'s callback and
    leave together in one ``write_lines`` (one syscall for a queue of 32). The I/O is injected:
    this class imports neither asyncio nor sockets.
    """

    def __init__(self, write_lines: Callable[[Sequence[Chunk]], None],
                 call_soon: Callable[[Callable[[], None]], object]) -> None:
        self._write_lines = write_lines
        self._call_soon = call_soon
        self._burst_open = False
        self._queued: list[Chunk] = []

    def send(self, *parts: Chunk) -> None:
        if self._burst_open:
            self._queued.extend(parts)
            return
        self._write_lines(parts)
        self._burst_open = True
        self._call_soon(self._end_burst)

    def flush(self) -> None:
        """Write what is queued now (before closing a connection)."""
        if self._queued:
            queued, self._queued = self._queued, []
            self._write_lines(queued)

    def _end_burst(self) -> None:
        self._burst_open = False
        self.flush()
