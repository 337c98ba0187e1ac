"""One list of latency percentiles for every source: the load generator, fio's yardstick runs
and the job files in perf/fio/, so a latency CDF puts them on the same points.

fio takes at most 20 points (``--percentile_list``); these are its defaults plus a few in the
tail. Keys are fio's spelling ("99.900000"), values microseconds.
"""
from __future__ import annotations

from collections.abc import Sequence

PERCENTILES: tuple[float, ...] = (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97.5, 99, 99.5,
                                  99.9, 99.95, 99.99)
FIO_PERCENTILE_LIST = ":".join(f"{p:g}" for p in PERCENTILES)


def key(pct: float) -> str:
    """fio's JSON key for a percentile: 99.9 -> "99.900000"."""
    return f"{pct:.6f}"


def percentiles_us(sorted_ns: Sequence[int]) -> dict[str, float]:
    """Nearest-rank percentiles (fio's method) of latencies already sorted, in microseconds."""
    if not sorted_ns:
        return {}
    n = len(sorted_ns)
    out = {}
    for pct in PERCENTILES:
        rank = max(1, -(-int(pct * n * 1000) // 100000))  # ceil(pct/100 * n), in integers
        out[key(pct)] = round(sorted_ns[min(rank, n) - 1] / 1000.0, 2)
    return out


def value_us(pct_us: dict[str, float], pct: float) -> float:
    """The latency at ``pct`` from a percentile map (0.0 if it lacks that point)."""
    return float(pct_us.get(key(pct), 0.0))
