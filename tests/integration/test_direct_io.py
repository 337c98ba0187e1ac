"""Direct I/O (target.blockdev's optional ``read_direct``/``write_direct``) through a real
target on 127.0.0.1 with our initiator: what the host sees is what ``await read/write`` gives,
errors included, and a connection that goes away with direct I/Os in flight gives back its
admission exactly once.

The device here is a RAM device whose direct I/Os complete when the test releases them (or on
the next loop iteration), as an io_uring completion would: later than the call, from the loop.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sbstore.qos.admission import CpuAdmission
from target.blockdev import SCT_MEDIA, SC_UNRECOVERED_READ_ERROR, BlockDeviceError, RamDevice
from target.host import CommandFailed, Controller
from target.server import TargetServer
from target.subsystem import Subsystem, Target

NQN = "nqn.2026-12.io.sbstore:direct"
BS = 512


class LateRam(RamDevice):
    """A RAM device with direct reads and writes that complete from the loop: at once on the
    next iteration, or, with ``hold``, when the test calls :meth:`release`."""

    def __init__(self, size: int) -> None:
        super().__init__(size, BS)
        self.hold = False
        self.held: list[Callable[[], None]] = []
        self.direct_reads = 0
        self.direct_writes = 0
        self.fail_next_read: BlockDeviceError | None = None
        self.admission_flow: object | None = None
        self.read_direct = self._late_read  # (RamDevice's own complete at once)
        self.write_direct = self._late_write

    def _later(self, complete: Callable[[], None]) -> None:
        if self.hold:
            self.held.append(complete)
        else:
            asyncio.get_running_loop().call_soon(complete)

    def release(self) -> int:
        held, self.held = self.held, []
        for complete in held:
            complete()
        return len(held)

    def _late_read(self, lba: int, nblocks: int, done: Any, tag: Any) -> bool:
        self.direct_reads += 1
        error, self.fail_next_read = self.fail_next_read, None

        def complete() -> None:
            if error is not None:
                done(tag, None, error)
            else:
                done(tag, memoryview(bytes(self._view[lba * BS:(lba + nblocks) * BS])), None)
        self._later(complete)
        return True

    def _late_write(self, lba: int, data: Any, fua: bool, done: Any, tag: Any) -> bool:
        self.direct_writes += 1
        copy = bytes(data)

        def complete() -> None:
            self._view[lba * BS:lba * BS + len(copy)] = copy
            done(tag, None, None)
        self._later(complete)
        return True


@pytest.fixture
async def served() -> AsyncIterator[tuple[LateRam, TargetServer, int, CpuAdmission]]:
    dev = LateRam(8 << 20)
    adm = CpuAdmission()
    dev.admission_flow = adm.flow("t")
    target = Target()
    sub = Subsystem(NQN, allow_any_host=True)
    sub.add_namespace(dev)
    target.add_subsystem(sub)
    server = TargetServer(target, admission=adm)
    listener = await server.listen("127.0.0.1", 0)
    try:
        yield dev, server, int(listener.trsvcid), adm
    finally:
        await server.close()


async def test_direct_reads_and_writes_round_trip_and_are_counted(served) -> None:
    dev, server, port, adm = served
    async with await Controller.connect("127.0.0.1", port, NQN, nr_io_queues=2) as ctrl:
        blobs = [os.urandom(BS * (1 + i % 8)) for i in range(24)]
        await asyncio.gather(*(ctrl.write(1, i * 16, b, queue=i % 2)
                               for i, b in enumerate(blobs)))
        got = await asyncio.gather(*(ctrl.read(1, i * 16, len(b) // BS, queue=(i + 1) % 2)
                                     for i, b in enumerate(blobs)))
        assert [bytes(g) for g in got] == blobs
        assert (dev.direct_writes, dev.direct_reads) == (24, 24)
        # A FUA write is not direct (the device is asked through write(fua=True)).
        await ctrl.write(1, 1000, b"F" * BS, fua=True)
        assert dev.direct_writes == 24
        assert bytes(await ctrl.read(1, 1000, 1)) == b"F" * BS
    ns = server.target.subsystems[NQN].namespaces[1]
    assert (ns.counters.writes, ns.counters.reads) == (25, 25)
    assert ns.counters.read_bytes == sum(len(b) for b in blobs) + BS
    assert adm.inflight == pytest.approx(0)


async def test_a_failed_direct_read_gets_its_status_and_the_queue_goes_on(served) -> None:
    dev, _server, port, _adm = served
    async with await Controller.connect("127.0.0.1", port, NQN) as ctrl:
        await ctrl.write(1, 0, b"x" * BS)
        dev.fail_next_read = BlockDeviceError("bad sector", sct=SCT_MEDIA,
                                              sc=SC_UNRECOVERED_READ_ERROR)
        with pytest.raises(CommandFailed) as err:
            await ctrl.read(1, 0, 1)
        assert (err.value.sct, err.value.sc, err.value.dnr) == (2, 0x81, False)
        assert bytes(await ctrl.read(1, 0, 1)) == b"x" * BS


async def test_direct_ios_completing_after_their_connection_went_are_given_back_once(
        served) -> None:
    dev, server, port, adm = served
    adm.flow("other")  # two tenants: commands are admitted and counted (not solo)
    assert not adm.solo
    ctrl = await Controller.connect("127.0.0.1", port, NQN, queue_size=64)
    dev.hold = True
    reads = [asyncio.ensure_future(ctrl.read(1, i, 1)) for i in range(10)]
    writes = [asyncio.ensure_future(ctrl.write(1, 100 + i, b"w" * BS)) for i in range(5)]
    deadline = time.monotonic() + 5
    while len(dev.held) < 15 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert len(dev.held) == 15
    assert adm.inflight > 0
    await ctrl.close(shutdown=False)
    await asyncio.gather(*reads, *writes, return_exceptions=True)
    deadline = time.monotonic() + 5
    while any(c._session is not None for c in server._connections) \
            and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert adm.inflight == pytest.approx(0)  # connection_lost gave them back
    assert dev.release() == 15  # completing now must not give them back again
    await asyncio.sleep(0.05)
    assert adm.inflight == pytest.approx(0)
    # The target serves the next host.
    dev.hold = False
    async with await Controller.connect("127.0.0.1", port, NQN) as again:
        assert bytes(await again.read(1, 100, 1)) == b"w" * BS
    assert adm.inflight == pytest.approx(0)


async def test_a_lone_tenant_runs_without_admission_and_is_still_counted(served) -> None:
    dev, _server, port, adm = served
    assert adm.solo
    tenant = adm.tenants["t"]
    async with await Controller.connect("127.0.0.1", port, NQN) as ctrl:
        for i in range(5):
            await ctrl.write(1, i, b"s" * BS)
        await asyncio.gather(*(ctrl.read(1, i, 1) for i in range(5)))
        assert adm.inflight == 0 and adm.admitted(tenant) == 10
        adm.flow("other")  # a second tenant: admission from now on, the count carried over
        assert not adm.solo and tenant.admitted == 10
        await ctrl.read(1, 0, 1)
        assert adm.admitted(tenant) == 11
    assert adm.inflight == pytest.approx(0)
