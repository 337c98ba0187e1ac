"""The io_uring engine: O_DIRECT I/O with many requests in flight, driven from the event loop.

Theory of operation:
- An I/O method packs one SQE into the ring and returns an ``asyncio.Future``. The first SQE
  of a loop iteration schedules one ``loop.call_soon(self._submit)``, which publishes the SQ
  tail and calls ``io_uring_enter`` once for everything queued in that iteration.
- The kernel signals an eventfd registered with the ring (IORING_REGISTER_EVENTFD) when it
  posts completions; the loop watches it (``add_reader``) and :meth:`_reap` walks the CQ ring
  from our head to the kernel's tail, resolving each I/O's future, then publishes the new head.
- ``user_data`` is a counter; the in-flight table maps it to the I/O's record (future, the
  result expected, the buffer). Holding the buffer there is what keeps a buffer the kernel
  is still writing out of the pool, even when the caller has given up (cancelled) the I/O.
- At most ``cq_entries`` I/Os are in the kernel at once, so the CQ ring never overflows;
  beyond that (or when one iteration queues more than the SQ holds) I/Os wait in a Python
  backlog, drained as completions free room. Nothing is ever refused for lack of room.
- Per-I/O cost is what this module is about: the hot path is one ``from_buffer`` to get the
  buffer's address, one ``struct.pack_into``, one dict store, one future; the completion one
  dict pop, two ring loads and ``set_result``. System calls are per loop iteration, not per I/O.
- Requests the device cannot take directly: lengths or offsets not multiples of
  ``block_align`` go through the ring on the buffered descriptor (see ``common.py``); buffers
  whose address is not aligned (a caller's bytearray) are bounced through one of ours.

Why pure Python rather than a binding: the store imports the standard library only, and the
measured gain is small. ``perf/engine_bench.py`` drives this engine and the same design over the
PyPI ``liburing`` binding (2024.5.3; its 2026 wheels need AVX-512 and die with SIGILL on this
VM's CPU) with 4 KiB random reads at QD32: over 7 paired rounds the binding used a median 0.5 us
less CPU per I/O (of 10-14 us, the kernel's share included), inside the run-to-run noise.
Registered buffers and files did not measurably help either (fio's own
--fixedbufs/--registerfiles: at most 0.4 us per 4 KiB read).

The ring is set up with IORING_SETUP_COOP_TASKRUN where the kernel has it (5.19+). Without it,
every batch of completions (posted by the disk's interrupt, on another CPU) interrupts the
event loop with an inter-processor interrupt so that the loop's thread runs io_uring's task
work at once; with it, the task work waits until the thread next leaves the kernel (a system
call, which a loop makes every iteration: ``epoll_wait``, the socket writes, this engine's
submit; or an interrupt such as the timer tick), and a sleeping thread is still woken. Work
that holds the loop for a while must therefore give it more than one turn before the next
slice (sbstore/slices.py). In a VM an IPI is a trap to the hypervisor. Measured in the daemon (4k
random reads QD32 through a pool volume, perf/loadgen.py --engine native on the other CPU, the
two setups alternated): ahead in 6 of 7 rounds over two runs, by 5% at the median (29.4,
29.3, 28.9, 29.5k IOPS against 27.1, 26.8, 28.7, 29.6k; 28.2-28.7 against 28.6-31.3 us of the
daemon's CPU per read). 128k reads, QD1 reads, 4k writes: within the noise. (Measured
outside the daemon, in perf/engine_bench.py's loop, which makes no other system calls, it did
not help: there was no loop work to interrupt.) SINGLE_ISSUER would bind the ring to the
thread that set it up; DEFER_TASKRUN would post completions only when we wait for them with
GETEVENTS, which the eventfd design never does.

Bound to the event loop of its first I/O; the engine never touches a loop before that. It can
move to another loop only while nothing is in flight (a tool running ``asyncio.run`` twice).
All methods must be called from that loop's thread.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import time
from collections import deque
from typing import Any

from .base import Buffer, Completion, IoResult, ShortIO
from .buffers import BufferPool
from .common import EngineState, OpenFile, move_reader
from .kernel import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    FALLOCATE_UNSUPPORTED,
)
from .ring import (
    ASYNC_CANCEL_ALL,
    ASYNC_CANCEL_ANY,
    FSYNC_DATASYNC,
    OP_ASYNC_CANCEL,
    OP_FALLOCATE,
    OP_FSYNC,
    OP_NAMES,
    OP_READ,
    OP_WRITE,
    SETUP_COOP_TASKRUN,
    SQE,
    Ring,
)

REQUIRED_OPS = (OP_READ, OP_WRITE, OP_FALLOCATE, OP_FSYNC)
DEFAULT_ENTRIES = 256
CLOSE_WAIT_S = 30.0  # how long close() waits for the kernel to finish I/Os it cannot cancel

_U32 = 0xFFFFFFFF
_address = ctypes.addressof
_char_from = ctypes.c_char.from_buffer
_pack = SQE.pack_into

# Buffers the kernel may still write into after a close that timed out: kept referenced for
# the life of the process so the pool never hands them out again.
_ABANDONED: list[Any] = []

# An in-flight record: (future or read_with's completion, result expected, value to resolve
# with, opcode, fd, offset, address, keep) where keep is the buffer (or, for fallocate, the
# mode).
_Record = tuple[asyncio.Future[Any] | Completion, int, Any, int, int, int, int, Any]


def _new_ring(entries: int, setup_flags: int | None) -> Ring:
    if setup_flags is not None:
        return Ring(entries, setup_flags)
    try:
        return Ring(entries, SETUP_COOP_TASKRUN)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: a kernel before 5.19, without the flag
            raise
        return Ring(entries, 0)


class UringEngine(EngineState):
    """The io_uring engine over an O_DIRECT file (see the module docstring)."""

    name = "io_uring"
    direct = True

    def __init__(self, f: OpenFile, reason: str = "", *, entries: int = DEFAULT_ENTRIES,
                 setup_flags: int | None = None, buffers: BufferPool | None = None) -> None:
        """Set the ring up, probe the ops and register the eventfd; raises OSError when the
        kernel will not (the selection turns that into a fallback). Takes ownership of ``f``
        only on success. ``setup_flags`` None: COOP_TASKRUN where the kernel has it (module
        docstring)."""
        ring = _new_ring(entries, setup_flags)
        efd = -1
        try:
            ops = ring.probe()
            missing = [OP_NAMES[op] for op in REQUIRED_OPS if op not in ops]
            if missing:
                raise OSError(errno.ENOTSUP, f"io_uring lacks {', '.join(missing)} "
                                             f"(IORING_REGISTER_PROBE)")
            efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            ring.register_eventfd(efd)
        except BaseException:
            if efd >= 0:
                os.close(efd)
            ring.close()
            raise
        if not reason:
            coop = ", COOP_TASKRUN" if ring.flags & SETUP_COOP_TASKRUN else ""
            reason = (f"io_uring: O_DIRECT, {ring.sq_entries}-entry ring{coop}, "
                      f"block_align {f.block_align} ({f.align_source})")
        super().__init__(f, reason, buffers)
        self._ring = ring
        self._efd = efd
        self._sqes = ring.sqes
        self._sq_mask = ring.sq_mask
        self._sq_n = ring.sq_entries
        self._max_busy = ring.cq_entries
        # Counters (unbounded ints; the ring's u32 fields are these masked): SQEs written,
        # SQEs the kernel has consumed, CQEs reaped. Pending = tail - sent, in the kernel's
        # hands = tail - reaped; ``_room`` is how many SQEs may be written now.
        start: int = ring.sq32[ring.sq_tail_i]
        self._sq_tail = self._sq_sent = self._reaped = start
        self._cq_head: int = ring.cq32[ring.cq_head_i]
        self._room = min(self._sq_n, self._max_busy)
        self._backlog: deque[tuple[int, int, int, int, int, int, int]] = deque()
        self._inflight: dict[int, _Record] = {}
        self._next_ud = 1  # user_data 0 marks the engine's own cancel request
        self._scheduled = False  # a _submit is queued on the loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._new_future: Any = None
        self._submit_calls = 0
        self._wakeups = 0
        self._zero_ok = True
        self._punch_ok = True

    # --- the I/O methods ----------------------------------------------------------------------
    # read_with and write_with carry the submission path inline (see _queue): a call less per
    # I/O on the target's direct path. read_into and write, the general forms, go through them
    # with a future as the completion.

    def read_into(self, offset: int, buf: memoryview) -> IoResult[None]:
        """(Resolved with ``buf``, as read_with's completion is; callers await it only.)"""
        n = buf.nbytes
        if (offset | n) & self._amask:
            return self._read_unaligned(offset, buf)
        if not n:  # an empty buffer has no address, and nothing to read
            return self._resolved(None)
        if self._closed:
            raise self._closed_error()
        if not self._scheduled:
            self._begin_batch()
        fut: asyncio.Future[None] = self._new_future()
        if self.read_with(offset, buf, fut):
            return fut
        return self._read_bounced(offset, buf)  # (its address is not aligned)

    # read_with and write_with: an I/O told of its end through a completion (base.Completion:
    # a future, or the target's direct I/O), resolved from _reap (a read with its buffer, a
    # write with None). Only what the device takes as it is (aligned, not empty, an open
    # engine; for a write, a writable contiguous memoryview, as the target gathers a write's
    # data); anything else is False, with nothing started.

    def read_with(self, offset: int, buf: memoryview, completion: Completion) -> bool:
        n = buf.nbytes
        if (offset | n) & self._amask or not n or self._closed:
            return False
        addr = _address(_char_from(buf))
        if addr & self._mmask:
            return False
        if not self._scheduled:
            self._begin_batch()
        ud = self._next_ud
        self._next_ud = ud + 1
        fd = self._fd
        self._inflight[ud] = (completion, n, buf, OP_READ, fd, offset, addr, buf)
        if self._room:
            tail = self._sq_tail
            _pack(self._sqes, (tail & self._sq_mask) << 6, OP_READ, 0, 0, fd, offset, addr, n,
                  0, ud)
            self._sq_tail = tail + 1
            self._room -= 1
        else:
            self._backlog.append((OP_READ, fd, offset, addr, n, 0, ud))
        self._reads += 1
        self._read_bytes += n
        return True

    def write_with(self, offset: int, data: memoryview, completion: Completion) -> bool:
        if type(data) is not memoryview or data.readonly or not data.c_contiguous:
            return False
        n = data.nbytes
        if (offset | n) & self._amask or not n or self._closed:
            return False
        addr = _address(_char_from(data))
        if addr & self._mmask:
            return False
        if not self._scheduled:
            self._begin_batch()
        ud = self._next_ud
        self._next_ud = ud + 1
        fd = self._fd
        self._inflight[ud] = (completion, n, None, OP_WRITE, fd, offset, addr, data)
        if self._room:
            tail = self._sq_tail
            _pack(self._sqes, (tail & self._sq_mask) << 6, OP_WRITE, 0, 0, fd, offset, addr,
                  n, 0, ud)
            self._sq_tail = tail + 1
            self._room -= 1
        else:
            self._backlog.append((OP_WRITE, fd, offset, addr, n, 0, ud))
        self._writes += 1
        self._written_bytes += n
        return True

    def write(self, offset: int, data: Buffer) -> IoResult[None]:
        if type(data) is not memoryview or data.readonly or not data.c_contiguous:
            return self._write_copied(offset, data)
        n = data.nbytes
        if (offset | n) & self._amask or not n:
            return self._write_copied(offset, data)
        if self._closed:
            raise self._closed_error()
        if not self._scheduled:
            self._begin_batch()
        fut: asyncio.Future[None] = self._new_future()
        if self.write_with(offset, data, fut):
            return fut
        return self._write_copied(offset, data)  # (its address is not aligned)

    def zero_range(self, offset: int, nbytes: int) -> IoResult[bool]:
        if not self._zero_ok or (offset | nbytes) & self._famask:
            return self._resolved(False)
        mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
        # FALLOCATE's SQE: off = offset, addr = length, len = mode (io_uring/sync.c).
        return self._queue(OP_FALLOCATE, self._fd, offset, nbytes, mode, 0, 0, True, mode)

    def punch(self, offset: int, nbytes: int) -> IoResult[bool]:
        if not self._punch_ok or (offset | nbytes) & self._famask:
            return self._resolved(False)
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        return self._queue(OP_FALLOCATE, self._fd, offset, nbytes, mode, 0, 0, True, mode)

    def sync(self) -> IoResult[None]:
        self._syncs += 1
        return self._queue(OP_FSYNC, self._fd, 0, 0, 0, FSYNC_DATASYNC, 0, None, None)

    def stats(self) -> dict[str, int]:
        """The base counters, plus ``backlog`` (I/Os waiting for room in the rings) and
        ``wakeups`` (eventfd wake-ups that reaped completions)."""
        out = self._base_stats(len(self._inflight), self._submit_calls)
        out["backlog"] = len(self._backlog)
        out["wakeups"] = self._wakeups
        return out

    # --- slower paths -------------------------------------------------------------------------

    def _read_unaligned(self, offset: int, buf: memoryview) -> IoResult[None]:
        """Offset or length off the device's alignment: through the buffered descriptor."""
        self._unaligned += 1
        self._reads += 1
        n = buf.nbytes
        self._read_bytes += n
        addr = _address(_char_from(buf))  # n is not 0 here: 0 is aligned
        return self._queue(OP_READ, self._slow(), offset, addr, n, 0, n, None, buf)

    def _read_bounced(self, offset: int, buf: memoryview) -> IoResult[None]:
        """A caller's buffer at an address O_DIRECT refuses: read into ours, then copy."""
        self._bounced += 1
        self._reads += 1
        n = buf.nbytes
        self._read_bytes += n
        bounce = self._pool.get(n)
        inner = self._queue(OP_READ, self._fd, offset, _address(_char_from(bounce)), n, 0, n,
                            None, bounce)
        outer: asyncio.Future[None] = self._new_future()

        def copy(f: asyncio.Future[Any]) -> None:
            if outer.done():
                return
            exc = f.exception() if not f.cancelled() else asyncio.CancelledError()
            if exc is not None:
                outer.set_exception(exc)
            else:
                buf[:] = bounce
                outer.set_result(None)

        inner.add_done_callback(copy)
        return outer

    def _write_copied(self, offset: int, data: Buffer) -> IoResult[None]:
        """Data that is not an aligned writable buffer: copied once into one of ours."""
        buf = self._copy_in(data)
        n = buf.nbytes
        if not n:
            return self._resolved(None)
        self._writes += 1
        self._written_bytes += n
        addr = _address(_char_from(buf))
        if (offset | n) & self._amask:
            self._unaligned += 1
            return self._queue(OP_WRITE, self._slow(), offset, addr, n, 0, n, None, buf)
        self._bounced += 1
        return self._queue(OP_WRITE, self._fd, offset, addr, n, 0, n, None, buf)

    def _resolved(self, value: Any) -> asyncio.Future[Any]:
        if self._closed:
            raise self._closed_error()
        self._use_loop()
        fut: asyncio.Future[Any] = self._new_future()
        fut.set_result(value)
        return fut

    # --- submission ---------------------------------------------------------------------------

    def _queue(self, op: int, fd: int, off: int, addr: int, length: int, op_flags: int,
               expected: int, value: Any, keep: Any) -> asyncio.Future[Any]:
        """Queue one SQE (or, without room, a backlog entry) and return its future: the
        general form of what read_into and write do inline."""
        if not self._scheduled:
            self._begin_batch()
        fut: asyncio.Future[Any] = self._new_future()
        ud = self._next_ud
        self._next_ud = ud + 1
        self._inflight[ud] = (fut, expected, value, op, fd, off, addr, keep)
        if self._room:
            tail = self._sq_tail
            _pack(self._sqes, (tail & self._sq_mask) << 6, op, 0, 0, fd, off, addr, length,
                  op_flags, ud)
            self._sq_tail = tail + 1
            self._room -= 1
        else:
            self._backlog.append((op, fd, off, addr, length, op_flags, ud))
        return fut

    def _begin_batch(self) -> None:
        """First SQE of this loop iteration: schedule the one submit that will carry it."""
        if self._closed:
            raise self._closed_error()
        loop = self._loop
        if loop is None or not loop.is_running():
            # Not bound yet, or bound to a loop that has stopped (asyncio.get_running_loop
            # costs a getpid system call on CPython 3.11: not once per batch).
            loop = self._use_loop()
        loop.call_soon(self._submit)
        self._scheduled = True

    def _use_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return loop
        move_reader(self._loop, loop, self._efd, self._on_ready, bool(self._inflight),
                    f"io_uring engine of {self.path}")
        self._loop = loop
        self._new_future = loop.create_future
        return loop

    def _set_room(self) -> None:
        """Room for SQEs: the SQ ring's free slots, and no more in the kernel than the CQ ring
        holds (so it never overflows)."""
        tail = self._sq_tail
        self._room = min(self._sq_n - (tail - self._sq_sent),
                         self._max_busy - (tail - self._reaped))

    def _submit(self) -> None:
        self._scheduled = False
        n = self._sq_tail - self._sq_sent
        if not n or self._closed:
            return
        ring = self._ring
        ring.sq32[ring.sq_tail_i] = self._sq_tail & _U32  # publishes the SQEs (TSO: ring.py)
        try:
            done = ring.enter(n)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EBUSY, errno.EINTR):
                # The kernel is short of request memory or has completions to post first:
                # try again shortly rather than spin.
                assert self._loop is not None
                self._loop.call_later(0.001, self._retry_submit)
                self._scheduled = True
                return
            self._fail_pending(exc)
            return
        self._submit_calls += 1
        self._sq_sent += done
        self._set_room()
        if done < n:
            # Without IORING_SETUP_SUBMIT_ALL the kernel stops at an SQE that fails to
            # prepare (posting its error as a CQE): submit the rest next iteration.
            assert self._loop is not None
            self._loop.call_soon(self._submit)
            self._scheduled = True

    def _retry_submit(self) -> None:
        self._scheduled = False
        self._reap()
        self._submit()

    def _fail_pending(self, exc: OSError) -> None:
        """io_uring_enter failed outright: the SQEs it did not take are taken back and
        their I/Os fail with its error."""
        tail = self._sq_tail
        n = tail - self._sq_sent
        for k in range(1, n + 1):
            slot = ((tail - k) & self._sq_mask) << 6
            ud = int.from_bytes(self._sqes[slot + 32:slot + 40], "little")
            rec = self._inflight.pop(ud, None)
            if rec is not None and not rec[0].done():
                rec[0].set_exception(OSError(exc.errno, f"submitting: {exc.strerror}"))
        self._sq_tail = self._sq_sent
        self._ring.sq32[self._ring.sq_tail_i] = self._sq_tail & _U32
        self._set_room()

    # --- completion ---------------------------------------------------------------------------

    def _on_ready(self) -> None:
        try:
            os.read(self._efd, 8)
        except BlockingIOError:
            pass
        self._wakeups += 1
        self._reap()

    def _reap(self) -> None:
        ring = self._ring
        cq32 = ring.cq32
        head = self._cq_head
        tail = cq32[ring.cq_tail_i]
        if head == tail:
            return
        cq64 = ring.cq64
        cqi32 = ring.cqi32
        mask = ring.cq_mask
        ud_at = ring.cqe64
        res_at = ring.cqe32 + 2
        pop = self._inflight.pop
        seen = 0
        while head != tail:
            i = head & mask
            rec = pop(cq64[ud_at + 2 * i], None)
            res = cqi32[res_at + 4 * i]
            head = (head + 1) & _U32
            seen += 1
            if rec is None:
                continue  # the engine's own cancel request
            fut = rec[0]
            if res == rec[1]:
                if not fut.done():
                    fut.set_result(rec[2])
            else:
                self._finish_odd(rec, res)
        cq32[ring.cq_head_i] = head  # gives the CQ slots back to the kernel
        self._cq_head = head
        self._reaped += seen
        self._set_room()
        if self._backlog:
            self._drain_backlog()

    def _finish_odd(self, rec: _Record, res: int) -> None:
        """A completion other than the one expected: an error, a short transfer, or a
        fallocate mode the file system does not have."""
        fut, expected, _value, op, fd, off, addr, keep = rec
        if fut.done() or self._closed:
            return
        if res < 0:
            err = -res
            if op == OP_FALLOCATE and err in FALLOCATE_UNSUPPORTED:
                if keep & FALLOC_FL_PUNCH_HOLE:
                    self._punch_ok = False
                else:
                    self._zero_ok = False
                fut.set_result(False)
                return
            what = OP_NAMES.get(op, str(op)).lower()
            where = f" of {expected} bytes at {off}" if op in (OP_READ, OP_WRITE) else ""
            fut.set_exception(OSError(err, f"{what}{where} on {self.path}: {os.strerror(err)}"))
        elif op == OP_WRITE and res > 0 and not (res & self._amask):
            # A short write (the device filled up mid-way, say): write the rest, whose
            # error, if any, is the one worth reporting. It waits in the backlog for the
            # room this reap is making.
            ud = self._next_ud
            self._next_ud = ud + 1
            self._inflight[ud] = (fut, expected - res, None, op, fd, off + res, addr + res, keep)
            self._backlog.append((op, fd, off + res, addr + res, expected - res, 0, ud))
        else:
            what = "read" if op == OP_READ else OP_NAMES.get(op, str(op)).lower()
            fut.set_exception(ShortIO(what, res, expected, off))

    def _drain_backlog(self) -> None:
        backlog = self._backlog
        sqes = self._sqes
        mask = self._sq_mask
        while backlog and self._room:
            op, fd, off, addr, length, op_flags, ud = backlog.popleft()
            tail = self._sq_tail
            _pack(sqes, (tail & mask) << 6, op, 0, 0, fd, off, addr, length, op_flags, ud)
            self._sq_tail = tail + 1
            self._room -= 1
        if self._sq_tail != self._sq_sent and not self._scheduled and self._loop is not None:
            self._loop.call_soon(self._submit)
            self._scheduled = True

    def _in_kernel(self) -> int:
        """SQEs written and not yet completed: the kernel may still use their buffers."""
        return self._sq_tail - self._reaped

    # --- close --------------------------------------------------------------------------------

    def close(self) -> None:
        """Fail every I/O not yet completed (EngineClosed), wait for the kernel to let go of
        their buffers (cancelling what it can), then release the ring and descriptors. Call it
        from the loop's thread. Blocks at most ``CLOSE_WAIT_S`` (a hung device); past that the
        buffers still in the kernel's hands are abandoned, never reused."""
        if self._closed:
            return
        self._closed = True
        self._scheduled = False
        exc = self._closed_error()
        self._backlog.clear()
        for rec in self._inflight.values():
            fut = rec[0]
            if not fut.done():
                try:
                    fut.set_exception(exc)
                except RuntimeError:  # its loop is closed: nobody can be waiting on it
                    pass
        if self._in_kernel():
            self._drain_kernel()
        if self._in_kernel():
            _ABANDONED.append([rec[7] for rec in self._inflight.values()])
        self._inflight.clear()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._efd)
        os.close(self._efd)
        self._ring.close()
        self._close_fds()

    def _drain_kernel(self) -> None:
        ring = self._ring
        try:
            n = self._sq_tail - self._sq_sent
            if n:
                ring.sq32[ring.sq_tail_i] = self._sq_tail & _U32
                self._sq_sent += ring.enter(n)
            # Cancel what has not reached the device yet (5.19+; harmless -EINVAL before).
            tail = self._sq_tail
            _pack(self._sqes, (tail & self._sq_mask) << 6, OP_ASYNC_CANCEL, 0, 0, -1,
                  0, 0, 0, ASYNC_CANCEL_ANY | ASYNC_CANCEL_ALL, 0)
            self._sq_tail = tail + 1
            ring.sq32[ring.sq_tail_i] = self._sq_tail & _U32
            self._sq_sent += ring.enter(1)
            deadline = time.monotonic() + CLOSE_WAIT_S
            while self._in_kernel() > 0 and time.monotonic() < deadline:
                ring.wait(1, 0.5)
                self._reap()
        except OSError:
            pass  # whatever is still in the kernel is abandoned by close()
