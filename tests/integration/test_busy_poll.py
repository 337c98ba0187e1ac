"""Busy-polling (target.busypoll, ``TransportLimits.busy_poll_s``): the loop spins only after
receives and stops by itself; a busy-polling target serves I/O and still enforces keep-alive.
No timing is asserted: only what ran and what stopped."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from target.blockdev import RamDevice
from target.busypoll import BusyPoller
from target.host import Controller
from target.server import TargetServer, TransportLimits
from target.subsystem import Subsystem, Target

NQN = "nqn.2026-11.io.sbstore:busy"


async def _until(predicate, rounds: int = 500) -> bool:
    """Let the loop run (bounded) until ``predicate()`` holds."""
    for _ in range(rounds):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


async def test_poller_spins_after_a_kick_and_stops_when_quiet() -> None:
    poller = BusyPoller(asyncio.get_running_loop(), window_s=0.002)
    assert not poller.spinning and poller.spins == 0
    poller.kick()
    assert poller.spinning and poller.bursts == 1
    await asyncio.sleep(0)  # one loop iteration: the spin re-arms itself
    await asyncio.sleep(0)
    assert poller.spins >= 1
    # No more kicks: the spin ends once the window has passed (the loop then sleeps again).
    assert await _until(lambda: not poller.spinning)
    spins = poller.spins
    await asyncio.sleep(0.02)
    assert poller.spins == spins  # quiet: not spinning, not counting
    poller.kick()  # a later receive starts a new burst
    assert poller.spinning and poller.bursts == 2
    poller.close()
    assert not poller.spinning
    await asyncio.sleep(0.01)
    assert not poller.spinning  # close() cancelled the pending spin


async def test_kicks_keep_it_spinning() -> None:
    # A window far longer than the kicks' spacing, so that a loaded machine descheduling the
    # test for a while does not end it between two kicks.
    poller = BusyPoller(asyncio.get_running_loop(), window_s=5.0)
    try:
        poller.kick()
        for _ in range(20):  # kicks inside the window: one burst, never a stop
            await asyncio.sleep(0.001)
            poller.kick()
            assert poller.spinning
        assert poller.bursts == 1
    finally:
        poller.close()


async def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BusyPoller(asyncio.get_running_loop(), 0)


@pytest.fixture
async def busy_served():
    target = Target()
    ram = RamDevice(16 << 20, block_size=512, uuid=uuid.UUID(int=7))
    sub = Subsystem(NQN, serial="SBSBUSY0001", model="sbstore busy", allow_any_host=True)
    sub.add_namespace(ram)
    target.add_subsystem(sub)
    server = TargetServer(target, TransportLimits(busy_poll_s=0.005))
    listener = await server.listen("127.0.0.1", 0)
    try:
        yield server, int(listener.trsvcid)
    finally:
        await server.close()


async def test_busy_polling_target_serves_io_and_stops_spinning(busy_served) -> None:
    server, port = busy_served
    poller = server.poller()
    assert poller is not None and not poller.spinning  # nothing received yet: no spinning
    async with await Controller.connect("127.0.0.1", port, NQN, nr_io_queues=1) as ctrl:
        for lba in range(32):
            await ctrl.write(1, lba, bytes([lba]) * 512)
        for lba in range(32):
            assert bytes(await ctrl.read(1, lba, 1)) == bytes([lba]) * 512
        assert poller.spins > 0 and poller.bursts >= 1
    assert await _until(lambda: not poller.spinning)  # the host went quiet


async def test_busy_polling_target_still_drops_a_silent_host(busy_served) -> None:
    server, port = busy_served
    silent = await Controller.connect("127.0.0.1", port, NQN, nr_io_queues=1, kato_ms=1000,
                                      keep_alive=False)
    try:
        await silent.write(1, 0, b"\x01" * 512)
        # Silence for well over KATO: the keep-alive timer must fire although the loop was
        # spinning after the write.
        assert await silent.admin.wait_closed(timeout_s=8)
        for q in silent.io_queues:
            assert await q.wait_closed(timeout_s=2)
    finally:
        await silent.close(shutdown=False)


def test_off_by_default() -> None:
    assert TransportLimits().busy_poll_s == 0
    assert TargetServer(Target()).poller() is None
