"""How control-plane work cut into slices gives the event loop back to the I/O between slices.

Metrics exposition, API listings and their JSON are cut into slices of about a millisecond;
between two, the work awaits :func:`yield_to_io` rather than one ``asyncio.sleep(0)``.

Why three loop turns, not one: what a slice must let through is an I/O that completed while
it ran, and getting its response out can take three turns of the loop.

1. A pool ring runs its completions' task work cooperatively (IORING_SETUP_COOP_TASKRUN,
   sbstore/store/engines/uring.py): when the loop's thread next leaves the kernel, after a
   system call or an interrupt such as the timer tick. If none came during the slice, it is
   the first turn's ``epoll_wait`` that posts the completion and signals the ring's eventfd,
   as it returns, its events already collected.
2. The next turn's ``epoll_wait`` sees the eventfd (or a socket's data); the engine reaps the
   completion and the target queues the response's write with ``call_soon``: behind this
   work's own continuation, which asyncio queued first.
3. The turn after that runs the write before the next slice starts.

With one turn, an I/O that completed during a slice also waited for the whole next slice, and
sometimes the one after. The two extra turns cost an ``epoll_wait`` with a zero timeout each,
a few microseconds per slice. Measured with perf/control_bench.py (a QD1 read job on a pool
volume beside a listing of 1,000 volumes every half second, or a metrics scrape every second),
two runs of 3 rounds each way, alternated: the job's p99.9 beside listings went from 6.3-7.3 ms
to 3.3-4.1 ms, beside scrapes from 3.6-5.6 ms to 2.4-2.9 ms (2.0-2.4 ms without either).
"""
from __future__ import annotations

import asyncio


async def yield_to_io() -> None:
    """Give the loop three turns (module docstring)."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
