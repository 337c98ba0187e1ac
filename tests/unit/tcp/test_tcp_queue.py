"""TargetQueue against a HostQueue over a fake link, and against hand-made bad PDUs."""
from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from target.nvme.spec import GenericStatus
from target.nvme.status import split_status, status_field
from target.nvme.structs import Sqe, pull_cqe, push_sqe
from target.tcp import pdu as P
from target.tcp.digest import crc32c
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
from target.tcp.stream import HANDSHAKE_BUFFER_SIZE, RECV_BUFFER_SIZE

from .pair import (
    Link,
    cqe,
    decode_all,
    drain,
    feed,
    joined,
    make_link,
    pattern,
    read_sqe,
    ready,
    write_sqe,
)

DIGESTS = [(False, False), (True, False), (False, True), (True, True)]
DIGEST_IDS = ["plain", "hdgst", "ddgst", "both"]


def icreq(**kw: int) -> bytes:
    return P.push_icreq(P.ICReq(**kw))


def established_target(**kw: int) -> TargetQueue:
    queue = TargetQueue(**kw)
    queue.receive_data(icreq())
    assert isinstance(queue.next_event(), QueueEstablished)
    queue.data_to_send()
    return queue


def expect_failure(queue: TargetQueue, fes: int, fei: int | None = None) -> P.C2HTermReq:
    events = drain(queue)
    assert len(events) == 1 and isinstance(events[0], ProtocolFailed), events
    assert events[0].fes == fes
    assert not events[0].message.startswith("internal error")
    term = decode_all(joined(queue.data_to_send()))[-1]
    assert isinstance(term, P.C2HTermReq)
    assert term.fes == fes
    if fei is not None:
        assert term.fei == fei
    assert queue.terminated
    return term


# -- connection setup -------------------------------------------------------------------------
@pytest.mark.parametrize("hdgst,ddgst", DIGESTS, ids=DIGEST_IDS)
def test_icreq_icresp(hdgst: bool, ddgst: bool) -> None:
    link = make_link(hdgst=hdgst, ddgst=ddgst, hpda=2, maxr2t=3, maxh2cdata=65536, cpda=0)
    assert link.take_target_events() == [QueueEstablished(hdgst, ddgst, 3, 2)]
    assert link.take_host_events() == [Established(0, hdgst, ddgst, 65536)]
    icresp = decode_all(link.to_host[0])
    assert icresp == [P.ICResp(0, 0, (1 if hdgst else 0) | (2 if ddgst else 0), 65536)]
    # Both fast paths expect the negotiated header digest.
    flag, hd = (P.HDGSTF, 4) if hdgst else (0, 0)
    assert link.target._fast[0][0] == P.CH.pack(4, flag, 72, 0, 72 + hd)
    assert link.host._fast[0] == (P.CH.pack(5, flag, 24, 0, 24 + hd),)


def test_icresp_echoes_only_known_digest_bits() -> None:
    queue = TargetQueue()
    queue.receive_data(icreq(dgst=0xFF))
    assert drain(queue) == [QueueEstablished(True, True, 0, 0)]
    assert decode_all(joined(queue.data_to_send())) == [P.ICResp(0, 0, 3, 131072)]


def test_anything_but_icreq_first_is_a_sequence_error() -> None:
    queue = TargetQueue()
    queue.receive_data(P.push_capsule_cmd(P.CapsuleCmd(read_sqe(1))))
    term = expect_failure(queue, P.Fes.PDU_SEQUENCE_ERROR)
    assert term.hdr == P.push_capsule_cmd(P.CapsuleCmd(read_sqe(1)))  # the offending header
    queue.receive_data(icreq())  # ignored from now on
    assert queue.next_event() is None and queue.data_to_send() == []


@pytest.mark.parametrize("wire,fes,fei", [
    (icreq(pfv=1), 1, P.FEI_PFV),
    (icreq(hpda=32), 1, P.FEI_PDA),
    (P.CH.pack(0, 0, 128, 0, 132) + icreq()[8:] + bytes(4), 1, P.FEI_PLEN),
    (P.CH.pack(0, 0, 72, 0, 72) + bytes(64), 1, P.FEI_HLEN),
    (icreq() + icreq(), 2, P.FEI_TYPE),
])
def test_bad_icreq(wire: bytes, fes: int, fei: int) -> None:
    queue = TargetQueue()
    queue.receive_data(wire)
    events = drain(queue)
    assert isinstance(events[-1], ProtocolFailed) and events[-1].fes == fes
    term = decode_all(joined(queue.data_to_send()))[-1]
    assert isinstance(term, P.C2HTermReq) and (term.fes, term.fei) == (fes, fei)


