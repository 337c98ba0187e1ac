"""Power cuts at random points: the crash suite's workload on a disk whose write cache is lost.

Where ``test_crash.py`` kills the process (what the page cache then keeps, survives), this test
cuts the power of a simulated disk (``powercut.VolatileDisk``): every write that no completed
flush covers is dropped, including writes the pool already saw complete. The workload runs in
rounds of concurrent writes and trims on the async data path (completions arrive out of order,
several commands share clusters), with timer commits, flushes, snapshots, clones and deletes in
between. After each cut the same checks as ``test_crash.py`` hold: ``check`` is clean, every
acknowledged creation and deletion happened, snapshots read what their volume held when taken,
and each block reads its value as of the last acknowledged flush or a later write's.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from pathlib import Path

import pytest

from sbstore.store import Pool, StoreError
from tests.store.crash_child import workload
from tests.store.powercut import PowerCutBacking, PowerCutEngine, VolatileDisk
from tests.store.test_crash import apply, setup, verify

CUTS = int(os.environ.get("SBSTORE_POWERCUT_RUNS", "25"))


async def run_until_cut(path: Path, seed: int, seq: int, lifetime_s: float
                        ) -> tuple[list[str], int]:
    """Run the workload for ``lifetime_s``, cut the power; returns its narration and how
    many cached sectors the cut lost."""
    disk = VolatileDisk(str(path), seed=seed)
    rng = random.Random(seed)
    pool = Pool.open(path, backing=PowerCutBacking(disk), engine=PowerCutEngine(disk, seed))
    pool.commit_interval = rng.choice([0.005, 0.05, 0.2])
    lines: list[str] = []
    task = asyncio.create_task(workload(pool, rng, seq, lines.append, concurrency=8))
    await asyncio.sleep(lifetime_s)
    lost = disk.cut()
    task.cancel()
    narration = list(lines)  # nothing said after the cut counts
    with contextlib.suppress(asyncio.CancelledError, StoreError, OSError):
        await task
    # Let the abandoned pool's in-flight work fail against the dead disk, then let it go.
    with contextlib.suppress(StoreError, OSError):
        await asyncio.wait_for(pool.aclose(), 30)
    disk.close()
    return narration, lost


@pytest.mark.crash
def test_power_cut_at_random_points(pool_dir: Path) -> None:
    path = pool_dir / "pool.img"
    model = asyncio.run(setup(path))
    rng = random.Random(int(os.environ.get("SBSTORE_CRASH_SEED", "20261206")))
    seq = 1
    lost_total = 0
    deadline = time.monotonic() + 240
    for run in range(CUTS):
        assert time.monotonic() < deadline, f"only {run} power cuts in the time allowed"
        lines, lost = asyncio.run(run_until_cut(path, rng.randrange(1 << 30), seq,
                                                rng.uniform(0.02, 0.3)))
        assert lines, "the workload did nothing"
        lost_total += lost
        groups: list[set[str]] = []
        durable, nxt = apply(model, lines, groups)
        seq = max(seq, nxt)
        model = asyncio.run(verify(path, model, durable, run, groups))
    # The test means something only if cuts really dropped acknowledged-but-unflushed writes.
    assert lost_total > 0
