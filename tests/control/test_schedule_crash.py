"""kill -9 while snapshot schedules run (``schedule_crash_child.py``, time moved by hand):
afterwards the pool checks clean, every ``@auto-`` snapshot is kept by a schedule once the next
tick has settled what the crash interrupted (none left behind that no schedule would ever
delete), and after one more run each schedule keeps exactly ``keep`` snapshots per volume."""
from __future__ import annotations

import asyncio
import calendar
import os
import random
import time
from pathlib import Path

import pytest

from sbstore.control.schedules import ScheduleRunner
from sbstore.store.check import check_pool
from tests.control.schedule_crash_child import TICK_S
from tests.control.test_schedules import control
from tests.store import conftest as store_fixtures
from tests.store.killed_child import run_until_killed

KILLS = int(os.environ.get("SBSTORE_CRASH_KILLS", "15"))
T0 = calendar.timegm((2026, 12, 1, 0, 0, 0))
HOUR = 3600
KEEP = {"1h": 3, "1d": 2, "6h": 2}
pool_dir = store_fixtures.pool_dir  # the store tests' fixture: files on tmpfs


def run_child(directory: Path, start: float, lifetime: float) -> list[str]:
    return run_until_killed("tests.control.schedule_crash_child", [str(directory), str(start)],
                            lifetime)


async def setup(directory: Path) -> None:
    async with control(directory) as service:
        await service.create_volume("v", 4 << 20)
        await service.create_tenant("gold")
        for name in ("a", "b"):
            await service.create_volume(name, 4 << 20, tenant="gold")
        await service.add_schedule("1h", KEEP["1h"], volume="v")
        await service.add_schedule("1d", KEEP["1d"], volume="v")
        await service.add_schedule("6h", KEEP["6h"], tenant="gold")


async def verify(directory: Path, now: float, run: int) -> None:
    report = check_pool(str(directory / "p.pool"))
    assert report.clean, (run, report.problems)
    async with control(directory) as service:
        runner = ScheduleRunner(service)
        runner._settle_intents()
        kept = {s.uuid for s in service.state.scheduled_snapshots()}
        assert None not in kept, run
        autos = {v["uuid"]: v["name"] for v in service.list_volumes(kind="snapshot")
                 if "@auto-" in v["name"]}
        orphans = set(autos) - kept
        assert not orphans, (run, [autos[u] for u in orphans])
        # One more tick, a day later. Not every schedule need be due then (the killed child
        # may have begun a run after its last "T" line), but a runner's first tick prunes every
        # schedule, so none keeps more than ``keep`` per volume: a crash between a run's
        # snapshots and its pruning is finished at the next start.
        await runner.tick(now + 24 * HOUR)
        for s in service.list_schedules():
            per_volume: dict[str, int] = {}
            for name in s["snapshots"]:
                origin = name.split("@")[0]
                per_volume[origin] = per_volume.get(origin, 0) + 1
            assert all(n <= s["keep"] for n in per_volume.values()), \
                (run, s, service.state.scheduled_snapshots())
    assert check_pool(str(directory / "p.pool")).clean, run


@pytest.mark.crash
def test_kill_9_while_schedules_run(pool_dir: Path) -> None:
    asyncio.run(setup(pool_dir))
    rng = random.Random(int(os.environ.get("SBSTORE_CRASH_SEED", "20261206")))
    start = float(T0)
    ticks = 0
    deadline = time.monotonic() + 150
    for run in range(KILLS):
        assert time.monotonic() < deadline, f"only {run} kills in the time allowed"
        lines = run_child(pool_dir, start, rng.uniform(0.05, 0.5))
        done = [float(line.split()[1]) for line in lines if line.startswith("T ")]
        ticks += len(done)
        last = done[-1] if done else start
        # (verify's extra day moves time on: the next child starts after it)
        asyncio.run(verify(pool_dir, last, run))
        start = last + 24 * HOUR + TICK_S
    assert ticks > KILLS, "the children hardly ran"
