"""Volume.read_direct and write_direct (the target's direct I/O): they take only the plain
case, on an engine with read_with/write_with (io_uring), and end exactly as read and write do;
everything else is refused with nothing started, for read and write to serve."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from sbstore.store import Pool

pytestmark = [pytest.mark.usefixtures("every_engine")]
POOL_ON = ("file", "loop")

C = 64 << 10
BS = 512


class Done:
    """A direct I/O's completion callback, awaitable."""

    def __init__(self) -> None:
        self.fut: asyncio.Future[tuple[Any, Any, Any]] = \
            asyncio.get_running_loop().create_future()

    def __call__(self, tag: Any, data: Any, exc: BaseException | None) -> None:
        assert not self.fut.done(), "completed twice"
        self.fut.set_result((tag, None if data is None else bytes(data), exc))


def aligned(data: bytes) -> memoryview:
    """``data`` in a page-aligned buffer, as the target hands a write's data over."""
    import mmap
    buf = mmap.mmap(-1, max(len(data), mmap.PAGESIZE))
    view = memoryview(buf)[:len(data)]
    view[:] = data
    return view


async def test_direct_reads_and_writes_where_the_engine_can(pool_path: Path,
                                                            every_engine: str) -> None:
    pool = Pool.create(pool_path, 32 << 20, cluster_size=C)
    try:
        vol = await pool.create_volume("v", 4 << 20)
        first = os.urandom(C)
        await vol.write(0, first)
        await pool.flush()
        direct = every_engine == "io_uring"

        done = Done()
        assert vol.read_direct(8, 8, done, "r1") is direct
        if direct:
            assert await done.fut == ("r1", first[4096:8192], None)
        assert vol.read_direct(C // BS, 8, Done(), "unmapped") is False  # reads as zeroes
        assert vol.read_direct(C // BS - 4, 8, Done(), "span") is False  # two clusters

        new = os.urandom(4096)
        done = Done()
        assert vol.write_direct(16, aligned(new), False, done, "w1") is direct
        if direct:
            assert await done.fut == ("w1", None, None)
            assert bytes(await vol.read(16, 8)) == new
        assert vol.write_direct(16, aligned(new), True, Done(), "fua") is False
        assert vol.write_direct(16, new, False, Done(), "bytes") is False  # not aligned
        assert vol.write_direct(C // BS, aligned(new), False, Done(), "unmapped") is False

        # After a snapshot the cluster is shared: a write must copy it, so not direct.
        snap = await vol.snapshot("s")
        assert vol.write_direct(16, aligned(b"s" * 4096), False, Done(), "shared") is False
        assert snap.read_direct(0, 8, Done(), "snap") is False  # its map is not loaded yet
        assert bytes(await snap.read(0, 8)) == first[:4096]  # (read loads it)
        done = Done()
        assert snap.read_direct(0, 8, done, "snap") is direct  # shared clusters read fine
        if direct:
            assert await done.fut == ("snap", first[:4096], None)
        await asyncio.sleep(0.05)
        # Every direct I/O gave its guard ticket back, and the volume has no write in flight.
        assert not pool.guard._active
        assert vol._writes == 0
    finally:
        await pool.aclose()


async def test_no_direct_write_while_a_snapshot_quiesces(pool_path: Path) -> None:
    pool = Pool.create(pool_path, 32 << 20, cluster_size=C)
    try:
        vol = await pool.create_volume("v", 4 << 20)
        await vol.write(0, b"a" * C)
        await vol.quiesce()
        try:
            assert vol.write_direct(0, aligned(b"b" * 4096), False, Done(), "gated") is False
        finally:
            vol.reopen()
    finally:
        await pool.aclose()
