"""sbstore.iostats: InstrumentedDevice over a RAM device counts, times and passes through."""
from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Iterator, Sequence

import pytest

from sbstore import iostats
from sbstore.iostats import (
    BUCKET_BOUNDS_NS,
    Histogram,
    InstrumentedDevice,
    IoStats,
    slot_of,
)
from target.blockdev import BlockDevice, BlockDeviceError, OutOfRangeError, RamDevice
from tests.edges.bench_iostats import measure_overhead_ns


def ram(size: int = 1 << 20, bs: int = 512) -> RamDevice:
    return RamDevice(size, block_size=bs, uuid=uuid.UUID(int=5))


async def test_counts_bytes_and_operations() -> None:
    dev = InstrumentedDevice(ram())
    assert isinstance(dev, BlockDevice)
    assert (dev.block_size, dev.num_blocks, dev.uuid) == (512, 2048, uuid.UUID(int=5))
    await dev.write(0, b"\x01" * 4096)
    await dev.write(8, memoryview(b"\x02" * 1024), fua=True)
    assert bytes(await dev.read(0, 8)) == b"\x01" * 4096
    assert bytes(await dev.read(8, 2)) == b"\x02" * 1024
    await dev.read(100, 1)
    await dev.flush()
    await dev.write_zeroes(0, 4)
    await dev.deallocate([(10, 2), (20, 2)])
    s = dev.stats
    assert s.as_dict() == {
        "reads": 3, "writes": 2, "read_bytes": 4096 + 1024 + 512, "write_bytes": 4096 + 1024,
        "flushes": 1, "write_zeroes": 1, "deallocates": 1, "read_errors": 0,
        "write_errors": 0, "flush_errors": 0, "other_errors": 0, "errors": 0,
        "read_sum_ns": s.read_sum_ns, "write_sum_ns": s.write_sum_ns,
        "flush_sum_ns": s.flush_sum_ns,
    }
    assert s.histogram("read").count == 3 and s.read_sum_ns > 0
    assert s.histogram("write").count == 2 and s.histogram("flush").count == 1
    assert bytes(await dev.read(0, 4)) == bytes(2048)  # the calls reached the device


async def test_errors_are_counted_and_reraised_unchanged() -> None:
    dev = InstrumentedDevice(ram(64 * 512))
    with pytest.raises(OutOfRangeError):
        await dev.read(64, 1)
    with pytest.raises(OutOfRangeError):
        await dev.write(63, bytes(1024))
    with pytest.raises(OutOfRangeError):
        await dev.write_zeroes(60, 10)
    with pytest.raises(OutOfRangeError):
        await dev.deallocate([(70, 1)])

    boom = BlockDeviceError("flush failed", sct=2, sc=0x80)

    class FailingFlush(RamDevice):
        async def flush(self) -> None:
            raise boom

    failing = InstrumentedDevice(FailingFlush(4096))
    with pytest.raises(BlockDeviceError) as info:
        await failing.flush()
    assert info.value is boom and info.value.sct == 2
    s = dev.stats
    assert (s.reads, s.writes, s.write_zeroes, s.deallocates) == (0, 0, 0, 0)
    assert (s.read_errors, s.write_errors, s.other_errors, s.errors) == (1, 1, 2, 4)
    assert s.histogram("read").count == 0  # failed calls are not in the latency histogram
    assert (failing.stats.flush_errors, failing.stats.flushes) == (1, 0)


async def test_cancelled_io_is_neither_done_nor_an_error() -> None:
    started = asyncio.Event()

    class Slow(RamDevice):
        async def read(self, lba: int, nblocks: int) -> memoryview:
            started.set()
            await asyncio.sleep(3600)
            raise AssertionError("not reached")

    dev = InstrumentedDevice(Slow(4096))
    task = asyncio.create_task(dev.read(0, 1))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (dev.stats.reads, dev.stats.errors) == (0, 0)


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """iostats' clock returns the queued values in order."""
    ticks: list[int] = []
    monkeypatch.setattr(iostats, "_now", lambda: ticks.pop(0))
    yield ticks
    assert ticks == [], "unused clock ticks"


