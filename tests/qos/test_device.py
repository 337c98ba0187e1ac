"""QosDevice and QosManager on a real event loop (uvloop), with generous bounds: limits hold,
weights hold roughly, flushes do not deadlock, cancelled I/O leaves nothing behind, policy
changes reach queued I/O."""
from __future__ import annotations

import asyncio
import time

import pytest

from sbstore.qos import QosManager
from target.blockdev import BlockDeviceError, RamDevice

BS = 512


class SlowDevice:
    """A RAM device whose every I/O takes ``delay_s`` (a backend with real service time)."""

    def __init__(self, delay_s: float = 0.002, size: int = 1 << 20) -> None:
        self.ram = RamDevice(size, BS)
        self.delay_s = delay_s
        self.inflight = 0
        self.max_inflight = 0
        self.gate: asyncio.Event | None = None
        self.flushed_after: list[int] = []
        self.writes_done = 0

    block_size = property(lambda self: self.ram.block_size)
    num_blocks = property(lambda self: self.ram.num_blocks)
    uuid = property(lambda self: self.ram.uuid)

    async def _io(self) -> None:
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.delay_s)
        finally:
            self.inflight -= 1

    async def read(self, lba, nblocks):
        await self._io()
        return await self.ram.read(lba, nblocks)

    async def write(self, lba, data, fua=False):
        await self._io()
        await self.ram.write(lba, data, fua)
        self.writes_done += 1

    async def flush(self):
        await self._io()
        self.flushed_after.append(self.writes_done)

    async def write_zeroes(self, lba, nblocks):
        await self._io()
        await self.ram.write_zeroes(lba, nblocks)

    async def deallocate(self, ranges):
        await self._io()
        await self.ram.deallocate(ranges)


async def hammer(dev, seconds: float, depth: int, op: str = "read") -> int:
    """``depth`` workers doing back-to-back I/O for ``seconds``; returns I/Os completed."""
    stop = time.monotonic() + seconds
    done = 0

    async def worker(i: int) -> None:
        nonlocal done
        while time.monotonic() < stop:
            if op == "read":
                await dev.read(i * 8, 8)
            else:
                await dev.write(i * 8, bytes(8 * BS))
            done += 1

    await asyncio.gather(*(worker(i) for i in range(depth)))
    return done


def test_no_policy_is_the_fast_path_and_never_suspends():
    mgr = QosManager()
    dev = mgr.wrap(RamDevice(1 << 20, BS), "v", "t")
    coro = dev.write(0, b"\x07" * BS)
    with pytest.raises(StopIteration):  # completed on its first step: no Task needed
        coro.send(None)
    coro = dev.read(0, 1)
    with pytest.raises(StopIteration) as stop:
        coro.send(None)
    assert bytes(stop.value.value) == b"\x07" * BS
    s = mgr.stats()["t"]
    assert (s.read_ios, s.write_ios, s.read_bytes, s.write_bytes) == (1, 1, BS, BS)
    assert mgr.backend().idle_slots == mgr.backend().max_outstanding
    assert dev.block_size == BS and dev.num_blocks == 2048 and dev.tenant == "t"


async def test_limited_but_under_limit_also_goes_without_suspending():
    mgr = QosManager()
    mgr.set_tenant_policy("t", {"iops": 1000})
    dev = mgr.wrap(RamDevice(1 << 20, BS), "v", "t")
    coro = dev.read(0, 1)
    with pytest.raises(StopIteration):
        coro.send(None)
    assert mgr.stats()["t"].read_ios == 1


async def test_iops_limit_holds_over_two_seconds():
    mgr = QosManager()
    mgr.set_tenant_policy("t", {"iops": 300, "burst_s": 0.05})
    dev = mgr.wrap(RamDevice(1 << 20, BS), "v", "t")
    n = await hammer(dev, 2.0, depth=16)
    assert n / 2.0 == pytest.approx(300, rel=0.15)
    s = mgr.stats()["t"]
    assert s.throttled_seconds == pytest.approx(2.0, rel=0.2)
    assert s.queued_ios == 0


async def test_bandwidth_and_write_limits_hold():
    mgr = QosManager()
    mgr.set_tenant_policy("t", {"read_bps": 2 << 20, "write_iops": 200, "burst_s": 0.05})
    dev = mgr.wrap(RamDevice(1 << 22, BS), "v", "t")
    reads, writes = await asyncio.gather(hammer(dev, 1.5, 8), hammer(dev, 1.5, 8, "write"))
    assert reads * 8 * BS / 1.5 == pytest.approx(2 << 20, rel=0.15)
    assert writes / 1.5 == pytest.approx(200, rel=0.15)


