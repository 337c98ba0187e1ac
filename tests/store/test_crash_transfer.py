"""kill -9 during imports (full and incremental) and cancelled inflates: a child process
(``crash_transfer_child.py``) imports a chain of export streams into a pool again and again and
is killed with SIGKILL after a random delay, many times.

After each kill: ``check`` finds the pool clean; it opens; nothing is half done: the only
names are the replica, its snapshots and a clone, every snapshot s<k> reads exactly what the
source's s<k> read, the replica reads exactly its newest snapshot, the clone (clone-s<k>)
exactly s<k> (an inflate cancelled or killed midway changes no byte), and no hidden import is
left (the space the visible volumes do not map is free). An import the child acknowledged
is there unless a deletion started after it.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from pathlib import Path

import pytest

from sbstore.store import Pool
from sbstore.store.check import check_pool
from sbstore.store.transfer import prepare_export
from tests.store.killed_child import run_until_killed

KILLS = int(os.environ.get("SBSTORE_CRASH_KILLS", "15"))
MiB = 1 << 20
SNAPSHOTS = 4


async def make_streams(src: Path, out: Path) -> dict[str, str]:
    """Source volume with snapshots s1..s4 and their streams; returns each one's sha256."""
    pool = Pool.create(src, 64 * MiB, cluster_size=16 << 10)
    rng = random.Random(7)
    want: dict[str, str] = {}
    try:
        vol = await pool.create_volume("v", 2 * MiB)
        for k in range(1, SNAPSHOTS + 1):
            for _ in range(12):
                lba = rng.randrange(0, vol.num_blocks - 64)
                if rng.random() < 0.2 and k > 1:
                    await vol.write_zeroes(lba, 64)
                else:
                    await vol.write(lba, rng.randbytes(rng.choice([1, 8, 64]) * 512))
            if k == 3:
                await vol.resize(3 * MiB)  # an increment that grows the volume
            snap = await vol.snapshot(f"s{k}")
            want[snap.name] = hashlib.sha256(await snap.read(0, snap.num_blocks)).hexdigest()
            exp = await prepare_export(pool, snap, None if k == 1 else f"s{k - 1}")
            name = "full.sbs" if k == 1 else f"inc{k}.sbs"
            (out / name).write_bytes(b"".join([c async for c in exp.chunks()]))
    finally:
        await pool.aclose()
    return want


def run_child(path: Path, streams: Path, seed: int, lifetime: float) -> list[str]:
    return run_until_killed("tests.store.crash_transfer_child",
                            [str(path), str(streams), str(seed)], lifetime)


async def verify(path: Path, want: dict[str, str], acked: str | None, run: int) -> None:
    report = check_pool(str(path))
    assert report.clean, (run, report.problems)
    pool = Pool.open(path)
    try:
        vols = {v.name: v for v in pool.volumes}
        clones = {f"clone-{s}" for s in want}
        assert set(vols) <= {"replica", *clones, *want}, (run, sorted(vols))
        if acked is not None:
            assert acked in vols, (run, f"import of {acked} was acknowledged but is gone")
        for name, v in vols.items():
            got = hashlib.sha256(await v.read(0, v.num_blocks)).hexdigest()
            if v.is_snapshot:
                assert got == want[name], (run, f"{name} does not read the source's {name}")
            elif name in clones:  # inflated partly, wholly or not at all: the same bytes
                assert got == want[name.removeprefix("clone-")], (run, name)
            else:
                assert v.parent is not None, (run, name)
                assert got == want[v.parent.name], (run, f"{name} does not read "
                                                         f"{v.parent.name}")
        # No hidden import left: every allocated cluster is mapped by a visible volume.
        mapped: set[int] = set()
        for v in vols.values():
            mapped.update(p for p in v.cluster_map() if p)
        assert pool.stats().allocated_bytes == len(mapped) * pool.cluster_size, run
    finally:
        await pool.aclose()
    assert check_pool(str(path)).clean


@pytest.mark.crash
def test_kill_9_during_imports_and_inflates(pool_dir: Path, tmp_path: Path) -> None:
    streams = tmp_path / "streams"
    streams.mkdir()
    want = asyncio.run(make_streams(pool_dir / "src.img", streams))
    path = pool_dir / "dst.img"
    Pool.create(path, 64 * MiB, cluster_size=64 << 10).close()
    rng = random.Random(int(os.environ.get("SBSTORE_CRASH_SEED", "20261206")))
    deadline = time.monotonic() + 150
    seen: dict[str, int] = {}
    for run in range(KILLS):
        assert time.monotonic() < deadline, f"only {run} kills in the time allowed"
        lines = run_child(path, streams, rng.randrange(1 << 30), rng.uniform(0.05, 0.5))
        acked = None
        for line in lines:
            seen[line.split()[0] if not line.startswith("OK ") else line] = \
                seen.get(line, 0) + 1
            if line.startswith("OK "):
                acked = line.split()[1]
            elif line == "DEL":
                acked = None  # (what an increment changes, it does not delete)
        asyncio.run(verify(path, want, acked, run))
    # The kills came late enough to test something: full imports, increments, inflates.
    assert "OK s1" in seen and "OK s2" in seen and "INFLATE" in seen, seen