def test_receive_buffer_is_small_until_the_icreq() -> None:
    # A connection that never sends an ICReq must cost little (issue 8: 1,000 idle sockets
    # held 261 MiB): the full receive buffer comes with the handshake.
    queue = TargetQueue()
    assert len(queue.get_buffer()) <= HANDSHAKE_BUFFER_SIZE
    queue.receive_data(icreq())
    assert len(queue.get_buffer()) == RECV_BUFFER_SIZE


@pytest.mark.parametrize("chunk", [None, 1, 7, 100])
def test_command_sent_with_the_icreq_survives_the_buffer_swap(chunk: int | None) -> None:
    # The buffer grows while the ICReq is processed; bytes already behind it must be parsed
    # from the new buffer exactly as they arrived (a host should wait for the ICResp, but
    # nothing breaks if one does not).
    queue = TargetQueue()
    data = pattern(300)
    feed(queue, icreq() + _capsule(_sqe(0x01, 9, 0x01, len(data)), data) + _capsule(read_sqe(10)),
         chunk, buffered=True)
    events = drain(queue)
    assert isinstance(events[0], QueueEstablished)
    assert [(e.cid, e.data_status) for e in events[1:]] == [(9, 0), (10, 0)]
    assert bytes(events[1].data) == data and events[2].data is None


def test_constructor_refuses_bad_limits() -> None:
    with pytest.raises(ValueError):
        TargetQueue(maxh2cdata=1000)
    with pytest.raises(ValueError):
        TargetQueue(maxh2cdata=4098)
    with pytest.raises(ValueError):
        TargetQueue(cpda=32)


# -- in-capsule writes ------------------------------------------------------------------------
@pytest.mark.parametrize("hdgst,ddgst", DIGESTS, ids=DIGEST_IDS)
@pytest.mark.parametrize("nbytes", [1, 512, 4096, 8192])
def test_incapsule_write(hdgst: bool, ddgst: bool, nbytes: int) -> None:
    link = ready(hdgst=hdgst, ddgst=ddgst)
    data = pattern(nbytes)
    link.host.send_command(write_sqe(5), data=data, incapsule_limit=8192)
    link.run()
    (event,) = link.take_target_events()
    assert isinstance(event, CommandReceived)
    assert (event.cid, event.data_status) == (5, 0)
    assert bytes(event.data) == data
    assert event.sqe[39] == 0x01 and struct.unpack_from("<I", event.sqe, 32)[0] == nbytes
    assert not any(isinstance(p, P.R2T) for p in decode_all(b"".join(link.to_host)))
    link.target.send_completion(cqe(5))
    link.run()
    assert link.take_host_events() == [ResponseReceived(5, cqe(5), None)]


def _capsule(sqe: bytes, data: bytes = b"") -> bytes:
    return P.push_capsule_cmd(P.CapsuleCmd(sqe, data))


def _sqe(opcode: int, cid: int, sgl_id: int, length: int, address: int = 0) -> bytes:
    return push_sqe(Sqe(opcode=opcode, cid=cid, sgl_id=sgl_id, sgl_length=length,
                        sgl_address=address))


