"""Aligned I/O buffers that go back to their pool by themselves once nothing references them.

Theory of operation:
- Size classes are powers of two from 4 KiB to 1 MiB. A class owns slabs: anonymous ``mmap``s
  (so page-aligned, which satisfies any O_DIRECT memory alignment), each carved into slots. Every
  slot has one exporter made once with the slab: a ctypes ``c_char`` array laid over the slot
  by ``from_buffer``. A buffer handed out is a view of that exporter (sliced to the size
  asked); the view, and every slice of it, holds a reference to the exporter. The view comes
  from a ``pickle.PickleBuffer`` kept per slot, whose ``raw()`` is the cheapest way to a
  format "B" view of a ctypes array (0.16 us, where ``memoryview(array).cast("B")`` takes
  0.3 us; a ctypes array's own format is "<c", which ``view[:] = data`` refuses). One ``mmap``
  per slot would give format "B" directly but costs one kernel VMA per buffer (they do not
  merge), 16k of the 65k a process may have for 64 MiB of 4 KiB buffers.
- A slot is free exactly when its exporter's reference count is back to what the pool alone
  holds (``sys.getrefcount``). :meth:`BufferPool.get` walks each class's slots round-robin from
  a cursor and takes the first free one, so a buffer still referenced anywhere (a send holding
  a read's data, an I/O in flight holding its target) is never handed out twice.
  Why not a weakref callback per buffer: it needs a fresh exporter per hand-out (``from_buffer``
  about 0.8 us, plus the weakref and its callback), where a reference-count check is about
  25 ns. ``perf/buffer_pool_bench.py``: a 4 KiB get and drop costs 0.4 us this way, 1.7 us
  the weakref way, 0.4 us for a fresh (unaligned, zeroed) ``bytearray``.
- The pool's memory is bounded (``max_bytes`` of slabs). Past the bound, or for a request
  larger than the largest class, a buffer gets a dedicated ``mmap`` of its own, unmapped when
  its last reference goes: never a failure, only a slower path.
- Slots are round-robin, not LIFO: the buffer handed out longest ago is the likeliest to be free,
  so the slot at the cursor usually is (one reference-count check per hand-out). Otherwise the
  scan goes on from there; a class whose scan meets more than a quarter of its slots busy in a
  row grows a slab (within the bound), and one with no free slot at all, at the bound, hands
  out a dedicated mapping.

Not thread-safe: one pool serves one thread (the event loop's). Other threads may hold and drop
buffers (a drop only ever frees a slot), but must not call :meth:`BufferPool.get`.
"""
from __future__ import annotations

import ctypes
import mmap
import pickle
import sys
from typing import Any

PAGE_SIZE = mmap.PAGESIZE
MIN_CLASS = 4096
MAX_CLASS = 1 << 20
DEFAULT_MAX_BYTES = 64 << 20
_SLAB_MIN = 1 << 20  # slab size: at least 1 MiB, and at least 4 buffers of the class


def _refs_of_a_free_slot() -> tuple[int, int]:
    """What ``sys.getrefcount`` reads for a free slot, as the pool checks it: through the
    subscript ``getrefcount(slots[i])`` (the list's reference, the PickleBuffer's, the
    subscript's temporary) and through a local variable (one more: the variable and the
    argument). Measured on the same structure rather than written down, so that a change in
    CPython's counting shows up here (and in the tests), never as a buffer handed out twice."""
    probe = (ctypes.c_char * 1)()
    slots = [probe]
    views = [pickle.PickleBuffer(probe)]
    del probe
    by_subscript = sys.getrefcount(slots[0])
    e = slots[0]
    by_local = sys.getrefcount(e)
    del e, views
    return by_subscript, by_local


_FREE_AT_INDEX, _FREE_REFS = _refs_of_a_free_slot()


class _SizeClass:
    __slots__ = ("cursor", "size", "slab_bytes", "slots", "views")

    def __init__(self, size: int) -> None:
        self.size = size
        self.slots: list[Any] = []  # one ctypes array per slot, for the life of the pool
        self.views: list[pickle.PickleBuffer] = []  # slots[i]'s format "B" view maker
        self.cursor = 0
        self.slab_bytes = max(_SLAB_MIN, 4 * size)


