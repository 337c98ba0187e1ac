"""Snapshot groups (several volumes frozen at one instant, in one commit) and shrinking a
volume (the clusters past the new end released, snapshots keeping theirs), through the pool's
public API on a real pool file or block device."""
from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path

import pytest

from sbstore.store import AlreadyExists, InvalidArgument, NotFound, OutOfRange, Pool
from sbstore.store.check import check_pool

pytestmark = [pytest.mark.usefixtures("every_engine")]
POOL_ON = ("file", "loop")

C = 64 << 10
BS = 512


@pytest.fixture
async def pool(pool_path: Path):
    p = Pool.create(pool_path, 64 << 20, cluster_size=C)
    try:
        yield p
    finally:
        await p.aclose()


def assert_clean(path: str | Path) -> None:
    report = check_pool(str(path), lock=False)
    assert report.clean, report.problems


# --- snapshot groups ------------------------------------------------------------------------------

async def test_group_snapshot_freezes_each_volume_and_persists(pool: Pool) -> None:
    a = await pool.create_volume("a", 1 << 20)
    b = await pool.create_volume("b", 2 << 20)
    await a.write(0, b"A" * BS)
    await b.write(5, b"B" * BS)
    generation = pool.generation
    snaps = await pool.snapshot_group("g1", [a, "b"])
    assert pool.generation == generation + 1  # one commit for the whole group
    assert [s.name for s in snaps] == ["a@g1", "b@g1"]
    assert all(s.is_snapshot and s.group == "g1" for s in snaps)
    assert snaps[0].group_id == snaps[1].group_id == snaps[0].id
    assert a.parent is snaps[0] and b.parent is snaps[1]
    await a.write(0, b"a" * BS)
    await b.write(5, b"b" * BS)
    assert bytes(await snaps[0].read(0, 1)) == b"A" * BS
    assert bytes(await snaps[1].read(5, 1)) == b"B" * BS
    assert {g: [s.name for s in m] for g, m in pool.groups().items()} == {"g1": ["a@g1", "b@g1"]}
    assert_clean(pool.path)
    path = pool.path
    await pool.aclose()
    p2 = Pool.open(path)
    try:
        groups = p2.groups()
        assert [s.name for s in groups["g1"]] == ["a@g1", "b@g1"]
        report = check_pool(path, lock=False)
        assert report.clean and report.stats["snapshot_groups"] == 1
    finally:
        await p2.aclose()


async def test_group_refusals_change_nothing(pool: Pool) -> None:
    a = await pool.create_volume("a", 1 << 20)
    b = await pool.create_volume("b", 1 << 20)
    await pool.snapshot_group("g", [a])
    before = sorted(v.name for v in pool.volumes)
    with pytest.raises(AlreadyExists):
        await pool.snapshot_group("g", [b])
    with pytest.raises(InvalidArgument, match="twice"):
        await pool.snapshot_group("h", [a, a])
    with pytest.raises(InvalidArgument, match="is a snapshot"):
        await pool.snapshot_group("h", [b, "a@g"])
    with pytest.raises(NotFound):
        await pool.snapshot_group("h", [b, "nope"])
    with pytest.raises(InvalidArgument):
        await pool.snapshot_group("h", [])
    for bad in ("", "x y", "a@b", "x/y", "g" * 49):
        with pytest.raises(InvalidArgument):
            await pool.snapshot_group(bad, [b])
    await b.snapshot("b@h")  # the name the group would give b's snapshot
    with pytest.raises(AlreadyExists):
        await pool.snapshot_group("h", [a, b])
    assert sorted(v.name for v in pool.volumes) == sorted(before + ["b@h"])
    assert "h" not in pool.groups()


async def test_delete_group_deletes_its_snapshots_only(pool: Pool) -> None:
    a = await pool.create_volume("a", 1 << 20)
    b = await pool.create_volume("b", 1 << 20)
    await a.write(0, os.urandom(2 * C))
    await b.write(0, os.urandom(2 * C))
    await pool.snapshot_group("g1", [a, b])
    await a.write(0, b"x" * BS)
    await pool.snapshot_group("g2", [a, b])
    clone = await pool.clone("a@g1", "c")  # depends on a group member: keeps its data
    want = bytes(await clone.read(0, 256))
    assert sorted(await pool.delete_group("g1")) == ["a@g1", "b@g1"]
    assert list(pool.groups()) == ["g2"]
    assert bytes(await clone.read(0, 256)) == want
    with pytest.raises(NotFound):
        await pool.delete_group("g1")
    await pool.delete("b@g2")  # a member alone: the rest stays a group
    assert [s.name for s in pool.groups()["g2"]] == ["a@g2"]
    assert_clean(pool.path)


