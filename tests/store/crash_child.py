"""The process ``test_crash.py`` kills: random I/O and management on a pool, narrated on stdout.

Usage: python -m tests.store.crash_child POOL SEED FIRST_SEQ [IO_ENGINE]

Every operation gets a sequence number and is announced on stdout *before* it starts, so the
parent knows every value a block may hold. Acknowledgements are printed *after* completion:
``F seq`` means every operation numbered below ``seq`` is durable (a flush, a FUA write or a
management operation completed). Lines:

    W seq vol lba n fua   write n blocks of pattern(seq, block) at lba
    T seq vol lba n       deallocate
    F seq                 durable below seq
    S seq vol snap / SD seq      snapshot started / done
    C seq snap clone / CD seq    clone started / done
    D seq name / DD seq        delete started / done
    G seq group vol... / GD seq  group snapshot (vol@group each) started / done
    X seq group / XD seq       group deletion started / done
    T seq vol lba n, then R seq+1 vol blocks / RD seq+1
                               resize to blocks (a shrink zeroes what it drops first)
"""
from __future__ import annotations

import asyncio
import random
import struct
import sys
from collections.abc import Callable

from sbstore.store import Pool

BS = 512


def pattern(seq: int, lba: int, n: int) -> bytes:
    return b"".join(struct.pack("<QQ", seq, lba + i) * (BS // 16) for i in range(n))


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(path: str, seed: int, seq: int, io: str | None = None) -> None:
    rng = random.Random(seed)
    pool = Pool.open(path, io=io)
    pool.commit_interval = rng.choice([0.005, 0.05, 0.2])  # timer commits race the I/O
    say("READY")
    await workload(pool, rng, seq, say)


async def workload(pool: Pool, rng: random.Random, seq: int, say: Callable[[str], None], *,
                   concurrency: int = 1) -> None:
    """Random I/O and management on ``pool`` until cancelled or killed, narrated by ``say``.

    With ``concurrency`` above 1, writes and trims go in rounds of up to that many at once,
    each in its own region of its volume (regions are not cluster-aligned, so concurrent
    commands share clusters); a round is awaited whole before the next operation, so the
    narration's meaning stays as above (FUA acknowledges nothing then: its flush need not
    cover the rest of its round)."""
    while True:
        vols = [v for v in pool.volumes if not v.is_snapshot]
        snaps = [v for v in pool.volumes if v.is_snapshot]
        r = rng.random()
        if r < 0.92:
            k = 1 if concurrency == 1 else rng.randint(1, concurrency)
            ops = []
            any_fua = False
            for i in range(k):
                v = rng.choice(vols)
                if k == 1:
                    lo, hi = 0, v.num_blocks
                else:
                    span = v.num_blocks // k
                    lo, hi = i * span, (i + 1) * span
                if (r if k == 1 else rng.random() * 0.92) < 0.75:
                    n = min(rng.choice([1, 1, 2, 7, 8, 9, 16, 33]), hi - lo)
                    lba = rng.randrange(lo, hi - n) if rng.random() < 0.5 else \
                        rng.randrange(lo, min(lo + 64, hi - n))
                    fua = rng.random() < 0.05
                    any_fua |= fua
                    say(f"W {seq} {v.name} {lba} {n} {int(fua)}")
                    ops.append(v.write(lba, pattern(seq, lba, n), fua))
                else:
                    n = min(rng.choice([1, 8, 64, 200]), hi - lo)
                    lba = rng.randrange(lo, hi - n)
                    say(f"T {seq} {v.name} {lba} {n}")
                    ops.append(v.deallocate([(lba, n)]))
                seq += 1
            if k == 1:
                await ops[0]
            else:
                await asyncio.gather(*ops)
            if any_fua and k == 1:
                say(f"F {seq}")
        elif r < 0.95:
            await pool.flush()
            say(f"F {seq}")
        elif r < 0.955 and len(snaps) < 5:
            members = rng.sample(vols, min(len(vols), rng.choice([2, 2, 3])))
            group = f"g{seq}"
            say(f"G {seq} {group} " + " ".join(v.name for v in members))
            await pool.snapshot_group(group, members)
            seq += 1
            say(f"GD {seq - 1}")
            say(f"F {seq}")
        elif r < 0.96 and pool.groups():
            group = rng.choice(sorted(pool.groups()))
            say(f"X {seq} {group}")
            await pool.delete_group(group)
            seq += 1
            say(f"XD {seq - 1}")
            say(f"F {seq}")
        elif r < 0.965:
            v = rng.choice(vols)
            blocks = rng.randrange(1 << 20, 2 << 20, BS) // BS  # 1..2 MiB, not cluster-aligned
            if blocks < v.num_blocks:
                say(f"T {seq} {v.name} {blocks} {v.num_blocks - blocks}")
                seq += 1
            say(f"R {seq} {v.name} {blocks}")
            await v.resize(blocks * BS, shrink=True)
            seq += 1
            say(f"RD {seq - 1}")
            say(f"F {seq}")
        elif r < 0.97 and len(snaps) < 6:
            v = rng.choice(vols)
            name = f"s{seq}"
            say(f"S {seq} {v.name} {name}")
            await v.snapshot(name)
            seq += 1
            say(f"SD {seq - 1}")
            say(f"F {seq}")
        elif r < 0.98 and snaps and len(vols) < 4:
            s = rng.choice(snaps)
            name = f"c{seq}"
            say(f"C {seq} {s.name} {name}")
            await pool.clone(s, name)
            seq += 1
            say(f"CD {seq - 1}")
            say(f"F {seq}")
        elif snaps or len(vols) > 2:
            victims = snaps + [v for v in vols if v.name.startswith("c")]
            x = rng.choice(victims)
            say(f"D {seq} {x.name}")
            await pool.delete(x)
            say(f"DD {seq}")
            seq += 1
            say(f"F {seq}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:5]))
