"""The commit protocol against power loss: every prefix of a commit's writes, torn writes, and a
last commit the device lost part of.

Each scenario runs a pool up to one commit and records that commit's I/O (metadata pages,
barrier, superblock, barrier) and the image of the file just before it (data writes included:
they precede the commit). Replaying any prefix of the I/O onto that image, with the write at the
cut torn, must give a pool that opens, checks clean and reads exactly the state before the commit
(A), or, once the superblock is whole, exactly the state after it (B). A superblock that landed
while some page of its commit did not (a device that ignored the barrier) must still open, at A,
with ``check`` saying the last commit was lost.
"""
from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sbstore.store import Pool
from sbstore.store.check import check_pool
from sbstore.store.layout import PAGE_SIZE, SB_SLOT_PAGES, push_superblock

pytestmark = [pytest.mark.usefixtures("every_engine")]

C = 4096
State = dict[str, tuple[bool, str | None, bytes]]


async def read_state(path: Path) -> State:
    """Every volume's kind, parent and bytes."""
    pool = Pool.open(path, readonly=True)
    try:
        out: State = {}
        for v in pool.volumes:
            data = bytes(await v.read(0, v.num_blocks))
            out[v.name] = (v.is_snapshot, v.parent.name if v.parent else None, data)
        return out
    finally:
        pool.close()


