"""Buffer pool designs, per I/O: how ``BufferPool`` learns a buffer is free again.

    python3 perf/buffer_pool_bench.py [--ops 200000]

- ``refcount`` (what ``sbstore.store.engines.buffers`` does): one ctypes exporter per slot,
  made with the slab; a hand-out is a format "B" view of it; a slot is free when its
  exporter's ``sys.getrefcount`` is back to the pool's own.
- ``weakref``: a fresh exporter per hand-out (``from_buffer`` on the slab) with a weakref
  whose callback puts the slot back on a free list when the last view goes.

Each op is one get (4 KiB), a touch, and the drop of the view; the figure is CPU ns per op
(best of 5), with the cost of ``memoryview(bytearray(4096))`` (a fresh zeroed buffer, what
the store did before the pool) for scale.
"""
from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import pickle
import sys
import time
import weakref
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sbstore.store.engines.buffers import BufferPool

SLOT = 4096


class WeakrefPool:
    """The alternative design, just enough of it to time."""

    def __init__(self, slots: int = 256) -> None:
        self.slab = mmap.mmap(-1, slots * SLOT)
        self.free = list(range(slots))
        self.array = ctypes.c_char * SLOT
        self.refs: dict[int, weakref.ref[ctypes.Array[ctypes.c_char]]] = {}

    def get(self) -> memoryview:
        slot = self.free.pop()
        exporter = self.array.from_buffer(self.slab, slot * SLOT)
        self.refs[slot] = weakref.ref(exporter, lambda _r, s=slot: self._back(s))
        return pickle.PickleBuffer(exporter).raw()

    def _back(self, slot: int) -> None:
        del self.refs[slot]
        self.free.append(slot)


def per_op_ns(fn: Callable[[], None], ops: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.thread_time_ns()
        for _ in range(ops // 5):
            fn()
        best = min(best, (time.thread_time_ns() - t0) / (ops // 5))
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", type=int, default=200000)
    args = p.parse_args(argv)
    pool = BufferPool()
    held = [pool.get(SLOT) for _ in range(32)]  # some busy slots in the scan, as under load
    wpool = WeakrefPool()
    wheld = [wpool.get() for _ in range(32)]

    def refcount_op() -> None:
        b = pool.get(SLOT)
        b[0] = 1

    def weakref_op() -> None:
        b = wpool.get()
        b[0] = 1

    def bytearray_op() -> None:
        b = memoryview(bytearray(SLOT))
        b[0] = 1

    for name, fn in (("refcount", refcount_op), ("weakref", weakref_op),
                     ("bytearray", bytearray_op)):
        print(f"{name:10s} {per_op_ns(fn, args.ops):6.0f} ns per get+drop of a 4 KiB buffer")
    del held, wheld
    return 0


if __name__ == "__main__":
    sys.exit(main())
