"""Hostile input: random, truncated and mutated byte strings never raise out of a queue, never
leave it buffering without bound, and end either in ProtocolFailed with a termination request
queued, or in a queue that simply waits for more bytes."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from target.nvme.structs import Sqe, push_sqe
from target.tcp import pdu as P
from target.tcp.events import (
    CommandReceived,
    Established,
    PeerTerminated,
    ProtocolFailed,
    QueueEstablished,
    ResponseReceived,
)
from target.tcp.host import HostQueue
from target.tcp.queue import TargetQueue
from target.tcp.stream import PduStream

from .pair import Link, decode_all, drain, joined, pattern, read_sqe, write_sqe

LIMITS = {"max_incapsule_data": 8192, "maxh2cdata": 8192, "max_data_len": 65536}
MAX_PENDING = 256  # bytes a queue may keep between calls (less than one header)


def _feed_random(queue: PduStream, data: bytes, cuts: list[int], buffered: bool) -> None:
    view = memoryview(data)
    for cut in cuts:
        piece, view = view[:cut], view[cut:]
        if buffered:
            while len(piece):
                target = queue.get_buffer(-1)
                assert len(target) > 0
                n = min(len(target), len(piece))
                target[:n] = piece[:n]
                queue.buffer_updated(n)
                piece = piece[n:]
        else:
            queue.receive_data(piece)
    queue.receive_data(view)


def _check(queue: TargetQueue | HostQueue, term_type: type) -> list[object]:
    events = drain(queue)
    out = joined(queue.data_to_send())
    assert queue._end - queue._start < MAX_PENDING
    assert len(queue._buf) == len(queue._mv)  # never reallocated
    failed = [e for e in events if isinstance(e, ProtocolFailed)]
    for event in failed:
        assert not event.message.startswith("internal error"), event.message
    if failed:
        assert events[-1] is failed[-1] and len(failed) == 1
        assert queue.terminated
    # Everything queued is well formed; after a failure, our termination request comes last.
    sent = decode_all(out)
    if failed:
        assert isinstance(sent[-1], term_type) and sent[-1].fes == failed[-1].fes
    elif not any(isinstance(e, PeerTerminated) for e in events):
        assert not queue.terminated
    if isinstance(queue, TargetQueue):
        for transfer in queue._transfers.values():
            assert transfer.buf is not None and len(transfer.buf) <= LIMITS["max_data_len"]
        assert all(isinstance(e, (QueueEstablished, CommandReceived, ProtocolFailed,
                                  PeerTerminated)) for e in events)
    else:
        assert all(isinstance(e, (Established, ResponseReceived, ProtocolFailed,
                                  PeerTerminated)) for e in events)
    sink = queue._sink
    if sink is not None:
        assert len(sink) <= max(LIMITS.values())
    return events


chunks = st.lists(st.integers(1, 300), max_size=8)


@given(st.binary(max_size=2000), chunks, st.booleans())
def test_random_bytes_on_a_fresh_target(data: bytes, cuts: list[int], buffered: bool) -> None:
    queue = TargetQueue(**LIMITS)
    _feed_random(queue, data, cuts, buffered)
    _check(queue, P.C2HTermReq)


@given(st.binary(max_size=3000), chunks, st.booleans(), st.integers(0, 3), st.integers(0, 3))
def test_random_bytes_after_a_valid_icreq(data: bytes, cuts: list[int], buffered: bool,
                                          dgst: int, maxr2t: int) -> None:
    queue = TargetQueue(**LIMITS)
    queue.receive_data(P.push_icreq(P.ICReq(0, 0, dgst, maxr2t)))
    assert isinstance(queue.next_event(), QueueEstablished)
    _feed_random(queue, data, cuts, buffered)
    _check(queue, P.C2HTermReq)


PDU_HEADS = st.sampled_from([0, 2, 4, 6]).flatmap(lambda t: st.tuples(
    st.just(t), st.integers(0, 15), st.sampled_from([P.HLEN[t], 0, 255]), st.integers(0, 255),
    st.one_of(st.integers(0, 400), st.integers(0, 0xFFFFFFFF))))


@given(st.lists(st.tuples(PDU_HEADS, st.binary(max_size=300)), max_size=6), chunks,
       st.booleans(), st.booleans())
def test_plausible_headers_with_random_bodies(pdus: list, cuts: list[int], buffered: bool,
                                              hdgst: bool) -> None:
    # Common headers that pass the first checks far more often than random bytes do.
    queue = TargetQueue(**LIMITS)
    queue.receive_data(P.push_icreq(P.ICReq(0, 0, 1 if hdgst else 0, 0)))
    drain(queue)
    # A write waiting for 4 KiB, so that H2CData headers have a transfer to aim at.
    queue.receive_data(P.push_capsule_cmd(
        P.CapsuleCmd(push_sqe(Sqe(opcode=1, cid=5, sgl_length=4096))), hdgst=hdgst))
    wire = b"".join(P.CH.pack(*head) + body for head, body in pdus)
    _feed_random(queue, wire, cuts, buffered)
    _check(queue, P.C2HTermReq)


def _valid_stream(hdgst: bool, ddgst: bool) -> bytes:
    link = Link(HostQueue(hdgst=hdgst, ddgst=ddgst, maxr2t=1), TargetQueue(**LIMITS))
    link.connect()
    link.host.send_command(write_sqe(1), data=pattern(3000), incapsule_limit=8192)
    link.host.send_command(read_sqe(2), read_len=512)
    link.host.send_command(write_sqe(3), data=pattern(20000, seed=9))
    link.run()
    return b"".join(link.to_target)


VALID = {(h, d): _valid_stream(h, d) for h in (False, True) for d in (False, True)}


@given(st.sampled_from(sorted(VALID)), st.data(), chunks, st.booleans())
def test_any_prefix_of_a_valid_stream_just_waits(key: tuple[bool, bool], data: st.DataObject,
                                                 cuts: list[int], buffered: bool) -> None:
    wire = VALID[key]
    prefix = wire[:data.draw(st.integers(0, len(wire)))]
    queue = TargetQueue(**LIMITS)
    _feed_random(queue, prefix, cuts, buffered)
    events = _check(queue, P.C2HTermReq)
    assert not queue.terminated
    assert not any(isinstance(e, ProtocolFailed) for e in events)


@given(st.sampled_from(sorted(VALID)),
       st.lists(st.tuples(st.integers(0, 40000), st.integers(0, 255),
                          st.sampled_from(["flip", "insert", "delete"])), min_size=1,
                max_size=4),
       chunks, st.booleans())
def test_mutated_valid_stream(key: tuple[bool, bool], mutations: list, cuts: list[int],
                              buffered: bool) -> None:
    wire = bytearray(VALID[key])
    for position, value, how in mutations:
        position %= len(wire)
        if how == "flip":
            wire[position] ^= value or 1
        elif how == "insert":
            wire.insert(position, value)
        else:
            del wire[position]
    queue = TargetQueue(**LIMITS)
    _feed_random(queue, bytes(wire), cuts, buffered)
    _check(queue, P.C2HTermReq)


@given(st.binary(max_size=2000), chunks, st.booleans(), st.booleans())
def test_random_bytes_to_a_host(data: bytes, cuts: list[int], buffered: bool,
                                established: bool) -> None:
    host = HostQueue(ddgst=True)
    host.initiate()
    if established:
        host.receive_data(P.push_icresp(P.ICResp(0, 0, 2, 8192)))
        host.send_command(read_sqe(1), read_len=4096)
        host.send_command(write_sqe(2), data=pattern(10000))
    host.data_to_send()
    drain(host)
    _feed_random(host, data, cuts, buffered)
    _check(host, P.H2CTermReq)


@settings(max_examples=50)
@given(st.binary(min_size=1, max_size=200))
def test_fed_after_termination_is_ignored(data: bytes) -> None:
    queue = TargetQueue()
    queue.receive_data(b"\x05" + bytes(30))
    assert queue.terminated
    drain(queue)
    queue.data_to_send()
    queue.receive_data(data)
    buf = queue.get_buffer(-1)
    buf[:1] = b"\x00"
    queue.buffer_updated(1)
    assert queue.next_event() is None and queue.data_to_send() == []


def test_a_bug_in_a_handler_still_ends_in_protocol_failed() -> None:
    queue = TargetQueue()

    def broken(*args: int) -> None:
        raise KeyError("boom")

    queue._accept(P.PduType.IC_REQ, broken)
    queue.receive_data(P.push_icreq(P.ICReq()))
    (event,) = drain(queue)
    assert isinstance(event, ProtocolFailed) and event.message.startswith("internal error")
    assert isinstance(P.pull_pdu(joined(queue.data_to_send()))[0], P.C2HTermReq)


@pytest.mark.parametrize("key", sorted(VALID))
def test_the_valid_streams_are_valid(key: tuple[bool, bool]) -> None:
    queue = TargetQueue(**LIMITS)
    queue.receive_data(VALID[key])
    events = drain(queue)
    assert [type(e).__name__ for e in events].count("CommandReceived") == 3
