"""Choosing and opening a pool's data I/O engine (the interface is in ``base.py``).

``open_engine(path, mode)`` with mode:
- ``"auto"``: open with O_DIRECT; a file system that refuses it (EINVAL, at the open or at a
  first one-block read) gets ``buffered``. Otherwise ``io_uring`` (ring set up, ops probed,
  eventfd registered); where that fails (ENOSYS, EPERM from a seccomp profile or
  ``kernel.io_uring_disabled``, a non-x86 machine, a missing op) ``threads``. The engine's
  ``reason`` says which and why, in one line.
- ``"io_uring"``, ``"threads"``, ``"buffered"``: that engine or :class:`EngineUnavailable`
  with the reason it cannot serve this file.

The engine owns its descriptors; ``close()`` it. Opening needs no event loop; the first I/O
binds the engine to the running loop (see each engine's docstring).
"""
from __future__ import annotations

import errno
import os

from .base import (
    ENGINE_NAMES,
    IO_MODES,
    Buffer,
    EngineClosed,
    EngineUnavailable,
    IoEngine,
    ShortIO,
)
from .buffered import BufferedEngine
from .buffers import BufferPool
from .common import OpenFile
from .threads import DEFAULT_THREADS, ThreadEngine
from .uring import DEFAULT_ENTRIES, UringEngine

__all__ = [
    "ENGINE_NAMES",
    "IO_MODES",
    "Buffer",
    "BufferPool",
    "EngineClosed",
    "EngineUnavailable",
    "IoEngine",
    "ShortIO",
    "io_uring_refusal",
    "open_engine",
]

IO_URING_DISABLED = "/proc/sys/kernel/io_uring_disabled"
IO_URING_GROUP = "/proc/sys/kernel/io_uring_group"


def open_engine(path: str, mode: str = "auto", *, readonly: bool = False,
                buffers: BufferPool | None = None, ring_entries: int = DEFAULT_ENTRIES,
                threads: int = DEFAULT_THREADS) -> IoEngine:
    """The data I/O engine for the pool file or block device at ``path`` (which must exist).
    ``buffers``: a pool to share between engines (each gets its own by default)."""
    if mode not in IO_MODES:
        raise ValueError(f"io mode {mode!r}: expected one of {', '.join(IO_MODES)}")
    if mode == "buffered":
        return BufferedEngine(OpenFile.open(path, direct=False, readonly=readonly),
                              "buffered: page cache, inline on the loop (io mode buffered)",
                              buffers=buffers)
    try:
        f = _open_direct(path, readonly)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        if mode != "auto":
            raise EngineUnavailable(f"{mode} needs O_DIRECT, which the file system under "
                                    f"{path} refuses (EINVAL); use io mode buffered") from exc
        return BufferedEngine(OpenFile.open(path, direct=False, readonly=readonly),
                              "buffered: the file system refuses O_DIRECT (EINVAL), so I/O "
                              "goes through the page cache", buffers=buffers)
    if mode == "threads":
        return ThreadEngine(f, buffers=buffers, threads=threads)
    try:
        return UringEngine(f, entries=ring_entries, buffers=buffers)
    except OSError as exc:
        why = io_uring_refusal(exc)
        if mode == "io_uring":
            f.close()
            raise EngineUnavailable(f"io_uring unavailable: {why}") from exc
        return ThreadEngine(f, f"threads: io_uring unavailable: {why}; O_DIRECT in {threads} "
                               f"threads, block_align {f.block_align} ({f.align_source})",
                            buffers=buffers, threads=threads)


def _open_direct(path: str, readonly: bool) -> OpenFile:
    """Open with O_DIRECT and read the first block: some file systems take the flag at the
    open and refuse only the I/O. OSError(EINVAL) when O_DIRECT is refused."""
    f = OpenFile.open(path, direct=True, readonly=readonly)
    try:
        if f.size() >= f.block_align:
            probe = BufferPool(0).get(f.block_align)  # a dedicated page-aligned mapping
            os.preadv(f.fd, [probe], 0)
    except BaseException:
        f.close()
        raise
    return f


def io_uring_refusal(exc: OSError) -> str:
    """Why io_uring cannot be used here, for an admin: the errno and what it means."""
    err = exc.errno or 0
    name = errno.errorcode.get(err, str(err))
    if err == errno.EPERM:
        disabled = _read_sysctl(IO_URING_DISABLED)
        if disabled == "2":
            return ("io_uring_setup: EPERM: kernel.io_uring_disabled=2 "
                    "(io_uring is disabled for every process)")
        if disabled == "1":
            group = _read_sysctl(IO_URING_GROUP) or "?"
            return (f"io_uring_setup: EPERM: kernel.io_uring_disabled=1 (only members of "
                    f"kernel.io_uring_group {group} or CAP_SYS_ADMIN may create rings)")
        return ("io_uring_setup: EPERM: not permitted although kernel.io_uring_disabled="
                f"{disabled or 'absent'}; a seccomp profile (a container runtime's default) "
                f"most likely forbids io_uring")
    if err == errno.ENOSYS:
        return ("io_uring_setup: ENOSYS: this kernel has no io_uring (older than 5.1, or "
                "built without CONFIG_IO_URING)")
    if err == errno.ENOMEM:
        return ("io_uring_setup: ENOMEM: the rings did not fit the locked-memory limit "
                "(RLIMIT_MEMLOCK; kernels before 5.12 charge rings to it)")
    return f"{name}: {exc.strerror or exc}"


def _read_sysctl(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None
