"""CPU admission: held commands leave by tenant weight, a turn runs at most its budget, a gone
connection's commands are dropped, and the target stops reading a connection that holds too
many (TCP back-pressure) and reads it again once they ran."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from sbstore.qos import QosManager, admission
from sbstore.qos.admission import CpuAdmission, CpuFlow
from target.blockdev import RamDevice
from target.host import Controller
from target.server import HELD_HIGH_WATER, TargetServer
from target.subsystem import Subsystem, Target


class Conn:
    """A connection as the controller sees it (target.admission.HeldCommands); with ``adm``
    its commands finish as they run (a synchronous device), else they stay in flight."""

    def __init__(self, log: list[Any], turns: list[int], adm: CpuAdmission | None = None) -> None:
        self.log = log
        self.turns = turns
        self.adm = adm

    def run_held(self, event: Any, flow: Any, nbytes: int) -> None:
        self.log.append(event)
        self.turns[-1] += 1
        if self.adm is not None:
            self.adm.finished(flow, 1, nbytes)

    def end_turn(self) -> None:
        pass


async def spin(n: int = 50) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_held_commands_leave_by_weight_and_a_turn_runs_its_budget() -> None:
    adm = CpuAdmission(turn_budget=8)
    adm.set_weight("a", 300)
    adm.set_weight("b", 100)
    fa, fb = adm.flow("a"), adm.flow("b")
    log: list[Any] = []
    turns = [0]
    conn = Conn(log, turns, adm)
    for i in range(400):
        adm.hold(fa, 4096, conn, ("a", i))
        adm.hold(fb, 4096, conn, ("b", i))
    assert adm.backlog == 800
    for _ in range(25):  # 25 turns of 8
        turns.append(0)
        await asyncio.sleep(0)
    assert max(turns) == 8  # never more than the budget per turn
    first = log[:200]
    a = sum(1 for e in first if e[0] == "a")
    assert a == pytest.approx(150, abs=2)  # 3:1
    # Within a tenant, first in, first out.
    assert [e[1] for e in log if e[0] == "a"][:20] == list(range(20))


async def test_commands_run_at_once_until_the_turn_budget_is_spent() -> None:
    """The turn budget applies while tenants compete; a tenant alone is never held for it."""
    adm = CpuAdmission(turn_budget=4)
    a = adm.flow("a")
    assert all(adm.admit(a, 512) for _ in range(10))  # alone: no budget
    adm.finished(a, 9, 9 * 512)  # one of a's stays executing: a stays active, however slow
    b = adm.flow("b")
    assert [adm.admit(b, 512) for _ in range(5)] == [True] * 4 + [False]
    assert not adm.admit(a, 512)  # the turn's budget is spent for both
    adm.finished(b, 4, 4 * 512)
    await spin(2)  # the turn ends: a fresh budget
    assert adm.admit(b, 512)
    adm.finished(b, 1, 512)
    log: list[Any] = []
    adm.hold(b, 512, Conn(log, [0], adm), "held")
    assert not adm.admit(a, 512)  # nothing overtakes a held command
    await spin(2)
    assert log == ["held"]


async def test_room_bounds_what_executes_and_goes_by_weight_to_closed_loop_hosts() -> None:
    """Two hosts each keep 8 commands outstanding; the target has room for 4 executing, served
    first in, first out (a device, or the CPU). Completions follow the weights 3:1, and never
    more than the room executes."""
    adm = CpuAdmission(turn_budget=1000, max_inflight=4, cost_bytes=1 << 30)
    adm.set_weight("a", 300)
    flows = {"a": adm.flow("a"), "b": adm.flow("b")}
    executing: list[tuple[str, Any]] = []  # FIFO service
    done = {"a": 0, "b": 0}

    class Host:
        def __init__(self, name: str) -> None:
            self.name = name

        def run_held(self, event: Any, flow: Any, nbytes: int) -> None:
            executing.append((self.name, flow))

        def end_turn(self) -> None:
            pass

    hosts = {n: Host(n) for n in flows}

    def send(name: str) -> None:
        if adm.admit(flows[name], 0):
            executing.append((name, flows[name]))
        else:
            adm.hold(flows[name], 0, hosts[name], None)

    for _ in range(8):
        send("a")
        send("b")
    for _ in range(400):
        await spin(2)
        assert len(executing) <= 4
        name, flow = executing.pop(0)
        adm.finished(flow, 1, 0)
        done[name] += 1
        send(name)  # the host sends its next command at once
    assert done["a"] / done["b"] == pytest.approx(3.0, rel=0.1)


def test_a_tenant_with_nothing_executing_runs_past_a_full_room() -> None:
    adm = CpuAdmission(turn_budget=16, max_inflight=8, cost_bytes=64 << 10)
    busy, quiet = adm.flow("busy"), adm.flow("quiet")
    for _ in range(3):
        assert adm.admit(busy, 128 << 10)  # alone: at once, past the room (9 of 8)
    assert adm.admit(quiet, 4096)  # the room is full, but quiet has nothing executing
    assert not adm.admit(busy, 128 << 10)


async def test_a_tenant_with_one_command_at_a_time_goes_ahead_of_held_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A QD1 host beside a busy one: its command runs at once, ahead of held commands, rather
    than a loop turn later; once per turn, and not within SHALLOW_S of having had several
    commands outstanding."""
    clock = [100.0]
    monkeypatch.setattr(admission, "_now", lambda: clock[0])
    adm = CpuAdmission(turn_budget=2, max_inflight=64)
    busy, quiet = adm.flow("busy"), adm.flow("quiet")
    log: list[Any] = []
    conn = Conn(log, [0])  # what runs stays executing
    assert adm.admit(busy, 4096)
    assert adm.admit(quiet, 4096)
    adm.finished(quiet, 1, 4096)
    assert adm.admit(busy, 4096)  # the turn's budget is spent: busy's next ones are held
    for i in range(40):
        assert not adm.admit(busy, 4096)
        adm.hold(busy, 4096, conn, ("busy", i))
    assert adm.admit(quiet, 4096)  # ahead of busy's held commands and past the budget
    adm.finished(quiet, 1, 4096)
    clock[0] += 0.001
    assert not adm.admit(quiet, 4096)  # a second time in the same turn: it waits its turn
    adm.hold(quiet, 4096, conn, ("quiet", 1))
    await spin(2)  # the turn runs quiet's first: it executes least for its weight
    assert log[:2] == [("quiet", 1), ("busy", 0)]
    adm.finished(quiet, 1, 4096)
    clock[0] += 0.001
    assert adm.admit(quiet, 4096)  # a new turn: ahead again
    assert not adm.admit(quiet, 4096)  # two outstanding: no longer one at a time
    adm.hold(quiet, 4096, conn, ("quiet", 2))
    await spin(2)
    assert ("quiet", 2) in log
    adm.finished(quiet, 2, 8192)
    clock[0] += admission.SHALLOW_S / 2
    assert adm.backlog  # busy still has commands held
    assert not adm.admit(quiet, 4096)  # too soon after having two
    adm.hold(quiet, 4096, conn, ("quiet", 3))
    await spin(2)
    assert ("quiet", 3) in log
    adm.finished(quiet, 1, 4096)
    clock[0] += admission.SHALLOW_S
    assert adm.backlog
    assert adm.admit(quiet, 4096)  # one at a time for SHALLOW_S: ahead again
    # What the metrics show (sbstore_tenant_cpu_ahead_total, _cpu_one_at_a_time).
    assert (adm.tenants["quiet"].ahead, adm.tenants["busy"].ahead) == (3, 0)
    adm.finished(quiet, 1, 4096)
    await spin(2)  # (the next turn looks at the active tenants again)
    assert adm.keeps_one_at_a_time(adm.tenants["quiet"])
    assert not adm.keeps_one_at_a_time(adm.tenants["busy"])


