"""Per-device I/O counters and latency histograms, kept as plain ints on the I/O path.

Rules of this module:
- Nothing here imports prometheus_client. The I/O path only adds to ints and to one list slot;
  :mod:`sbstore.metrics` turns an :meth:`IoStats.snapshot` into Prometheus series at scrape
  time.
- :class:`InstrumentedDevice` wraps any ``target.blockdev.BlockDevice`` and is one itself: the
  target cannot tell it is there. It times each call with ``time.perf_counter_ns`` and counts
  it when it completes; a call that raises counts as an error of its kind (read, write, flush,
  other) and not as a completed operation, and the exception propagates unchanged. A cancelled
  call (``asyncio.CancelledError``) is neither: it did not fail, the caller gave up. Byte counts
  are ``len()`` of the buffers, as the ``BlockDevice`` contract measures them.
- Latency histograms have power-of-two bounds: a latency of ``dt`` ns goes to slot
  ``(dt - 1).bit_length()``, i.e. slot ``k`` holds ``2**(k-1) < dt <= 2**k``. That is one C call
  instead of a bisection (measured: it halves the histogram's cost per I/O), exact for
  Prometheus' inclusive ``le`` bounds, and folding 64 slots into the exposed buckets
  (:data:`BUCKET_BOUNDS_NS`, 8.2 us .. 8.6 s, doubling) happens at scrape time. Slots are
  per-slot counts, not cumulative; the sum of latencies is kept in ns.
- Thread safety: the counters are mutated by the event loop only. Another thread may read a
  single attribute, but a consistent copy is taken with :meth:`IoStats.snapshot` in the loop's
  thread (``sbstore.metrics`` does that).

Cost: ``python -m tests.edges.bench_iostats`` prints what the wrapper adds per read and write
(about 0.45 us on the 2-core test VM, of which ~0.14 us are the two clock reads and ~0.1 us
the extra coroutine frame).
"""
from __future__ import annotations

import time
import uuid as uuid_mod
from collections.abc import Sequence
from typing import Any

from target.blockdev import BlockDevice, DirectDone, DirectRead, DirectWrite

N_SLOTS = 65  # (dt - 1).bit_length() for any dt below 2**64 ns (584 years)
FIRST_BUCKET_EXP = 13  # 2**13 ns = 8.192 us: a page-cache hit
LAST_BUCKET_EXP = 33  # 2**33 ns = 8.59 s: a stalled device; slower goes to +Inf
# Upper bounds (inclusive, Prometheus ``le``) of the exposed latency buckets, in ns.
BUCKET_BOUNDS_NS: tuple[int, ...] = tuple(1 << k for k in range(FIRST_BUCKET_EXP,
                                                                 LAST_BUCKET_EXP + 1))

_now = time.perf_counter_ns  # a global lookup is cheaper than ``time.perf_counter_ns``


def slot_of(ns: int) -> int:
    """The histogram slot of a latency of ``ns`` nanoseconds."""
    return (ns - 1).bit_length() if ns > 0 else 0


class Histogram:
    """A latency histogram: per-slot counts (see the module rules) and the sum in ns."""

    __slots__ = ("slots", "sum_ns")

    def __init__(self, slots: list[int] | None = None, sum_ns: int = 0) -> None:
        self.slots = slots if slots is not None else [0] * N_SLOTS
        self.sum_ns = sum_ns

    def observe(self, ns: int) -> None:
        self.slots[slot_of(ns)] += 1
        self.sum_ns += ns

    @property
    def count(self) -> int:
        return sum(self.slots)

    def add(self, other: Histogram) -> None:
        for i, n in enumerate(other.slots):
            self.slots[i] += n
        self.sum_ns += other.sum_ns

    def buckets(self) -> list[tuple[int, int]]:
        """``(bound_ns, observations <= bound)`` for each of :data:`BUCKET_BOUNDS_NS`; the
        +Inf bucket is :attr:`count`."""
        slots = self.slots
        running = sum(slots[:FIRST_BUCKET_EXP + 1])
        out = [(BUCKET_BOUNDS_NS[0], running)]
        for k in range(FIRST_BUCKET_EXP + 1, LAST_BUCKET_EXP + 1):
            running += slots[k]
            out.append((1 << k, running))
        return out


