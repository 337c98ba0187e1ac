"""Pausing Python's cyclic garbage collector around work that spans several loop turns.

Why: a listing of 1,000 volumes (or exports) builds some 10,000 dicts and lists and keeps them
across the loop turns it yields in, so that I/O is served meanwhile. Collections that run in
those turns (the I/O path allocates all the time) find them alive and promote them, and once
the oldest generation has grown by a quarter, CPython runs a full collection. That walks every
object the daemon made since start-up (what start-up made is frozen, see daemon.py): with
1,000 volumes created through the API, 40 ms on the loop, every I/O waiting
(perf/control_bench.py's run with listings: a QD1 job's maximum latency 39-52 ms).

The listing's containers hold no cycles: reference counting frees them when the answer has
been encoded, so the collector never needs to see them. The API pauses the collector for each
GET, from its handler to its encoded answer: the whole life of what a listing builds. While a
pause is on, no collection runs; pauses may overlap (several requests at once), and the
collector is back on when the last one ends, if it was on when the first began.
"""
from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

_depth = 0
_was_enabled = False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection while the block runs (it may await: the pause is process-wide)."""
    global _depth, _was_enabled
    if _depth == 0:
        _was_enabled = gc.isenabled()
        gc.disable()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _was_enabled:
            gc.enable()
