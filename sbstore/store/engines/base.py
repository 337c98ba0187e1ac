"""What a pool's data path needs from the device under it: the I/O engine interface.

A pool's metadata (superblocks, map and refcount pages) goes through ``sbstore.store.backing``
(buffered, written by the commit in a worker thread). Its *data* (the clusters volumes read and
write) goes through one :class:`IoEngine`, chosen per pool:

- ``io_uring``: O_DIRECT reads and writes through an io_uring; submissions are batched once
  per event-loop iteration, completions are reaped when the eventfd registered with the ring
  turns readable on the loop. Many I/Os in flight per pool, none of them on the page cache.
- ``threads``: O_DIRECT ``preadv``/``pwritev`` in a small thread pool, where io_uring is
  missing or forbidden (EPERM under a seccomp profile, ``kernel.io_uring_disabled``).
- ``buffered``: ``preadv``/``pwritev`` inline on the loop through the page cache, where the
  file system refuses O_DIRECT (older tmpfs); what every pool did before engines existed.

Rules every engine keeps:
- The I/O methods are plain methods returning an :class:`IoResult`: an ``asyncio.Future``
  while the I/O is in flight, or an already-completed awaitable when the engine finished it
  within the call (no loop, no allocation). Several I/Os can be issued before the caller
  awaits the first, and they go to the kernel together. A caller that stops waiting (its
  command was cancelled) may add a done callback to a result that is not done yet (it is then
  a Future): it completes when the device is done with the buffers.
- Offsets and lengths given to an engine are multiples of 512. An engine whose device needs
  more (``block_align``, e.g. 4096 on a 4K-sector device) serves a request it cannot do
  directly some slower way; it never refuses one.
- Buffers: :meth:`IoEngine.buffer` lends an aligned, writable ``memoryview`` (format "B") from
  the engine's buffer pool. It goes back to the pool by itself once nothing references it or
  any slice of it (a send still holding a read's data keeps it out of the pool). ``write``
  accepts any bytes-like object and copies it once into an aligned buffer unless it is already
  one of the engine's own.
- Errors: an I/O that fails completes with ``OSError`` (its errno); a read that returns fewer
  bytes than asked completes with :class:`ShortIO` (an ``OSError`` with errno EIO).
- Engines never touch the event loop before their first I/O, so a pool opened by a tool
  without a loop (``sbstore check``) costs nothing.
"""
from __future__ import annotations

import errno
from collections.abc import Generator
from typing import Any, Protocol, TypeVar, runtime_checkable

Buffer = bytes | bytearray | memoryview

ENGINE_NAMES = ("io_uring", "threads", "buffered")
IO_MODES = ("auto",) + ENGINE_NAMES


class ShortIO(OSError):
    """The device moved fewer bytes than asked (past its end, a failing device)."""

    def __init__(self, what: str, done: int, wanted: int, offset: int) -> None:
        super().__init__(errno.EIO, f"short {what}: {done} of {wanted} bytes at {offset}")
        self.done = done
        self.wanted = wanted
        self.offset = offset


class EngineUnavailable(Exception):
    """The engine asked for cannot serve this file here; the message says why."""


class EngineClosed(OSError):
    """An I/O on an engine after :meth:`IoEngine.close`, or one still in flight when it was
    closed (errno EBADF)."""


T_co = TypeVar("T_co", covariant=True)


class IoResult(Protocol[T_co]):
    """What an I/O method returns (see the module rules)."""

    def done(self) -> bool: ...

    def result(self) -> T_co: ...

    def __await__(self) -> Generator[Any, None, T_co]: ...


class Completion(Protocol):
    """The part of a future an engine calls, for the optional ``read_with``.

    An engine may offer ``read_with(offset, buf, completion) -> bool``: start reading into
    ``buf`` and report to ``completion`` (``set_result(buf)`` or ``set_exception(exc)``) when
    done, never before returning; False, with nothing started, where it cannot (then
    ``read_into`` serves the read). Why: a read told of its completion directly costs no
    future, no loop callback and no coroutine resumed through every layer above it (the
    io_uring engine offers it; the target's I/O queue uses it for plain reads).
    """

    def done(self) -> bool: ...

    def set_result(self, value: Any) -> None: ...

    def set_exception(self, exc: BaseException) -> None: ...


@runtime_checkable
class IoEngine(Protocol):
    """The data I/O of one pool file or block device."""

    name: str  # "io_uring", "threads" or "buffered"
    reason: str  # one line: why this engine serves the pool (shown in logs, listings, API)
    direct: bool  # True: O_DIRECT, no page cache
    block_align: int  # offsets/lengths the device takes directly (1 for buffered)

    def buffer(self, nbytes: int) -> memoryview:
        """An aligned, writable buffer of ``nbytes`` (contents undefined)."""

    def read_into(self, offset: int, buf: memoryview) -> IoResult[None]:
        """Fill ``buf`` (one of :meth:`buffer`'s, or a slice of one) from ``offset``."""

    def write(self, offset: int, data: Buffer) -> IoResult[None]:
        """Write all of ``data`` at ``offset``."""

    def zero_range(self, offset: int, nbytes: int) -> IoResult[bool]:
        """Make the range read as zeroes without writing them (``fallocate`` ZERO_RANGE,
        KEEP_SIZE); False when the device cannot, and then the caller writes zeroes."""

    def punch(self, offset: int, nbytes: int) -> IoResult[bool]:
        """Give the range back to the file system (PUNCH_HOLE, KEEP_SIZE) or the device
        (discard); it then reads as zeroes. False when the device cannot."""

    def sync(self) -> IoResult[None]:
        """Every write completed before this call is durable (``fdatasync``)."""

    def close(self) -> None:
        """Release the file descriptor, the ring, the threads; I/Os in flight fail."""

    def stats(self) -> dict[str, int]:
        """Counters for metrics: ``reads``, ``writes``, ``read_bytes``, ``written_bytes``,
        ``syncs``, ``inflight``, ``submit_calls`` (io_uring_enter calls, where it applies)."""
