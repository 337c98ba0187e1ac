"""perf/native_load.py: the C program drives I/O queues the Python initiator brought up, against
a real target over loopback. What lands on the device, the commands the target served and the
errors the program counts are checked, not only that it ran."""
from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from perf.fastload import payload_for
from perf.native_load import run_native
from target.blockdev import RamDevice
from target.host import Controller
from target.server import TargetServer, TransportLimits
from target.subsystem import Subsystem, Target
from tests.counting_ram import CountingRam

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="no C compiler (test.sh installs gcc)")

NQN = "nqn.2026-11.io.sbstore:native-load"
DEVICE_BYTES = 8 << 20


@asynccontextmanager
async def connected(ram: RamDevice, maxh2cdata: int | None = None,
                    queues: int = 1) -> AsyncIterator[Controller]:
    target = Target()
    sub = Subsystem(NQN, allow_any_host=True)
    sub.add_namespace(ram)
    target.add_subsystem(sub)
    server = TargetServer(target, TransportLimits(maxh2cdata=maxh2cdata))
    listener = await server.listen("127.0.0.1", 0)
    try:
        ctrl = await Controller.connect("127.0.0.1", int(listener.trsvcid), NQN,
                                        nr_io_queues=queues, queue_size=16)
        try:
            yield ctrl
        finally:
            await ctrl.close(shutdown=False)
    finally:
        await server.close()


def written_slots(ram: RamDevice, bs: int) -> list[bytes]:
    slots = [bytes(ram._buf[i:i + bs]) for i in range(0, DEVICE_BYTES, bs)]
    return [s for s in slots if any(s)]


@pytest.mark.parametrize("bs,maxh2cdata", [(4096, None), (128 << 10, None),
                                           (128 << 10, 32768)])
async def test_writes_land_in_the_capsule_or_after_r2t(bs, maxh2cdata):
    """4k writes travel in the capsule; 128k ones follow R2Ts, split at MAXH2CDATA."""
    ram = CountingRam(DEVICE_BYTES, 512)
    async with connected(ram, maxh2cdata) as ctrl:
        ios, errors, lat, seconds = await run_native(
            ctrl, nsid=1, rw="randwrite", bs=bs, qd=8, seconds=10.0, max_ios=200,
            span_bytes=DEVICE_BYTES, seed=7)
    assert (ios, errors, len(lat)) == (200, 0, 200)
    assert ram.writes == 200 and ram.reads == 0
    assert 0 < seconds < 10 and min(lat) > 0
    written = written_slots(ram, bs)
    assert written and all(s == payload_for(7, bs) for s in written)


async def test_sequential_reads_over_two_queues():
    ram = CountingRam(DEVICE_BYTES, 4096)
    async with connected(ram, queues=2) as ctrl:
        ios, errors, lat, _ = await run_native(
            ctrl, nsid=1, rw="read", bs=16384, qd=4, seconds=10.0, max_ios=300,
            span_bytes=DEVICE_BYTES, seed=1)
    assert (ios, errors, len(lat)) == (300, 0, 300)  # 150 per queue
    assert ram.reads == 300 and ram.writes == 0


async def test_a_flush_after_every_n_writes():
    ram = CountingRam(DEVICE_BYTES, 512)
    async with connected(ram) as ctrl:
        ios, errors, _, _ = await run_native(
            ctrl, nsid=1, rw="write", bs=4096, qd=4, seconds=10.0, max_ios=100,
            span_bytes=DEVICE_BYTES, seed=2, flush_every=4)
    assert (ios, errors) == (100, 0)
    assert (ram.writes, ram.flushes) == (80, 20)  # every fifth command a Flush


async def test_a_random_mix_in_proportion():
    ram = CountingRam(DEVICE_BYTES, 512)
    async with connected(ram) as ctrl:
        ios, errors, _, _ = await run_native(
            ctrl, nsid=1, rw="randrw", bs=4096, qd=8, seconds=10.0, max_ios=1000,
            span_bytes=DEVICE_BYTES, seed=5, rwmixread=70)
    assert (ios, errors) == (1000, 0)
    assert ram.reads + ram.writes == 1000
    assert 0.62 < ram.reads / 1000 < 0.78, (ram.reads, ram.writes)


async def test_failed_commands_are_counted():
    """Reads past the namespace's end fail with LBA Out of Range: the program counts them."""
    ram = CountingRam(1 << 20, 512)
    async with connected(ram) as ctrl:
        ios, errors, _, _ = await run_native(
            ctrl, nsid=1, rw="randread", bs=4096, qd=4, seconds=10.0, max_ios=200,
            span_bytes=DEVICE_BYTES, seed=3)
    assert ios == 200
    assert 100 < errors < 200  # 7/8 of an 8 MiB span lies past a 1 MiB namespace
    assert ram.reads == 200 - errors


async def test_the_run_stops_on_time():
    ram = RamDevice(DEVICE_BYTES, 512)
    async with connected(ram) as ctrl:
        ios, errors, lat, seconds = await run_native(
            ctrl, nsid=1, rw="randread", bs=4096, qd=4, seconds=0.3, max_ios=10**9,
            span_bytes=DEVICE_BYTES, seed=4)
    assert errors == 0 and ios == len(lat) > 0
    assert 0.3 <= seconds < 5
