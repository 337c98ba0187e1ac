"""The pool's backing file or block device: positioned I/O and the write barrier.

Rules of this module:
- One open file descriptor per pool, buffered I/O (the page cache): the data path calls
  ``os.preadv``/``os.pwritev`` on :attr:`Backing.fd` directly, inline on the event loop, because
  against the page cache that costs a few microseconds, less than a hop to a thread.
- The commit path goes through :meth:`Backing.write_pages`, :meth:`write_superblock` and
  :meth:`sync` only, so tests can record, tear or drop exactly those writes.
- A pool is opened by one process at a time: a read-write open takes an exclusive ``flock``, a
  read-only open (``sbstore check``) a shared one.
"""
from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterable, Sequence

from .errors import Busy, Corrupt, InvalidArgument, NotFound
from .layout import PAGE_SIZE


class Backing:
    """A file or block device holding a pool."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False,
                 create_size: int | None = None, lock: bool = True) -> None:
        self.path = os.fspath(path)
        self.readonly = readonly
        flags = os.O_RDONLY if readonly else os.O_RDWR
        if create_size is not None:
            flags |= os.O_CREAT
        try:
            self.fd = os.open(self.path, flags | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise NotFound(f"{self.path}: no such file or device") from None
        except PermissionError:
            raise InvalidArgument(f"{self.path}: permission denied") from None
        try:
            try:
                if lock:
                    mode = fcntl.LOCK_SH if readonly else fcntl.LOCK_EX
                    fcntl.flock(self.fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Busy(f"{self.path} is open by another process (sbstore serve?)") from None
            st = os.fstat(self.fd)
            self.is_block_device = stat.S_ISBLK(st.st_mode)
            if create_size is not None and not self.is_block_device:
                os.ftruncate(self.fd, create_size)
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read(self, offset: int, nbytes: int) -> bytes:
        data = os.pread(self.fd, nbytes, offset)
        if len(data) != nbytes:
            raise Corrupt(f"{self.path}: short read of {nbytes} bytes at {offset} "
                          f"(got {len(data)}): the device is smaller than the pool")
        return data

    def read_page(self, page: int) -> bytes:
        return self.read(page * PAGE_SIZE, PAGE_SIZE)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        n = os.pwrite(self.fd, data, offset)
        if n != len(data):
            raise OSError(f"short write: {n} of {len(data)} bytes at {offset}")

    def write_pages(self, pages: Sequence[tuple[int, bytes]]) -> None:
        """Write metadata pages (page number, 4 KiB), coalescing neighbours into one call."""
        for start, bufs in _runs(sorted(pages)):
            total = sum(len(b) for b in bufs)
            n = os.pwritev(self.fd, bufs, start * PAGE_SIZE)
            if n != total:
                raise OSError(f"short write: {n} of {total} bytes at page {start}")

    def write_superblock(self, slot_page: int, data: bytes) -> None:
        self.write(slot_page * PAGE_SIZE, data)

    def sync(self) -> None:
        """The barrier: everything written before is durable when this returns."""
        os.fdatasync(self.fd)


def _runs(pages: Iterable[tuple[int, bytes]]) -> Iterable[tuple[int, list[bytes]]]:
    """Group sorted (page, data) pairs into runs of consecutive pages (at most 256 per run)."""
    start = -1
    run: list[bytes] = []
    for page, data in pages:
        if run and page == start + len(run) and len(run) < 256:
            run.append(data)
            continue
        if run:
            yield start, run
        start, run = page, [data]
    if run:
        yield start, run
