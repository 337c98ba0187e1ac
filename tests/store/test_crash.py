"""kill -9 at random points: a child process writes, trims, flushes, snapshots (alone and in
groups), clones, shrinks and grows, and deletes (snapshots alone and whole groups) on a pool (``crash_child.py``) and is killed with SIGKILL after a random delay, many times.

After each kill: ``check`` finds the pool clean; it opens; every volume and snapshot whose
creation was acknowledged exists, every acknowledged deletion is gone; each snapshot reads
exactly what its volume held when it was taken; a group snapshot or a group deletion the kill
interrupted left all its snapshots or none; each block of a writable volume reads its value
as of the last acknowledged flush, or a value some later write gave it (a volatile write cache
may or may not have kept it), never anything else. The next child continues on the same pool.
"""
from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sbstore.store import Pool
from sbstore.store.check import check_pool
from tests.store.crash_child import BS, pattern
from tests.store.killed_child import run_until_killed
from tests.store.loopdev import loop_device

KILLS = int(os.environ.get("SBSTORE_CRASH_KILLS", "15"))  # per engine and device
VOLUME_BYTES = 2 << 20


@dataclass
class Vol:
    snap: bool
    base: bytes  # content when this child started (or when it was created in this run)
    # (seq, lba, n, kind): kind "W" write, "T" trim, "R" resize to lba blocks (n unused)
    ops: list[tuple[int, int, int, str]] = field(default_factory=list)
    maybe_exists: bool = False  # creation announced, not acknowledged
    maybe_deleted: bool = False  # deletion announced, not acknowledged

    def current(self) -> bytearray:
        """Content with every announced operation applied (what a snapshot now captures)."""
        data = bytearray(self.base)
        for seq, lba, n, kind in self.ops:
            apply_op(data, seq, lba, n, kind)
        return data


def apply_op(data: bytearray, seq: int, lba: int, n: int, kind: str) -> None:
    if kind == "R":
        size = lba * BS
        if size < len(data):
            del data[size:]
        else:
            data.extend(bytes(size - len(data)))
        return
    data[lba * BS:(lba + n) * BS] = bytes(n * BS) if kind == "T" else pattern(seq, lba, n)


def run_child(path: Path, seed: int, seq: int, lifetime: float, io: str) -> list[str]:
    return run_until_killed("tests.store.crash_child", [str(path), str(seed), str(seq), io],
                            lifetime)


def apply(model: dict[str, Vol], lines: list[str],
          groups: list[set[str]] | None = None) -> tuple[int, int]:
    """Feed the child's narration to the model; return (durable seq, next seq). ``groups``
    gets the members of each group creation or deletion left unacknowledged: after the crash
    all of them exist or none does."""
    durable = 0
    nxt = 0
    pending: dict[int, str] = {}  # seq of an unacknowledged create/delete -> name
    pending_groups: dict[int, list[str]] = {}
    for line in lines:
        f = line.split()
        kind, seq = f[0], int(f[1])
        nxt = max(nxt, seq + 1)
        if kind in ("W", "T"):
            model[f[2]].ops.append((seq, int(f[3]), int(f[4]), kind))
        elif kind == "R":
            model[f[2]].ops.append((seq, int(f[3]), 0, "R"))
        elif kind == "RD":
            pass  # the F line that follows makes it durable
        elif kind == "G":
            names = []
            for v in f[3:]:
                name = f"{v}@{f[2]}"
                model[name] = Vol(snap=True, base=bytes(model[v].current()), maybe_exists=True)
                names.append(name)
            pending_groups[seq] = names
        elif kind == "X":
            names = [n for n in model if n.endswith(f"@{f[2]}")]
            for n in names:
                model[n].maybe_deleted = True
            pending_groups[seq] = names
        elif kind == "GD":
            for n in pending_groups.pop(seq):
                model[n].maybe_exists = False
        elif kind == "XD":
            for n in pending_groups.pop(seq):
                del model[n]
        elif kind == "F":
            durable = max(durable, seq)
        elif kind == "S":
            model[f[3]] = Vol(snap=True, base=bytes(model[f[2]].current()), maybe_exists=True)
            pending[seq] = f[3]
        elif kind == "C":
            model[f[3]] = Vol(snap=False, base=bytes(model[f[2]].current()), maybe_exists=True)
            pending[seq] = f[3]
        elif kind in ("SD", "CD"):
            model[pending.pop(seq)].maybe_exists = False
        elif kind == "D":
            model[f[2]].maybe_deleted = True
            pending[seq] = f[2]
        elif kind == "DD":
            del model[pending.pop(seq)]
        else:
            raise AssertionError(f"unknown line {line!r}")
    if groups is not None:
        groups.extend(set(names) for names in pending_groups.values())
    return durable, nxt


