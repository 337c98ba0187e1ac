"""QoS in the real data path: the target serves QoS-wrapped devices over 127.0.0.1 to the
Python initiator. A tenant's limit holds for the host, a policy change reaches a connected
host's queued I/O, and a host that disconnects with I/O queued leaves nothing behind."""
from __future__ import annotations

import asyncio
import time

import pytest

from sbstore.qos import QosManager
from target.blockdev import RamDevice
from target.host import Controller
from target.server import TargetServer
from target.subsystem import Subsystem, Target

NQN_A = "nqn.2026-11.io.sbstore:qos-a"
NQN_B = "nqn.2026-11.io.sbstore:qos-b"


@pytest.fixture
async def served():
    mgr = QosManager()
    target = Target()
    for nqn, tenant in ((NQN_A, "a"), (NQN_B, "b")):
        sub = Subsystem(nqn, allow_any_host=True)
        sub.add_namespace(mgr.wrap(RamDevice(8 << 20, 512), nqn, tenant))
        target.add_subsystem(sub)
    server = TargetServer(target)
    listener = await server.listen("127.0.0.1", 0)
    try:
        yield mgr, int(listener.trsvcid)
    finally:
        await server.close()
        mgr.close()


async def load(ctrl: Controller, seconds: float, depth: int) -> int:
    stop = time.monotonic() + seconds
    n = 0

    async def worker(i: int) -> None:
        nonlocal n
        while time.monotonic() < stop:
            await ctrl.read(1, i * 8, 8)
            n += 1

    await asyncio.gather(*(worker(i) for i in range(depth)))
    return n


async def test_limit_holds_for_a_host_and_changes_while_it_is_connected(served):
    mgr, port = served
    mgr.set_tenant_policy("a", {"iops": 200, "burst_s": 0.05})
    async with await Controller.connect("127.0.0.1", port, NQN_A, queue_size=32) as a, \
            await Controller.connect("127.0.0.1", port, NQN_B, queue_size=32) as b:
        na, nb = await asyncio.gather(load(a, 1.5, 16), load(b, 1.5, 16))
        assert na / 1.5 == pytest.approx(200, rel=0.2)
        assert nb > 3 * na  # tenant b has no limit
        mgr.set_tenant_policy("a", {"iops": 600, "burst_s": 0.05})  # same connection
        na = await load(a, 1.5, 16)
        assert na / 1.5 == pytest.approx(600, rel=0.2)
    s = mgr.stats()
    assert s["a"].queued_ios == 0 and s["a"].throttled_seconds > 1.0
    assert s["b"].read_ios == nb and s["b"].throttled_seconds == 0


async def test_host_gone_with_io_queued_leaves_nothing_behind(served):
    mgr, port = served
    mgr.set_tenant_policy("a", {"iops": 1, "burst_s": 0})
    ctrl = await Controller.connect("127.0.0.1", port, NQN_A, queue_size=32)
    tasks = [asyncio.create_task(ctrl.read(1, i, 1)) for i in range(16)]
    deadline = time.monotonic() + 5
    while mgr.stats()["a"].queued_ios < 15 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert mgr.stats()["a"].queued_ios >= 15
    await ctrl.close(shutdown=False, timeout_s=1)
    await asyncio.gather(*tasks, return_exceptions=True)
    deadline = time.monotonic() + 5
    while mgr.stats()["a"].queued_ios and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert mgr.stats()["a"].queued_ios == 0
    b = mgr.backend()
    assert b.idle_slots == b.max_outstanding and b.queued == 0
