"""What is particular to the threads engine: more I/Os than threads queue up, workers start
with the first I/O and are joined at close."""
from __future__ import annotations

import asyncio
import os
import threading

from sbstore.store.engines import open_engine

from .conftest import Target


def _workers() -> int:
    return sum(t.name.startswith("sbstore-io-") for t in threading.enumerate())


async def test_ios_beyond_the_threads_queue_and_workers_end_at_close(
        file_target: Target) -> None:
    before = _workers()
    e = open_engine(file_target.path, "threads", threads=2)
    try:
        assert _workers() == before  # nothing started by opening
        data = os.urandom(200 * 4096)
        await e.write(0, data)
        assert _workers() == before + 2
        bufs = [e.buffer(4096) for _ in range(200)]
        futs = [e.read_into(i * 4096, b) for i, b in enumerate(bufs)]
        assert e.stats()["inflight"] == 200
        await asyncio.gather(*futs)
        assert b"".join(bytes(b) for b in bufs) == data
    finally:
        e.close()
    assert _workers() == before
