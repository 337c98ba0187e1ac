"""The process ``test_schedule_crash.py`` kills: snapshot schedules run with time moved ten
minutes per tick, on a real pool and state database.

Usage: python -m tests.control.schedule_crash_child DIR START

Prints ``READY`` once running, then ``T now`` after each tick completes."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from sbstore.control.schedules import ScheduleRunner
from sbstore.control.service import ControlService
from sbstore.control.state import StateStore
from sbstore.store import Pool
from target.server import TargetServer
from target.subsystem import Target

TICK_S = 600
MAX_TICKS = 100_000  # bounded; the parent kills it long before


async def main(directory: Path, start: float) -> None:
    pool = Pool.open(directory / "p.pool")
    state = StateStore(directory / "state.db")
    target = Target()
    service = ControlService(state, {"p": pool}, target, TargetServer(target))
    await service.restore()
    runner = ScheduleRunner(service)
    print("READY", flush=True)
    now = start
    for _ in range(MAX_TICKS):
        await runner.tick(now)
        print(f"T {now}", flush=True)
        now += TICK_S


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), float(sys.argv[2])))