@pytest.mark.parametrize("sqe,data,status", [
    # In-capsule data longer than we take: not executed, data skipped.
    (_sqe(0x01, 3, 0x01, 8200), bytes(8200), GenericStatus.SGL_DATA_LENGTH_INVALID),
    # SGL length and the capsule's data disagree.
    (_sqe(0x01, 3, 0x01, 4096), bytes(512), GenericStatus.SGL_DATA_LENGTH_INVALID),
    (_sqe(0x01, 3, 0x01, 512), b"", GenericStatus.SGL_DATA_LENGTH_INVALID),
    # In-capsule data for a read.
    (_sqe(0x02, 3, 0x01, 512), bytes(512), GenericStatus.INVALID_FIELD),
    # In-capsule data at an offset.
    (_sqe(0x01, 3, 0x01, 512, address=16), bytes(512), GenericStatus.SGL_OFFSET_INVALID),
    # Data in a capsule whose SGL says "transport data block".
    (_sqe(0x01, 3, 0x5A, 512), bytes(512), GenericStatus.SGL_DATA_LENGTH_INVALID),
    # A keyed SGL (RDMA) on TCP.
    (_sqe(0x01, 3, 0x40, 512), b"", GenericStatus.SGL_TYPE_INVALID),
    # More than max_data_len: refused without soliciting the data.
    (_sqe(0x01, 3, 0x5A, (1 << 20) + 512), b"", GenericStatus.SGL_DATA_LENGTH_INVALID),
])
def test_bad_data_pointer_fails_the_command_not_the_queue(sqe: bytes, data: bytes,
                                                           status: int) -> None:
    queue = established_target()
    queue.receive_data(_capsule(sqe, data))
    assert drain(queue) == [CommandReceived(3, sqe, None, status)]
    assert queue.data_to_send() == []  # no R2T
    # The next command on the same queue works.
    queue.receive_data(_capsule(_sqe(0x01, 4, 0x01, 4), b"abcd"))
    (event,) = drain(queue)
    assert (event.cid, bytes(event.data), event.data_status) == (4, b"abcd", 0)
    assert not queue.terminated


def test_fabrics_connect_direction_comes_from_fctype() -> None:
    queue = established_target()
    connect = bytearray(_sqe(0x7F, 1, 0x01, 1024))
    connect[4] = 0x01  # fctype Connect: host-to-controller
    queue.receive_data(_capsule(bytes(connect), pattern(1024)))
    (event,) = drain(queue)
    assert event.data_status == 0 and bytes(event.data) == pattern(1024)
    prop_get = bytearray(_sqe(0x7F, 2, 0x01, 8))
    prop_get[4] = 0x04  # fctype Property Get: no host-to-controller data
    queue.receive_data(_capsule(bytes(prop_get), bytes(8)))
    assert drain(queue)[0].data_status == GenericStatus.INVALID_FIELD


def test_commands_without_data() -> None:
    queue = established_target()
    for sqe in (_sqe(0x00, 1, 0x5A, 0), _sqe(0x18, 2, 0x00, 0), _sqe(0x02, 3, 0x5A, 4096)):
        queue.receive_data(_capsule(sqe))
        assert drain(queue) == [CommandReceived(sqe[2], sqe, None, 0)]
    assert queue.data_to_send() == []


# -- R2T writes -------------------------------------------------------------------------------
WRITE_SIZES = [512, 4096, 16384, 65536 + 512, 1 << 20]


@pytest.mark.parametrize("hdgst,ddgst", DIGESTS, ids=DIGEST_IDS)
@pytest.mark.parametrize("nbytes", WRITE_SIZES)
def test_r2t_write(hdgst: bool, ddgst: bool, nbytes: int) -> None:
    link = ready(hdgst=hdgst, ddgst=ddgst, maxh2cdata=16384)
    data = pattern(nbytes, seed=nbytes)
    link.host.send_command(write_sqe(9), data=data)
    link.run()
    (event,) = link.take_target_events()
    assert (event.cid, event.data_status) == (9, 0)
    assert bytes(event.data) == data
    r2ts = [p for p in decode_all(b"".join(link.to_host)) if isinstance(p, P.R2T)]
    assert sum(r.r2tl for r in r2ts) == nbytes
    assert all(r.r2tl <= 16384 for r in r2ts)
    assert len({r.ttag for r in r2ts}) == 1
    h2c = [p for p in decode_all(b"".join(link.to_target)) if isinstance(p, P.H2CData)]
    assert all(len(h.data) <= 16384 for h in h2c) and h2c[-1].last
    link.target.send_completion(cqe(9))
    link.run()
    assert link.take_host_events() == [ResponseReceived(9, cqe(9), None)]


@pytest.mark.parametrize("maxr2t", [0, 2, 40])
def test_outstanding_r2ts_respect_maxr2t(maxr2t: int) -> None:
    link = ready(maxr2t=maxr2t, maxh2cdata=4096)
    data = pattern(64 * 1024)
    link.host.send_command(write_sqe(1), data=data)
    capsule = joined(link.host.data_to_send())
    feed(link.target, capsule)
    r2ts = decode_all(joined(link.target.data_to_send()))
    assert len(r2ts) == min(maxr2t + 1, 16)  # we never keep more than 16 out per command
    assert [r.r2to for r in r2ts] == [i * 4096 for i in range(len(r2ts))]
    feed(link.host, b"".join(P.push_r2t(r) for r in r2ts))
    link.run()
    (event,) = link.take_target_events()
    assert bytes(event.data) == data


