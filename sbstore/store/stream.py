"""The export stream format (docs/stream-format.md has the bytes): a sans-I/O encoder and parser.

Theory of operation (the h11 model): nothing here reads a file or a socket. The writer side
is a few functions that turn a header, extents and a trailer into bytes; the reader side is
:class:`StreamParser`, fed bytes in any pieces, handing out :class:`StreamHeader`,
:class:`Extent` and :class:`StreamEnd` events, or raising :class:`BadStream` the moment the
bytes cannot be a valid stream (bad magic, a checksum that does not match, an extent out of
order or out of range, anything after the trailer). ``close()`` at the end of the input raises
:class:`BadStream` unless the trailer arrived and verified: a stream cut short is refused.

Rules of this module:
- Bounded: the parser holds at most one extent (:data:`MAX_EXTENT_BYTES`) plus one record
  header; a larger length in a record is refused before anything is buffered.
- Every record carries a CRC-32 of itself (and of its data); the trailer carries the CRC-32 of
  every byte before it and the number of extents and data bytes, so a lost, duplicated or
  flipped byte anywhere is caught at the latest by the trailer.
- Extents come in increasing, non-overlapping order, on block boundaries, inside the volume:
  an importer can apply them as they come.
"""
from __future__ import annotations

import struct
import uuid as uuid_mod
from collections.abc import Iterator
from dataclasses import dataclass
from zlib import crc32

from .errors import InvalidArgument

MAGIC = b"SBSTREAM"
VERSION = 1
FLAG_INCREMENT = 0x1
FLAGS_KNOWN = FLAG_INCREMENT
NAME_MAX_BYTES = 128
MAX_EXTENT_BYTES = 4 << 20  # the largest extent a parser accepts (writers use 1 MiB)

KIND_DATA = 1
KIND_ZERO = 2
KIND_END = 3

# magic, version, flags, volume size, block size, header length, snapshot uuid, base uuid,
# snapshot created (ns), data bytes announced, extents announced, name length, base name length
_HEAD = struct.Struct("<8sIIQII16s16sQQQHH")
# kind, flags, a (offset | extent count), b (length | data bytes), c (data crc | stream crc)
_REC = struct.Struct("<IIQQI")
RECORD_BYTES = _REC.size + 4
_CRC = struct.Struct("<I")
MAX_HEADER_BYTES = _HEAD.size + 2 * NAME_MAX_BYTES + 4


class BadStream(InvalidArgument):
    """The bytes are not a whole, intact export stream (truncated, corrupted, or not one)."""


@dataclass(frozen=True)
class StreamHeader:
    """What a stream holds: snapshot ``name`` (``uuid``) of ``size_bytes``; an increment
    (``base_uuid`` not None) holds only what differs from snapshot ``base_name``."""

    size_bytes: int
    block_size: int
    uuid: uuid_mod.UUID
    name: str
    created_ns: int
    base_uuid: uuid_mod.UUID | None = None
    base_name: str = ""
    data_bytes: int = 0  # announced: the sum of the data extents' lengths
    extents: int = 0  # announced: data and zero extents

    @property
    def increment(self) -> bool:
        return self.base_uuid is not None


@dataclass(frozen=True)
class Extent:
    """``length`` bytes at ``offset``: ``data`` (bytes), or zeroes when ``data`` is None."""

    offset: int
    length: int
    data: bytes | None = None

    @property
    def zero(self) -> bool:
        return self.data is None


@dataclass(frozen=True)
class StreamEnd:
    extents: int
    data_bytes: int


Event = StreamHeader | Extent | StreamEnd


# --- writing ----------------------------------------------------------------------------------

def encode_header(h: StreamHeader) -> bytes:
    name_b, base_b = h.name.encode(), h.base_name.encode()
    if len(name_b) > NAME_MAX_BYTES or len(base_b) > NAME_MAX_BYTES:
        raise InvalidArgument("a snapshot name in a stream is at most 128 bytes")
    length = _HEAD.size + len(name_b) + len(base_b) + 4
    body = _HEAD.pack(MAGIC, VERSION, FLAG_INCREMENT if h.increment else 0, h.size_bytes,
                      h.block_size, length, h.uuid.bytes,
                      h.base_uuid.bytes if h.base_uuid else bytes(16), h.created_ns,
                      h.data_bytes, h.extents, len(name_b), len(base_b)) + name_b + base_b
    return body + _CRC.pack(crc32(body))


