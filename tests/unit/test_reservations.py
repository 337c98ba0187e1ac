"""Reservations without a network: the data codecs (fuzzed), the command decoder (fuzzed with
the state's invariants), and the rules of the six types."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as s

from target import reservation_commands
from target.nvme import status as st
from target.nvme.reservations import (
    EXTENDED_HEADER_SIZE,
    RegisteredHost,
    ReservationStatus,
    pull_key,
    pull_key_pair,
    pull_report,
    push_key_pair,
    push_report,
    report_size,
)
from target.nvme.spec import AcquireAction, IoOpcode, ReservationNotice, ReservationType
from target.reservation import ReservationRecord, Reservations

RT = ReservationType
A, B, C = (bytes([n]) * 16 for n in (0xA, 0xB, 0xC))
keys = s.integers(0, 2**64 - 1)


def _registrant(extended: bool):
    return s.builds(RegisteredHost, s.binary(min_size=16 if extended else 8,
                                             max_size=16 if extended else 8),
                    keys, s.booleans(), s.integers(0, 0xFFFF))


@given(s.data(), s.booleans())
def test_report_round_trips_and_cuts_to_length(data, extended):
    regs = tuple(data.draw(s.lists(_registrant(extended), max_size=8)))
    status = ReservationStatus(data.draw(s.integers(0, 2**32 - 1)), data.draw(s.integers(0, 6)),
                               data.draw(s.booleans()), regs)
    nbytes = data.draw(s.integers(EXTENDED_HEADER_SIZE, 1200).map(lambda n: n & ~3))
    raw = push_report(status, nbytes, extended=extended)
    assert len(raw) == nbytes
    back = pull_report(raw, extended=extended)
    assert back.regctl == len(regs)
    assert back.registrants == regs[:len(back.registrants)]
    if nbytes >= report_size(len(regs), extended):
        assert back.registrants == regs
    assert (back.generation, back.rtype, back.ptpl) == (status.generation, status.rtype,
                                                         status.ptpl)


@given(s.binary(max_size=600), s.booleans())
def test_report_parser_takes_any_bytes(raw, extended):
    try:
        pull_report(raw, extended=extended)
    except ValueError:
        assert len(raw) < EXTENDED_HEADER_SIZE


@given(s.binary(max_size=40))
def test_key_parsers_take_any_bytes(raw):
    for pull, need in ((pull_key_pair, 16), (pull_key, 8)):
        try:
            pull(raw)
        except ValueError:
            assert len(raw) < need


def _check_invariants(resv: Reservations) -> None:
    if resv.holder is None:
        assert resv.rtype == 0
    else:
        assert resv.holder in resv.registrants
        assert resv.rtype in tuple(RT)
    assert len(set(resv.registrants)) == len(resv.registrants)


class _Ns:
    fence = None


def _run(coro):
    """Drive a coroutine that never waits (no persistence hook) without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the command waited")


@given(s.lists(s.tuples(s.sampled_from([IoOpcode.RESERVATION_REGISTER,
                                         IoOpcode.RESERVATION_ACQUIRE,
                                         IoOpcode.RESERVATION_RELEASE,
                                         IoOpcode.RESERVATION_REPORT, 0x99]),
                        s.sampled_from([A, B, C]),
                        s.integers(0, 2**32 - 1) | s.sampled_from([0, 1, 2, 0x100, 0x501,
                                                                   0x601, 0xC0000000]),
                        s.integers(0, 3),
                        s.binary(max_size=20) | s.tuples(s.sampled_from([0, 1, 2]),
                                                         s.sampled_from([0, 1, 2])).map(
                            lambda k: push_key_pair(*k))),
                max_size=30))
def test_any_command_sequence_keeps_the_state_consistent(commands):
    resv = Reservations()
    ns = _Ns()
    resv.attach(ns)
    for opcode, host, cdw10, cdw11, data in commands:
        try:
            _run(reservation_commands.execute(resv, opcode, host, cdw10, cdw11,
                                              memoryview(data), 1 << 20))
        except st.NvmeError:
            pass
        _check_invariants(resv)
        assert (ns.fence is resv) == (resv.holder is not None)
        back = Reservations.from_record(resv.record())
        assert back.record() == resv.record()


def _registered(*hosts: bytes) -> Reservations:
    resv = Reservations()
    for n, host in enumerate(hosts, 1):
        resv.register(host, 0, 0, n, iekey=False, cptpl=0)
    return resv