def test_r2t_may_ask_for_more_than_maxh2cdata() -> None:
    # One R2T for the whole transfer, answered by several H2CData PDUs (what Linux nvmet does).
    link = ready(maxh2cdata=4096, max_r2t_len=1 << 20)
    data = pattern(20000)
    link.host.send_command(write_sqe(2), data=data)
    link.run()
    assert bytes(link.take_target_events()[0].data) == data
    r2ts = [p for p in decode_all(b"".join(link.to_host)) if isinstance(p, P.R2T)]
    h2c = [p for p in decode_all(b"".join(link.to_target)) if isinstance(p, P.H2CData)]
    assert [r.r2tl for r in r2ts] == [20000]
    assert [len(h.data) for h in h2c] == [4096] * 4 + [3616]
    assert [h.last for h in h2c] == [False] * 4 + [True]


def test_interleaved_writes_and_reads() -> None:
    link = ready(maxh2cdata=8192)
    writes = {cid: pattern(30000 + cid, seed=cid) for cid in range(10)}
    for cid, data in writes.items():
        link.host.send_command(write_sqe(cid), data=data)
        link.host.send_command(read_sqe(100 + cid), read_len=4096)
    link.run()
    got = {e.cid: e for e in link.take_target_events()}
    for cid, data in writes.items():
        assert bytes(got[cid].data) == data
        assert got[100 + cid].data is None
    assert link.target.pending_transfers == 0


def test_transfer_memory_is_bounded_and_waiting_commands_proceed() -> None:
    link = ready(maxh2cdata=65536, max_transfer_bytes=1 << 20)
    for cid in range(8):
        link.host.send_command(write_sqe(cid), data=pattern(512 * 1024, seed=cid))
    feed(link.target, joined(link.host.data_to_send()))
    r2ts = decode_all(joined(link.target.data_to_send()))
    assert {r.cccid for r in r2ts} == {0, 1}  # 2 x 512 KiB in flight, 6 waiting
    assert link.target.pending_transfers == 8
    feed(link.host, b"".join(P.push_r2t(r) for r in r2ts))
    link.run()
    events = link.take_target_events()
    assert sorted(e.cid for e in events) == list(range(8))
    assert all(bytes(e.data) == pattern(512 * 1024, seed=e.cid) for e in events)


def test_too_many_waiting_commands_is_fatal() -> None:
    queue = established_target(max_transfer_bytes=4096, max_waiting=4)
    for cid in range(6):
        queue.receive_data(_capsule(_sqe(0x01, cid, 0x5A, 4096)))
    expect_failure(queue, P.Fes.PDU_SEQUENCE_ERROR)


# -- H2CData errors ---------------------------------------------------------------------------
def _h2c(cccid: int, ttag: int, datao: int, data: bytes, last: bool = True) -> bytes:
    return P.push_h2c_data(P.H2CData(cccid, ttag, datao, data, last))


def _target_waiting_for(length: int, **kw: int) -> tuple[TargetQueue, P.R2T]:
    queue = established_target(**kw)
    queue.receive_data(_capsule(_sqe(0x01, 7, 0x5A, length)))
    (r2t, *_) = decode_all(joined(queue.data_to_send()))
    assert isinstance(r2t, P.R2T) and r2t.cccid == 7
    return queue, r2t


@pytest.mark.parametrize("make,fes,fei", [
    (lambda t: _h2c(7, t + 1, 0, bytes(512)), 1, P.FEI_TTAG),
    (lambda t: _h2c(8, t, 0, bytes(512)), 1, P.FEI_CCCID),
    (lambda t: _h2c(7, t, 512, bytes(512)), 4, P.FEI_DATAO),
    (lambda t: _h2c(7, t, 0, bytes(4096 + 4)), 5, P.FEI_DATAL),
    (lambda t: _h2c(7, t, 0, bytes(512), last=True), 1, P.FEI_FLAGS),  # LAST too early
    (lambda t: P.DATA.pack(6, 0, 24, 24, 24 + 512, 7, t, 0, 500) + bytes(512), 1, P.FEI_DATAL),
    (lambda t: P.DATA.pack(6, 0, 24, 0, 24, 7, t, 0, 0), 1, P.FEI_DATAL),
])
def test_h2c_data_errors_are_fatal(make: Callable[[int], bytes], fes: int, fei: int) -> None:
    queue, r2t = _target_waiting_for(4096)
    queue.receive_data(make(r2t.ttag))
    expect_failure(queue, fes, fei)


