"""The replication frames: round trips, byte-at-a-time feeding, and fuzzing (arbitrary bytes give
frames or WireError, never another exception, never a hang)."""
from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sbstore.cluster.wire import (
    FLAG_FUA,
    MAX_DATA_BYTES,
    REQUEST_HEADER,
    Op,
    Request,
    RequestDecoder,
    Response,
    ResponseDecoder,
    Status,
    WireError,
    encode_request,
    encode_response,
    hello_fields,
    hello_request,
)

VOL = uuid.UUID("12345678-1234-5678-1234-567812345678")


def bound(block_size: int = 512) -> tuple[RequestDecoder, Request]:
    dec = RequestDecoder()
    hello = hello_request(7, VOL, block_size)
    assert dec.feed(encode_request(hello)) == [hello]
    return dec, hello


def test_hello_binds_block_size_and_uuid() -> None:
    dec, hello = bound(4096)
    assert dec.block_size == 4096
    assert hello_fields(hello) == (VOL, 4096)


def test_write_round_trip_whole_and_byte_at_a_time() -> None:
    req = Request(Op.WRITE, 9, 42, lba=100, nblocks=2, flags=FLAG_FUA, data=bytes(range(256)) * 4)
    wire = encode_request(req)
    dec, _ = bound()
    assert dec.feed(wire) == [req]
    dec, _ = bound()
    got: list[Request] = []
    for i in range(len(wire)):
        got += dec.feed(wire[i:i + 1])
        if i < len(wire) - 1:
            assert got == []
    assert got == [req] and got[0].fua


def test_several_frames_in_one_feed_and_a_partial_tail() -> None:
    dec, _ = bound()
    frames = [Request(Op.PING, 1, 5), Request(Op.FLUSH, 2, 5),
              Request(Op.WRITE_ZEROES, 3, 5, lba=8, nblocks=1 << 20),
              Request(Op.DEALLOCATE, 4, 5, lba=0, nblocks=16)]
    wire = b"".join(encode_request(f) for f in frames)
    extra = encode_request(Request(Op.PING, 5, 5))
    assert dec.feed(wire + extra[:10]) == frames
    assert dec.feed(extra[10:]) == [Request(Op.PING, 5, 5)]


@pytest.mark.parametrize("frame, message", [
    (b"XXXX" + bytes(28), "magic"),
    (REQUEST_HEADER.pack(b"SBRQ", 99, 0, 0, 3, 0, 0, 0), "unknown op"),
    (REQUEST_HEADER.pack(b"SBRQ", Op.PING, 0x80, 0, 3, 0, 0, 0), "reserved"),
    (REQUEST_HEADER.pack(b"SBRQ", Op.PING, 0, 1, 3, 0, 0, 0), "reserved"),
    (REQUEST_HEADER.pack(b"SBRQ", Op.WRITE, 0, 0, 3, 0, 0, 0), "WRITE of 0"),
    (REQUEST_HEADER.pack(b"SBRQ", Op.WRITE, 0, 0, 3, 0, 0, MAX_DATA_BYTES // 512 + 1), "at most"),
    (encode_request(hello_request(3, VOL, 4096)), "second HELLO"),
])
def test_malformed_frames_raise_with_the_tag_when_readable(frame: bytes, message: str) -> None:
    dec, _ = bound()
    with pytest.raises(WireError, match=message) as info:
        dec.feed(frame)
    assert info.value.tag == (None if frame.startswith(b"XXXX") else 3)
    with pytest.raises(WireError):  # dead after an error
        dec.feed(encode_request(Request(Op.PING, 1, 0)))


def test_frames_before_hello_and_bad_block_size_are_refused() -> None:
    with pytest.raises(WireError, match="before HELLO"):
        RequestDecoder().feed(encode_request(Request(Op.PING, 1, 0)))
    bad = REQUEST_HEADER.pack(b"SBRQ", Op.HELLO, 0, 0, 1, 0, 0, 0) + VOL.bytes + (1000).to_bytes(4, "little")
    with pytest.raises(WireError, match="block size"):
        RequestDecoder().feed(bad)


def test_encoder_refuses_inconsistent_frames() -> None:
    with pytest.raises(ValueError):
        encode_request(Request(Op.WRITE, 1, 0, lba=0, nblocks=3, data=bytes(1024)))
    with pytest.raises(ValueError):
        encode_request(Request(Op.FLUSH, 1, 0, data=b"x"))
    with pytest.raises(ValueError):
        encode_request(Request(Op.WRITE, 1, 0, nblocks=1, data=bytes(MAX_DATA_BYTES + 512)))


def test_response_round_trip_and_garbage() -> None:
    resps = [Response(1, Status.OK, 3), Response(0xFFFFFFFF, Status.STALE_EPOCH, 2**64 - 1)]
    wire = b"".join(encode_response(r) for r in resps)
    dec = ResponseDecoder()
    assert dec.feed(wire[:30]) == resps[:1]
    assert dec.feed(wire[30:]) == resps[1:]
    with pytest.raises(WireError):
        ResponseDecoder().feed(b"SBRS" + bytes(4) + (77).to_bytes(2, "little") + bytes(14))


requests = st.one_of(
    st.builds(lambda tag, epoch, lba, n, fua, byte: Request(
        Op.WRITE, tag, epoch, lba, n, FLAG_FUA if fua else 0, bytes([byte]) * (n * 512)),
        st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
        st.integers(1, 16), st.booleans(), st.integers(0, 255)),
    st.builds(Request, st.sampled_from([Op.WRITE_ZEROES, Op.DEALLOCATE, Op.FLUSH, Op.PING]),
              st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
              st.integers(0, 2**32 - 1), flags=st.just(0), data=st.just(b"")),
)


@given(st.lists(requests, max_size=8), st.data())
def test_round_trip_property_at_any_split(frames: list[Request], data: st.DataObject) -> None:
    dec, _ = bound(512)
    wire = b"".join(encode_request(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    got: list[Request] = []
    prev = 0
    for cut in [*cuts, len(wire)]:
        got += dec.feed(wire[prev:cut])
        prev = cut
    assert got == frames


@given(st.binary(max_size=2000), st.booleans())
def test_fuzz_request_decoder_only_raises_wire_error(garbage: bytes, after_hello: bool) -> None:
    dec = bound()[0] if after_hello else RequestDecoder()
    try:
        for i in range(0, len(garbage), 97):
            for req in dec.feed(garbage[i:i + 97]):
                assert isinstance(req, Request)
    except WireError:
        pass


@given(st.binary(max_size=600))
def test_fuzz_request_decoder_on_valid_headers_with_garbage_fields(tail: bytes) -> None:
    """Frames that pass the magic test reach the deeper checks more often than random bytes."""
    dec = bound()[0]
    try:
        dec.feed(b"SBRQ" + tail)
    except WireError:
        pass


@given(st.binary(max_size=600))
def test_fuzz_response_decoder_only_raises_wire_error(garbage: bytes) -> None:
    try:
        ResponseDecoder().feed(b"SBRS" + garbage)
        ResponseDecoder().feed(garbage)
    except WireError:
        pass


def test_good_frames_before_a_bad_one_are_handed_over() -> None:
    dec = RequestDecoder()
    hello = hello_request(1, VOL, 512)
    with pytest.raises(WireError) as info:
        dec.feed(encode_request(hello) + encode_request(Request(Op.PING, 2, 0)) + b"junk" * 8)
    assert info.value.frames == [hello, Request(Op.PING, 2, 0)]