def allowed(vol: Vol, durable: int, size: int) -> tuple[bytearray, dict[int, set[bytes]]]:
    """The block values as of the durable point, and the later values each block may hold,
    for the volume found ``size`` bytes large (a resize not acknowledged may or may not have
    landed: the only sizes it can have are its durable one and the one a later resize set)."""
    dur = bytearray(vol.base)
    later: dict[int, set[bytes]] = {}
    sizes = set()
    for seq, lba, n, kind in vol.ops:
        if seq < durable:
            apply_op(dur, seq, lba, n, kind)
        elif kind == "R":
            sizes.add(lba * BS)
        else:
            data = bytes(n * BS) if kind == "T" else pattern(seq, lba, n)
            for i in range(n):
                later.setdefault(lba + i, set()).add(data[i * BS:(i + 1) * BS])
    if size != len(dur):
        assert size in sizes, f"size {size}: neither the durable {len(dur)} nor a later resize"
        apply_op(dur, 0, size // BS, 0, "R")
    return dur, later


async def verify(path: Path, model: dict[str, Vol], durable: int, run: int,
                 groups: list[set[str]] = ()) -> dict[str, Vol]:
    report = check_pool(str(path))
    assert report.clean, (run, report.problems)
    pool = Pool.open(path)
    try:
        actual = {v.name: v for v in pool.volumes}
        for names in groups:  # a group is created or deleted whole, never in part
            assert len(names & set(actual)) in (0, len(names)), (run, names, set(actual))
        for name, vol in model.items():
            if not (vol.maybe_exists or vol.maybe_deleted):
                assert name in actual, (run, f"{name} was acknowledged but is gone")
        unknown = set(actual) - set(model)
        assert not unknown, (run, f"volumes nobody created: {unknown}")
        new_model: dict[str, Vol] = {}
        for name, v in actual.items():
            vol = model[name]
            assert v.is_snapshot == vol.snap
            got = bytes(await v.read(0, v.num_blocks))
            if vol.snap or not vol.ops:
                assert got == vol.base, (run, f"{name} changed")
            else:
                dur, later = allowed(vol, durable, len(got))
                if got != bytes(dur):
                    for b in range(len(got) // BS):
                        block = got[b * BS:(b + 1) * BS]
                        if block != dur[b * BS:(b + 1) * BS]:
                            why = (f"{name} block {b} holds {block[:16].hex()}, neither its "
                                   f"value at the last flush nor a later write")
                            assert block in later.get(b, ()), (run, why)
            new_model[name] = Vol(snap=vol.snap, base=got)
    finally:
        await pool.aclose()
    report = check_pool(str(path))
    assert report.clean, (run, "after reopening", report.problems)
    return new_model


async def setup(path: Path) -> dict[str, Vol]:
    pool = Pool.create(path, 64 << 20, cluster_size=4096)
    for name in ("v0", "v1"):
        await pool.create_volume(name, VOLUME_BYTES)
    await pool.aclose()
    return {name: Vol(snap=False, base=bytes(VOLUME_BYTES)) for name in ("v0", "v1")}


@pytest.mark.crash
@pytest.mark.parametrize("io,on", [("io_uring", "file"), ("threads", "file"),
                                   ("buffered", "file"), ("io_uring", "loop")])
def test_kill_9_at_random_points(io: str, on: str, pool_dir: Path, tmp_path: Path) -> None:
    if on == "file":
        run_kills(pool_dir / "pool.img", io)
    else:
        with loop_device(tmp_path / "loop.img", 64 << 20) as dev:
            run_kills(Path(dev), io)


def run_kills(path: Path, io: str) -> None:
    model = asyncio.run(setup(path))
    rng = random.Random(int(os.environ.get("SBSTORE_CRASH_SEED", "20261126")))
    seq = 1
    deadline = time.monotonic() + 150
    for run in range(KILLS):
        assert time.monotonic() < deadline, f"only {run} kills in the time allowed"
        lines = run_child(path, rng.randrange(1 << 30), seq, rng.uniform(0.02, 0.35), io)
        groups: list[set[str]] = []
        durable, nxt = apply(model, lines, groups)
        assert lines, "the child did nothing"
        seq = max(seq, nxt)
        model = asyncio.run(verify(path, model, durable, run, groups))