def test_h2c_data_above_maxh2cdata_is_fatal() -> None:
    queue, r2t = _target_waiting_for(65536, maxh2cdata=4096, max_r2t_len=65536)
    queue.receive_data(_h2c(7, r2t.ttag, 0, bytes(8192), last=False))
    expect_failure(queue, P.Fes.DATA_LIMIT_EXCEEDED, P.FEI_DATAL)


def test_giant_plen_does_not_allocate() -> None:
    queue, r2t = _target_waiting_for(4096)
    queue.receive_data(P.DATA.pack(6, 0, 24, 24, 0xFFFFFFFF, 7, r2t.ttag, 0, 0xFFFFFFFF - 24))
    expect_failure(queue, P.Fes.DATA_LIMIT_EXCEEDED)
    # A capsule claiming 4 GiB of in-capsule data is skipped as it streams, not buffered.
    queue = established_target()
    queue.receive_data(P.CH.pack(4, 0, 72, 72, 0xFFFFFFFF) + _sqe(0x01, 1, 0x01, 0xFFFFFFB7))
    assert drain(queue)[0].data_status == GenericStatus.SGL_DATA_LENGTH_INVALID
    for _ in range(64):
        buf = queue.get_buffer(-1)
        queue.buffer_updated(len(buf))
    assert not queue.terminated and queue._sink is None


# -- reads ------------------------------------------------------------------------------------
@pytest.mark.parametrize("hdgst,ddgst", DIGESTS, ids=DIGEST_IDS)
@pytest.mark.parametrize("nbytes", [512, 4096, 131072, 300000])
@pytest.mark.parametrize("success", [False, True])
def test_read(hdgst: bool, ddgst: bool, nbytes: int, success: bool) -> None:
    link = ready(hdgst=hdgst, ddgst=ddgst)
    link.host.send_command(read_sqe(11), read_len=nbytes)
    link.run()
    (event,) = link.take_target_events()
    assert event.cid == 11 and event.data is None
    assert struct.unpack_from("<I", event.sqe, 32)[0] == nbytes
    data = pattern(nbytes, seed=3)
    link.target.allow_success_flag = success
    link.target.send_read_data(11, data, cqe(11))
    link.run()
    (response,) = link.take_host_events()
    assert response.cid == 11 and bytes(response.data) == data
    assert pull_cqe(response.cqe).status == 0 and pull_cqe(response.cqe).cid == 11
    pdus = decode_all(link.to_host[-1])
    c2h = [p for p in pdus if isinstance(p, P.C2HData)]
    assert sum(len(p.data) for p in c2h) == nbytes
    assert all(len(p.data) <= 131072 for p in c2h)
    assert [p.last for p in c2h] == [False] * (len(c2h) - 1) + [True]
    assert c2h[-1].success == success
    assert any(isinstance(p, P.CapsuleResp) for p in pdus) != success


def test_success_flag_only_for_plain_success() -> None:
    link = ready()
    link.target.allow_success_flag = True
    failed = cqe(1, status=status_field(0, GenericStatus.LBA_OUT_OF_RANGE))
    for cid, completion in ((1, failed), (2, cqe(2, dw0=5))):
        link.host.send_command(read_sqe(cid), read_len=512)
        link.run()
        link.target.send_read_data(cid, bytes(512), completion)
        link.run()
        pdus = decode_all(link.to_host[-1])
        assert isinstance(pdus[-1], P.CapsuleResp) and not pdus[0].success
        assert link.take_host_events()[-1].cqe == completion


def test_read_data_respects_hpda() -> None:
    link = ready(hpda=3, hdgst=True)
    link.host.send_command(read_sqe(1), read_len=100)
    link.run()
    link.target.send_read_data(1, pattern(100), cqe(1))
    segments = link.target.data_to_send()
    header = bytes(segments[0])
    assert P.CH.unpack_from(header)[3] == 32 == len(header)  # pdo aligned to 16 bytes
    feed(link.host, joined(segments))
    (response,) = drain(link.host)
    assert bytes(response.data) == pattern(100)


