"""What is particular to the io_uring engine: one submit per loop iteration, a Python backlog
when the rings are full, cancelled I/Os keeping their buffers, the loop it is bound to."""
from __future__ import annotations

import asyncio
import errno
import gc
import os

import pytest

from sbstore.store.engines import open_engine, uring
from sbstore.store.engines.ring import (
    OP_FALLOCATE,
    OP_FSYNC,
    OP_READ,
    OP_WRITE,
    SETUP_COOP_TASKRUN,
    Ring,
)
from sbstore.store.engines.uring import UringEngine

from .conftest import Target


def _uring(target: Target, **kw: int) -> UringEngine:
    e = open_engine(target.path, "io_uring", **kw)
    assert isinstance(e, UringEngine)
    return e


def test_the_ring_probes_the_ops_the_engine_needs() -> None:
    ring = Ring(8)
    try:
        assert {OP_READ, OP_WRITE, OP_FALLOCATE, OP_FSYNC} <= ring.probe()
        assert ring.sq_entries == 8 and ring.cq_entries == 16
    finally:
        ring.close()


async def test_ios_queued_in_one_iteration_go_in_one_submit(file_target: Target) -> None:
    e = _uring(file_target)
    try:
        await e.write(0, os.urandom(1 << 20))
        calls = e.stats()["submit_calls"]
        bufs = [e.buffer(4096) for _ in range(64)]
        await asyncio.gather(*[e.read_into(i * 4096, b) for i, b in enumerate(bufs)])
        assert e.stats()["submit_calls"] == calls + 1
    finally:
        e.close()


async def test_more_ios_than_the_rings_hold_wait_in_python(file_target: Target) -> None:
    e = _uring(file_target, ring_entries=4)  # SQ 4, CQ 8: at most 8 in the kernel
    try:
        data = os.urandom(300 * 4096)
        await e.write(0, data)
        bufs = [e.buffer(4096) for _ in range(300)]
        futs = [e.read_into(i * 4096, b) for i, b in enumerate(bufs)]
        st = e.stats()
        assert st["inflight"] == 300 and st["backlog"] == 300 - 4
        await asyncio.gather(*futs)
        assert e.stats()["backlog"] == 0 and e.stats()["inflight"] == 0
        for i, b in enumerate(bufs):
            assert bytes(b) == data[i * 4096:(i + 1) * 4096]
        # Writes, syncs and zeroing take the same path.
        ops = [e.write(i * 4096, data[:4096]) for i in range(50)]
        ops += [e.sync() for _ in range(5)] + [e.zero_range(1 << 20, 65536)]
        await asyncio.gather(*ops)
    finally:
        e.close()


async def test_a_cancelled_read_keeps_its_buffer_until_the_kernel_is_done(
        file_target: Target) -> None:
    e = _uring(file_target)
    try:
        await e.write(0, b"\x11" * 65536)
        buf = e.buffer(65536)
        fut = e.read_into(0, buf)
        fut.cancel()  # the caller gave up; the kernel has not
        del buf
        gc.collect()
        assert e._pool.stats()["buffers_in_use"] >= 1  # held by the in-flight record
        for _ in range(1000):  # bounded: the read completes in microseconds to milliseconds
            if not e.stats()["inflight"]:
                break
            await asyncio.sleep(0.001)
        assert e.stats()["inflight"] == 0
        assert e._pool.stats()["buffers_in_use"] == 0
    finally:
        e.close()


def test_opening_touches_no_event_loop_and_the_engine_moves_between_loops(
        file_target: Target) -> None:
    e = _uring(file_target)  # no loop running here
    try:
        assert e.stats()["inflight"] == 0

        async def round_trip(byte: bytes) -> bytes:
            await e.write(0, byte * 4096)
            b = e.buffer(4096)
            await e.read_into(0, b)
            return bytes(b)

        assert asyncio.run(round_trip(b"a")) == b"a" * 4096
        assert asyncio.run(round_trip(b"b")) == b"b" * 4096  # a new loop, the engine idle
    finally:
        e.close()


async def test_closing_with_ios_in_flight_waits_for_the_kernel(file_target: Target) -> None:
    e = _uring(file_target)
    await e.write(0, os.urandom(8 << 20))
    futs = [e.read_into(i << 20, e.buffer(1 << 20)) for i in range(8)]
    await asyncio.sleep(0)  # let them reach the kernel
    e.close()
    assert e._in_kernel() == 0  # nothing left in the kernel's hands
    for f in futs:
        with pytest.raises(OSError):
            await f


async def test_completions_run_as_cooperative_task_work_and_still_wake_a_sleeping_loop(
        file_target: Target) -> None:
    """COOP_TASKRUN (5.19+, as here): the disk's interrupt no longer interrupts the loop's
    thread, but a thread asleep in epoll_wait is still woken for its completions."""
    e = _uring(file_target)
    try:
        assert e._ring.flags & SETUP_COOP_TASKRUN and "COOP_TASKRUN" in e.reason
        await e.write(0, b"\x5a" * 4096)
        for _ in range(20):  # each read is the loop's only business: it sleeps until woken
            b = e.buffer(4096)
            await asyncio.wait_for(e.read_into(0, b), 5.0)
            assert bytes(b) == b"\x5a" * 4096
    finally:
        e.close()


def test_a_kernel_without_coop_taskrun_gets_a_plain_ring(file_target: Target,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Before 5.19 io_uring_setup refuses the flag with EINVAL: the engine sets up without it."""
    real_ring = uring.Ring

    def old_kernel_ring(entries: int, flags: int = 0) -> Ring:
        if flags & SETUP_COOP_TASKRUN:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_ring(entries, flags)

    monkeypatch.setattr(uring, "Ring", old_kernel_ring)
    e = _uring(file_target)
    try:
        assert e._ring.flags == 0 and "COOP_TASKRUN" not in e.reason

        async def round_trip() -> bytes:
            await e.write(0, b"q" * 4096)
            b = e.buffer(4096)
            await e.read_into(0, b)
            return bytes(b)

        assert asyncio.run(round_trip()) == b"q" * 4096
    finally:
        e.close()