class IoStats:
    """Counters of one device (one exported volume). Plain ints: the I/O path only adds.

    The histograms are flat attributes (``read_slots``, ``read_sum_ns``...) because one
    attribute hop less per I/O is measurable; :meth:`histogram` gives them as a
    :class:`Histogram`."""

    COUNTERS = ("reads", "writes", "read_bytes", "write_bytes", "flushes", "write_zeroes",
                "deallocates", "read_errors", "write_errors", "flush_errors", "other_errors",
                "read_sum_ns", "write_sum_ns", "flush_sum_ns")
    HISTOGRAMS = ("read", "write", "flush")

    __slots__ = COUNTERS + ("read_slots", "write_slots", "flush_slots")

    def __init__(self) -> None:
        self.reads = 0
        self.writes = 0
        self.read_bytes = 0
        self.write_bytes = 0
        self.flushes = 0
        self.write_zeroes = 0
        self.deallocates = 0
        self.read_errors = 0
        self.write_errors = 0
        self.flush_errors = 0
        self.other_errors = 0  # write zeroes and deallocate
        self.read_sum_ns = 0
        self.write_sum_ns = 0
        self.flush_sum_ns = 0
        self.read_slots = [0] * N_SLOTS
        self.write_slots = [0] * N_SLOTS
        self.flush_slots = [0] * N_SLOTS

    @property
    def errors(self) -> int:
        return self.read_errors + self.write_errors + self.flush_errors + self.other_errors

    def histogram(self, kind: str) -> Histogram:
        """The ``"read"``, ``"write"`` or ``"flush"`` latency histogram (shares the lists: use it
        on a :meth:`snapshot`)."""
        if kind not in self.HISTOGRAMS:
            raise ValueError(f"no {kind!r} histogram")
        return Histogram(getattr(self, f"{kind}_slots"), getattr(self, f"{kind}_sum_ns"))

    def snapshot(self) -> IoStats:
        """A copy that later I/O does not change (take it in the thread that does the I/O)."""
        s = IoStats.__new__(IoStats)
        for name in self.COUNTERS:
            setattr(s, name, getattr(self, name))
        s.read_slots = list(self.read_slots)
        s.write_slots = list(self.write_slots)
        s.flush_slots = list(self.flush_slots)
        return s

    def add(self, other: IoStats) -> None:
        """Add ``other``'s counts to these (aggregating volumes into a tenant)."""
        for name in self.COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for mine, theirs in ((self.read_slots, other.read_slots),
                             (self.write_slots, other.write_slots),
                             (self.flush_slots, other.flush_slots)):
            for i, n in enumerate(theirs):
                mine[i] += n

    def as_dict(self) -> dict[str, int]:
        d = {name: getattr(self, name) for name in self.COUNTERS}
        d["errors"] = self.errors
        return d


