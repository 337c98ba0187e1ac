"""HostQueue: the initiator side, against a TargetQueue and against a hand-made controller."""
from __future__ import annotations

import struct

import pytest

from target.nvme.spec import GenericStatus
from target.nvme.status import split_status
from target.nvme.structs import pull_cqe
from target.tcp import pdu as P
from target.tcp.events import (
    Established,
    PeerTerminated,
    ProtocolFailed,
    ResponseReceived,
)
from target.tcp.host import HostQueue

from .pair import (
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


def host_after(icresp: P.ICResp, **kw: int) -> HostQueue:
    host = HostQueue(**kw)  # type: ignore[arg-type]
    host.initiate()
    host.data_to_send()
    host.receive_data(P.push_icresp(icresp))
    return host


def established_host(**kw: int) -> HostQueue:
    dgst = (1 if kw.get("hdgst") else 0) | (2 if kw.get("ddgst") else 0)
    host = host_after(P.ICResp(0, kw.pop("cpda", 0), dgst, kw.pop("maxh2cdata", 8192)), **kw)
    assert isinstance(host.next_event(), Established)
    return host


def expect_host_failure(host: HostQueue, fes: int, fei: int | None = None) -> None:
    events = drain(host)
    assert len(events) == 1 and isinstance(events[0], ProtocolFailed), events
    assert events[0].fes == fes and not events[0].message.startswith("internal error")
    term = decode_all(joined(host.data_to_send()))[-1]
    assert isinstance(term, P.H2CTermReq) and term.fes == fes
    if fei is not None:
        assert term.fei == fei
    assert host.terminated


def test_icreq_carries_what_we_ask() -> None:
    host = HostQueue(hdgst=True, ddgst=False, hpda=5, maxr2t=3)
    host.initiate()
    assert decode_all(joined(host.data_to_send())) == [P.ICReq(0, 5, 1, 3)]


@pytest.mark.parametrize("icresp,fei", [
    (P.ICResp(1, 0, 0, 8192), P.FEI_PFV),
    (P.ICResp(0, 32, 0, 8192), P.FEI_PDA),
    (P.ICResp(0, 0, 1, 8192), P.FEI_DGST),  # a digest we did not ask for
    (P.ICResp(0, 0, 0, 4092), P.FEI_MAXR2T),  # MAXH2CDATA below 4096
    (P.ICResp(0, 0, 0, 8190), P.FEI_MAXR2T),  # not a multiple of 4
])
def test_bad_icresp(icresp: P.ICResp, fei: int) -> None:
    expect_host_failure(host_after(icresp), P.Fes.INVALID_PDU_HEADER, fei)


def test_icresp_missing_a_digest_we_asked_for() -> None:
    expect_host_failure(host_after(P.ICResp(0, 0, 1, 8192), hdgst=True, ddgst=True),
                        P.Fes.INVALID_PDU_HEADER, P.FEI_DGST)


def test_anything_before_icresp_is_a_sequence_error() -> None:
    host = HostQueue()
    host.initiate()
    host.data_to_send()
    host.receive_data(P.push_capsule_resp(P.CapsuleResp(cqe(1))))
    expect_host_failure(host, P.Fes.PDU_SEQUENCE_ERROR)


def test_send_command_refuses_misuse() -> None:
    host = HostQueue()
    with pytest.raises(RuntimeError):
        host.send_command(read_sqe(1), read_len=512)
    host = established_host()
    with pytest.raises(ValueError):
        host.send_command(b"short")
    with pytest.raises(ValueError):
        host.send_command(write_sqe(1), data=b"x", read_len=1)
    host.send_command(read_sqe(1), read_len=512)
    with pytest.raises(ValueError):
        host.send_command(read_sqe(1), read_len=512)
    host.abandon(1)
    host.send_command(read_sqe(1), read_len=512)
    assert host.outstanding == 1


@pytest.mark.parametrize("data,read_len,limit,sgl", [
    (None, 0, 0, (0, 0, 0x5A)),
    (None, 4096, 0, (0, 4096, 0x5A)),
    (b"a" * 100, 0, 0, (0, 100, 0x5A)),  # incapsule_limit 0: R2T
    (b"a" * 100, 0, 100, (0, 100, 0x01)),
    (b"a" * 101, 0, 100, (0, 101, 0x5A)),
])
def test_sgl_descriptor_is_rewritten(data: bytes | None, read_len: int, limit: int,
                                     sgl: tuple[int, int, int]) -> None:
    host = established_host()
    host.incapsule_limit = limit
    sqe = bytearray(write_sqe(3))
    sqe[1] = 0x01  # a FUSE bit; PSDT 00
    sqe[24:40] = b"\xee" * 16
    host.send_command(bytes(sqe), data=data, read_len=read_len)
    (capsule,) = decode_all(joined(host.data_to_send()))
    assert isinstance(capsule, P.CapsuleCmd)
    assert struct.unpack_from("<QI3xB", capsule.sqe, 24) == sgl
    assert capsule.sqe[1] == 0x41  # PSDT 01 (SGL), FUSE kept
    assert capsule.data == (data if sgl[2] == 0x01 else b"")


def test_per_command_incapsule_limit_overrides_the_attribute() -> None:
    host = established_host()
    host.send_command(write_sqe(1), data=b"c" * 1024, incapsule_limit=8192)
    (capsule,) = decode_all(joined(host.data_to_send()))
    assert capsule.data == b"c" * 1024


def test_nonzero_cpda_is_honoured_both_ways() -> None:
    link = ready(cpda=3, maxh2cdata=4096, hdgst=True)
    assert link.host.cpda == 3
    link.host.send_command(write_sqe(1), data=pattern(100), incapsule_limit=8192)
    link.host.send_command(write_sqe(2), data=pattern(10000))
    link.run()
    capsule = link.to_target[1]  # after the ICReq
    assert P.CH.unpack_from(capsule)[3] == 80  # pdo 76 rounded up to 16
    events = {e.cid: e for e in link.take_target_events()}
    assert bytes(events[1].data) == pattern(100) and bytes(events[2].data) == pattern(10000)
    h2c = [p for p in decode_all(b"".join(link.to_target)) if isinstance(p, P.H2CData)]
    assert len(h2c) == 3


def test_c2h_data_success_without_last_is_fatal() -> None:
    host = established_host()
    host.send_command(read_sqe(1), read_len=1024)
    host.receive_data(P.DATA.pack(7, P.DATA_SUCCESS, 24, 24, 24 + 512, 1, 0, 0, 512)
                      + bytes(512))
    expect_host_failure(host, P.Fes.INVALID_PDU_HEADER, P.FEI_FLAGS)


@pytest.mark.parametrize("pdu,fes,fei", [
    (P.C2HData(9, 0, b"x" * 16), 1, P.FEI_CCCID),  # no such command
    (P.C2HData(2, 0, b"x" * 16), 1, P.FEI_CCCID),  # a write: reads nothing
    (P.C2HData(1, 1020, b"x" * 16), 4, P.FEI_DATAO),  # beyond the read buffer
    (P.R2T(1, 0, 0, 16), 1, P.FEI_CCCID),  # a read: writes nothing
    (P.R2T(2, 0, 4090, 16), 4, P.FEI_DATAO),  # beyond the write data
    (P.R2T(2, 0, 0, 0), 1, P.FEI_DATAL),
])
def test_bad_data_pdus_from_the_controller(pdu: P.Pdu, fes: int, fei: int) -> None:
    host = established_host()
    host.send_command(read_sqe(1), read_len=1024)
    host.send_command(write_sqe(2), data=bytes(4096))
    host.data_to_send()
    host.receive_data(P.push_pdu(pdu))
    expect_host_failure(host, fes, fei)


def test_c2h_data_digest_mismatch_fails_the_command_only() -> None:
    link = ready(ddgst=True)
    link.host.send_command(read_sqe(1), read_len=512)
    link.run()
    link.target.send_read_data(1, pattern(512), cqe(1))
    wire = bytearray(joined(link.target.data_to_send()))
    wire[100] ^= 1
    feed(link.host, bytes(wire))
    (response,) = drain(link.host)
    sct, sc, _ = split_status(pull_cqe(response.cqe).status)
    assert (response.cid, sct, sc) == (1, 0, GenericStatus.DATA_TRANSFER_ERROR)
    # Also with the SUCCESS flag (the synthesized completion carries the error).
    link.target.allow_success_flag = True
    link.host.send_command(read_sqe(2), read_len=512)
    link.run()
    link.target.send_read_data(2, pattern(512), cqe(2))
    wire = bytearray(joined(link.target.data_to_send()))
    wire[100] ^= 1
    feed(link.host, bytes(wire))
    (response,) = drain(link.host)
    assert split_status(pull_cqe(response.cqe).status)[1] == GenericStatus.DATA_TRANSFER_ERROR
    # And the queue still works.
    link.host.send_command(read_sqe(3), read_len=512)
    link.run()
    link.target.send_read_data(3, pattern(512, seed=1), cqe(3))
    link.run()
    (response,) = link.take_host_events()
    assert pull_cqe(response.cqe).status == 0 and bytes(response.data) == pattern(512, seed=1)


def test_response_for_an_unknown_command_is_reported() -> None:
    host = established_host()
    host.receive_data(P.push_capsule_resp(P.CapsuleResp(cqe(77))))
    assert drain(host) == [ResponseReceived(77, cqe(77), None)]
    assert not host.terminated


def test_send_raw_and_terminate() -> None:
    link = ready()
    link.host.send_raw(b"\x04\x00\x48\x00")
    assert joined(link.host.data_to_send()) == b"\x04\x00\x48\x00"
    link.host.terminate(P.Fes.HEADER_DIGEST_ERROR, 0, b"hdr")
    assert decode_all(joined(link.host.data_to_send())) == [P.H2CTermReq(3, 0, b"hdr")]
    assert link.host.terminated


def test_controller_termination_is_reported() -> None:
    host = established_host()
    host.send_command(read_sqe(1), read_len=512)
    host.receive_data(P.push_c2h_term_req(P.C2HTermReq(4, 0, b"x" * 24)))
    assert drain(host) == [PeerTerminated(4, 0)]
    assert host.outstanding == 0 and host.data_to_send() != [] and host.terminated


def test_many_commands_in_flight_both_ways() -> None:
    link = make_link(hdgst=True, ddgst=True, maxr2t=1, maxh2cdata=8192)
    link.take_host_events()
    link.take_target_events()
    link.target.allow_success_flag = True
    for cid in range(32):
        if cid % 2:
            link.host.send_command(write_sqe(cid), data=pattern(20000 + cid, seed=cid))
        else:
            link.host.send_command(read_sqe(cid), read_len=4096 + cid)
    link.run()
    for event in link.take_target_events():
        if event.data is not None:
            assert bytes(event.data) == pattern(20000 + event.cid, seed=event.cid)
            link.target.send_completion(cqe(event.cid))
        else:
            link.target.send_read_data(event.cid, pattern(4096 + event.cid, seed=event.cid),
                                       cqe(event.cid))
    link.run()
    responses = {r.cid: r for r in link.take_host_events()}
    assert sorted(responses) == list(range(32))
    for cid in range(0, 32, 2):
        assert bytes(responses[cid].data) == pattern(4096 + cid, seed=cid)
    assert link.host.outstanding == 0


def test_target_queue_and_host_queue_agree_on_the_pdu_codec() -> None:
    # Everything each side put on the wire decodes with the standalone codec.
    link = ready(hdgst=True, ddgst=True, hpda=1, maxh2cdata=4096)
    link.host.send_command(write_sqe(1), data=pattern(9000))
    link.host.send_command(write_sqe(2), data=pattern(100), incapsule_limit=8192)
    link.host.send_command(read_sqe(3), read_len=5000)
    link.run()
    link.target.send_read_data(3, pattern(5000), cqe(3))
    link.target.send_completion(cqe(1))
    link.target.send_completion(cqe(2))
    link.run()
    kinds = {type(p).__name__ for p in decode_all(b"".join(link.to_target))}
    assert kinds == {"ICReq", "CapsuleCmd", "H2CData"}
    kinds = {type(p).__name__ for p in decode_all(b"".join(link.to_host))}
    assert kinds == {"ICResp", "R2T", "C2HData", "CapsuleResp"}
