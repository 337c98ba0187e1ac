"""What one io_uring submission costs on this machine, by the number of I/Os it carries.

    python3 perf/submit_cost.py [--dir /var/tmp] [--size-mib 512] [--batches 1,2,4,8,16,32]
                                [--repeat 200] [--json perf/results/submit_cost.json]

Why: the pool's data path submits each loop turn's I/Os with one ``io_uring_enter``. How that
call's cost splits between a fixed part (the system call and waking an idle disk: on a virtual
machine a trap to the hypervisor) and a part per I/O (the file system, the block layer, the
virtio ring) decides what batching can save, and what an I/O costs the target's CPU at low
queue depth. This measures it directly, without the target: on the calling CPU (pinned to the
first), ``n`` 4 KiB O_DIRECT random reads (then writes) are queued and submitted with one
``io_uring_enter``, timed; then all ``n`` completions are awaited and the disk left idle for
300 us, as between the target's batches. The median per batch size, and a least-squares fit
``enter_us = fixed + per_io * n``, are printed and written as JSON.

The file is created under ``--dir`` (a disk file system: O_DIRECT) and filled first, so reads
reach the disk; it is removed at the end.
"""
from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from perf.harness import fill_file, write_report
from sbstore.store.engines.ring import ENTER_GETEVENTS, OP_READ, OP_WRITE, SQE, Ring

BLOCK = 4096
MAX_BATCH = 64
IDLE_S = 300e-6  # between batches: the disk idles, as between the target's loop turns


def _spin(seconds: float) -> None:
    """Wait without sleeping (a sleep would add a wake-up to what is measured next)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class Submitter:
    """A ring, a file opened O_DIRECT and MAX_BATCH aligned 4 KiB buffers."""

    def __init__(self, path: str, seed: int = 1) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_DIRECT)
        self.blocks = os.fstat(self.fd).st_size // BLOCK
        self.ring = Ring(256)
        self.buffers = mmap.mmap(-1, MAX_BATCH * BLOCK)  # page-aligned
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self.buffers))
        self.rng = random.Random(seed)
        self.tail = 0
        self.head = 0

    def batch(self, op: int, n: int) -> tuple[float, float]:
        """Submit ``n`` I/Os in one enter; (that call's us, us until all completed)."""
        ring = self.ring
        for i in range(n):
            slot = (self.tail & ring.sq_mask) * 64
            SQE.pack_into(ring.sqes, slot, op, 0, 0, self.fd,
                          self.rng.randrange(self.blocks) * BLOCK, self.base + i * BLOCK, BLOCK,
                          0, self.tail)
            self.tail += 1
        ring.sq32[ring.sq_tail_i] = self.tail & 0xFFFFFFFF
        t0 = time.perf_counter_ns()
        submitted = ring.enter(n)
        t1 = time.perf_counter_ns()
        if submitted != n:
            raise RuntimeError(f"io_uring_enter took {submitted} of {n} SQEs")
        target = (self.head + n) & 0xFFFFFFFF
        while ring.cq32[ring.cq_tail_i] != target:
            ring.enter(0, n, ENTER_GETEVENTS)
        for i in range(n):
            res = ring.cqi32[ring.cqe32 + 4 * ((self.head + i) & ring.cq_mask) + 2]
            if res != BLOCK:
                raise OSError(-res if res < 0 else 0, f"an I/O returned {res}")
        t2 = time.perf_counter_ns()
        self.head = target
        ring.cq32[ring.cq_head_i] = self.head
        return (t1 - t0) / 1e3, (t2 - t0) / 1e3

    def close(self) -> None:
        self.ring.close()
        os.close(self.fd)
        self.buffers.close()


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares ``y = a + b * n``: (a, b)."""
    ns = [n for n, _ in points]
    ys = [y for _, y in points]
    mean_n, mean_y = statistics.fmean(ns), statistics.fmean(ys)
    var = sum((n - mean_n) ** 2 for n in ns)
    b = sum((n - mean_n) * (y - mean_y) for n, y in points) / var if var else 0.0
    return mean_y - b * mean_n, b


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default="/var/tmp", help="where the file goes (a disk, not tmpfs)")
    p.add_argument("--size-mib", type=int, default=512)
    p.add_argument("--batches", default="1,2,4,8,16,32", help="I/Os per enter, comma-separated")
    p.add_argument("--repeat", type=int, default=200, help="batches of each size and op")
    p.add_argument("--json", default=os.path.join(ROOT, "perf", "results", "submit_cost.json"))
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.batches.split(",")]
    if not sizes or min(sizes) < 1 or max(sizes) > MAX_BATCH or args.repeat < 1:
        p.error(f"batch sizes 1..{MAX_BATCH}, --repeat at least 1")
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[0]})
    work = tempfile.mkdtemp(prefix="sbs-submit-", dir=args.dir)
    path = os.path.join(work, "disk.img")
    report: dict[str, Any] = {"machine": platform.node(), "kernel": platform.release(),
                              "time": time.time(), "cpu": cpus[0], "size_mib": args.size_mib,
                              "repeat": args.repeat, "ops": {}}
    try:
        fill_file(path, args.size_mib << 20, str(cpus[0]))
        sub = Submitter(path)
        try:
            for name, op in (("read", OP_READ), ("write", OP_WRITE)):
                rows = []
                for n in sizes:
                    enters, dones = [], []
                    for _ in range(args.repeat):
                        enter_us, done_us = sub.batch(op, n)
                        enters.append(enter_us)
                        dones.append(done_us)
                        _spin(IDLE_S)
                    row = {"n": n, "enter_us": round(statistics.median(enters), 1),
                           "enter_us_per_io": round(statistics.median(enters) / n, 2),
                           "all_done_us": round(statistics.median(dones), 1)}
                    rows.append(row)
                    print(f"{name:5s} {n:3d} I/Os per enter: enter {row['enter_us']:7.1f} us "
                          f"({row['enter_us_per_io']:5.1f} per I/O), all completed after "
                          f"{row['all_done_us']:7.1f} us", flush=True)
                fixed, per_io = fit([(r["n"], r["enter_us"]) for r in rows])
                report["ops"][name] = {"batches": rows, "fixed_us": round(fixed, 1),
                                       "per_io_us": round(per_io, 2)}
                print(f"{name}: io_uring_enter ~ {fixed:.1f} us + {per_io:.2f} us per I/O",
                      flush=True)
        finally:
            sub.close()
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(work)
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
