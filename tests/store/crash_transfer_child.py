"""The process ``test_crash_transfer.py`` kills: imports, increments, cancelled inflates and
deletions on a pool, over and over, narrated on stdout.

Usage: python -m tests.store.crash_transfer_child POOL STREAM_DIR SEED

STREAM_DIR holds ``full.sbs`` (snapshot s1 of a source volume) and ``inc2.sbs`` .. ``incN.sbs``
(s{k-1} -> s{k}). Lines: ``OK NAME`` once an import of snapshot NAME returned (it is durable);
``DEL`` before deleting the replica and its snapshots, ``GONE`` once they are.
"""
from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from sbstore.store import Pool
from sbstore.store.transfer import file_chunks, import_stream


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def import_file(pool: Pool, path: Path, name: str) -> str:
    with open(path, "rb") as f:
        got = await import_stream(pool, name, file_chunks(f, 64 << 10))
    return got.snapshot.name


async def main(pool_path: str, stream_dir: str, seed: int) -> None:
    rng = random.Random(seed)
    streams = Path(stream_dir)
    n = 1 + len(list(streams.glob("inc*.sbs")))
    pool = Pool.open(pool_path)
    pool.commit_interval = rng.choice([0.005, 0.05, 0.2])
    say("READY")
    while True:
        names = {v.name for v in pool.volumes}
        if "replica" not in names and not names:
            say(f"OK {await import_file(pool, streams / 'full.sbs', 'replica')}")
            continue
        head = pool.volume("replica").parent if "replica" in names else None
        k = int(head.name[1:]) if head is not None else n
        r = rng.random() if head is not None else 1.0  # a deletion killed midway: finish it
        if k < n and r < 0.6:
            say(f"OK {await import_file(pool, streams / f'inc{k + 1}.sbs', 'replica')}")
        elif r < 0.8 and head is not None and not any(x.startswith("clone-") for x in names):
            # A clone of the replica's snapshot (named after it), inflated, cancelled at a
            # random point (or not in time: then it is whole and independent).
            clone = await pool.clone(head, f"clone-{head.name}")
            task = asyncio.get_running_loop().create_task(pool.inflate(clone))
            await asyncio.sleep(rng.uniform(0, 0.01))
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            say("INFLATE")
        else:
            say("DEL")
            clones = sorted(x for x in names if x.startswith("clone-"))
            for name in (*clones, "replica", *[f"s{i}" for i in range(n, 0, -1)]):
                if name in {v.name for v in pool.volumes}:
                    await pool.delete(name)
            say("GONE")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