def test_while_a_qd1_tenant_is_active_the_others_move_little_data_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader at QD1 beside a writer of 128 KiB: the writer's executing commands move at most
    latency_bytes (one command always may); with no QD1 tenant about, only the room applies."""
    clock = [100.0]
    monkeypatch.setattr(admission, "_now", lambda: clock[0])
    big = 128 << 10

    def writer_runs(latency_bytes: int, with_reader: bool) -> int:
        adm = CpuAdmission(turn_budget=1000, max_inflight=32, latency_bytes=latency_bytes)
        writer, reader = adm.flow("writer"), adm.flow("reader")
        assert adm.admit(writer, big) and adm.admit(writer, big)  # alone: unbounded
        clock[0] += 0.001  # (which tenants keep one command at a time is found every ms)
        if with_reader:
            assert adm.admit(reader, 4096)  # its one command: nothing executing, it runs
            adm.finished(reader, 1, 4096)  # (the reader is between two commands)
        else:
            assert adm.admit(adm.flow("other"), big)  # a second busy tenant (it stays deep)
            assert adm.admit(adm.flow("other"), big)
        clock[0] += 0.001
        n = 2
        while adm.admit(writer, big):
            n += 1
            assert n < 100
        return n

    assert writer_runs(256 << 10, True) == 2  # 256 KiB: two 128 KiB writes
    assert writer_runs(1 << 20, True) == 5  # the room's half (16 of 32, a write costs 3)
    assert writer_runs(0, True) == 5  # off
    assert writer_runs(256 << 10, False) == 5  # nobody at QD1: only the room


async def test_a_tenant_whose_commands_wait_long_is_not_taken_for_a_qd1_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy tenant whose commands sit held (a slow device) for longer than SHALLOW_S,
    sending nothing new meanwhile, still keeps several outstanding: it does not go ahead, and
    does not bound the others."""
    clock = [100.0]
    monkeypatch.setattr(admission, "_now", lambda: clock[0])
    adm = CpuAdmission(turn_budget=2, max_inflight=8)
    busy, other = adm.flow("busy"), adm.flow("other")
    conn = Conn([], [0])
    assert adm.admit(busy, 4096) and adm.admit(other, 4096)
    for i in range(10):
        if not adm.admit(busy, 4096):
            adm.hold(busy, 4096, conn, i)
    adm.finished(other, 1, 4096)
    clock[0] += 2 * admission.SHALLOW_S
    assert adm.admit(other, 4096)  # ahead of busy's held commands: one at a time
    adm.finished(other, 1, 4096)  # a turn follows: it looks at the active tenants again
    await spin(2)
    assert not adm.keeps_one_at_a_time(adm.tenants["busy"])
    assert adm.keeps_one_at_a_time(adm.tenants["other"])


