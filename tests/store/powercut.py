"""A pool file behind a volatile write cache that a simulated power cut empties.

``VolatileDisk`` keeps the pool file as the *durable* image and every write since the last
flush in memory (512-byte sectors, in the order they completed). A flush (``sync``) makes the
writes completed before it started durable; :meth:`VolatileDisk.cut` is the power cut: every
write not covered by a completed flush is dropped, writes still in flight never land, and the
file holds exactly what a disk would after losing power. With O_DIRECT data I/O, that is what a
SIGKILL of the daemon now loses too (nothing sits in the daemon's page cache).

Both ways into the pool file go through the disk: ``PowerCutBacking`` (the metadata commit:
pages, superblock, barrier) and ``PowerCutEngine`` (the data path's ``IoEngine``). The engine
completes each I/O after a random number of event-loop turns (seeded), so I/Os issued together
complete out of order, as on a real queue.
"""
from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

from sbstore.store.backing import Backing
from sbstore.store.engines.base import Buffer, ShortIO

SECTOR = 512


class PowerLost(OSError):
    """The disk lost power: nothing reaches it any more."""


class VolatileDisk:
    """The pool file, with a write cache in front of it."""

    def __init__(self, path: str, *, seed: int = 0, flush_s: float = 0.003) -> None:
        self.path = path
        self.flush_s = flush_s
        self._rng = random.Random(seed)
        self._flushing: dict[int, bytes] = {}  # taken by a flush in progress
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self.size = os.lseek(self._fd, 0, os.SEEK_END)
        self._cache: dict[int, bytes] = {}  # sector -> bytes written since the last flush
        self._lock = threading.Lock()  # commits flush from a worker thread
        self.dead = False
        self.flushes = 0
        self.writes = 0

    def read(self, offset: int, nbytes: int) -> bytes:
        with self._lock:
            self._alive()
            data = bytearray(os.pread(self._fd, nbytes, offset))
            if len(data) != nbytes:
                return bytes(data)
            first, last = offset // SECTOR, (offset + nbytes - 1) // SECTOR
            for layer in (self._flushing, self._cache):  # older first, newer on top
                if not layer:
                    continue
                for s in range(first, last + 1):
                    got = layer.get(s)
                    if got is not None:
                        a = s * SECTOR - offset
                        data[max(a, 0):a + SECTOR] = got[max(-a, 0):nbytes - a]
            return bytes(data)

    def write(self, offset: int, data: Buffer) -> None:
        assert offset % SECTOR == 0 and len(data) % SECTOR == 0, (offset, len(data))
        mv = memoryview(data).cast("B")
        with self._lock:
            self._alive()
            if offset + len(mv) > self.size:
                raise OSError(28, "No space left on device")
            base = offset // SECTOR
            for i in range(len(mv) // SECTOR):
                self._cache[base + i] = bytes(mv[i * SECTOR:(i + 1) * SECTOR])
            self.writes += 1

    def flush(self) -> None:
        """Make every write completed before the call durable (what fdatasync promises). It
        takes a little while, as on a real disk, and I/O goes on meanwhile: commits then
        overlap the data path as they do in production."""
        with self._lock:
            self._alive()
            batch, self._cache = self._cache, {}
            self._flushing = batch
        self.pause()
        with self._lock:
            self._flushing = {}
            self._alive()  # power lost meanwhile: none of it landed
            for s in sorted(batch):
                os.pwrite(self._fd, batch[s], s * SECTOR)
            os.fdatasync(self._fd)
            self.flushes += 1

    def pause(self) -> None:
        time.sleep(self._rng.uniform(0, self.flush_s))

    def cut(self) -> int:
        """Power cut: drop what no completed flush covers; returns how many sectors were lost."""
        with self._lock:
            lost = len(self._cache) + len(self._flushing)
            self._cache = {}
            self._flushing = {}
            self.dead = True
            return lost

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _alive(self) -> None:
        if self.dead:
            raise PowerLost(5, "the disk lost power")


class PowerCutBacking(Backing):
    """The pool's metadata I/O (commit pages, superblocks, barrier) through a VolatileDisk."""

    def __init__(self, disk: VolatileDisk) -> None:
        super().__init__(disk.path)
        self.disk = disk

    def read(self, offset: int, nbytes: int) -> bytes:
        return self.disk.read(offset, nbytes)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.disk.write(offset, data)

    def write_pages(self, pages: Sequence[tuple[int, bytes]]) -> None:
        for page, data in pages:
            self.disk.write(page * 4096, data)
        self.disk.pause()  # writing a commit's pages takes a while; the data path goes on

    def sync(self) -> None:
        self.disk.flush()

    def zero_range(self, offset: int, nbytes: int) -> bool:
        return False


class PowerCutEngine:
    """The data path's IoEngine through a VolatileDisk; completions come late and shuffled."""

    name = "powercut"
    reason = "test disk with a volatile write cache"
    direct = True
    block_align = SECTOR

    def __init__(self, disk: VolatileDisk, seed: int, max_delay_turns: int = 3) -> None:
        self.disk = disk
        self._rng = random.Random(seed)
        self._max_delay = max_delay_turns
        self.in_flight = 0

    def _later(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` (the device doing the I/O) after a few loop turns."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self.in_flight += 1

        def step(turns: int) -> None:
            if turns:
                loop.call_soon(step, turns - 1)
                return
            self.in_flight -= 1
            if fut.done():
                return
            try:
                fut.set_result(fn(*args))
            except OSError as exc:
                fut.set_exception(exc)
        step(self._rng.randint(0, self._max_delay))
        return fut

    def buffer(self, nbytes: int) -> memoryview:
        return memoryview(bytearray(nbytes))

    def read_into(self, offset: int, buf: memoryview) -> asyncio.Future[None]:
        def do() -> None:
            data = self.disk.read(offset, len(buf))
            if len(data) != len(buf):
                raise ShortIO("read", len(data), len(buf), offset)
            buf[:] = data
        return self._later(do)

    def write(self, offset: int, data: Buffer) -> asyncio.Future[None]:
        copy = bytes(data)  # the caller may reuse its buffer once we have taken the data
        return self._later(self.disk.write, offset, copy)

    def zero_range(self, offset: int, nbytes: int) -> asyncio.Future[bool]:
        def do() -> bool:
            self.disk.write(offset, bytes(nbytes))
            return True
        return self._later(do)

    def punch(self, offset: int, nbytes: int) -> asyncio.Future[bool]:
        return self.zero_range(offset, nbytes)

    def sync(self) -> asyncio.Future[None]:
        return self._later(self.disk.flush)

    def close(self) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {"inflight": self.in_flight}
