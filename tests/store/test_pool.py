"""Volumes, snapshots, clones, space accounting and persistence, through the public API."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from sbstore.store import (
    AlreadyExists,
    Busy,
    InvalidArgument,
    NoSpace,
    NotFound,
    OutOfRange,
    Pool,
    ReadOnly,
)
from sbstore.store.check import check_pool

pytestmark = [pytest.mark.usefixtures("every_engine")]
POOL_ON = ("file", "loop")  # every test that takes a pool runs on a file and a block device

C = 64 << 10  # cluster size used by most tests


def blocks(data: bytes, bs: int = 512) -> int:
    return len(data) // bs


@pytest.fixture
async def pool(pool_path: Path):
    p = Pool.create(pool_path, 64 << 20, cluster_size=C)
    try:
        yield p
    finally:
        await p.aclose()


async def reopen(pool: Pool) -> Pool:
    path = pool.path
    await pool.aclose()
    return Pool.open(path)


def assert_clean(path: str | Path) -> None:
    """Check what the last commit wrote (the pool may still be open in this process)."""
    report = check_pool(str(path), lock=False)
    assert report.clean, report.problems


async def test_unwritten_reads_zeroes_and_writes_read_back(pool: Pool) -> None:
    v = await pool.create_volume("v", 4 << 20)
    assert v.block_size == 512 and v.num_blocks == (4 << 20) // 512
    assert bytes(await v.read(0, 16)) == bytes(8192)
    data = os.urandom(3 * C + 1024)  # spans four clusters, unaligned start
    await v.write(7, data)
    assert bytes(await v.read(7, blocks(data))) == data
    # The unwritten parts of the touched clusters read as zeroes.
    assert bytes(await v.read(0, 7)) == bytes(7 * 512)
    end = 7 + blocks(data)
    tail = (4 * C) // 512 - end
    assert bytes(await v.read(end, tail)) == bytes(tail * 512)
    assert v.allocated_bytes == 4 * C


async def test_4k_block_volume(pool: Pool) -> None:
    v = await pool.create_volume("v4k", 1 << 20, block_size=4096)
    assert v.num_blocks == 256
    data = os.urandom(4096 * 3)
    await v.write(15, data)
    assert bytes(await v.read(15, 3)) == data
    with pytest.raises(InvalidArgument):
        await v.write(0, b"x" * 512)


async def test_out_of_range_and_bad_sizes(pool: Pool) -> None:
    v = await pool.create_volume("v", 1 << 20)
    with pytest.raises(OutOfRange):
        await v.read(2048, 1)
    with pytest.raises(OutOfRange):
        await v.write(2047, b"\0" * 1024)
    with pytest.raises(OutOfRange):
        await v.write_zeroes(-1, 1)
    with pytest.raises(OutOfRange):
        await v.deallocate([(0, 1), (2048, 1)])
    with pytest.raises(InvalidArgument):
        await pool.create_volume("bad", 1000)
    with pytest.raises(InvalidArgument):
        await pool.create_volume("bad", 4096, block_size=1024)
    with pytest.raises(InvalidArgument):
        await pool.create_volume("has space", 4096)
    with pytest.raises(AlreadyExists):
        await pool.create_volume("v", 4096)


async def test_deallocate_and_write_zeroes_give_back_whole_clusters(pool: Pool) -> None:
    v = await pool.create_volume("v", 4 << 20)
    await v.write(0, os.urandom(8 * C))
    await pool.flush()
    before = pool.stats()
    assert v.allocated_bytes == 8 * C
    per = C // 512
    # Whole clusters 1 and 2 plus half of 3: two given back, the half zeroed in place.
    await v.deallocate([(per, 2 * per + per // 2)])
    assert v.allocated_bytes == 6 * C
    await v.write_zeroes(5 * per, per)  # exactly cluster 5
    assert v.allocated_bytes == 5 * C
    await pool.flush()  # released space becomes free once the release is committed
    assert pool.stats().free_bytes == before.free_bytes + 3 * C
    got = bytes(await v.read(0, 8 * per))
    assert got[per * 512:(3 * per + per // 2) * 512] == bytes((2 * per + per // 2) * 512)
    assert got[5 * C:6 * C] == bytes(C)
    assert got[:C] != bytes(C)


async def test_pool_full_fails_one_write_and_no_other_volume(pool_path: Path) -> None:
    pool = Pool.create(pool_path, 8 << 20, cluster_size=C)
    try:
        a = await pool.create_volume("a", 64 << 20)  # thin: larger than the pool
        b = await pool.create_volume("b", 1 << 20)
        b_data = os.urandom(1 << 20)
        await b.write(0, b_data)
        chunk = os.urandom(C)
        written = 0
        with pytest.raises(NoSpace, match="full"):
            for i in range(1024):
                await a.write(i * (C // 512), chunk)
                written += 1
        assert written > 0
        assert pool.stats().free_bytes == 0
        # Overwriting space already owned still works, and nothing else changed.
        await b.write(0, b_data[:4096])
        assert bytes(await b.read(0, 2048)) == b_data
        assert bytes(await a.read(0, C // 512)) == chunk
        # Freeing space makes writes possible again.
        await a.deallocate([(0, 4 * (C // 512))])
        await a.write(written * (C // 512), chunk)
    finally:
        await pool.aclose()
    assert_clean(pool_path)


async def test_snapshot_is_frozen_and_chains(pool: Pool) -> None:
    v = await pool.create_volume("v", 1 << 20)
    versions = []
    snaps = []
    for i in range(5):
        data = bytes([i + 1]) * 4096
        await v.write(8, data)
        versions.append(data)
        snaps.append(await v.snapshot(f"s{i}"))
    await v.write(8, b"\xff" * 4096)
    for s, data in zip(snaps, versions):
        assert bytes(await s.read(8, 8)) == data
        assert s.is_snapshot and s.read_only
        with pytest.raises(ReadOnly):
            await s.write(0, b"\0" * 512)
    # Chain: v -> s4 -> s3 -> ... -> s0
    assert v.parent is snaps[4]
    assert [s.parent for s in snaps] == [None, *snaps[:4]]
    assert snaps[2].children == [snaps[3]]


async def test_clone_tree(pool: Pool) -> None:
    v = await pool.create_volume("v", 1 << 20)
    await v.write(0, b"a" * 4096)
    s = await v.snapshot("s")
    c1 = await pool.clone(s, "c1")
    c2 = await pool.clone("s", "c2")
    await c1.write(0, b"1" * 512)
    await c2.write(1, b"2" * 512)
    cs = await c1.snapshot("c1s")
    c1c = await pool.clone(cs, "c1c")
    assert bytes(await c1c.read(0, 2)) == b"1" * 512 + b"a" * 512
    assert bytes(await c2.read(0, 2)) == b"a" * 512 + b"2" * 512
    assert bytes(await s.read(0, 2)) == b"a" * 1024
    # A clone's snapshot takes the clone's place under s: c1 -> c1s -> s.
    assert {x.name for x in s.children} == {"v", "c1s", "c2"}
    assert c1.parent is cs and cs.children == [c1, c1c]
    with pytest.raises(InvalidArgument):
        await pool.clone(v, "nope")  # not a snapshot
    with pytest.raises(InvalidArgument):
        await s.snapshot("nope")  # snapshots are frozen already


async def test_delete_a_snapshot_whatever_depends_on_it(pool: Pool) -> None:
    """A root snapshot whose origin has later snapshots and from which two clones were made
    (one of them snapshotted and cloned again) is deleted: every other volume reads what it
    read, its children take its place in the lineage, and the pool checks clean, before and
    after a reopen."""
    v = await pool.create_volume("v", 1 << 20)
    await v.write(0, os.urandom(4 * C))
    s1 = await v.snapshot("s1")
    c1 = await pool.clone(s1, "c1")
    c2 = await pool.clone(s1, "c2")
    await c1.write(0, os.urandom(C))
    c1s = await c1.snapshot("c1s")
    c1c = await pool.clone(c1s, "c1c")
    await v.write(2 * 128, os.urandom(2 * C))  # v's own clusters 2-3; the clones keep s1's
    s2 = await v.snapshot("s2")
    await v.write(0, os.urandom(512))
    others = [v, s2, c1, c2, c1s, c1c]
    before = {x.name: bytes(await x.read(0, x.num_blocks)) for x in others}
    assert {x.name for x in s1.children} == {"s2", "c1s", "c2"}
    free = pool.stats().free_bytes
    await pool.delete("s1")
    with pytest.raises(NotFound):
        pool.volume("s1")
    assert {x.name: bytes(await x.read(0, x.num_blocks)) for x in others} == before
    assert s2.parent is None and c2.parent is None and c1s.parent is None
    assert c1.parent is c1s and v.parent is s2
    assert len({x.family for x in others}) == 1  # still one family: they share clusters
    assert pool.stats().free_bytes == free  # c2 still holds every cluster s1 named
    assert_clean(pool.path)
    # They keep sharing, and writes after the delete still copy rather than overwrite.
    await c2.write(0, b"x" * 512)
    assert bytes(await s2.read(0, 1)) == before["s2"][:512]
    before["c2"] = b"x" * 512 + before["c2"][512:]
    pool = await reopen(pool)
    try:
        for name, data in before.items():
            x = pool.volume(name)
            assert bytes(await x.read(0, x.num_blocks)) == data, name
        await pool.delete("s2")  # now a snapshot with one child, v
        assert pool.volume("v").parent is None
    finally:
        await pool.aclose()
    assert_clean(pool.path)


async def test_a_pool_from_before_families_gets_them_at_open(pool: Pool) -> None:
    """Records written without a family (0, as versions before it wrote them) check clean by
    their lineage, get their lineage's root as family when the pool opens for writing, and a
    root snapshot with two clones can then be deleted."""
    v = await pool.create_volume("v", 1 << 20)
    await v.write(0, os.urandom(2 * C))
    s = await v.snapshot("s")
    c = await pool.clone(s, "c")
    other = await pool.create_volume("other", 1 << 20)
    for x in (v, s, c, other):
        x.family = 0
        pool._record_changed(x)
    await pool.flush()
    assert_clean(pool.path)
    pool = await reopen(pool)
    try:
        families = {x.name: x.family for x in pool.volumes}
        assert families == {"v": s.id, "s": s.id, "c": s.id, "other": other.id}
        data = bytes(await pool.volume("c").read(0, 2 * C // 512))
        await pool.delete("s")
        assert bytes(await pool.volume("c").read(0, 2 * C // 512)) == data
    finally:
        await pool.aclose()
    assert_clean(pool.path)


async def test_delete_snapshot_with_one_child_folds(pool: Pool) -> None:
    v = await pool.create_volume("v", 1 << 20)
    await v.write(0, b"1" * C)
    s1 = await v.snapshot("s1")
    await v.write(0, b"2" * 4096)
    s2 = await v.snapshot("s2")
    await v.write(0, b"3" * 512)
    await pool.delete("s2")  # child v takes s2's parent s1
    assert v.parent is s1 and s1.children == [v]
    with pytest.raises(NotFound):
        pool.volume("s2")
    with pytest.raises(NotFound):
        await s2.read(0, 1)
    got = bytes(await v.read(0, C // 512))
    assert got == b"3" * 512 + b"2" * (4096 - 512) + b"1" * (C - 4096)
    assert bytes(await s1.read(0, C // 512)) == b"1" * C
    await pool.flush()
    assert_clean(pool.path)


async def test_delete_frees_only_unshared_space(pool: Pool) -> None:
    free0 = pool.stats().free_bytes
    v = await pool.create_volume("v", 1 << 20)
    await v.write(0, os.urandom(4 * C))
    s = await v.snapshot("s")
    await v.write(0, os.urandom(C))  # one COW cluster
    assert pool.stats().allocated_bytes == 5 * C
    await pool.delete(v)
    assert pool.stats().allocated_bytes == 4 * C  # the snapshot keeps its four
    await pool.delete(s)
    assert pool.stats().free_bytes == free0
    assert pool.volumes == []


def medium_bytes(pool: Pool, pool_path: Path) -> int:
    """What the pool occupies on the medium: the file's allocated blocks, or for a loop
    device the blocks of the file under it (its discards punch that file)."""
    under = pool_path
    if pool_path.is_block_device():
        under = Path((Path("/sys/block") / pool_path.name / "loop" / "backing_file")
                     .read_text().strip())
    return os.stat(under).st_blocks * 512


async def test_freed_space_goes_back_to_the_medium(pool: Pool, pool_path: Path) -> None:
    """A deleted volume's clusters, and clusters a deallocate unmaps, are punched out of the
    pool file (discarded on a block device) once freed, and stay allocatable; a snapshot's
    shared clusters are not."""
    v = await pool.create_volume("v", 8 << 20)
    keep = await pool.create_volume("keep", 1 << 20)
    kept = os.urandom(C)
    await keep.write(0, kept)
    for mib in range(8):  # writes as a host sends them (at most 1 MiB each)
        await v.write(mib * 2048, os.urandom(1 << 20))
    await pool.flush()
    full = medium_bytes(pool, pool_path)
    await v.deallocate([(0, (2 << 20) // 512)])  # the first 2 MiB: 32 whole clusters
    await pool.flush()
    await pool.punches_done()
    after_trim = medium_bytes(pool, pool_path)
    assert full - after_trim >= (2 << 20) - C, (full, after_trim)
    s = await v.snapshot("s")
    await pool.delete(v)  # the snapshot still names the rest
    await pool.flush()
    await pool.punches_done()
    assert medium_bytes(pool, pool_path) >= after_trim - C
    await pool.delete(s)
    await pool.flush()
    await pool.punches_done()
    assert after_trim - medium_bytes(pool, pool_path) >= (6 << 20) - C
    assert pool.punched_bytes >= 8 << 20
    assert bytes(await keep.read(0, C // 512)) == kept
    # The space is allocatable again: a new volume fills it.
    w = await pool.create_volume("w", 8 << 20)
    data = os.urandom(8 << 20)
    for mib in range(8):
        await w.write(mib * 2048, data[mib << 20:(mib + 1) << 20])
    assert bytes(await w.read(0, (8 << 20) // 512)) == data
    await pool.flush()
    assert_clean(pool.path)


async def test_open_punches_free_space_a_crash_left_in_the_file(pool_path: Path) -> None:
    """Clusters freed and committed, but never punched (the process died first, or an older
    version freed them): opening the pool for writing gives their space back."""
    if pool_path.is_block_device():
        pytest.skip("open punches pool files only")
    pool = Pool.create(pool_path, 64 << 20, cluster_size=C)
    v = await pool.create_volume("v", 8 << 20)
    for mib in range(8):
        await v.write(mib * 2048, os.urandom(1 << 20))
    await pool.flush()
    full = medium_bytes(pool, pool_path)
    pool._give_back = pool._space.release_committed  # free without punching, as if killed
    await pool.delete(v)
    await pool.aclose()
    assert os.stat(pool_path).st_blocks * 512 >= full - C  # still in the file
    pool = Pool.open(pool_path)
    try:
        assert full - medium_bytes(pool, pool_path) >= (8 << 20) - C
    finally:
        await pool.aclose()
    assert_clean(pool_path)


async def test_a_large_deallocate_fits_a_small_metadata_area(pool: Pool) -> None:
    """fstrim of a full file system: one deallocate unmapping more clusters than the metadata
    area has pages (its room is counted per leaf, not per cluster), on a clone sharing every
    leaf with its snapshot."""
    v = await pool.create_volume("v", 16 << 20)
    for mib in range(16):
        await v.write(mib * 2048, os.urandom(1 << 20))
    s = await v.snapshot("s")
    c = await pool.clone(s, "c")
    assert 2 * (16 << 20) // C > pool._meta.n_free  # two pages a cluster would not fit
    await c.deallocate([(0, c.num_blocks)])
    assert bytes(await c.read(0, 64)) == bytes(64 * 512)
    assert c.allocated_bytes == 0 and s.allocated_bytes == 16 << 20
    await v.deallocate([(0, v.num_blocks)])
    await pool.flush()
    assert_clean(pool.path)


async def test_inflate_makes_clone_independent(pool: Pool) -> None:
    v = await pool.create_volume("v", 1 << 20)
    base = os.urandom(3 * C)
    await v.write(0, base)
    s = await v.snapshot("s")
    c = await pool.clone(s, "c")
    await c.write(0, b"c" * 512)
    allocated = pool.stats().allocated_bytes
    await pool.inflate("c")
    assert c.parent is None and s.children == [v]
    assert pool.stats().allocated_bytes == allocated + 2 * C  # the two still shared
    assert bytes(await c.read(0, 3 * C // 512)) == b"c" * 512 + base[512:]
    await pool.delete(s.children[0])
    await pool.delete(s)  # no children left, no data shared with c
    assert bytes(await c.read(0, 3 * C // 512)) == b"c" * 512 + base[512:]
    await pool.flush()
    assert_clean(pool.path)


async def test_revert_to_snapshot_in_history(pool: Pool) -> None:
    v = await pool.create_volume("v", 1 << 20)
    await v.write(0, b"1" * 4096)
    s1 = await v.snapshot("s1")
    await v.write(0, b"2" * 4096)
    await v.resize(2 << 20)
    await v.write(3000, b"x" * 512)
    s2 = await v.snapshot("s2")
    await v.write(0, b"3" * 4096)
    await pool.revert(v, s1)
    assert bytes(await v.read(0, 8)) == b"1" * 4096
    assert v.size_bytes == 1 << 20 and v.parent is s1
    assert bytes(await s2.read(0, 8)) == b"2" * 4096
    await v.write(0, b"4" * 512)
    assert bytes(await s1.read(0, 1)) == b"1" * 512
    other = await pool.create_volume("other", 1 << 20)
    s3 = await other.snapshot("s3")
    with pytest.raises(InvalidArgument, match="history"):
        await pool.revert(v, s3)
    await pool.flush()
    assert_clean(pool.path)


async def test_resize_rename_lookup(pool: Pool) -> None:
    v = await pool.create_volume("v", 1 << 20)
    await v.write(2047, b"e" * 512)
    await v.resize(3 << 20)
    assert v.num_blocks == 6144
    assert bytes(await v.read(2047, 2)) == b"e" * 512 + bytes(512)
    await v.write(6143, b"z" * 512)
    with pytest.raises(InvalidArgument, match="shrink"):
        await v.resize(1 << 20)
    await v.rename("w")
    assert pool.volume("w") is v and pool.volume_by_id(v.id) is v
    assert pool.volume_by_uuid(str(v.uuid)) is v
    with pytest.raises(NotFound):
        pool.volume("v")
    pool2 = await reopen(pool)
    try:
        w = pool2.volume("w")
        assert w.uuid == v.uuid and w.size_bytes == 3 << 20
        assert bytes(await w.read(6143, 1)) == b"z" * 512
    finally:
        await pool2.aclose()


async def test_reopen_keeps_everything(pool_path: Path) -> None:
    pool = Pool.create(pool_path, 64 << 20, cluster_size=C)
    v = await pool.create_volume("v", 2 << 20)
    data = os.urandom(2 << 20)
    await v.write(0, data)
    s = await v.snapshot("s")
    await v.write(100, b"n" * 512)
    c = await pool.clone(s, "c")
    await c.write(0, b"c" * 512)
    stats = pool.stats()
    await pool.aclose()
    pool = Pool.open(pool_path)
    try:
        v, s, c = pool.volume("v"), pool.volume("s"), pool.volume("c")
        assert bytes(await s.read(0, 4096)) == data
        expect_v = bytearray(data)
        expect_v[100 * 512:101 * 512] = b"n" * 512
        assert bytes(await v.read(0, 4096)) == expect_v
        assert bytes(await c.read(0, 1)) == b"c" * 512
        assert v.parent is s and c.parent is s
        assert pool.stats().allocated_bytes == stats.allocated_bytes
        assert v.allocated_bytes == 2 << 20
    finally:
        await pool.aclose()
    assert_clean(pool_path)


async def test_unflushed_writes_do_not_need_a_flush_to_be_read(pool: Pool) -> None:
    pool.commit_interval = 3600  # no timer commit during the test
    v = await pool.create_volume("v", 1 << 20)
    gen = pool.generation
    await v.write(0, b"q" * 4096)
    assert pool.generation == gen  # not committed yet...
    assert bytes(await v.read(0, 8)) == b"q" * 4096  # ...but visible
    await v.write(8, b"f" * 512, fua=True)
    assert pool.generation == gen + 1


async def test_timer_commits(pool: Pool) -> None:
    pool.commit_interval = 0.05
    v = await pool.create_volume("v", 1 << 20)
    gen = pool.generation
    await v.write(0, b"t" * 4096)
    for _ in range(100):
        await asyncio.sleep(0.02)
        if pool.generation > gen:
            break
    assert pool.generation == gen + 1


async def test_concurrent_writes_to_one_new_cluster_and_cow_racing_reads(pool: Pool) -> None:
    v = await pool.create_volume("v", 1 << 20)
    # 64 writers to distinct blocks of the same unallocated cluster, all at once.
    blobs = [bytes([i]) * 512 for i in range(1, 65)]
    await asyncio.gather(*(v.write(i, b) for i, b in enumerate(blobs)))
    assert v.allocated_bytes == C
    assert bytes(await v.read(0, 64)) == b"".join(blobs)
    s = await v.snapshot("s")
    # COW writes racing reads of the same cluster from the volume and the snapshot.
    new = [bytes([200 + i % 50]) * 512 for i in range(64)]
    results = await asyncio.gather(*(
        x for i in range(64)
        for x in (v.write(i, new[i]), v.read(i, 1), s.read(i, 1))))
    for i in range(64):
        assert bytes(results[3 * i + 1]) in (blobs[i], new[i])
        assert bytes(results[3 * i + 2]) == blobs[i]
    assert bytes(await v.read(0, 64)) == b"".join(new)
    assert bytes(await s.read(0, 64)) == b"".join(blobs)
    assert v.allocated_bytes == C and pool.stats().allocated_bytes == 2 * C


async def test_deleted_volume_io_fails_and_busy_inflate(pool: Pool) -> None:
    v = await pool.create_volume("v", 1 << 20)
    await v.write(0, b"x" * 512)
    await pool.delete("v")
    with pytest.raises(NotFound):
        await v.read(0, 1)
    with pytest.raises(NotFound):
        await v.write(0, b"x" * 512)
    with pytest.raises(NotFound):
        await pool.delete("v")
    w = await pool.create_volume("w", 1 << 20)
    s = await w.snapshot("s")
    c = await pool.clone(s, "c")
    await c.write(0, os.urandom(1 << 20))
    pool._busy[c.id] = "inflating"
    with pytest.raises(Busy, match="inflating"):
        await pool.delete(c)
    with pytest.raises(Busy, match="inflating"):
        await c.snapshot("during-inflate")
    with pytest.raises(Busy, match="inflating"):
        await c.resize(2 << 20)
    pool._busy.clear()


async def test_io_during_inflate(pool: Pool) -> None:
    """Writes and reads go on while an inflate copies (it yields between batches)."""
    v = await pool.create_volume("v", 4 << 20)
    base = os.urandom(4 << 20)
    await v.write(0, base)
    s = await v.snapshot("s")
    c = await pool.clone(s, "c")
    expect = bytearray(base)

    async def io() -> None:
        for i in range(40):
            lba = (i * 977) % (8192 - 8)
            data = bytes([i]) * 4096
            await c.write(lba, data)
            expect[lba * 512:lba * 512 + 4096] = data
            assert bytes(await c.read(lba, 8)) == data
            await asyncio.sleep(0)

    await asyncio.gather(pool.inflate(c), io())
    assert c.parent is None
    assert bytes(await c.read(0, 8192)) == bytes(expect)
    assert bytes(await s.read(0, 8192)) == base
    await pool.flush()
    assert_clean(pool.path)


async def test_new_pool_refuses_to_overwrite_without_force(pool_path: Path) -> None:
    Pool.create(pool_path, 16 << 20, cluster_size=C).close()
    with pytest.raises(AlreadyExists, match="--force"):
        Pool.create(pool_path, 16 << 20, cluster_size=C)
    pool = Pool.create(pool_path, 16 << 20, cluster_size=C, force=True)
    assert pool.volumes == []
    pool.close()


async def test_pool_is_locked_against_a_second_opener(pool: Pool) -> None:
    with pytest.raises(Busy, match="another process"):
        Pool.open(pool.path)


async def test_readonly_open(pool_path: Path) -> None:
    pool = Pool.create(pool_path, 16 << 20, cluster_size=C)
    v = await pool.create_volume("v", 1 << 20)
    await v.write(0, b"r" * 512)
    await pool.aclose()
    ro = Pool.open(pool_path, readonly=True)
    try:
        v = ro.volume("v")
        assert bytes(await v.read(0, 1)) == b"r" * 512
        with pytest.raises(ReadOnly):
            await v.write(0, b"r" * 512)
        with pytest.raises(ReadOnly):
            await ro.create_volume("w", 4096)
    finally:
        ro.close()


async def test_metadata_area_full_is_no_space(pool_path: Path) -> None:
    # A tiny metadata area (16 pages): snapshots run out of it with a clear error.
    pool = Pool.create(pool_path, 16 << 20, cluster_size=4096, metadata_bytes=24 * 4096)
    try:
        v = await pool.create_volume("v", 8 << 20)
        with pytest.raises(NoSpace, match="metadata"):
            for i in range(200):
                await v.write(i * 1024 % 16384, os.urandom(4096))
                await v.snapshot(f"s{i}")
        # The pool still works and deleting frees metadata.
        for s in [x for x in pool.volumes if x.is_snapshot][:3]:
            await pool.delete(s)
        await v.write(0, b"ok" * 256)
    finally:
        await pool.aclose()
    assert_clean(pool_path)


async def test_stats_accounting(pool: Pool) -> None:
    st = pool.stats()
    assert st.allocated_bytes == 0 and st.free_bytes == st.capacity_bytes
    v = await pool.create_volume("v", 8 << 20)
    await v.write(0, os.urandom(2 * C))
    s = await v.snapshot("s")
    await v.write(0, b"x" * 512)
    st = pool.stats()
    assert st.allocated_bytes == 3 * C
    assert st.free_bytes == st.capacity_bytes - 3 * C
    assert (st.volumes, st.snapshots) == (1, 1)
    assert v.allocated_bytes == 2 * C and s.allocated_bytes == 2 * C
    info = v.info()
    assert info["parent"] == "s" and info["kind"] == "volume"
    assert s.info()["children"] == ["v"]


async def test_full_file_system_under_the_pool_is_no_space(pool: Pool,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC from the file system (an edge we do not own, so simulated) is NoSpace, and the
    cluster the failed write took goes back."""
    import errno

    v = await pool.create_volume("v", 1 << 20)
    await v.write(0, b"a" * 512)
    free = pool.stats().free_bytes
    engine = pool.engine

    def full(offset: int, data: object) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(OSError(errno.ENOSPC, "No space left on device"))
        return fut

    monkeypatch.setattr(engine, "write", full)
    with pytest.raises(NoSpace, match="file system holding the pool is full"):
        await v.write(C // 512, b"b" * 512)  # a new cluster
    with pytest.raises(NoSpace):
        await v.write(0, b"c" * 512)  # in place
    monkeypatch.undo()
    assert pool.stats().free_bytes == free
    assert bytes(await v.read(0, 1)) == b"a" * 512
    assert bytes(await v.read(C // 512, 1)) == bytes(512)