class Capture:
    """Records the I/O of the next commit and the file image just before it."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.before: bytes | None = None
        self.ops: list[tuple[Any, ...]] = []
        self._real = pool._write_plan
        pool._write_plan = self._spy  # type: ignore[method-assign]

    def _spy(self, plan: Any) -> None:
        if self.before is None and plan.sb is not None:
            with open(self.pool.path, "rb") as f:
                self.before = f.read()
            self.ops = [("page", p, d) for p, d in sorted(plan.writes)]
            self.ops.append(("sync",))
            slot = SB_SLOT_PAGES[plan.sb.generation % 2]
            self.ops.append(("sb", slot, push_superblock(plan.sb)))
            self.ops.append(("sync",))
        self._real(plan)


async def scenario_data(pool: Pool) -> None:
    v = pool.volume("v")
    rng = random.Random(1)
    for _ in range(40):
        lba = rng.randrange(0, v.num_blocks - 16)
        await v.write(lba, rng.randbytes(512 * rng.randint(1, 16)))
    await v.deallocate([(0, 64)])


async def scenario_snapshot(pool: Pool) -> None:
    v = pool.volume("v")
    await v.write(3, b"s" * 4096)  # pending in the same commit
    await v.snapshot("s2")


async def scenario_clone_write(pool: Pool) -> None:
    c = pool.volume("c")
    await c.write(5, b"c" * 8192)  # copy-on-write from the snapshot's clusters


async def scenario_delete(pool: Pool) -> None:
    await pool.delete("s1")  # folds s1 into v: DYING intent commit, drain, removal


async def scenario_revert(pool: Pool) -> None:
    await pool.revert("v", "s1")


async def scenario_grow_rename(pool: Pool) -> None:
    v = pool.volume("v")
    await v.resize(2 << 20)
    await v.write(4000, b"g" * 512)
    await v.rename("w")


SCENARIOS: dict[str, Callable[[Pool], Awaitable[None]]] = {
    "data": scenario_data, "snapshot": scenario_snapshot, "clone_write": scenario_clone_write,
    "delete": scenario_delete, "revert": scenario_revert, "grow_rename": scenario_grow_rename,
}


async def prepare(path: Path, scenario: str) -> Capture:
    pool = Pool.create(path, 16 << 20, cluster_size=C)
    pool.commit_interval = 1e9
    v = await pool.create_volume("v", 1 << 20)
    rng = random.Random(0)
    await v.write(0, rng.randbytes(256 << 10))
    await v.snapshot("s1")
    await v.write(8, rng.randbytes(64 << 10))
    if scenario == "clone_write":
        await pool.clone("s1", "c")
    await pool.flush()
    cap = Capture(pool)
    await SCENARIOS[scenario](pool)
    if cap.before is None:
        await pool.flush()
    # Close without another commit: the captured one is the last.
    pool._write_plan = cap._real  # type: ignore[method-assign]
    pool._shutdown()
    assert cap.before is not None
    return cap


def replay(path: Path, before: bytes, ops: list[tuple[Any, ...]], *, skip: set[int] = frozenset(),
           torn: int | None = None, garbage: set[int] = frozenset()) -> None:
    """Write ``before`` then ``ops`` (indices in ``skip`` left out, the one at ``torn`` only its
    first sector, those in ``garbage`` with bytes after their first sector scrambled)."""
    img = bytearray(before)
    for i, op in enumerate(ops):
        if op[0] == "sync" or i in skip:
            continue
        page, data = op[1], op[2]
        if i == torn:
            data = data[:512]
        elif i in garbage:
            data = data[:512] + bytes(0xA5 for _ in range(len(data) - 512))
        img[page * PAGE_SIZE:page * PAGE_SIZE + len(data)] = data
    path.write_bytes(img)


async def state_after_ops(path: Path, cap: Capture) -> State:
    replay(path, cap.before, cap.ops)
    return await read_state(path)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_every_prefix_of_a_commit(pool_dir: Path, scenario: str) -> None:
    cap = await prepare(pool_dir / "live.img", scenario)
    img = pool_dir / "replay.img"
    img.write_bytes(cap.before)
    state_a = (await read_state(img))
    state_b = await state_after_ops(img, cap)
    assert state_a != state_b, "the captured commit changed nothing"
    ops = cap.ops
    sb_index = next(i for i, op in enumerate(ops) if op[0] == "sb")
    for cut in range(len(ops) + 1):
        for tear in (False, True):
            if tear and (cut >= len(ops) or ops[cut][0] == "sync"):
                continue
            # Everything before ``cut`` landed, the write at ``cut`` tore, nothing after.
            replay(img, cap.before, ops[:cut + (1 if tear else 0)],
                   torn=cut if tear else None)
            report = check_pool(str(img))
            assert report.clean, (cut, tear, report.problems)
            want = state_b if cut > sb_index else state_a
            assert (await read_state(img)) == want, (scenario, cut, tear)


@pytest.mark.parametrize("scenario", ["data", "snapshot", "delete"])
async def test_last_commit_with_a_lost_or_torn_page_opens_at_the_previous(
        pool_dir: Path, scenario: str) -> None:
    cap = await prepare(pool_dir / "live.img", scenario)
    img = pool_dir / "replay.img"
    img.write_bytes(cap.before)
    state_a = (await read_state(img))
    pages = [i for i, op in enumerate(cap.ops) if op[0] == "page"]
    rng = random.Random(7)
    for i in sorted(rng.sample(pages, min(6, len(pages)))):
        for how in ("lost", "torn"):
            replay(img, cap.before, cap.ops, skip={i} if how == "lost" else set(),
                   garbage={i} if how == "torn" else set())
            report = check_pool(str(img))
            assert not report.clean
            assert any("last commit" in p for p in report.problems), report.problems
            assert (await read_state(img)) == state_a, (i, how)
            # Opening read-write commits a new generation over the bad slot: clean again.
            Pool.open(img).close()
            after = check_pool(str(img))
            assert after.clean, after.problems
            assert (await read_state(img)) == state_a


async def test_torn_superblock_is_a_note_and_the_pool_opens(pool_dir: Path) -> None:
    cap = await prepare(pool_dir / "live.img", "data")
    img = pool_dir / "replay.img"
    img.write_bytes(cap.before)
    state_a = (await read_state(img))
    sb_index = next(i for i, op in enumerate(cap.ops) if op[0] == "sb")
    replay(img, cap.before, cap.ops[:sb_index + 1], torn=sb_index)
    report = check_pool(str(img))
    assert report.clean and any("torn" in n for n in report.notes), report
    assert (await read_state(img)) == state_a


async def test_a_truncated_device_is_refused_in_words(pool_dir: Path) -> None:
    cap = await prepare(pool_dir / "live.img", "data")
    img = pool_dir / "replay.img"
    img.write_bytes(cap.before[:len(cap.before) // 2])
    report = check_pool(str(img))
    assert not report.clean and "bytes" in report.problems[-1]
    with pytest.raises(Exception, match="bytes"):
        Pool.open(img)
    os.truncate(img, 0)
    report = check_pool(str(img))
    assert not report.clean