class InstrumentedDevice:
    """A ``BlockDevice`` that counts and times every call to the device it wraps.

    ``num_blocks`` is read from the wrapped device on each access (a resize shows at once);
    ``block_size`` and ``uuid`` too. Attributes it does not define (``volume``, ``close``...)
    are looked up on the wrapped device, which :attr:`device` also names.
    """

    __slots__ = ("device", "stats")

    def __init__(self, device: BlockDevice, stats: IoStats | None = None) -> None:
        self.device = device
        self.stats = stats if stats is not None else IoStats()

    def __getattr__(self, name: str) -> Any:
        if name in InstrumentedDevice.__slots__:  # not set yet (copy, unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.device, name)

    def __repr__(self) -> str:
        return f"InstrumentedDevice({self.device!r})"

    @property
    def block_size(self) -> int:
        return self.device.block_size

    @property
    def num_blocks(self) -> int:
        return self.device.num_blocks

    @property
    def uuid(self) -> uuid_mod.UUID:
        return self.device.uuid

    # The methods repeat one shape instead of sharing a helper, and fill the histogram inline:
    # each Python call saved is 50-100 ns of a budget well under 1 us per I/O.
    async def read(self, lba: int, nblocks: int) -> bytes | bytearray | memoryview:
        t0 = _now()
        try:
            data = await self.device.read(lba, nblocks)
        except Exception:
            self.stats.read_errors += 1
            raise
        dt = _now() - t0
        s = self.stats
        s.reads += 1
        s.read_bytes += len(data)
        s.read_slots[(dt - 1).bit_length()] += 1
        s.read_sum_ns += dt
        return data

    @property
    def read_direct(self) -> DirectRead | None:
        """target.blockdev's optional direct read, counted and timed as :meth:`read` is; None
        when the wrapped device has none (read once by the namespace: a closure, so a read
        looks nothing up)."""
        inner: DirectRead | None = getattr(self.device, "read_direct", None)
        if inner is None:
            return None
        s = self.stats

        def timed(ctx: tuple[DirectDone, Any, int], data: Any, exc: BaseException | None
                  ) -> None:
            done, tag, t0 = ctx
            if exc is None:
                dt = _now() - t0
                s.reads += 1
                s.read_bytes += len(data)
                s.read_slots[(dt - 1).bit_length()] += 1
                s.read_sum_ns += dt
            else:
                s.read_errors += 1
            done(tag, data, exc)

        def read_direct(lba: int, nblocks: int, done: DirectDone, tag: Any) -> bool:
            return inner(lba, nblocks, timed, (done, tag, _now()))
        return read_direct

    @property
    def write_direct(self) -> DirectWrite | None:
        """target.blockdev's optional direct write, counted and timed as :meth:`write` is."""
        inner: DirectWrite | None = getattr(self.device, "write_direct", None)
        if inner is None:
            return None
        s = self.stats

        def timed(ctx: tuple[DirectDone, Any, int, int], _data: Any,
                  exc: BaseException | None) -> None:
            done, tag, t0, nbytes = ctx
            if exc is None:
                dt = _now() - t0
                s.writes += 1
                s.write_bytes += nbytes
                s.write_slots[(dt - 1).bit_length()] += 1
                s.write_sum_ns += dt
            else:
                s.write_errors += 1
            done(tag, None, exc)

        def write_direct(lba: int, data: Any, fua: bool, done: DirectDone, tag: Any) -> bool:
            return inner(lba, data, fua, timed, (done, tag, _now(), len(data)))
        return write_direct

    async def write(self, lba: int, data: bytes | bytearray | memoryview, fua: bool = False
                    ) -> None:
        t0 = _now()
        try:
            await self.device.write(lba, data, fua)
        except Exception:
            self.stats.write_errors += 1
            raise
        dt = _now() - t0
        s = self.stats
        s.writes += 1
        s.write_bytes += len(data)
        s.write_slots[(dt - 1).bit_length()] += 1
        s.write_sum_ns += dt

    async def flush(self) -> None:
        t0 = _now()
        try:
            await self.device.flush()
        except Exception:
            self.stats.flush_errors += 1
            raise
        dt = _now() - t0
        s = self.stats
        s.flushes += 1
        s.flush_slots[(dt - 1).bit_length()] += 1
        s.flush_sum_ns += dt

    async def write_zeroes(self, lba: int, nblocks: int) -> None:
        try:
            await self.device.write_zeroes(lba, nblocks)
        except Exception:
            self.stats.other_errors += 1
            raise
        self.stats.write_zeroes += 1

    async def deallocate(self, ranges: Sequence[tuple[int, int]]) -> None:
        try:
            await self.device.deallocate(ranges)
        except Exception:
            self.stats.other_errors += 1
            raise
        self.stats.deallocates += 1