async def test_group_snapshot_under_alternating_writers(pool: Pool) -> None:
    """Two writers alternate sequence-numbered writes between two volumes, each write issued
    after the previous one completed; the group snapshot's two last sequence numbers differ
    by at most one (the write in flight when the gates closed)."""
    vols = [await pool.create_volume(n, 1 << 20) for n in ("a", "b")]
    stop = asyncio.Event()
    done_seq = 0

    async def writer() -> None:
        nonlocal done_seq
        seq = 0
        while not stop.is_set() and seq < 100_000:
            seq += 1
            lba = (seq // 2) % 2048
            await vols[seq % 2].write(lba, struct.pack("<Q", seq) * (BS // 8))
            done_seq = seq

    task = asyncio.create_task(writer())
    while done_seq < 200:
        await asyncio.sleep(0.001)
    snaps = await pool.snapshot_group("g", vols)
    await asyncio.sleep(0.01)
    stop.set()
    await task
    last = []
    for s in snaps:
        data = bytes(await s.read(0, 2048))
        last.append(max(struct.unpack_from("<Q", data, i)[0] for i in range(0, len(data), BS)))
    assert last[0] % 2 == 0 and last[1] % 2 == 1  # a holds even numbers, b odd ones
    assert abs(last[0] - last[1]) <= 1, last
    assert done_seq > max(last)  # writes went on after the snapshot
    assert_clean(pool.path)


# --- shrink ---------------------------------------------------------------------------------------

async def test_shrink_needs_asking_and_releases_clusters(pool: Pool) -> None:
    v = await pool.create_volume("v", 8 * C)
    data = os.urandom(8 * C)
    await v.write(0, data)
    with pytest.raises(InvalidArgument, match="shrink"):
        await v.resize(3 * C)
    free = pool.stats().free_bytes
    await v.resize(3 * C, shrink=True)
    assert v.size_bytes == 3 * C and v.num_blocks == 3 * C // BS
    assert v.allocated_bytes == 3 * C
    await pool.punches_done()
    assert pool.stats().free_bytes == free + 5 * C
    assert bytes(await v.read(0, 3 * C // BS)) == data[:3 * C]
    with pytest.raises(OutOfRange):
        await v.read(3 * C // BS, 1)
    with pytest.raises(OutOfRange):
        await v.write(3 * C // BS, bytes(BS))
    await v.resize(5 * C)  # grows again: the new part reads as zeroes
    assert bytes(await v.read(3 * C // BS, 2 * C // BS)) == bytes(2 * C)
    assert_clean(pool.path)


async def test_shrink_inside_a_cluster_zeroes_its_tail(pool: Pool) -> None:
    v = await pool.create_volume("v", 4 * C)
    data = os.urandom(4 * C)
    await v.write(0, data)
    snap = await v.snapshot("s")
    cut = C + 3 * BS  # inside the second cluster, which the snapshot shares
    await v.resize(cut, shrink=True)
    assert bytes(await v.read(0, cut // BS)) == data[:cut]
    assert bytes(await snap.read(0, 4 * C // BS)) == data  # the snapshot keeps everything
    await v.resize(4 * C)
    assert bytes(await v.read(0, 4 * C // BS)) == data[:cut] + bytes(4 * C - cut)
    assert bytes(await snap.read(0, 4 * C // BS)) == data
    assert_clean(pool.path)
    path = pool.path
    await pool.aclose()
    p2 = Pool.open(path)
    try:
        w = p2.volume("v")
        assert bytes(await w.read(0, 4 * C // BS)) == data[:cut] + bytes(4 * C - cut)
        assert bytes(await p2.volume("s").read(0, 4 * C // BS)) == data
    finally:
        await p2.aclose()


async def test_shrink_across_map_leaves_with_shared_leaves(pool_path: Path) -> None:
    """4 KiB clusters: a map leaf covers 4 MiB, so a 12 MiB volume has three leaves; the
    snapshot shares them as pages. Shrinking to 5 MiB drops a shared leaf whole and cuts
    another; a clone of the snapshot writes the dropped clusters afterwards (copy-on-write:
    the durable state still gave them to the volume)."""
    pool = Pool.create(pool_path, 48 << 20, cluster_size=4096)
    try:
        v = await pool.create_volume("v", 12 << 20)
        data = os.urandom(12 << 20)
        for off in range(0, 12 << 20, 256 << 10):  # (one huge write asks for too much room)
            await v.write(off // BS, data[off:off + (256 << 10)])
        await pool.flush()
        snap = await v.snapshot("s")
        clone = await pool.clone(snap, "c")
        await v.write(0, b"v" * BS)  # v's first leaf becomes private
        await v.resize(5 << 20, shrink=True)
        await clone.write((9 << 20) // BS, b"c" * BS)
        assert bytes(await snap.read(0, (12 << 20) // BS)) == data
        assert bytes(await v.read(1, (5 << 20) // BS - 1)) == data[BS:5 << 20]
        await v.resize(12 << 20)
        assert bytes(await v.read((5 << 20) // BS, (7 << 20) // BS)) == bytes(7 << 20)
        assert_clean(pool.path)
    finally:
        await pool.aclose()
    report = check_pool(str(pool_path))
    assert report.clean, report.problems


async def test_a_write_waiting_at_the_gate_past_the_new_end_fails(pool: Pool) -> None:
    v = await pool.create_volume("v", 8 * C)
    await v.write(0, os.urandom(8 * C))
    # Cut inside a cluster: the shrink zeroes that cluster's tail with its gate closed.
    shrink = asyncio.create_task(v.resize(2 * C + BS, shrink=True))
    await asyncio.sleep(0)
    assert v._gate is not None
    late = asyncio.create_task(v.write(6 * C // BS, b"w" * BS))
    inside = asyncio.create_task(v.write(1, b"i" * BS))
    await shrink
    with pytest.raises(OutOfRange):
        await late
    await inside
    assert v.size_bytes == 2 * C + BS
    assert bytes(await v.read(1, 1)) == b"i" * BS
    assert_clean(pool.path)