def _record(kind: int, a: int, b: int, c: int) -> bytes:
    body = _REC.pack(kind, 0, a, b, c)
    return body + _CRC.pack(crc32(body))


def encode_extent_head(offset: int, length: int, data_crc: int | None) -> bytes:
    """The record before an extent's data (``data_crc`` None: a zero extent, no data)."""
    if data_crc is None:
        return _record(KIND_ZERO, offset, length, 0)
    return _record(KIND_DATA, offset, length, data_crc)


def encode_end(extents: int, data_bytes: int, stream_crc: int) -> bytes:
    """The trailer; ``stream_crc`` is the CRC-32 of every byte written before it."""
    return _record(KIND_END, extents, data_bytes, stream_crc)


# --- reading ----------------------------------------------------------------------------------

class StreamParser:
    """Bytes in, events out: ``for event in parser.feed(data): ...``; ``close()`` at EOF."""

    def __init__(self, max_extent_bytes: int = MAX_EXTENT_BYTES) -> None:
        self.max_extent_bytes = max_extent_bytes
        self._buf = bytearray()
        self._crc = 0  # CRC-32 of every byte consumed so far (the trailer's check)
        self.header: StreamHeader | None = None
        self._pending: tuple[int, int, int] | None = None  # a data record waiting for its data
        self._next_offset = 0
        self.extents = 0
        self.data_bytes = 0
        self.ended = False
        self.consumed = 0  # bytes of the stream parsed so far

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[Event]:
        """Add ``data``; yield every event it completes. Raises BadStream."""
        if self.ended and len(data):
            raise BadStream("bytes follow the stream's trailer")
        self._buf += data
        while True:
            event = self._next()
            if event is None:
                return
            yield event

    def close(self) -> None:
        """The input ended: refuse a stream without its verified trailer."""
        if not self.ended:
            where = ("before its header was whole" if self.header is None else
                     f"after {self.extents} extents ({self.consumed} bytes)")
            raise BadStream(f"the stream is truncated: it ends {where}, without its trailer")

    def _take(self, n: int) -> bytes:
        piece = bytes(self._buf[:n])
        del self._buf[:n]
        self._crc = crc32(piece, self._crc)
        self.consumed += n
        return piece

    def _next(self) -> Event | None:
        if self.ended:
            if self._buf:
                raise BadStream("bytes follow the stream's trailer")
            return None
        if self.header is None:
            return self._read_header()
        if self._pending is not None:
            offset, length, data_crc = self._pending
            if len(self._buf) < length:
                return None
            data = self._take(length)
            if crc32(data) != data_crc:
                raise BadStream(f"the data of the extent at byte {offset} fails its checksum")
            self._pending = None
            return Extent(offset, length, data)
        if len(self._buf) < RECORD_BYTES:
            return None
        raw = bytes(self._buf[:RECORD_BYTES])
        (crc,) = _CRC.unpack_from(raw, _REC.size)
        if crc32(raw[:_REC.size]) != crc:
            raise BadStream(f"the record at stream byte {self.consumed} fails its checksum")
        kind, flags, a, b, c = _REC.unpack_from(raw)
        if flags:
            raise BadStream(f"the record at stream byte {self.consumed} has unknown flags "
                            f"{flags:#x}")
        if kind == KIND_END:
            return self._read_end(a, b, c)
        if kind not in (KIND_DATA, KIND_ZERO):
            raise BadStream(f"unknown record kind {kind} at stream byte {self.consumed}")
        self._check_extent(a, b, kind)
        self._take(RECORD_BYTES)
        self.extents += 1
        self._next_offset = a + b
        if kind == KIND_ZERO:
            return Extent(a, b, None)
        self.data_bytes += b
        self._pending = (a, b, c)
        return self._next()

    def _check_extent(self, offset: int, length: int, kind: int) -> None:
        h = self.header
        assert h is not None
        what = f"the {'zero' if kind == KIND_ZERO else 'data'} extent at byte {offset}"
        if length <= 0 or offset % h.block_size or length % h.block_size:
            raise BadStream(f"{what} ({length} bytes) is not whole {h.block_size}-byte blocks")
        if offset < self._next_offset:
            raise BadStream(f"{what} overlaps or precedes the extent before it")
        if offset + length > h.size_bytes:
            raise BadStream(f"{what} ({length} bytes) goes past the volume's "
                            f"{h.size_bytes} bytes")
        if kind == KIND_DATA and length > self.max_extent_bytes:
            raise BadStream(f"{what} is {length} bytes, more than the "
                            f"{self.max_extent_bytes} a stream may put in one extent")

    def _read_header(self) -> StreamHeader | None:
        if len(self._buf) < _HEAD.size:
            if self._buf[:len(MAGIC)] != MAGIC[:len(self._buf)]:
                raise BadStream("this is not an sbstore export stream (bad magic)")
            return None
        (magic, version, flags, size, bs, length, snap_b, base_b, created, data_bytes,
         extents, name_len, base_len) = _HEAD.unpack_from(self._buf)
        if magic != MAGIC:
            raise BadStream("this is not an sbstore export stream (bad magic)")
        if version != VERSION:
            raise BadStream(f"stream format version {version} is not supported (this sbstore "
                            f"reads version {VERSION})")
        if (name_len > NAME_MAX_BYTES or base_len > NAME_MAX_BYTES
                or length != _HEAD.size + name_len + base_len + 4):
            raise BadStream("the stream's header has an impossible length")
        if len(self._buf) < length:
            return None
        (crc,) = _CRC.unpack_from(self._buf, length - 4)
        if crc32(bytes(self._buf[:length - 4])) != crc:
            raise BadStream("the stream's header fails its checksum")
        if flags & ~FLAGS_KNOWN:
            raise BadStream(f"the stream's header has unknown flags {flags:#x}")
        if bs not in (512, 4096) or size <= 0 or size % bs:
            raise BadStream(f"the stream's header gives a volume of {size} bytes in {bs}-byte "
                            f"blocks")
        increment = bool(flags & FLAG_INCREMENT)
        if increment == (base_b == bytes(16)):
            raise BadStream("the stream's header says increment but names no base, or the "
                            "reverse")
        raw = self._take(length)
        try:
            name = raw[_HEAD.size:_HEAD.size + name_len].decode()
            base_name = raw[_HEAD.size + name_len:length - 4].decode()
        except UnicodeDecodeError:
            raise BadStream("a name in the stream's header is not UTF-8") from None
        self.header = StreamHeader(
            size_bytes=size, block_size=bs, uuid=uuid_mod.UUID(bytes=snap_b), name=name,
            created_ns=created, base_uuid=uuid_mod.UUID(bytes=base_b) if increment else None,
            base_name=base_name, data_bytes=data_bytes, extents=extents)
        return self.header

    def _read_end(self, extents: int, data_bytes: int, stream_crc: int) -> StreamEnd:
        if stream_crc != self._crc:
            raise BadStream("the stream's checksum does not match its bytes (corrupted, or "
                            "bytes were lost)")
        if extents != self.extents or data_bytes != self.data_bytes:
            raise BadStream(f"the trailer counts {extents} extents and {data_bytes} data bytes, "
                            f"the stream held {self.extents} and {self.data_bytes}")
        h = self.header
        assert h is not None
        if extents != h.extents or data_bytes != h.data_bytes:
            raise BadStream(f"the header announced {h.extents} extents and {h.data_bytes} data "
                            f"bytes, the stream held {extents} and {data_bytes}")
        self._take(RECORD_BYTES)
        self.ended = True
        return StreamEnd(extents, data_bytes)
