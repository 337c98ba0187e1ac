"""An io_uring instance from Python: the three system calls, the mmapped rings, the probe.

Layouts and constants come from ``include/uapi/linux/io_uring.h``; this module knows nothing
of asyncio or of what the I/Os are for (``uring.py`` builds the engine on it).

Theory of operation:
- ``io_uring_setup`` returns a file descriptor and fills ``struct io_uring_params`` with the
  offsets of the fields inside the rings. The SQ ring (head, tail, mask, the index array) and
  the CQ ring (head, tail, mask, the CQEs) share one mapping where the kernel says so
  (IORING_FEAT_SINGLE_MMAP, 5.4+); the SQE array is a mapping of its own.
- Ring fields are read and written through ``memoryview.cast`` views (one index operation
  each, about 30 ns), SQEs are packed with one precompiled ``struct.Struct.pack_into``.
- The SQ index array is filled once with the identity (slot i -> SQE i), so queueing an SQE is
  writing SQE ``tail & mask`` and moving the tail: no per-I/O write to the array.

Memory ordering: the kernel's side of the protocol pairs its loads and stores with
``smp_load_acquire``/``smp_store_release``; ours are plain Python stores and loads. On x86-64
that is enough: the memory model (TSO) never reorders a store with an earlier store (so the
SQE is visible before the SQ tail that publishes it) nor a load with an earlier load (so a CQE
read after the CQ tail is at least as new as that tail), and every ring access here is an
opaque C call the compiler cannot move. Arm64, POWER and RISC-V reorder both: they would need
a load-acquire of the CQ tail and a store-release of the SQ tail and CQ head, which pure Python
cannot issue. :func:`check_machine` therefore refuses any other architecture, and the engine
selection falls back to threads there.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
from typing import Any, Literal

from .kernel import errno_error, libc_function

# System call numbers: the same on every architecture since 5.1 (the unified table), but only
# x86-64 is allowed to use them here (see the module docstring).
SYS_IO_URING_SETUP = 425
SYS_IO_URING_ENTER = 426
SYS_IO_URING_REGISTER = 427

# Opcodes (enum io_uring_op).
OP_NOP = 0
OP_READV = 1
OP_WRITEV = 2
OP_FSYNC = 3
OP_READ_FIXED = 4
OP_WRITE_FIXED = 5
OP_ASYNC_CANCEL = 14
OP_FALLOCATE = 17
OP_READ = 22
OP_WRITE = 23
OP_NAMES = {OP_READ: "READ", OP_WRITE: "WRITE", OP_FALLOCATE: "FALLOCATE", OP_FSYNC: "FSYNC",
            OP_ASYNC_CANCEL: "ASYNC_CANCEL"}

FSYNC_DATASYNC = 1 << 0
ASYNC_CANCEL_ALL = 1 << 0
ASYNC_CANCEL_ANY = 1 << 2

# io_uring_setup flags (engines/uring.py sets COOP_TASKRUN; perf/engine_bench.py tries the rest).
SETUP_COOP_TASKRUN = 1 << 8
SETUP_TASKRUN_FLAG = 1 << 9
SETUP_SINGLE_ISSUER = 1 << 12
SETUP_DEFER_TASKRUN = 1 << 13

FEAT_SINGLE_MMAP = 1 << 0
FEAT_NODROP = 1 << 1
FEAT_EXT_ARG = 1 << 8

ENTER_GETEVENTS = 1 << 0
ENTER_EXT_ARG = 1 << 3

REGISTER_EVENTFD = 4
REGISTER_PROBE = 8
IO_URING_OP_SUPPORTED = 1 << 0

OFF_SQ_RING = 0
OFF_CQ_RING = 0x8000000
OFF_SQES = 0x10000000

SQE_SIZE = 64
CQE_SIZE = 16

# struct io_uring_params: 10 u32 (sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle,
# features, wq_fd, resv[3]) then io_sqring_offsets and io_cqring_offsets (40 bytes each).
_PARAMS = struct.Struct("<10I")
_SQ_OFF = struct.Struct("<7I")   # head tail ring_mask ring_entries flags dropped array
_CQ_OFF = struct.Struct("<6I")   # head tail ring_mask ring_entries overflow cqes
_PARAMS_SIZE = 120
_SQ_OFF_AT = 40
_CQ_OFF_AT = 80

# The first 40 bytes of struct io_uring_sqe: opcode u8, flags u8, ioprio u16, fd s32,
# off u64, addr u64, len u32, rw_flags (or fsync_flags, cancel_flags) u32, user_data u64.
# The rest (buf_index, personality, file_index, pads) stays zero: the SQE array is zeroed by
# the kernel and nothing here ever writes past byte 40.
SQE = struct.Struct("<BBHiQQIIQ")

# struct io_uring_getevents_arg (for IORING_ENTER_EXT_ARG): sigmask u64, sigmask_sz u32,
# pad u32, ts u64 (pointer to struct __kernel_timespec: tv_sec s64, tv_nsec s64).
_GETEVENTS_ARG = struct.Struct("<QIIQ")
_TIMESPEC = struct.Struct("<qq")

_setup = libc_function("syscall", ctypes.c_long, ctypes.c_long, ctypes.c_uint, ctypes.c_void_p)
_enter = libc_function("syscall", ctypes.c_long, ctypes.c_long, ctypes.c_int, ctypes.c_uint,
                       ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_size_t)
_register = libc_function("syscall", ctypes.c_long, ctypes.c_long, ctypes.c_int,
                          ctypes.c_uint, ctypes.c_void_p, ctypes.c_uint)


def check_machine() -> None:
    """Raise OSError(ENOTSUP) unless this is x86-64 (TSO; see the module docstring)."""
    machine = os.uname().machine
    if machine != "x86_64":
        raise OSError(errno.ENOTSUP, f"the pure-Python io_uring relies on x86-64 memory "
                                     f"ordering (TSO); this machine is {machine}")


def io_uring_setup(entries: int, params: Any) -> int:
    """io_uring_setup(2); ``params`` is a ctypes buffer of struct io_uring_params."""
    fd = _setup(SYS_IO_URING_SETUP, entries, params)
    if fd < 0:
        raise errno_error(ctypes.get_errno(), "io_uring_setup")
    return int(fd)


def io_uring_register(fd: int, opcode: int, arg: Any, nr_args: int) -> int:
    rc = _register(SYS_IO_URING_REGISTER, fd, opcode, arg, nr_args)
    if rc < 0:
        raise errno_error(ctypes.get_errno(), f"io_uring_register(opcode {opcode})")
    return int(rc)


class Ring:
    """One io_uring: fd, SQ and CQ rings, SQE array. Single-threaded; no asyncio here."""

    def __init__(self, entries: int = 256, flags: int = 0) -> None:
        check_machine()
        params = ctypes.create_string_buffer(_PARAMS_SIZE)
        struct.pack_into("<I", params, 8, flags)
        self.fd = io_uring_setup(entries, params)
        self._maps: list[mmap.mmap] = []
        self._views: list[memoryview] = []
        try:
            self._map_rings(params.raw)
        except BaseException:
            self.close()
            raise

    def _map_rings(self, raw: bytes) -> None:
        (sq_entries, cq_entries, flags, _cpu, _idle, features,
         *_rest) = _PARAMS.unpack_from(raw, 0)
        sq_head, sq_tail, sq_mask, _sqn, sq_flags, _dropped, sq_array = _SQ_OFF.unpack_from(
            raw, _SQ_OFF_AT)
        cq_head, cq_tail, cq_mask, _cqn, cq_overflow, cqes = _CQ_OFF.unpack_from(
            raw, _CQ_OFF_AT)
        self.sq_entries = sq_entries
        self.cq_entries = cq_entries
        self.flags = flags
        self.features = features
        if not features & FEAT_NODROP:
            # Before 5.5 an overflowing CQ drops completions; the engine's in-flight bound
            # (cq_entries) avoids overflow, but we want the kernel's guarantee as well.
            raise OSError(errno.ENOTSUP, "io_uring without IORING_FEAT_NODROP (kernel < 5.5)")
        sq_size = sq_array + sq_entries * 4
        cq_size = cqes + cq_entries * CQE_SIZE
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        mflags = mmap.MAP_SHARED | mmap.MAP_POPULATE
        if features & FEAT_SINGLE_MMAP:
            sq_map = mmap.mmap(self.fd, max(sq_size, cq_size), mflags, prot, offset=OFF_SQ_RING)
            self._maps.append(sq_map)
            cq_map = sq_map
        else:
            sq_map = mmap.mmap(self.fd, sq_size, mflags, prot, offset=OFF_SQ_RING)
            self._maps.append(sq_map)
            cq_map = mmap.mmap(self.fd, cq_size, mflags, prot, offset=OFF_CQ_RING)
            self._maps.append(cq_map)
        sqe_map = mmap.mmap(self.fd, sq_entries * SQE_SIZE, mflags, prot, offset=OFF_SQES)
        self._maps.append(sqe_map)

        self.sq32 = self._view(sq_map, "I")
        self.cq32 = self._view(cq_map, "I")
        self.cq64 = self._view(cq_map, "Q")
        self.cqi32 = self._view(cq_map, "i")
        self.sqes = self._view(sqe_map, "B")
        self.sq_head_i = sq_head // 4
        self.sq_tail_i = sq_tail // 4
        self.sq_flags_i = sq_flags // 4
        self.sq_mask = self.sq32[sq_mask // 4]
        self.cq_head_i = cq_head // 4
        self.cq_tail_i = cq_tail // 4
        self.cq_overflow_i = cq_overflow // 4
        self.cq_mask = self.cq32[cq_mask // 4]
        # CQE i: user_data is cq64[cqe64 + 2*i], res is cqi32[cqe32 + 4*i + 2].
        self.cqe64 = cqes // 8
        self.cqe32 = cqes // 4
        for i in range(sq_entries):
            self.sq32[sq_array // 4 + i] = i

    def _view(self, m: mmap.mmap, fmt: Literal["B", "I", "i", "Q"]) -> memoryview:
        """A typed view of a mapping, remembered so :meth:`close` can release it (a mapping
        with live views cannot be closed)."""
        itemsize = struct.calcsize(fmt)
        whole = memoryview(m)
        self._views.append(whole)
        v = whole[:len(m) - len(m) % itemsize].cast(fmt)
        self._views.append(v)
        return v

    def enter(self, to_submit: int, min_complete: int = 0, flags: int = 0) -> int:
        """io_uring_enter(2): submit ``to_submit`` SQEs (and, with GETEVENTS, wait for
        ``min_complete`` CQEs). Returns how many SQEs the kernel consumed; raises OSError."""
        rc = _enter(SYS_IO_URING_ENTER, self.fd, to_submit, min_complete, flags, None, 0)
        if rc < 0:
            raise errno_error(ctypes.get_errno(), "io_uring_enter")
        return int(rc)

    def wait(self, min_complete: int, timeout_s: float) -> bool:
        """Block until ``min_complete`` CQEs are ready or ``timeout_s`` passes (used only
        to drain the ring at close). False on timeout."""
        ts = ctypes.create_string_buffer(_TIMESPEC.size)
        _TIMESPEC.pack_into(ts, 0, int(timeout_s), int(timeout_s % 1 * 1e9))
        arg = ctypes.create_string_buffer(_GETEVENTS_ARG.size)
        _GETEVENTS_ARG.pack_into(arg, 0, 0, 0, 0, ctypes.addressof(ts))
        rc = _enter(SYS_IO_URING_ENTER, self.fd, 0, min_complete,
                    ENTER_GETEVENTS | ENTER_EXT_ARG, arg, _GETEVENTS_ARG.size)
        if rc >= 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.ETIME, errno.EINTR):
            return False
        raise errno_error(err, "io_uring_enter(GETEVENTS)")

    def probe(self) -> set[int]:
        """The opcodes this kernel supports (IORING_REGISTER_PROBE, 5.6+)."""
        nops = 256
        buf = ctypes.create_string_buffer(16 + 8 * nops)
        io_uring_register(self.fd, REGISTER_PROBE, buf, nops)
        raw = buf.raw
        ops_len = raw[1]
        supported = set()
        for i in range(min(ops_len, nops)):
            op, _resv, op_flags = struct.unpack_from("<BBH", raw, 16 + 8 * i)
            if op_flags & IO_URING_OP_SUPPORTED:
                supported.add(op)
        return supported

    def register_eventfd(self, efd: int) -> None:
        """Have the kernel signal ``efd`` whenever it posts CQEs."""
        arg = ctypes.c_int32(efd)
        io_uring_register(self.fd, REGISTER_EVENTFD, ctypes.byref(arg), 1)

    def close(self) -> None:
        """Unmap and close. The kernel tears the ring down once the fd and every mapping are
        gone (CPython's mmap keeps a duplicate of the fd per mapping), after any I/O still in
        flight has finished."""
        for v in reversed(self._views):
            v.release()
        self._views.clear()
        for m in self._maps:
            m.close()
        self._maps.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
