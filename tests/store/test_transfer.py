"""Diff, export and import between two real pools: full copies, increments, and refusals of
streams that are cut short or corrupted (which must leave nothing behind)."""
from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sbstore.store import AlreadyExists, InvalidArgument, Pool
from sbstore.store.check import check_pool
from sbstore.store.stream import BadStream
from sbstore.store.transfer import diff, import_stream, prepare_export

C = 64 << 10
MiB = 1 << 20


@pytest.fixture
async def pools(pool_dir: Path) -> AsyncIterator[tuple[Pool, Pool]]:
    a = Pool.create(pool_dir / "a.img", 64 * MiB, cluster_size=C)
    b = Pool.create(pool_dir / "b.img", 64 * MiB, cluster_size=128 << 10)  # another geometry
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


async def stream_bytes(pool: Pool, snap: str, since: str | None = None) -> bytes:
    exp = await prepare_export(pool, snap, since)
    return b"".join([c async for c in exp.chunks()])


async def pieces(data: bytes, size: int = 7777) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def digest(vol) -> str:  # type: ignore[no-untyped-def]
    return hashlib.sha256(bytes(await vol.read(0, vol.num_blocks))).hexdigest()


async def test_diff_from_the_maps(pools: tuple[Pool, Pool]) -> None:
    a, _ = pools
    vol = await a.create_volume("v", 1 * MiB)
    await vol.write(0, b"x" * 512)
    await vol.write(3 * C // 512, b"y" * 1024)
    s1 = await vol.snapshot("s1")
    assert [e.as_dict() for e in await diff(a, s1)] == [
        {"offset": 0, "length": C, "kind": "data"},
        {"offset": 3 * C, "length": C, "kind": "data"}]
    await vol.write(4 * C // 512, b"z" * 512)  # new cluster
    await vol.write_zeroes(3 * C // 512, C // 512)  # unmapped: a zero extent
    await vol.write(0, b"w" * 512)  # copy-on-write: differs
    s2 = await vol.snapshot("s2")
    assert [e.as_dict() for e in await diff(a, s2, s1)] == [
        {"offset": 0, "length": C, "kind": "data"},
        {"offset": 3 * C, "length": C, "kind": "zero"},
        {"offset": 4 * C, "length": C, "kind": "data"}]
    assert await diff(a, s2, s2) == []
    other = await a.create_volume("o", 1 * MiB)
    await other.write(0, b"q" * 512)
    o1 = await other.snapshot("o1")  # unrelated: every mapped extent, zeroes where s2 had data
    assert [e.as_dict() for e in await diff(a, o1, s2)] == [
        {"offset": 0, "length": C, "kind": "data"},
        {"offset": 4 * C, "length": C, "kind": "zero"}]
    with pytest.raises(InvalidArgument):
        await diff(a, vol)


async def test_full_then_increment_reads_identical(pools: tuple[Pool, Pool]) -> None:
    a, b = pools
    vol = await a.create_volume("v", 3 * MiB + 4096, block_size=4096)
    rnd = os.urandom(2 * MiB)
    await vol.write(0, rnd[:MiB])
    await vol.write((MiB + 3 * 4096) // 4096, rnd[MiB:MiB + 40960])
    await vol.write((3 * MiB) // 4096, b"\x07" * 4096)  # the partial last cluster
    s1 = await vol.snapshot("s1")
    got = await import_stream(b, "replica", pieces(await stream_bytes(a, "s1")))
    assert got.snapshot.name == "s1" and got.snapshot.uuid == s1.uuid
    assert got.volume.name == "replica" and got.volume.parent is got.snapshot
    assert await digest(got.volume) == await digest(s1) == await digest(got.snapshot)

    await vol.write(4096 // 4096, rnd[:8192])
    await vol.write_zeroes(0, (C * 4) // 4096)
    await vol.resize(5 * MiB)
    await vol.write((4 * MiB) // 4096, b"\x09" * 4096)
    s2 = await vol.snapshot("s2")
    inc = await stream_bytes(a, "s2", "s1")
    assert len(inc) < MiB  # only what changed
    await got.volume.write(100, b"local" * 1000 + b"\0" * 3192)  # replaced by the increment
    got2 = await import_stream(b, "replica", pieces(inc, 65536))
    assert got2.volume is got.volume and got2.snapshot.parent is got.snapshot
    assert got2.volume.size_bytes == 5 * MiB
    assert await digest(got2.volume) == await digest(s2)
    assert await digest(b.volume("s1")) == await digest(s1)
    # The same increment again: its snapshot is already here.
    with pytest.raises(AlreadyExists):
        await import_stream(b, "replica", pieces(inc))
    await b.aclose()
    assert check_pool(b.path).clean


async def test_increment_needs_its_base(pools: tuple[Pool, Pool]) -> None:
    a, b = pools
    vol = await a.create_volume("v", 1 * MiB)
    await vol.write(0, b"a" * 512)
    await vol.snapshot("s1")
    await vol.write(0, b"b" * 512)
    await vol.snapshot("s2")
    with pytest.raises(InvalidArgument, match="does not hold"):
        await import_stream(b, "replica", pieces(await stream_bytes(a, "s2", "s1")))
    assert b.volumes == []


def flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0x10]) + data[pos + 1:]


async def test_cut_or_flipped_streams_are_refused_and_leave_nothing(
        pools: tuple[Pool, Pool]) -> None:
    a, b = pools
    vol = await a.create_volume("v", 2 * MiB)
    await vol.write(0, os.urandom(MiB + 512))
    await vol.snapshot("s1")
    whole = await stream_bytes(a, "s1")
    before = b.stats().allocated_bytes
    bad = [whole[:n] for n in (0, 10, 100, len(whole) // 2, len(whole) - 1)]
    bad += [flip(whole, p) for p in (0, 20, 90, 200, len(whole) // 2, len(whole) - 40,
                                     len(whole) - 1)]
    bad.append(whole + b"\0")
    for data in bad:
        with pytest.raises(BadStream):
            await import_stream(b, "replica", pieces(data, 65536))
        assert b.volumes == []
    await b.punches_done()
    await b.flush()
    assert b.stats().allocated_bytes == before
    got = await import_stream(b, "replica", pieces(whole))  # the intact one still goes in
    assert got.volume.allocated_bytes > 0
    await b.aclose()
    assert check_pool(b.path).clean


async def test_a_half_import_is_gone_after_reopening(pool_dir: Path) -> None:
    a = Pool.create(pool_dir / "a.img", 32 * MiB, cluster_size=C)
    b = Pool.create(pool_dir / "b.img", 32 * MiB, cluster_size=C)
    vol = await a.create_volume("v", 2 * MiB)
    await vol.write(0, os.urandom(2 * MiB))
    await vol.snapshot("s1")
    whole = await stream_bytes(a, "s1")
    await a.aclose()
    hidden = await b.begin_import("replica", 2 * MiB, 512, snapshot_name="s1",
                                  snapshot_uuid=__import__("uuid").uuid4())
    await hidden.write(0, b"x" * MiB)
    await b.flush()
    b.close()  # (a crash here: the intent is durable, the data too)
    assert check_pool(str(pool_dir / "b.img")).clean
    b = Pool.open(pool_dir / "b.img")
    try:
        assert b.volumes == [] and b.stats().allocated_bytes == 0
        await import_stream(b, "replica", pieces(whole))
        assert [v.name for v in b.volumes] == ["replica", "s1"]
    finally:
        await b.aclose()


async def test_a_cancelled_inflate_leaves_the_clone_valid_and_partly_inflated(
        pool_dir: Path) -> None:
    import asyncio
    p = Pool.create(pool_dir / "i.img", 32 * MiB, cluster_size=16384, metadata_bytes=4 * MiB)
    vol = await p.create_volume("v", 4 * MiB)
    data = os.urandom(4 * MiB)
    for i in range(0, 4 * MiB, MiB):
        await vol.write(i // 512, data[i:i + MiB])
    snap = await vol.snapshot("s")
    clone = await p.clone(snap, "c")
    seen: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        if len(seen) == 3:  # cancelled mid-way, whatever the machine's speed
            task.cancel()

    task = asyncio.get_running_loop().create_task(p.inflate(clone, progress=progress))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen and seen[-1][1] == clone.n_clusters and 0 < seen[-1][0] < clone.n_clusters
    assert clone.parent is snap  # still depends on it
    assert bytes(await clone.read(0, clone.num_blocks)) == data
    assert 4 * MiB < p.stats().allocated_bytes < 8 * MiB  # partly copied
    await p.inflate(clone)  # and can finish later
    assert clone.parent is None and p.stats().allocated_bytes == 8 * MiB
    await p.aclose()
    assert check_pool(p.path).clean
