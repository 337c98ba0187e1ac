"""The asynchronous data path: what happens while I/O is in flight.

Each test holds some I/O in flight with ``ManualEngine`` (nothing completes until the test says
so), runs other commands meanwhile, and checks the rules of ``sbstore.store.volume``: a cluster
is not handed out again while an I/O may still touch it, a snapshot waits for writes in flight,
concurrent commands on one cluster never lose each other's data, a cancelled command's I/O still
ends consistently, and closing the pool waits for writes in flight.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sbstore.store import Pool
from sbstore.store.check import check_pool
from tests.store.manual_engine import ManualEngine

C = 64 << 10
BS = 512


@pytest.fixture
async def setup(pool_path: Path) -> AsyncIterator[tuple[Pool, ManualEngine]]:
    Pool.create(pool_path, 64 << 20, cluster_size=C).close()
    engine = ManualEngine(str(pool_path))
    pool = Pool.open(pool_path, engine=engine)
    try:
        yield pool, engine
    finally:
        engine.hold = False
        engine.release()
        await pool.aclose()


async def turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def settle(engine: ManualEngine, *tasks: asyncio.Future[object], rounds: int = 1000
                 ) -> None:
    """Complete held I/O until every task is done (commands issue new I/O as they go; a
    commit's fsync runs in a thread, hence real sleeps)."""
    for _ in range(rounds):
        engine.release()
        await asyncio.sleep(0.002)
        if all(t.done() for t in tasks):
            return
    raise AssertionError("the commands did not finish")


def assert_clean(pool: Pool) -> None:
    report = check_pool(pool.path, lock=False)
    assert report.clean, report.problems


async def test_a_cluster_is_not_reused_while_a_read_of_it_is_in_flight(setup) -> None:
    pool, engine = setup
    a = await pool.create_volume("a", 1 << 20)
    b = await pool.create_volume("b", 1 << 20)
    await a.write(0, b"A" * C)
    await pool.flush()
    assert a._map is not None
    pcn = a._map[0]
    engine.hold = True
    read = asyncio.ensure_future(a.read(0, 8))
    await turns()
    assert len(engine.held) == 1  # the read is in flight
    engine.hold = False
    await a.deallocate([(0, C // BS)])
    await pool.flush()
    await pool.flush()  # the release is durable: without the guard, pcn would be free now
    await b.write(0, b"B" * C)
    assert b._map is not None and b._map[0] != pcn
    engine.release()
    assert bytes(await read) == b"A" * 4096  # never b's data
    await pool.flush()
    assert pool._space.free[pcn] == 1  # and once the read is done, the cluster comes back
    assert_clean(pool)


async def test_a_snapshot_waits_for_writes_in_flight(setup) -> None:
    pool, engine = setup
    v = await pool.create_volume("v", 1 << 20)
    await v.write(0, b"1" * 4096)
    engine.hold = True
    write = asyncio.ensure_future(v.write(0, b"2" * 4096))  # in place: v owns the cluster
    await turns()
    snap = asyncio.ensure_future(v.snapshot("s"))
    await turns(50)
    assert not snap.done() and "s" not in {x.name for x in pool.volumes}, \
        "the snapshot did not wait for the write in flight"
    later = asyncio.ensure_future(v.write(8, b"3" * 4096))  # issued while the gate is closed
    await turns()
    engine.hold = False
    await settle(engine, write, snap, later)
    s = snap.result()
    assert bytes(await s.read(0, 8)) == b"2" * 4096  # the write before it is in
    assert bytes(await s.read(8, 8)) == bytes(4096)  # the write after it is not
    assert bytes(await v.read(8, 8)) == b"3" * 4096
    await v.write(0, b"4" * 4096)
    assert bytes(await s.read(0, 8)) == b"2" * 4096
    await pool.flush()
    assert_clean(pool)


async def test_concurrent_first_writes_to_one_cluster_keep_both(setup) -> None:
    pool, engine = setup
    v = await pool.create_volume("v", 1 << 20)
    engine.hold = True
    w1 = asyncio.ensure_future(v.write(0, b"x" * BS))
    w2 = asyncio.ensure_future(v.write(8, b"y" * BS))  # same cluster, not yet allocated
    w3 = asyncio.ensure_future(v.write(C // BS + 3, b"z" * BS))  # another cluster
    await turns()
    assert len(engine.held) == 2  # w2 waits for w1's allocation of the cluster
    engine.hold = False
    await settle(engine, w1, w2, w3)
    for t in (w1, w2, w3):
        t.result()
    assert bytes(await v.read(0, 1)) == b"x" * BS
    assert bytes(await v.read(8, 1)) == b"y" * BS
    assert bytes(await v.read(C // BS + 3, 1)) == b"z" * BS
    assert v.mapped == 2
    await pool.flush()
    assert_clean(pool)


async def test_copy_on_write_racing_a_deallocate_of_the_cluster(setup) -> None:
    pool, engine = setup
    v = await pool.create_volume("v", 1 << 20)
    await v.write(0, b"o" * C)
    await v.snapshot("s")  # cluster 0 is shared: the next write copies it
    engine.hold = True
    write = asyncio.ensure_future(v.write(4, b"w" * BS))
    await turns()
    trim = asyncio.ensure_future(v.deallocate([(0, C // BS)]))
    await turns()
    engine.hold = False
    await settle(engine, write, trim)
    write.result()
    trim.result()
    got = bytes(await v.read(0, C // BS))
    write_then_trim = bytes(C)
    trim_then_write = bytes(4 * BS) + b"w" * BS + bytes(C - 5 * BS)
    assert got in (write_then_trim, trim_then_write)  # some serial order, never a mixture
    assert bytes(await pool.volume("s").read(0, C // BS)) == b"o" * C
    await pool.flush()
    assert_clean(pool)


async def test_a_cancelled_write_maps_its_cluster_only_with_its_data(setup) -> None:
    pool, engine = setup
    v = await pool.create_volume("v", 1 << 20)
    engine.hold = True
    write = asyncio.ensure_future(v.write(16, b"c" * BS))  # allocates: zero range, then data
    await turns()
    write.cancel()
    await turns()
    assert bytes(await v.read(16, 1)) == bytes(BS)  # not mapped before its data is written
    engine.hold = False
    for _ in range(20):
        engine.release()
        await turns(5)
    assert not engine.held
    assert bytes(await v.read(16, 1)) in (bytes(BS), b"c" * BS)
    assert v.mapped in (0, 1)
    await pool.flush()
    stats = pool.stats()
    assert stats.allocated_bytes == v.mapped * C  # nothing leaked, nothing lost
    assert_clean(pool)


async def test_closing_the_pool_waits_for_writes_in_flight(setup) -> None:
    pool, engine = setup
    v = await pool.create_volume("v", 1 << 20)
    engine.hold = True
    write = asyncio.ensure_future(v.write(0, b"k" * BS))
    await turns()
    closing = asyncio.ensure_future(pool.aclose())
    await turns(50)
    assert not closing.done()
    engine.hold = False
    await settle(engine, write, closing)
    write.result()
    reopened = Pool.open(pool.path)
    try:
        assert bytes(await reopened.volume("v").read(0, 1)) == b"k" * BS
    finally:
        await reopened.aclose()