async def test_a_tenant_whose_commands_finish_in_their_turn_does_not_go_ahead_by_batches(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a synchronous device (RAM) a saturating tenant has nothing executing between its
    commands; it arrives many per turn, so it is held with the others and keeps its weight."""
    clock = [100.0]
    monkeypatch.setattr(admission, "_now", lambda: clock[0])
    adm = CpuAdmission(turn_budget=4)
    adm.set_weight("heavy", 300)
    light, heavy = adm.flow("light"), adm.flow("heavy")
    log: list[Any] = []
    turns = [0]
    conn = Conn(log, turns, adm)  # what runs finishes at once

    def send(flow: CpuFlow, name: str, n: int) -> None:
        for i in range(n):
            if adm.admit(flow, 512):
                log.append((name, "now"))
                adm.finished(flow, 1, 512)
            else:
                adm.hold(flow, 512, conn, (name, i))

    for _ in range(30):
        turns.append(0)
        send(light, "light", 8)
        send(heavy, "heavy", 8)
        clock[0] += 0.0005
        await spin(2)
    ran_now = [e for e in log[40:] if e[1] == "now"]
    assert ran_now == []  # after the first turns, nothing goes ahead
    tail = log[40:]
    h = sum(1 for e in tail if e[0] == "heavy")
    assert h / max(len(tail) - h, 1) == pytest.approx(3.0, rel=0.15)


async def test_forgetting_a_connection_drops_only_its_commands() -> None:
    adm = CpuAdmission(turn_budget=1)
    f = adm.flow("a")
    kept: list[Any] = []
    gone = Conn([], [0])
    stay = Conn(kept, [0], adm)
    for i in range(5):
        adm.hold(f, 512, gone, ("gone", i))
        adm.hold(f, 512, stay, ("stay", i))
    assert adm.forget(gone) == 5
    assert adm.backlog == 5
    await spin(20)
    assert [e[1] for e in kept] == list(range(5))
    assert adm.backlog == 0


class HoldAll:
    """An admission controller that holds everything until the test releases it."""

    solo = False  # (never: everything goes through admit)
    solo_admitted = 0

    def __init__(self) -> None:
        self.held: list[tuple[Any, Any]] = []

    def admit(self, flow: Any, nbytes: int) -> bool:
        return False

    def hold(self, flow: Any, nbytes: int, conn: Any, event: Any) -> None:
        self.held.append((conn, event))

    def finished(self, flow: Any, n: int, nbytes: int) -> None:
        pass

    def forget(self, conn: Any) -> int:
        n = len(self.held)
        self.held = [h for h in self.held if h[0] is not conn]
        return n - len(self.held)

    def release(self) -> None:
        held, self.held = self.held, []
        conns = {}
        for conn, event in held:
            conn.run_held(event, "flow", 512)
            conns[conn] = None
        for conn in conns:
            conn.end_turn()


class Flowing(RamDevice):
    admission_flow = "flow"  # any object: the target only hands it back


async def test_a_connection_holding_too_many_stops_being_read() -> None:
    adm = HoldAll()
    target = Target()
    sub = Subsystem("nqn.2026-12.io.sbstore:held", allow_any_host=True)
    sub.add_namespace(Flowing(8 << 20, 512))
    target.add_subsystem(sub)
    server = TargetServer(target, admission=adm)
    listener = await server.listen("127.0.0.1", 0)
    try:
        async with await Controller.connect("127.0.0.1", int(listener.trsvcid), sub.nqn,
                                            queue_size=256) as ctrl:
            n = HELD_HIGH_WATER + 40
            reads = [asyncio.ensure_future(ctrl.read(1, i, 1)) for i in range(n)]
            deadline = time.monotonic() + 5
            while len(adm.held) < HELD_HIGH_WATER and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            # The connection stopped being read at the high-water mark: the rest of the
            # commands wait in the socket, not in the target.
            assert len(adm.held) == HELD_HIGH_WATER
            conn = next(iter(server._connections - {c for c in server._connections
                                                    if c._session is None
                                                    or c._session.qid == 0}))
            assert conn._read_paused
            for _ in range(20):
                adm.release()
                await asyncio.sleep(0.05)
                if all(r.done() for r in reads):
                    break
            assert all(r.done() for r in reads)
            for r in reads:
                assert bytes(r.result()) == bytes(512)
            assert not conn._read_paused
    finally:
        await server.close()


async def test_weights_hold_when_the_cpu_is_the_bottleneck() -> None:
    """Hosts and target share one loop here, so the CPU is saturated by construction; each
    host keeps 16 reads in flight. Completed reads follow the weights 1:3."""
    mgr = QosManager(turn_budget=4)
    target = Target()
    nqns = {}
    for tenant, weight in (("light", 100), ("heavy", 300)):
        mgr.set_tenant_policy(tenant, {"weight": weight})
        nqn = f"nqn.2026-12.io.sbstore:{tenant}"
        sub = Subsystem(nqn, allow_any_host=True)
        sub.add_namespace(mgr.wrap(RamDevice(8 << 20, 512), nqn, tenant))
        target.add_subsystem(sub)
        nqns[tenant] = nqn
    server = TargetServer(target, admission=mgr.admission)
    listener = await server.listen("127.0.0.1", 0)
    port = int(listener.trsvcid)
    counts = {"light": 0, "heavy": 0}
    try:
        async with await Controller.connect("127.0.0.1", port, nqns["light"],
                                            queue_size=64) as light, \
                await Controller.connect("127.0.0.1", port, nqns["heavy"],
                                         queue_size=64) as heavy:
            stop = time.monotonic() + 2.0

            async def worker(name: str, ctrl: Controller, i: int) -> None:
                while time.monotonic() < stop:
                    await ctrl.read(1, i * 8, 8)
                    counts[name] += 1
            await asyncio.gather(*(worker(n, c, i) for n, c in (("light", light),
                                                                 ("heavy", heavy))
                                   for i in range(16)))
    finally:
        await server.close()
        mgr.close()
    ratio = counts["heavy"] / max(counts["light"], 1)
    assert 2.4 < ratio < 3.6, counts


class Stuck(RamDevice):
    """Reads wait until released: commands stay in execution."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.release = asyncio.Event()

    async def read(self, lba: int, nblocks: int) -> memoryview:
        await self.release.wait()
        return await super().read(lba, nblocks)


async def test_commands_in_execution_are_given_back_when_their_connection_goes() -> None:
    mgr = QosManager(max_inflight=8)
    target = Target()
    devs = []
    for name in ("stuck", "other"):
        sub = Subsystem(f"nqn.2026-12.io.sbstore:{name}", allow_any_host=True)
        devs.append(Stuck(8 << 20, 512))
        sub.add_namespace(mgr.wrap(devs[-1], name, name))
        target.add_subsystem(sub)
    server = TargetServer(target, admission=mgr.admission)
    listener = await server.listen("127.0.0.1", 0)
    port = int(listener.trsvcid)
    adm = mgr.admission
    try:
        other = await Controller.connect("127.0.0.1", port, "nqn.2026-12.io.sbstore:other")
        busy = asyncio.ensure_future(other.read(1, 0, 1))  # keeps tenant "other" active
        ctrl = await Controller.connect("127.0.0.1", port, "nqn.2026-12.io.sbstore:stuck",
                                        queue_size=64)
        reads = [asyncio.ensure_future(ctrl.read(1, i, 1)) for i in range(20)]
        deadline = time.monotonic() + 5
        while adm.backlog < 17 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        # Two tenants active: "stuck" may use half the room of 8; a 512-byte read costs
        # 1 + 512/64K, so three of its reads execute and the rest wait.
        assert adm.backlog == 17
        assert adm.tenants["stuck"].inflight == pytest.approx(3 * (1 + 512 / (64 << 10)))
        await ctrl.close(shutdown=False)
        await asyncio.gather(*reads, return_exceptions=True)
        deadline = time.monotonic() + 5
        while (adm.tenants["stuck"].inflight or adm.backlog) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert (adm.tenants["stuck"].inflight, adm.backlog) == (0, 0)
        devs[1].release.set()
        await busy
        await other.close()
        assert adm.inflight == pytest.approx(0)
    finally:
        for d in devs:
            d.release.set()
        await server.close()
        mgr.close()
