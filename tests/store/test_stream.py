"""The stream codec without a pool: round trips in any split, and fuzzing of the parser (every
input either parses to what was written or is refused with BadStream, never anything else)."""
from __future__ import annotations

import uuid
from zlib import crc32

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sbstore.store.stream import (
    BadStream,
    Extent,
    StreamEnd,
    StreamHeader,
    StreamParser,
    encode_end,
    encode_extent_head,
    encode_header,
)

BS = 512


def build(extents: list[tuple[int, int, bytes | None]], size: int = 64 * BS,
          base: bool = False) -> bytes:
    data_bytes = sum(n for _, n, d in extents if d is not None)
    h = StreamHeader(size_bytes=size, block_size=BS, uuid=uuid.UUID(int=1), name="snap-1",
                     created_ns=123, base_uuid=uuid.UUID(int=2) if base else None,
                     base_name="snap-0" if base else "", data_bytes=data_bytes,
                     extents=len(extents))
    out = bytearray(encode_header(h))
    for off, n, d in extents:
        out += encode_extent_head(off, n, None if d is None else crc32(d))
        if d is not None:
            out += d
    out += encode_end(len(extents), data_bytes, crc32(bytes(out)))
    return bytes(out)


def parse(data: bytes, step: int) -> list[object]:
    p = StreamParser()
    events: list[object] = []
    for i in range(0, len(data), step):
        events.extend(p.feed(data[i:i + step]))
    p.close()
    return events


@st.composite
def extent_lists(draw: st.DrawFn) -> list[tuple[int, int, bytes | None]]:
    out = []
    pos = 0
    for _ in range(draw(st.integers(0, 5))):
        pos += draw(st.integers(0, 4)) * BS
        n = draw(st.integers(1, 4)) * BS
        if pos + n > 64 * BS:
            break
        zero = draw(st.booleans())
        out.append((pos, n, None if zero else draw(st.binary(min_size=n, max_size=n))))
        pos += n
    return out


@given(extent_lists(), st.integers(1, 600), st.booleans())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip_in_any_split(extents: list[tuple[int, int, bytes | None]], step: int,
                                 base: bool) -> None:
    events = parse(build(extents, base=base), step)
    header = events[0]
    assert isinstance(header, StreamHeader) and header.name == "snap-1"
    assert header.increment is base
    assert events[1:-1] == [Extent(o, n, d) for o, n, d in extents]
    assert events[-1] == StreamEnd(len(extents), sum(n for _, n, d in extents if d))


STREAM = build([(0, BS, b"a" * BS), (4 * BS, 2 * BS, None), (8 * BS, BS, b"b" * BS)])


@given(st.integers(0, len(STREAM) - 1), st.integers(1, 255))
@settings(max_examples=300)
def test_any_flipped_byte_is_refused(pos: int, mask: int) -> None:
    bad = STREAM[:pos] + bytes([STREAM[pos] ^ mask]) + STREAM[pos + 1:]
    with pytest.raises(BadStream):
        parse(bad, 97)


@given(st.integers(0, len(STREAM) - 1))
def test_any_truncation_is_refused(n: int) -> None:
    with pytest.raises(BadStream, match="truncated|magic"):
        parse(STREAM[:n], 13)


@given(st.binary(max_size=400), st.integers(1, 64))
@settings(max_examples=300)
def test_garbage_is_refused_or_parsed_never_crashes(data: bytes, step: int) -> None:
    try:
        parse(data, step)
    except BadStream:
        pass


def test_extents_must_be_ordered_aligned_and_inside() -> None:
    for extents in ([(4 * BS, BS, None), (0, BS, None)],  # out of order
                    [(0, 2 * BS, None), (BS, BS, None)],  # overlapping
                    [(100, BS, None)],  # not on a block
                    [(63 * BS, 2 * BS, None)]):  # past the end
        with pytest.raises(BadStream):
            parse(build(extents), 1000)


def test_bytes_after_the_trailer_are_refused() -> None:
    with pytest.raises(BadStream, match="follow"):
        parse(STREAM + b"x", 1000)
