"""The buffered engine: ``preadv``/``pwritev`` inline on the loop, through the page cache.

For where the file system refuses O_DIRECT (older tmpfs): what every pool did before engines
existed. Against the page cache a 4 KiB read costs a few microseconds, less than a hop to a
thread, so reads, writes and fallocate complete within the call and return an already
completed awaitable (no future, no loop). ``sync`` is the exception: ``fdatasync`` can take
tens of milliseconds, so it runs in the loop's default executor.

``block_align`` is 1 and buffers need no alignment; ``buffer()`` still lends pool buffers
(recycled, not zeroed: cheaper than a fresh bytearray).
"""
from __future__ import annotations

import asyncio
import os

from .base import Buffer, IoResult, ShortIO
from .buffers import BufferPool
from .common import DONE, FALSE, TRUE, Completed, EngineState, OpenFile
from .kernel import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    FALLOCATE_UNSUPPORTED,
    fallocate,
)


class BufferedEngine(EngineState):
    """Inline page-cache I/O (see the module docstring)."""

    name = "buffered"
    direct = False

    def __init__(self, f: OpenFile, reason: str = "", *,
                 buffers: BufferPool | None = None) -> None:
        super().__init__(f, reason or "buffered: page cache, inline on the loop", buffers)
        self.block_align = 1
        self._amask = 0
        self._zero_ok = True
        self._punch_ok = True
        self._syncing = 0

    def read_into(self, offset: int, buf: memoryview) -> IoResult[None]:
        if self._closed:
            raise self._closed_error()
        n = buf.nbytes
        self._reads += 1
        self._read_bytes += n
        try:
            got = os.preadv(self._fd, [buf], offset)
        except OSError as exc:
            return Completed(exc=exc)
        if got != n:
            return Completed(exc=ShortIO("read", got, n, offset))
        return DONE

    def write(self, offset: int, data: Buffer) -> IoResult[None]:
        if self._closed:
            raise self._closed_error()
        view = data if isinstance(data, memoryview) else memoryview(data)
        n = view.nbytes
        self._writes += 1
        self._written_bytes += n
        done = 0
        try:
            while done < n:
                k = os.pwritev(self._fd, [view[done:] if done else view], offset + done)
                if k <= 0:
                    return Completed(exc=ShortIO("write", done, n, offset))
                done += k
        except OSError as exc:
            return Completed(exc=exc)
        return DONE

    def zero_range(self, offset: int, nbytes: int) -> IoResult[bool]:
        if not self._zero_ok or (offset | nbytes) & self._famask:
            return FALSE
        ok = self._fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, nbytes)
        if ok is FALSE:
            self._zero_ok = False
        return ok

    def punch(self, offset: int, nbytes: int) -> IoResult[bool]:
        if not self._punch_ok or (offset | nbytes) & self._famask:
            return FALSE
        ok = self._fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, nbytes)
        if ok is FALSE:
            self._punch_ok = False
        return ok

    def _fallocate(self, mode: int, offset: int, nbytes: int) -> Completed:
        if self._closed:
            raise self._closed_error()
        try:
            fallocate(self._fd, mode, offset, nbytes)
        except OSError as exc:
            if exc.errno in FALLOCATE_UNSUPPORTED:
                return FALSE
            return Completed(exc=exc)
        return TRUE

    def sync(self) -> IoResult[None]:
        if self._closed:
            raise self._closed_error()
        self._syncs += 1
        self._syncing += 1
        fut = asyncio.get_running_loop().run_in_executor(None, os.fdatasync, self._fd)
        fut.add_done_callback(self._synced)
        return fut

    def _synced(self, _fut: object) -> None:
        self._syncing -= 1
        if self._closed and not self._syncing:
            self._close_fds()  # close() was called while this sync ran

    def stats(self) -> dict[str, int]:
        return self._base_stats(self._syncing, 0)

    def close(self) -> None:
        """Close the descriptor; while a sync runs in the executor it is closed when that
        sync is done instead, so its fd number cannot be reused under it."""
        if self._closed:
            return
        self._closed = True
        if not self._syncing:
            self._close_fds()