async def test_latency_buckets_follow_prometheus_le(fake_clock: list[int]) -> None:
    dev = InstrumentedDevice(ram())
    latencies = [1, 8192, 8193, 16384, 1_000_000, 8_589_934_592, 8_589_934_593, 20 * 10**9]
    for dt in latencies:
        fake_clock += [1_000, 1_000 + dt]
        await dev.read(0, 1)
    h = dev.stats.histogram("read")
    assert h.count == len(latencies) and h.sum_ns == sum(latencies)
    buckets = dict(h.buckets())
    assert list(buckets) == list(BUCKET_BOUNDS_NS)
    assert BUCKET_BOUNDS_NS[0] == 8192 and BUCKET_BOUNDS_NS[-1] == 2**33
    for bound, cumulative in buckets.items():
        # Exactly the observations <= bound (inclusive, as Prometheus' le).
        assert cumulative == sum(1 for dt in latencies if dt <= bound), bound
    assert buckets[8192] == 2 and buckets[16384] == 4 and buckets[2**33] == 6
    # Writes and flushes have their own histograms.
    fake_clock += [0, 50_000, 0, 3_000_000]
    await dev.write(0, bytes(512))
    await dev.flush()
    assert dict(dev.stats.histogram("write").buckets())[2**16] == 1
    assert dict(dev.stats.histogram("write").buckets())[2**15] == 0
    assert dev.stats.flush_sum_ns == 3_000_000


def test_slot_of_matches_bounds() -> None:
    for k in range(1, 40):
        assert slot_of(2**k) == k and slot_of(2**k + 1) == k + 1
    assert slot_of(0) == 0 and slot_of(1) == 0
    h = Histogram()
    h.observe(2**20)
    other = Histogram()
    other.observe(2**20)
    other.observe(3)
    h.add(other)
    assert (h.count, h.sum_ns, h.slots[20]) == (3, 2**21 + 3, 2)


async def test_snapshot_is_a_copy_and_add_sums() -> None:
    dev = InstrumentedDevice(ram())
    await dev.write(0, bytes(1024))
    snap = dev.stats.snapshot()
    await dev.write(0, bytes(1024))
    await dev.read(0, 1)
    assert (snap.writes, snap.reads, snap.histogram("write").count) == (1, 0, 1)
    total = IoStats()
    total.add(snap)
    total.add(dev.stats)
    assert (total.writes, total.write_bytes, total.reads) == (3, 3072, 1)
    assert total.histogram("write").count == 3
    with pytest.raises(ValueError):
        total.histogram("trim")


async def test_num_blocks_is_live_and_other_attributes_pass_through() -> None:
    class Growing(RamDevice):
        extra = 0
        label = "grows"

        @property
        def num_blocks(self) -> int:
            return super().num_blocks + self.extra

        async def deallocate(self, ranges: Sequence[tuple[int, int]]) -> None:
            return None

    inner = Growing(4096)
    dev = InstrumentedDevice(inner)
    assert dev.num_blocks == 8
    inner.extra = 8
    assert dev.num_blocks == 16
    assert dev.label == "grows" and dev.device is inner
    with pytest.raises(AttributeError):
        _ = dev.no_such_attribute


def test_overhead_benchmark_runs() -> None:
    """Prints the wrapper's cost per call (see bench_iostats.py); no timing is asserted."""
    result = measure_overhead_ns(n=2000, rounds=3)
    print({k: round(v, 1) for k, v in result.items()})
    assert set(result) == {f"{op}_{what}_ns" for op in ("read", "write")
                           for what in ("base", "wrapped", "overhead")}
    assert all(math.isfinite(v) and v > -1e6 for v in result.values())
