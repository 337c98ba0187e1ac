"""Reservations over real sockets: two hosts (distinct host NQNs and host ids) share a
namespace, register, reserve, conflict, release, preempt, report."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from target.host import commands as cmd
from target.host.controller import Controller
from target.nvme.reservations import pull_notification_log
from target.nvme.spec import (
    CPTPL_CLEAR,
    ONCS_RESERVATIONS,
    RESCAP_ALL,
    AcquireAction,
    GenericStatus,
    HostFeatureId,
    LogPageId,
    RegisterAction,
    ReleaseAction,
    ReservationNotice,
    ReservationType,
)
from target.reservation import ReservationRecord

from .conftest import NQN

pytestmark = pytest.mark.asyncio

KEY_A, KEY_B = 0xA1A1, 0xB2B2
HOST_A = uuid.UUID("aaaaaaaa-0000-4000-8000-00000000000a")
HOST_B = uuid.UUID("bbbbbbbb-0000-4000-8000-00000000000b")
BLOCK = b"\x5a" * 512


async def _pair(served):
    a = await Controller.connect(*served.addr, NQN, hostid=HOST_A,
                                 hostnqn="nqn.2026-11.io.example:host-a")
    b = await Controller.connect(*served.addr, NQN, hostid=HOST_B,
                                 hostnqn="nqn.2026-11.io.example:host-b")
    return a, b


def _conflict(done) -> bool:
    return done.sct == 0 and done.sc == GenericStatus.RESERVATION_CONFLICT and done.dnr


async def test_write_exclusive_blocks_the_other_hosts_writes_not_its_reads(served):
    a, b = await _pair(served)
    try:
        assert a.info.oncs & ONCS_RESERVATIONS
        assert a.namespaces[1].rescap == RESCAP_ALL
        await a.resv_register(1, nrkey=KEY_A)
        await b.resv_register(1, nrkey=KEY_B)
        await a.resv_acquire(1, ReservationType.WRITE_EXCLUSIVE, crkey=KEY_A)
        await a.write(1, 0, BLOCK)  # the holder writes
        done = await b.queue().submit(_write_sqe(0), data=BLOCK)
        assert _conflict(done)
        assert bytes(await b.read(1, 0, 1)) == BLOCK  # and the other host still reads
        for sqe, data in ((cmd.write_zeroes(0, 1, 0, 1), None), (cmd.flush(0, 1), None),
                          (cmd.dataset_management(0, 1, 1), cmd.dsm_ranges([(0, 1)]))):
            assert _conflict(await b.queue().submit(sqe, data=data))  # the write group
        assert bytes(await b.read(1, 0, 1)) == BLOCK
        await a.resv_release(1, ReservationType.WRITE_EXCLUSIVE, crkey=KEY_A)
        await b.write(1, 1, BLOCK)
        assert bytes(await a.read(1, 1, 1)) == BLOCK
    finally:
        await a.close()
        await b.close()


def _write_sqe(lba: int):
    return cmd.write(0, 1, lba, 1, 512)


async def test_exclusive_access_blocks_reads_and_the_report_tells_who_holds(served):
    a, b = await _pair(served)
    try:
        await a.resv_register(1, nrkey=KEY_A)
        await b.resv_register(1, nrkey=KEY_B)
        await a.resv_acquire(1, ReservationType.EXCLUSIVE_ACCESS, crkey=KEY_A)
        done = await b.queue().submit(cmd.read(0, 1, 0, 1, 512), read_len=512)
        assert _conflict(done)
        report = await b.resv_report(1)
        assert report.rtype == ReservationType.EXCLUSIVE_ACCESS
        assert report.generation == 2 and report.ptpl
        assert [(r.hostid, r.rkey, r.holds) for r in report.registrants] == [
            (HOST_A.bytes, KEY_A, True), (HOST_B.bytes, KEY_B, False)]
        # The regular structure has no room for 128-bit host ids.
        done = await b.queue().submit(
            cmd.resv_report(0, 1, 512, extended=False), read_len=512)
        assert (done.sct, done.sc) == (0, GenericStatus.HOST_ID_INCONSISTENT_FORMAT)
        # A report cut short still counts every registrant.
        short = await b.resv_report(1, 64 + 64)
        assert short.regctl == 2 and len(short.registrants) == 1
    finally:
        await a.close()
        await b.close()


async def test_wrong_key_is_a_conflict_and_preempt_takes_over(served):
    a, b = await _pair(served)
    try:
        await a.resv_register(1, nrkey=KEY_A)
        await b.resv_register(1, nrkey=KEY_B)
        assert _conflict(await b.resv_register(1, nrkey=KEY_B + 1, check=False))
        assert _conflict(await b.resv_acquire(1, ReservationType.WRITE_EXCLUSIVE,
                                              crkey=KEY_A, check=False))
        await a.resv_acquire(1, ReservationType.WRITE_EXCLUSIVE, crkey=KEY_A)
        assert _conflict(await b.resv_acquire(1, ReservationType.WRITE_EXCLUSIVE,
                                              crkey=KEY_B, check=False))
        assert _conflict(await b.resv_release(1, ReservationType.WRITE_EXCLUSIVE,
                                              crkey=KEY_A, check=False))
        # B preempts A: A loses its registration and B holds the reservation.
        await b.resv_acquire(1, ReservationType.WRITE_EXCLUSIVE, crkey=KEY_B, prkey=KEY_A,
                             action=AcquireAction.PREEMPT)
        report = await a.resv_report(1)
        assert [(r.hostid, r.holds) for r in report.registrants] == [(HOST_B.bytes, True)]
        done = await a.queue().submit(_write_sqe(2), data=BLOCK)
        assert _conflict(done)
        await b.write(1, 2, BLOCK)
        # A registers again and B clears everything.
        ptpl = await a.admin_cmd(cmd.get_features(0, HostFeatureId.RESERVATION_PERSISTENCE, 1))
        assert ptpl.cqe.dw0 == 1
        await a.resv_register(1, nrkey=KEY_A, cptpl=CPTPL_CLEAR)
        ptpl = await a.admin_cmd(cmd.get_features(0, HostFeatureId.RESERVATION_PERSISTENCE, 1))
        assert ptpl.cqe.dw0 == 0
        await b.resv_release(1, 0, crkey=KEY_B, action=ReleaseAction.CLEAR)
        report = await a.resv_report(1)
        assert report.rtype == 0 and not report.registrants and not report.ptpl
        await a.write(1, 2, BLOCK)
    finally:
        await a.close()
        await b.close()


async def test_registrants_only_and_unregister(served):
    a, b = await _pair(served)
    try:
        await a.resv_register(1, nrkey=KEY_A)
        await a.resv_acquire(1, ReservationType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY, crkey=KEY_A)
        assert _conflict(await b.queue().submit(_write_sqe(3), data=BLOCK))
        await b.resv_register(1, nrkey=KEY_B)
        await b.write(1, 3, BLOCK)  # a registrant may write
        await b.resv_register(1, action=RegisterAction.REPLACE, crkey=KEY_B, nrkey=KEY_B + 7)
        await b.resv_register(1, action=RegisterAction.UNREGISTER, crkey=0, iekey=True)
        assert _conflict(await b.queue().submit(_write_sqe(3), data=BLOCK))
        # The holder unregistering ends a registrants-only reservation.
        await a.resv_register(1, action=RegisterAction.UNREGISTER, crkey=KEY_A)
        await b.write(1, 3, BLOCK)
    finally:
        await a.close()
        await b.close()


async def test_a_preempted_host_hears_of_it_by_event_and_log_page(served):
    a, b = await _pair(served)
    try:
        await a.resv_register(1, nrkey=KEY_A)
        await b.resv_register(1, nrkey=KEY_B)
        await a.resv_acquire(1, ReservationType.WRITE_EXCLUSIVE, crkey=KEY_A)
        aer = asyncio.get_running_loop().create_task(
            a.admin.submit(cmd.async_event_request(0)))
        await asyncio.sleep(0)
        assert not aer.done()
        await b.resv_acquire(1, ReservationType.EXCLUSIVE_ACCESS, crkey=KEY_B, prkey=KEY_A,
                             action=AcquireAction.PREEMPT)
        event = (await asyncio.wait_for(aer, 5)).check("AER")
        assert event.cqe.dw0 == 0x6 | (0x00 << 8) | (LogPageId.RESERVATION_NOTIFICATION << 16)
        page = pull_notification_log(await a.get_log_page(LogPageId.RESERVATION_NOTIFICATION,
                                                          64))
        assert (page.count, page.kind, page.nsid, page.available) == (
            1, ReservationNotice.REGISTRATION_PREEMPTED, 1, 0)
        empty = pull_notification_log(await a.get_log_page(LogPageId.RESERVATION_NOTIFICATION,
                                                           64))
        assert empty.count == 0 and empty.kind == 0
        # B took nothing from itself: its log is empty.
        mine = pull_notification_log(await b.get_log_page(LogPageId.RESERVATION_NOTIFICATION,
                                                          64))
        assert mine.count == 0
    finally:
        await a.close()
        await b.close()


async def test_a_change_is_persisted_before_the_command_completes(served):
    seen: list[ReservationRecord] = []

    async def persist(rec: ReservationRecord) -> None:
        seen.append(rec)

    ns = served.target.subsystems[NQN].namespaces[1]
    ns.reservations.on_change = persist
    a, b = await _pair(served)
    try:
        await a.resv_register(1, nrkey=KEY_A)
        await a.resv_acquire(1, ReservationType.WRITE_EXCLUSIVE, crkey=KEY_A)
        assert seen[-1] == ReservationRecord(((HOST_A.bytes, KEY_A),), HOST_A.bytes,
                                             ReservationType.WRITE_EXCLUSIVE, 1, True)
    finally:
        await a.close()
        await b.close()
