"""The C allocator's settings for a daemon that allocates and frees large buffers per I/O.

Why: CPython takes every object over 512 bytes from malloc, and the data path makes large ones
and drops them microseconds later: a RAM device's 128 KiB read, a write's data gathered after
R2T, a replication frame. With glibc's defaults the freed memory goes back to the kernel as
soon as the top of the heap holds more than M_TRIM_THRESHOLD free (which follows the dynamic
mmap threshold: about 256 KiB here), so every burst of I/O grows the heap again with ``brk``
and takes a page fault, with a zeroed page, for each 4 KiB of it. Measured with strace on
``serve --demo --ram``, 128k reads at QD16: half a ``brk`` per read, and 127 us of target CPU
per read; with the settings below 56 us, and twice the IOPS (perf/run.py's 128k job).

What it sets (glibc's ``mallopt``; elsewhere, or when the environment already sets them, as
``MALLOC_TRIM_THRESHOLD_``/``MALLOC_MMAP_THRESHOLD_``, nothing):
- ``M_MMAP_THRESHOLD`` 4 MiB: blocks up to an MDTS-sized transfer (1 MiB) and more come from
  the heap, not from an ``mmap`` of their own per allocation (also fixing the threshold, which
  glibc would otherwise move);
- ``M_TRIM_THRESHOLD`` 64 MiB: up to that much freed memory stays with the process for the
  next burst. That is the price: RSS keeps the peak of such buffers, up to 64 MiB.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("sbstore.heap")

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 64 << 20
_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Apply the settings above to this process; True if they were applied. Call it once,
    early, from the process that serves I/O."""
    if any(name in os.environ for name in _ENV):
        return False  # the operator chose
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        log.debug("mallopt refused the heap settings; the allocator's defaults stay")
    return ok
