"""The threads engine: O_DIRECT ``preadv``/``pwritev``/``fallocate``/``fdatasync`` in a few
worker threads, for where io_uring is missing or forbidden.

Theory of operation:
- An I/O method puts a job on a ``queue.SimpleQueue`` and returns a future. A worker does the
  blocking call (which releases the GIL) and appends ``(job id, result)`` to a list; the loop
  watches an eventfd and resolves every finished job in one callback. A worker bumps the
  eventfd only when it finds the list empty: under one lock with the loop's swap of the list,
  so no wake-up is lost, and at queue depth most completions cost no system call at all.
- Workers finish a transfer themselves (a short ``pwritev`` is continued; a read that comes
  back short reports :class:`ShortIO`), so a job's result is final when it reaches the loop.
- At most ``threads`` I/Os reach the device at once: this engine is the fallback, it is not
  meant to match io_uring's queue depth.
- Workers start with the first I/O. ``close`` stops and joins them; a worker stuck in the
  kernel past ``CLOSE_WAIT_S`` keeps its descriptors and buffers: they are abandoned, never
  closed or reused under it (a reused fd number would take its late write).

Bound to the loop of its first I/O (moves only while idle); call from that loop's thread.
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import queue
import threading
import time
from typing import Any

from .base import Buffer, IoResult, ShortIO
from .buffers import BufferPool
from .common import EngineState, OpenFile, move_reader
from .kernel import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    FALLOCATE_UNSUPPORTED,
    fallocate,
)

DEFAULT_THREADS = 8
CLOSE_WAIT_S = 30.0

_READ, _WRITE, _FALLOCATE, _SYNC, _READ_BOUNCED = range(5)
_ABANDONED: list[Any] = []
_address = ctypes.addressof
_char_from = ctypes.c_char.from_buffer


def _run(op: int, fd: int, off: int, obj: Any, arg: int) -> Any:
    """One job, in a worker thread. Returns the I/O's result or the exception it ends with."""
    try:
        if op == _READ:
            n = os.preadv(fd, [obj], off)
            if n != arg:
                return ShortIO("read", n, arg, off)
            return None
        if op == _READ_BOUNCED:
            dest, bounce = obj
            n = os.preadv(fd, [bounce], off)
            if n != arg:
                return ShortIO("read", n, arg, off)
            dest[:] = bounce
            return None
        if op == _WRITE:
            view = obj
            done = 0
            while done < arg:
                k = os.pwritev(fd, [view[done:]], off + done)
                if k <= 0:
                    return ShortIO("write", done, arg, off)
                done += k
            return None
        if op == _FALLOCATE:
            try:
                fallocate(fd, arg, off, obj)
            except OSError as exc:
                if exc.errno in FALLOCATE_UNSUPPORTED:
                    return False
                raise
            return True
        os.fdatasync(fd)
        return None
    except OSError as exc:
        return exc