class BufferPool:
    """Page-aligned buffers in size classes, bounded to ``max_bytes`` of slabs."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.mapped_bytes = 0
        self.dedicated = 0  # buffers given their own mapping (too large, or pool full)
        self._classes = []
        size = MIN_CLASS
        while size <= MAX_CLASS:
            self._classes.append(_SizeClass(size))
            size <<= 1
        self._slabs: list[mmap.mmap] = []

    def get(self, nbytes: int) -> memoryview:
        """A writable, page-aligned ``memoryview`` (format "B") of ``nbytes``; contents
        undefined. It returns to the pool when it and all its slices are gone."""
        if nbytes > MAX_CLASS or nbytes < 0:
            return self._dedicated(nbytes)
        cls = self._classes[(nbytes - 1).bit_length() - 12 if nbytes > MIN_CLASS else 0]
        i = cls.cursor
        slots = cls.slots
        view: memoryview | None
        if i < len(slots) and sys.getrefcount(slots[i]) == _FREE_AT_INDEX:
            # The common case: the slot after the last one handed out is free.
            cls.cursor = i + 1
            view = cls.views[i].raw()
        else:
            view = self._scan(cls)
            if view is None:
                return self._dedicated(nbytes)
        return view if nbytes == cls.size else view[:nbytes]

    def _scan(self, cls: _SizeClass) -> memoryview | None:
        """Round-robin from the cursor to the first free slot. A class found crowded (more
        than a quarter of its slots busy in a row) grows by a slab, within the bound."""
        slots = cls.slots
        n = len(slots)
        refs = sys.getrefcount
        i = cls.cursor if cls.cursor < n else 0
        for busy in range(n):
            e = slots[i]
            if refs(e) == _FREE_REFS:
                cls.cursor = i + 1
                if busy > n // 4:
                    self._grow(cls)
                return cls.views[i].raw()
            i = i + 1 if i + 1 < n else 0
        k = self._grow(cls)
        if k < 0:
            return None
        cls.cursor = k + 1
        return cls.views[k].raw()

    def _grow(self, cls: _SizeClass) -> int:
        """Add a slab to the class; the slot index of its first slot, -1 at the memory bound."""
        if self.mapped_bytes + cls.slab_bytes > self.max_bytes:
            return -1
        slab = mmap.mmap(-1, cls.slab_bytes)
        self._slabs.append(slab)
        self.mapped_bytes += cls.slab_bytes
        array_type = ctypes.c_char * cls.size
        first = len(cls.slots)
        for off in range(0, cls.slab_bytes, cls.size):
            e = array_type.from_buffer(slab, off)
            cls.slots.append(e)
            cls.views.append(pickle.PickleBuffer(e))
        return first

    def _dedicated(self, nbytes: int) -> memoryview:
        if nbytes < 0:
            raise ValueError(f"buffer of {nbytes} bytes")
        self.dedicated += 1
        m = mmap.mmap(-1, max(PAGE_SIZE, -(-nbytes // PAGE_SIZE) * PAGE_SIZE))
        view = memoryview(m)
        return view if nbytes == len(m) else view[:nbytes]

    def stats(self) -> dict[str, int]:
        """``buffer_bytes`` mapped in slabs, ``buffers_in_use`` among their slots,
        ``buffers_dedicated`` handed out with a mapping of their own so far."""
        refs = sys.getrefcount
        in_use = 0
        for cls in self._classes:
            slots = cls.slots
            for k in range(len(slots)):
                e = slots[k]
                if refs(e) > _FREE_REFS:
                    in_use += 1
        return {"buffer_bytes": self.mapped_bytes, "buffers_in_use": in_use,
                "buffers_dedicated": self.dedicated}


def address_of(buf: memoryview) -> int:
    """The address of a writable buffer's first byte (for an SQE or an iovec)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))