async def test_volume_limit_inside_tenant_limit():
    mgr = QosManager()
    mgr.set_tenant_policy("t", {"iops": 400, "burst_s": 0.05})
    mgr.set_volume_policy("v1", {"iops": 100, "burst_s": 0.05})
    d1 = mgr.wrap(RamDevice(1 << 20, BS), "v1", "t")
    d2 = mgr.wrap(RamDevice(1 << 20, BS), "v2", "t")
    n1, n2 = await asyncio.gather(hammer(d1, 1.5, 8), hammer(d2, 1.5, 8))
    assert n1 / 1.5 == pytest.approx(100, rel=0.2)
    assert (n1 + n2) / 1.5 == pytest.approx(400, rel=0.15)


async def test_weights_share_a_saturated_backend_roughly():
    mgr = QosManager(max_outstanding=4)
    mgr.set_tenant_policy("a", {"weight": 100})
    mgr.set_tenant_policy("b", {"weight": 300})
    disk = SlowDevice(0.002)
    da, db = mgr.wrap(disk, "va", "a"), mgr.wrap(disk, "vb", "b")
    na, nb = await asyncio.gather(hammer(da, 1.5, 16), hammer(db, 1.5, 16))
    assert disk.max_inflight <= 4  # the bound holds: contention is in our queues
    assert nb / na == pytest.approx(3.0, rel=0.25)
    # Alone, weight 1 gets the whole backend (work-conserving).
    alone = await hammer(da, 1.0, 16)
    assert alone == pytest.approx((na + nb) / 1.5, rel=0.25)


async def test_flushes_among_throttled_writes_do_not_deadlock():
    mgr = QosManager(max_outstanding=1)
    mgr.set_tenant_policy("t", {"write_iops": 50, "iops": 200, "burst_s": 0.01})
    disk = SlowDevice(0.001)
    dev = mgr.wrap(disk, "v", "t")

    async def writer(i: int) -> None:
        for _ in range(10):
            await dev.write(i * 8, bytes(8 * BS))

    async def flusher() -> None:
        for _ in range(10):
            before = disk.writes_done
            await dev.flush()
            # The flush reached the device after every write completed before it was sent.
            assert disk.flushed_after[-1] >= before

    async with asyncio.timeout(10):
        await asyncio.gather(*(writer(i) for i in range(4)), flusher(), flusher(),
                             dev.write_zeroes(0, 8), dev.deallocate([(8, 8)]))
    s = mgr.stats()["t"]
    assert s.write_ios == 40 and s.other_ios == 22 and s.queued_ios == 0
    assert mgr.backend().idle_slots == 1


async def test_cancelled_queued_io_leaves_its_queue_and_slots_come_back():
    mgr = QosManager(max_outstanding=1)
    disk = SlowDevice(0.0)
    disk.gate = asyncio.Event()
    dev = mgr.wrap(disk, "v", "t")
    b = mgr.backend()
    first = asyncio.create_task(dev.read(0, 1))  # takes the only slot, waits on the gate
    await asyncio.sleep(0.01)
    second = asyncio.create_task(dev.read(8, 1))  # queued
    await asyncio.sleep(0.01)
    assert b.queued == 1 and b.idle_slots == 0
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert b.queued == 0 and mgr.stats()["t"].queued_ios == 0
    # The target's way: it closes the coroutine where it waits (GeneratorExit).
    coro = dev.read(16, 1)
    fut = coro.send(None)
    assert isinstance(fut, asyncio.Future) and b.queued == 1
    coro.close()
    assert b.queued == 0
    # Cancelled while in the backend: the slot comes back.
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert b.idle_slots == 1
    disk.gate = None
    assert bytes(await dev.read(0, 1)) == bytes(BS)


async def test_cancelled_after_dispatch_before_running_gives_the_slot_back():
    mgr = QosManager(max_outstanding=1)
    disk = SlowDevice(0.0)
    disk.gate = asyncio.Event()
    dev = mgr.wrap(disk, "v", "t")
    b = mgr.backend()
    first = asyncio.create_task(dev.read(0, 1))
    await asyncio.sleep(0.01)
    coro = dev.read(8, 1)
    waiter = coro.send(None)  # queued
    disk.gate.set()
    await first  # its slot goes to the queued read: the waiter resolves...
    assert waiter.done() and b.idle_slots == 0
    coro.close()  # ...but its connection went before it ran
    assert b.idle_slots == 1 and b.queued == 0