def test_payload_is_a_separate_segment_never_copied() -> None:
    link = ready(ddgst=True)
    link.host.send_command(read_sqe(1), read_len=4096)
    link.run()
    data = bytearray(pattern(4096))
    view = memoryview(data)
    link.target.send_read_data(1, view, cqe(1))
    segments = link.target.data_to_send()
    assert [len(s) for s in segments] == [24, 4096, 4, 24]
    assert segments[1] is view
    assert bytes(segments[2]) == struct.pack("<I", crc32c(data))


def test_empty_read_data_is_just_a_completion() -> None:
    queue = established_target()
    queue.send_read_data(1, b"", cqe(1))
    assert decode_all(joined(queue.data_to_send())) == [P.CapsuleResp(cqe(1))]


# -- digests ----------------------------------------------------------------------------------
def test_header_digest_mismatch_is_fatal() -> None:
    link = ready(hdgst=True)
    link.host.send_command(write_sqe(1), data=b"x" * 512, incapsule_limit=8192)
    wire = bytearray(joined(link.host.data_to_send()))
    wire[20] ^= 0x40  # inside the SQE
    feed(link.target, bytes(wire))
    term = expect_failure(link.target, P.Fes.HEADER_DIGEST_ERROR, 0)
    assert term.hdr == bytes(wire[:76])  # header and its digest
    # The host sees the C2HTermReq as a termination.
    link.host.receive_data(P.push_c2h_term_req(term))
    assert drain(link.host) == [PeerTerminated(3, 0)]


def test_header_digest_flag_must_match_the_negotiation() -> None:
    queue = established_target()
    queue.receive_data(P.push_capsule_cmd(P.CapsuleCmd(read_sqe(1)), hdgst=True))
    expect_failure(queue, P.Fes.INVALID_PDU_HEADER, P.FEI_FLAGS)


def test_incapsule_data_digest_mismatch_fails_only_the_command() -> None:
    link = ready(ddgst=True)
    link.host.send_command(write_sqe(1), data=b"y" * 512, incapsule_limit=8192)
    wire = bytearray(joined(link.host.data_to_send()))
    wire[100] ^= 1  # in the data
    feed(link.target, bytes(wire))
    assert drain(link.target) == [CommandReceived(1, bytes(wire[8:72]), None,
                                                  GenericStatus.TRANSIENT_TRANSPORT_ERROR)]
    link.target.send_completion(cqe(1, status=0x22 << 1))
    link.host.send_command(write_sqe(2), data=b"z" * 512, incapsule_limit=8192)
    link.run()
    (event,) = link.take_target_events()
    assert (event.cid, event.data_status, bytes(event.data)) == (2, 0, b"z" * 512)
    assert split_status(pull_cqe(link.host_events[0].cqe).status)[1] == 0x22


def test_h2c_data_digest_mismatch_fails_the_command_after_all_its_data() -> None:
    link = ready(ddgst=True, hdgst=True, maxh2cdata=4096)
    link.host.send_command(write_sqe(1), data=pattern(12288))
    link.run()  # an intact write first
    assert bytes(link.take_target_events()[0].data) == pattern(12288)
    link.host.send_command(write_sqe(2), data=pattern(12288, seed=1))
    feed(link.target, joined(link.host.data_to_send()))
    corrupted = 0
    for _ in range(10):
        feed(link.host, joined(link.target.data_to_send()))
        wire = bytearray(joined(link.host.data_to_send()))
        if not wire:
            break
        if not corrupted:
            wire[200] ^= 0xFF  # data of the first H2CData
            corrupted = 1
        feed(link.target, bytes(wire))
    (event,) = drain(link.target)
    assert (event.cid, event.data, event.data_status) == (
        2, None, GenericStatus.TRANSIENT_TRANSPORT_ERROR)
    assert not link.target.terminated
    link.host.send_command(write_sqe(3), data=pattern(9000))
    link.run()
    (event,) = link.take_target_events()
    assert event.data_status == 0 and bytes(event.data) == pattern(9000)


