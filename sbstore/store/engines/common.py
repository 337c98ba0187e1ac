"""What every engine shares: the opened file, its alignment, counters, buffers, the slow fd.

Rules of this module:
- :class:`OpenFile` is opened once by the selection (``open_engine``) and handed to the engine
  that serves it, which then owns (and closes) the descriptor.
- A request an O_DIRECT engine cannot do directly (offset or length not a multiple of the
  device's ``block_align``, e.g. 512 bytes on a 4K-sector device) goes through a second,
  buffered descriptor on the same file, opened on first need. The kernel keeps the two
  coherent: a direct write invalidates the page cache over its range, a direct read first
  writes back dirty cached pages over its range, and ``fdatasync`` works on the file, not the
  descriptor. That holds for I/Os that do not overlap in time: concurrent direct and buffered
  I/O to the same bytes (only possible on a device whose sector is larger than a request) can
  leave a stale cached page, so the caller must not have two I/Os in flight on one range there,
  the same rule as for two writes to one range on any device.
"""
from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from .base import Buffer, EngineClosed
from .buffers import BufferPool
from .kernel import (
    alignment,
    device_size,
    is_block_device,
    logical_block_size,
    open_file,
)


@dataclass
class OpenFile:
    """A pool file or block device opened for data I/O."""

    path: str
    fd: int
    direct: bool
    readonly: bool
    block_align: int  # offset/length multiple for direct I/O (1 when buffered)
    mem_align: int  # buffer address multiple for direct I/O
    align_source: str  # where block_align came from (statx, BLKSSZGET, default)
    block_device: bool
    # fallocate ranges must be multiples of this on a block device (its logical block size,
    # else EINVAL); a file system takes any range.
    falloc_align: int

    @classmethod
    def open(cls, path: str, *, direct: bool, readonly: bool = False) -> OpenFile:
        fd = open_file(path, direct=direct, readonly=readonly)
        try:
            blk = is_block_device(fd)
            if direct:
                block_align, mem_align, source = alignment(fd)
            else:
                block_align, mem_align, source = 1, 1, "buffered"
            falloc_align = logical_block_size(fd) if blk else 1
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, direct, readonly, block_align, mem_align, source, blk,
                   falloc_align)

    def size(self) -> int:
        return device_size(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def move_reader(old: asyncio.AbstractEventLoop | None, new: asyncio.AbstractEventLoop, efd: int,
                on_ready: Callable[[], None], busy: bool, what: str) -> None:
    """Watch an engine's completion eventfd from ``new`` instead of ``old`` (its first I/O, or
    the first on another loop); refused while I/Os are in flight on the old one."""
    if old is not None:
        if busy:
            raise RuntimeError(f"{what} has I/Os in flight on another event loop")
        if not old.is_closed():
            old.remove_reader(efd)
    new.add_reader(efd, on_ready)


class EngineState:
    """Fields and counters every engine has; the I/O methods live in each engine."""

    name: str
    direct: bool

    def __init__(self, f: OpenFile, reason: str, buffers: BufferPool | None) -> None:
        self.reason = reason
        self.path = f.path
        self.block_align = f.block_align
        self.mem_align = f.mem_align
        self._file = f
        self._fd = f.fd
        self._amask = f.block_align - 1
        self._mmask = f.mem_align - 1
        self._famask = f.falloc_align - 1
        self._pool = buffers if buffers is not None else BufferPool()
        # buffer() is the pool's get: bound here, a read's buffer costs no call of ours.
        self.buffer = self._pool.get  # type: ignore[method-assign]
        self._slow_fd = -1
        self._closed = False
        self._reads = self._writes = self._read_bytes = self._written_bytes = 0
        self._syncs = self._unaligned = self._bounced = 0

    def buffer(self, nbytes: int) -> memoryview:
        """An aligned, writable buffer of ``nbytes`` from this engine's pool."""
        return self._pool.get(nbytes)

    def _slow(self) -> int:
        """The buffered descriptor for requests the device cannot take directly."""
        if self._slow_fd < 0:
            self._slow_fd = open_file(self.path, direct=False, readonly=self._file.readonly)
        return self._slow_fd

    def _copy_in(self, data: Buffer) -> memoryview:
        """``data`` copied into one of our buffers (the one copy ``write`` allows itself)."""
        src = data if isinstance(data, memoryview) else memoryview(data)
        if src.format != "B" or src.ndim != 1:
            src = src.cast("B")
        buf = self._pool.get(src.nbytes)
        buf[:] = src
        return buf

    def _closed_error(self) -> OSError:
        return EngineClosed(errno.EBADF, f"the {self.name} engine of {self.path} is closed")

    def _close_fds(self) -> None:
        self._file.close()
        self._fd = -1
        if self._slow_fd >= 0:
            os.close(self._slow_fd)
            self._slow_fd = -1

    def _base_stats(self, inflight: int, submit_calls: int) -> dict[str, int]:
        out = {"reads": self._reads, "writes": self._writes, "read_bytes": self._read_bytes,
               "written_bytes": self._written_bytes, "syncs": self._syncs,
               "inflight": inflight, "submit_calls": submit_calls,
               "unaligned": self._unaligned, "bounced": self._bounced}
        out.update(self._pool.stats())
        return out


class Completed:
    """An awaitable that is already complete: what an engine finishing within the call
    returns instead of a Future (no loop needed, nothing allocated per I/O for the common
    result ``None``)."""

    __slots__ = ("_exc", "_value")

    def __init__(self, value: Any = None, exc: BaseException | None = None) -> None:
        self._value = value
        self._exc = exc

    def __await__(self) -> Generator[Any, None, Any]:
        if self._exc is not None:
            raise self._exc
        return self._value
        yield  # unreachable: makes this a generator, as __await__ must return one

    def result(self) -> Any:
        if self._exc is not None:
            raise self._exc
        return self._value

    def done(self) -> bool:
        return True


DONE = Completed()
TRUE = Completed(True)
FALSE = Completed(False)