async def test_policy_change_releases_queued_io_without_reconnecting():
    mgr = QosManager()
    mgr.set_tenant_policy("t", {"iops": 1, "burst_s": 0})
    dev = mgr.wrap(RamDevice(1 << 20, BS), "v", "t")
    await dev.read(0, 1)  # spends the bucket
    tasks = [asyncio.create_task(dev.read(i, 1)) for i in range(20)]
    await asyncio.sleep(0.05)
    assert mgr.stats()["t"].queued_ios == 20
    mgr.set_tenant_policy("t", {"iops": 0})
    async with asyncio.timeout(1):
        await asyncio.gather(*tasks)
    # Moving a volume to another tenant moves its queued I/O too.
    mgr.set_tenant_policy("slow", {"iops": 1, "burst_s": 0})
    mgr.assign("v", "slow")
    await dev.read(0, 1)
    tasks = [asyncio.create_task(dev.read(i, 1)) for i in range(5)]
    await asyncio.sleep(0.05)
    assert mgr.stats()["slow"].queued_ios == 5
    mgr.assign("v", "t")
    async with asyncio.timeout(1):
        await asyncio.gather(*tasks)
    assert dev.tenant == "t"


async def test_errors_propagate_and_free_the_slot():
    class Failing(SlowDevice):
        async def read(self, lba, nblocks):
            raise BlockDeviceError("boom", sct=2, sc=0x81)

    mgr = QosManager(max_outstanding=2)
    mgr.set_tenant_policy("t", {"iops": 10000})
    dev = mgr.wrap(Failing(0.0), "v", "t")
    for _ in range(5):
        with pytest.raises(BlockDeviceError):
            await dev.read(0, 1)
    assert mgr.backend().idle_slots == 2


async def test_manager_follows_the_control_service():
    """The hooks the daemon wires: device_hook, on_policy_change, sync."""
    from dataclasses import dataclass

    @dataclass
    class Change:
        kind: str
        tenant: str
        policy: object
        pool: str | None = None
        volume_uuid: str | None = None
        deleted: bool = False

    @dataclass
    class Record:
        tenant: str
        limits: object

    class Vol:
        uuid = "1234"

    mgr = QosManager()
    dev = mgr.device_hook("pool0", Vol(), RamDevice(1 << 20, BS))
    assert dev.key == ("pool0", "1234") and dev.tenant == "default"
    assert "pool0" in mgr.backends
    mgr.on_policy_change(Change("tenant", "gold", {"weight": 500, "iops": 10}))
    mgr.on_policy_change(Change("volume", "gold", {"read_iops": 5}, "pool0", "1234"))
    assert dev.tenant == "gold"
    sched = mgr.backends["pool0"]
    assert sched.tenants["gold"].weight == 500
    assert sched.volumes[("pool0", "1234")].limits.limits.read_iops == 5
    mgr.sync({"default": None, "silver": {"iops": 7}},
             {("pool0", "1234"): Record("silver", None)})
    assert dev.tenant == "silver" and sched.volumes[("pool0", "1234")].limits.unlimited
    assert sched.tenants["gold"].weight == 100  # gone from the state: back to defaults
    mgr.on_policy_change(Change("volume", "silver", None, "pool0", "1234", deleted=True))
    assert ("pool0", "1234") not in sched.volumes
    assert set(mgr.stats()) >= {"default", "silver"}
    mgr.close()


async def test_inline_backend_hands_back_the_inner_coroutine_until_a_limit_is_set():
    mgr = QosManager()
    mgr.backend("ram", inline=True)
    ram = RamDevice(1 << 20, BS)
    dev = mgr.wrap(ram, "v", "t", backend="ram")
    coro = dev.read(0, 1)
    assert coro.cr_code is RamDevice.read.__code__  # the inner device's own coroutine
    await coro
    await dev.write(0, bytes(BS))
    s = mgr.stats()["t"]
    assert (s.read_ios, s.write_ios, s.read_bytes, s.write_bytes) == (1, 1, BS, BS)
    assert mgr.backend("ram").idle_slots == mgr.backend("ram").max_outstanding
    # A limit puts it back through the queue (and the limit holds).
    mgr.set_tenant_policy("t", {"iops": 200, "burst_s": 0.05})
    coro = dev.read(0, 1)
    assert coro.cr_code is not RamDevice.read.__code__
    await coro
    n = await hammer(dev, 1.0, depth=8)
    assert n == pytest.approx(200, rel=0.2)