# -- termination, robustness ------------------------------------------------------------------
def test_h2c_term_req_ends_the_queue_quietly() -> None:
    link = ready()
    link.host.terminate(P.Fes.PDU_SEQUENCE_ERROR, 7)
    link.run()
    assert link.take_target_events() == [PeerTerminated(2, 7)]
    assert link.to_host[-1:] != [] and not any(
        isinstance(p, P.C2HTermReq) for p in decode_all(b"".join(link.to_host)))
    link.target.receive_data(_capsule(read_sqe(1)))
    link.target.send_completion(cqe(1))
    assert drain(link.target) == [] and link.target.data_to_send() == []


def test_sends_after_a_failure_are_ignored() -> None:
    queue = established_target()
    queue.receive_data(b"\x05" + bytes(23))  # a CapsuleResp from the host: wrong direction
    expect_failure(queue, P.Fes.INVALID_PDU_HEADER, P.FEI_TYPE)
    queue.send_completion(cqe(1))
    queue.send_read_data(1, b"abc", cqe(1))
    assert queue.data_to_send() == []


def _conversation(hdgst: bool, ddgst: bool) -> tuple[bytes, list[object]]:
    """Host bytes for: ICReq, in-capsule write, read, small R2T write data (pre-answered), and
    the target events they cause when delivered whole."""
    host = HostQueue(hdgst=hdgst, ddgst=ddgst)
    target = TargetQueue(maxh2cdata=4096)
    link = Link(host, target)
    link.connect()
    host.send_command(write_sqe(1), data=pattern(3000), incapsule_limit=8192)
    host.send_command(read_sqe(2), read_len=512)
    host.send_command(write_sqe(3), data=pattern(10000, seed=9))
    link.run()
    return b"".join(link.to_target), [*link.target_events]


@pytest.mark.parametrize("hdgst,ddgst", DIGESTS, ids=DIGEST_IDS)
def test_same_events_at_every_split_point(hdgst: bool, ddgst: bool) -> None:
    wire, expected = _conversation(hdgst, ddgst)

    def events_for(pieces: list[bytes], buffered: bool) -> list[object]:
        queue = TargetQueue(maxh2cdata=4096)
        got: list[object] = []
        for piece in pieces:
            feed(queue, piece, buffered=buffered)
            got += drain(queue)
            queue.data_to_send()
        return got

    assert events_for([wire], False) == expected
    for cut in range(0, len(wire), 7 if hdgst or ddgst else 3):
        assert events_for([wire[:cut], wire[cut:]], cut % 2 == 0) == expected
    queue = TargetQueue(maxh2cdata=4096)
    got: list[object] = []
    for i in range(len(wire)):
        feed(queue, wire[i:i + 1], buffered=i % 2 == 0)
        got += drain(queue)
    assert got == expected


@pytest.mark.parametrize("digests", [False, True], ids=["plain", "digests"])
@pytest.mark.parametrize("chunk", [1, 7, 4096, 65536])
def test_buffered_protocol_path_with_large_writes(chunk: int, digests: bool) -> None:
    link = ready(maxh2cdata=131072, chunk=chunk, buffered=True, hdgst=digests, ddgst=digests)
    data = pattern(1 << 20 if chunk > 7 else 150_000, seed=chunk)  # tiny chunks are slow
    link.host.send_command(write_sqe(4), data=memoryview(data).cast("I"))  # counted in bytes
    link.host.send_command(read_sqe(5), read_len=300000)
    link.run()
    events = {e.cid: e for e in link.take_target_events()}
    assert bytes(events[4].data) == data and events[5].data is None
    read = pattern(300000, seed=1)
    link.target.send_read_data(5, read, cqe(5))
    link.run()
    assert bytes(link.take_host_events()[0].data) == read


def test_large_payload_is_received_straight_into_the_command_buffer() -> None:
    queue, r2t = _target_waiting_for(131072, maxh2cdata=131072)
    wire = _h2c(7, r2t.ttag, 0, pattern(131072))
    first = queue.get_buffer(-1)
    first[:100] = wire[:100]
    queue.buffer_updated(100)
    direct = queue.get_buffer(-1)
    assert direct.obj is not queue._buf and len(direct) == len(wire) - 100
    direct[:] = wire[100:]
    queue.buffer_updated(len(direct))
    (event,) = drain(queue)
    assert bytes(event.data) == pattern(131072) and event.data.obj is direct.obj
