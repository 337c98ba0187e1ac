"""The buffer pool: aligned, format "B", reused only once nothing references a buffer (or any
slice of it), bounded in memory with dedicated mappings beyond the bound."""
from __future__ import annotations

import ctypes
import gc
import mmap
import sys

import pytest

from sbstore.store.engines import buffers
from sbstore.store.engines.buffers import MAX_CLASS, BufferPool


def _addr(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


@pytest.mark.parametrize("nbytes", [1, 512, 4096, 4097, 65536, 100000, MAX_CLASS,
                                    MAX_CLASS + 1, 5 << 20])
def test_buffers_are_page_aligned_writable_format_b(nbytes: int) -> None:
    pool = BufferPool()
    b = pool.get(nbytes)
    assert len(b) == b.nbytes == nbytes
    assert b.format == "B" and b.ndim == 1 and not b.readonly
    assert _addr(b) % mmap.PAGESIZE == 0
    b[:] = b"\x7f" * nbytes
    b[-1:] = b"\x01"
    assert bytes(b) == b"\x7f" * (nbytes - 1) + b"\x01"


def test_a_buffer_comes_back_once_every_view_of_it_is_gone() -> None:
    pool = BufferPool()
    first = pool.get(4096)
    where = _addr(first)
    part = first[100:200]
    del first
    seen = set()
    held = []
    for _ in range(2000):  # far more than a slab's 256 slots: the scan wraps many times
        b = pool.get(4096)
        seen.add(_addr(b))
        if len(held) < 10:  # some stay referenced too, so the scan meets busy slots
            held.append(b)
    assert where not in seen, "handed out while a slice of it was alive"
    del part
    gc.collect()
    for _ in range(300):
        if _addr(pool.get(4096)) == where:
            break
    else:
        pytest.fail("a free buffer never came back")


def test_dropped_buffers_are_reused_rather_than_new_memory_mapped() -> None:
    pool = BufferPool()
    for _ in range(10000):
        b = pool.get(8192)
        b[0] = 1
        del b
    st = pool.stats()
    assert st["buffer_bytes"] == 1 << 20  # one slab was enough
    assert st["buffers_in_use"] == 0 and st["buffers_dedicated"] == 0


def test_the_bound_holds_and_beyond_it_buffers_get_their_own_mapping() -> None:
    pool = BufferPool(max_bytes=2 << 20)
    held = [pool.get(65536) for _ in range(100)]  # 6.25 MiB asked for
    st = pool.stats()
    assert st["buffer_bytes"] <= 2 << 20
    assert st["buffers_dedicated"] == 100 - (2 << 20) // 65536
    assert len({_addr(b) for b in held}) == 100
    assert st["buffers_in_use"] == (2 << 20) // 65536


def test_each_size_class_is_separate_and_sized_by_the_request() -> None:
    pool = BufferPool()
    small, big = pool.get(3000), pool.get(300000)
    assert (len(small), len(big)) == (3000, 300000)
    assert pool.stats()["buffer_bytes"] == (1 << 20) + (2 << 20)  # 4K class, 512K class slab


def test_the_free_slot_counts_match_how_the_pool_reads_them() -> None:
    """The two reference counts the pool compares with, checked on a real slot: free, held
    by a view, held only by a slice of that view. (Counts are read outside ``assert``:
    pytest's rewriting keeps references to the values it shows.)"""
    pool = BufferPool()
    view = pool.get(4096)
    slots = pool._classes[0].slots
    held_count = sys.getrefcount(slots[0])
    free_count = sys.getrefcount(slots[1])
    e = slots[1]
    free_by_local = sys.getrefcount(e)
    del e
    part = view[8:16]
    del view
    slice_count = sys.getrefcount(slots[0])
    del part
    freed_count = sys.getrefcount(slots[0])
    assert held_count > buffers._FREE_AT_INDEX
    assert free_count == buffers._FREE_AT_INDEX
    assert free_by_local == buffers._FREE_REFS
    assert slice_count > buffers._FREE_AT_INDEX
    assert freed_count == buffers._FREE_AT_INDEX


def test_a_run_of_held_buffers_does_not_make_the_pool_grow() -> None:
    pool = BufferPool()
    held = [pool.get(4096) for _ in range(32)]
    for _ in range(5000):
        b = pool.get(4096)
        b[0] = 1
        del b
    assert pool.stats()["buffer_bytes"] == 1 << 20
    assert pool.stats()["buffers_in_use"] == len(held)