class ThreadEngine(EngineState):
    """O_DIRECT I/O in worker threads (see the module docstring)."""

    name = "threads"
    direct = True

    def __init__(self, f: OpenFile, reason: str = "", *, threads: int = DEFAULT_THREADS,
                 buffers: BufferPool | None = None) -> None:
        if not reason:
            reason = (f"threads: O_DIRECT in {threads} threads, block_align {f.block_align} "
                      f"({f.align_source})")
        super().__init__(f, reason, buffers)
        self._nthreads = threads
        self._jobs: queue.SimpleQueue[tuple[int, int, int, int, Any, int] | None] = (
            queue.SimpleQueue())
        self._done: list[tuple[int, Any]] = []
        self._done_lock = threading.Lock()
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._workers: list[threading.Thread] = []
        self._inflight: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._new_future: Any = None
        self._zero_ok = True
        self._punch_ok = True

    # --- the I/O methods ----------------------------------------------------------------------

    def read_into(self, offset: int, buf: memoryview) -> IoResult[None]:
        n = buf.nbytes
        self._reads += 1
        self._read_bytes += n
        if (offset | n) & self._amask:
            self._unaligned += 1
            return self._job(_READ, self._slow(), offset, buf, n)
        if n and _address(_char_from(buf)) & self._mmask:
            self._bounced += 1
            return self._job(_READ_BOUNCED, self._fd, offset, (buf, self._pool.get(n)), n)
        return self._job(_READ, self._fd, offset, buf, n)

    def write(self, offset: int, data: Buffer) -> IoResult[None]:
        if (type(data) is memoryview and not data.readonly and data.c_contiguous
                and data.nbytes and not _address(_char_from(data)) & self._mmask):
            view = data
        else:
            view = self._copy_in(data)
            self._bounced += 1
        n = view.nbytes
        self._writes += 1
        self._written_bytes += n
        if (offset | n) & self._amask:
            self._unaligned += 1
            return self._job(_WRITE, self._slow(), offset, view, n)
        return self._job(_WRITE, self._fd, offset, view, n)

    def zero_range(self, offset: int, nbytes: int) -> IoResult[bool]:
        if not self._zero_ok or (offset | nbytes) & self._famask:
            return self._resolved(False)
        fut = self._job(_FALLOCATE, self._fd, offset, nbytes,
                        FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)
        fut.add_done_callback(self._note_zero)
        return fut

    def punch(self, offset: int, nbytes: int) -> IoResult[bool]:
        if not self._punch_ok or (offset | nbytes) & self._famask:
            return self._resolved(False)
        fut = self._job(_FALLOCATE, self._fd, offset, nbytes,
                        FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
        fut.add_done_callback(self._note_punch)
        return fut

    def sync(self) -> IoResult[None]:
        self._syncs += 1
        return self._job(_SYNC, self._fd, 0, None, 0)

    def stats(self) -> dict[str, int]:
        return self._base_stats(len(self._inflight), 0)

    def _note_zero(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is None and fut.result() is False:
            self._zero_ok = False

    def _note_punch(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is None and fut.result() is False:
            self._punch_ok = False

    # --- jobs -----------------------------------------------------------------------------------

    def _job(self, op: int, fd: int, off: int, obj: Any, arg: int) -> asyncio.Future[Any]:
        if not self._inflight:  # idle: (re)check the loop, start the workers, refuse if closed
            self._start()
        fut: asyncio.Future[Any] = self._new_future()
        jid = self._next_id = self._next_id + 1
        self._inflight[jid] = fut
        self._jobs.put((jid, op, fd, off, obj, arg))
        return fut

    def _resolved(self, value: Any) -> asyncio.Future[Any]:
        if not self._inflight:
            self._start()
        fut: asyncio.Future[Any] = self._new_future()
        fut.set_result(value)
        return fut

    def _start(self) -> None:
        """First I/O (or first on a new loop): attach to the loop, start the workers."""
        if self._closed:
            raise self._closed_error()
        if self._loop is not None and self._loop.is_running() and self._workers:
            return  # the usual case, without get_running_loop's getpid system call
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            move_reader(self._loop, loop, self._efd, self._on_ready, bool(self._inflight),
                        f"threads engine of {self.path}")
            self._loop = loop
            self._new_future = loop.create_future
        while len(self._workers) < self._nthreads:
            t = threading.Thread(target=self._work, name=f"sbstore-io-{len(self._workers)}",
                                 daemon=True)
            t.start()
            self._workers.append(t)

    def _work(self) -> None:
        get = self._jobs.get
        lock = self._done_lock
        efd = self._efd
        while True:
            job = get()
            if job is None:
                return
            jid, op, fd, off, obj, arg = job
            result = (jid, _run(op, fd, off, obj, arg))
            del job, obj  # the buffer goes back to its pool as soon as the loop lets go
            with lock:
                done = self._done
                done.append(result)
                wake = len(done) == 1
            if wake:
                os.eventfd_write(efd, 1)

    def _on_ready(self) -> None:
        # Clear the eventfd *before* taking the list: a job finished after the swap finds the
        # new list empty and bumps the eventfd again. The other order could clear that bump.
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            pass
        with self._done_lock:
            done, self._done = self._done, []
        pop = self._inflight.pop
        for jid, res in done:
            fut = pop(jid, None)
            if fut is None or fut.done():
                continue
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)

    # --- close --------------------------------------------------------------------------------

    def close(self) -> None:
        """Fail the I/Os not yet completed (EngineClosed), stop and join the workers, close."""
        if self._closed:
            return
        self._closed = True
        exc = self._closed_error()
        for fut in self._inflight.values():
            if not fut.done():
                try:
                    fut.set_exception(exc)
                except RuntimeError:  # its loop is closed: nobody can be waiting on it
                    pass
        self._inflight.clear()
        while True:  # jobs no worker has started are dropped: their futures have failed
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                break
        for _ in self._workers:
            self._jobs.put(None)
        deadline = time.monotonic() + CLOSE_WAIT_S
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._workers):
            # A worker is stuck in the kernel with our descriptors and a buffer: leave them.
            _ABANDONED.append((self._file, self._slow_fd, self._efd, self._jobs))
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._efd)
        os.close(self._efd)
        self._close_fds()
