"""What :class:`sbstore.iostats.InstrumentedDevice` adds to each I/O, in nanoseconds of CPU.

Run: ``python -m tests.edges.bench_iostats``. Each coroutine is driven by hand (``send(None)``
until ``StopIteration``) over a device that never suspends, so the figure is the wrapper's own
cost: the extra coroutine frame, two ``perf_counter_ns`` calls, the counters and the histogram
bucket, with no event loop noise. The best of several rounds is reported.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any

from sbstore.iostats import InstrumentedDevice, IoStats

BLOCK = 4096


class NullDevice:
    """A 4 KiB-block device that does nothing: the baseline."""

    def __init__(self) -> None:
        self._buf = memoryview(bytes(BLOCK))

    block_size = BLOCK
    num_blocks = 1 << 20
    uuid = uuid.UUID(int=7)

    async def read(self, lba: int, nblocks: int) -> memoryview:
        return self._buf

    async def write(self, lba: int, data: Any, fua: bool = False) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def write_zeroes(self, lba: int, nblocks: int) -> None:
        return None

    async def deallocate(self, ranges: Sequence[tuple[int, int]]) -> None:
        return None


def _drive(coro: Coroutine[Any, Any, Any]) -> None:
    try:
        coro.send(None)
    except StopIteration:
        return
    raise RuntimeError("the device suspended")


def _per_call_ns(dev: Any, op: str, n: int) -> float:
    data = memoryview(bytes(BLOCK))
    if op == "read":
        t0 = time.perf_counter_ns()
        for i in range(n):
            _drive(dev.read(i, 1))
    else:
        t0 = time.perf_counter_ns()
        for i in range(n):
            _drive(dev.write(i, data))
    return (time.perf_counter_ns() - t0) / n


def measure_overhead_ns(n: int = 20_000, rounds: int = 30) -> dict[str, float]:
    """Extra ns per read and per write that the wrapper costs: short rounds, the bare and the
    wrapped device alternating, best of ``rounds`` each (robust to a busy machine)."""
    raw = NullDevice()
    wrapped = InstrumentedDevice(raw, IoStats())
    out: dict[str, float] = {}
    for op in ("read", "write"):
        base = inst = float("inf")
        for _ in range(rounds):
            base = min(base, _per_call_ns(raw, op, n))
            inst = min(inst, _per_call_ns(wrapped, op, n))
        out[f"{op}_base_ns"] = base
        out[f"{op}_wrapped_ns"] = inst
        out[f"{op}_overhead_ns"] = inst - base
    return out


if __name__ == "__main__":
    for key, value in measure_overhead_ns().items():
        print(f"{key:20s} {value:8.1f}")