@pytest.mark.parametrize("rtype, other_reads, other_writes, registrant_writes", [
    (RT.WRITE_EXCLUSIVE, True, False, False),
    (RT.EXCLUSIVE_ACCESS, False, False, False),
    (RT.WRITE_EXCLUSIVE_REGISTRANTS_ONLY, True, False, True),
    (RT.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY, False, False, True),
    (RT.WRITE_EXCLUSIVE_ALL_REGISTRANTS, True, False, True),
    (RT.EXCLUSIVE_ACCESS_ALL_REGISTRANTS, False, False, True),
])
def test_what_each_type_allows(rtype, other_reads, other_writes, registrant_writes):
    resv = _registered(A, B)  # C is not registered
    resv.acquire(A, AcquireAction.ACQUIRE, rtype, 1, 0, iekey=False)
    assert not resv.blocks_write(A) and not resv.blocks_read(A)
    assert resv.blocks_read(C) is not other_reads
    assert resv.blocks_write(C) is not other_writes
    assert resv.blocks_write(B) is not registrant_writes
    assert resv.blocks_read(B) is (not registrant_writes and not other_reads)


def test_all_registrants_reservation_outlives_its_acquirer():
    resv = _registered(A, B)
    resv.acquire(A, AcquireAction.ACQUIRE, RT.WRITE_EXCLUSIVE_ALL_REGISTRANTS, 1, 0,
                 iekey=False)
    resv.acquire(B, AcquireAction.ACQUIRE, RT.WRITE_EXCLUSIVE_ALL_REGISTRANTS, 2, 0,
                 iekey=False)  # already a holder: success
    resv.register(A, 1, 1, 0, iekey=False, cptpl=0)
    assert resv.holder == B and resv.rtype == RT.WRITE_EXCLUSIVE_ALL_REGISTRANTS
    assert all(r.holds for r in resv.status().registrants)


def test_preempt_with_key_zero_clears_an_all_registrants_reservation():
    resv = _registered(A, B, C)
    resv.acquire(A, AcquireAction.ACQUIRE, RT.EXCLUSIVE_ACCESS_ALL_REGISTRANTS, 1, 0,
                 iekey=False)
    gen = resv.generation
    resv.acquire(B, AcquireAction.PREEMPT_AND_ABORT, RT.WRITE_EXCLUSIVE, 2, 0, iekey=False)
    assert list(resv.registrants) == [B] and resv.holder == B
    assert resv.rtype == RT.WRITE_EXCLUSIVE and resv.generation == gen + 1


def test_preempt_key_zero_of_a_single_holder_is_invalid():
    resv = _registered(A, B)
    resv.acquire(A, AcquireAction.ACQUIRE, RT.WRITE_EXCLUSIVE, 1, 0, iekey=False)
    with pytest.raises(st.InvalidField):
        resv.acquire(B, AcquireAction.PREEMPT, RT.WRITE_EXCLUSIVE, 2, 0, iekey=False)


def test_release_of_another_type_is_invalid_and_of_a_non_holder_is_a_no_op():
    resv = _registered(A, B)
    resv.acquire(A, AcquireAction.ACQUIRE, RT.WRITE_EXCLUSIVE, 1, 0, iekey=False)
    with pytest.raises(st.InvalidField):
        resv.release(A, 0, RT.EXCLUSIVE_ACCESS, 1, iekey=False)
    resv.release(B, 0, RT.WRITE_EXCLUSIVE, 2, iekey=False)
    assert resv.holder == A
    with pytest.raises(st.ReservationConflict):
        resv.release(A, 0, RT.WRITE_EXCLUSIVE, 2, iekey=False)


def test_a_record_whose_holder_is_not_registered_is_refused():
    with pytest.raises(ValueError):
        Reservations.from_record(ReservationRecord(((A, 1),), B, 1, 3, True))


def test_notices_go_to_the_hosts_a_command_took_something_from():
    RN = ReservationNotice
    resv = _registered(A, B, C)
    resv.acquire(A, AcquireAction.ACQUIRE, RT.WRITE_EXCLUSIVE_REGISTRANTS_ONLY, 1, 0,
                 iekey=False)
    assert resv.take_notices() == []
    resv.release(A, 0, RT.WRITE_EXCLUSIVE_REGISTRANTS_ONLY, 1, iekey=False)
    assert resv.take_notices() == [(B, RN.RESERVATION_RELEASED), (C, RN.RESERVATION_RELEASED)]
    resv.acquire(A, AcquireAction.ACQUIRE, RT.WRITE_EXCLUSIVE, 1, 0, iekey=False)
    resv.acquire(B, AcquireAction.PREEMPT, RT.WRITE_EXCLUSIVE, 2, 1, iekey=False)
    assert resv.take_notices() == [(A, RN.REGISTRATION_PREEMPTED)]
    resv.release(B, 1, 0, 2, iekey=False)  # Clear
    assert resv.take_notices() == [(C, RN.RESERVATION_PREEMPTED)]
