"""A load generator over the Python initiator: N queues, a queue depth, a pattern, a duration.

    python3 perf/loadgen.py --port 4420 --nqn nqn.2026-11.io.sbstore:demo --rw randread \
        --bs 4096 --qd 32 --queues 1 --seconds 10

Every worker owns one slot of queue depth on one queue and issues I/O back to back; the run is
bounded by time (and by --max-ios). Prints one JSON object: IOPS, MB/s, latency percentiles.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from array import array

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from perf.fastload import PATTERNS, run_fast  # noqa: E402
from perf.native_load import run_native  # noqa: E402
from perf.percentiles import percentiles_us  # noqa: E402
from target.host import Controller  # noqa: E402


def percentile(sorted_ns: list[int], pct: float) -> float:
    if not sorted_ns:
        return 0.0
    index = min(len(sorted_ns) - 1, int(round(pct / 100 * (len(sorted_ns) - 1))))
    return sorted_ns[index] / 1000.0


async def run_load(host: str, port: int, nqn: str, *, rw: str, bs: int, qd: int, queues: int,
                   seconds: float, max_ios: int = 10**9, nsid: int = 1, span_bytes: int = 0,
                   hdgst: bool = False, ddgst: bool = False, seed: int = 1,
                   engine: str = "general", flush_every: int = 0,
                   start_at: float = 0.0, rwmixread: int = 70) -> dict:
    """``qd`` is the total depth, spread over ``queues``."""
    if rw not in PATTERNS:
        raise ValueError(f"--rw must be one of {PATTERNS}")
    if rw == "randrw" and engine not in ("fast", "poll", "native"):
        raise ValueError("--rw randrw needs --engine fast, poll or native")
    ctrl = await Controller.connect(host, port, nqn, nr_io_queues=queues,
                                    queue_size=max(qd // queues + 1, 2), hdgst=hdgst, ddgst=ddgst)
    if start_at:
        # Several load generators start together (connected first), so their runs overlap.
        await asyncio.sleep(max(0.0, start_at - time.time()))
    if engine in ("fast", "poll", "native"):
        job = {"nsid": nsid, "rw": rw, "bs": bs, "qd": max(1, qd // queues), "seconds": seconds,
               "max_ios": max_ios, "span_bytes": span_bytes, "seed": seed,
               "flush_every": flush_every, "rwmixread": rwmixread}
        try:
            if engine == "native":
                ios, errors, latencies, elapsed = await run_native(ctrl, **job)
            else:
                ios, errors, latencies, elapsed = await run_fast(ctrl, **job,
                                                                 poll=engine == "poll")
        finally:
            await ctrl.close(shutdown=False)
        if errors:
            raise RuntimeError(f"{errors} commands failed")
        return _summary(rw, bs, qd, queues, engine, ios, elapsed, latencies)
    try:
        ns = ctrl.namespaces[nsid]
        blocks = bs // ns.block_size
        span = (span_bytes // ns.block_size if span_bytes else ns.nsze) // blocks
        rng = random.Random(seed)
        payload = os.urandom(bs)
        latencies = array("q")
        counts = {"ios": 0}
        stop_at = time.perf_counter() + seconds
        seq_next = [0]

        async def worker(index: int) -> None:
            queue = index % len(ctrl.io_queues)
            q = ctrl.io_queues[queue]
            from target.host import commands as cmd
            while counts["ios"] < max_ios:
                now = time.perf_counter()
                if now >= stop_at:
                    return
                if rw.startswith("rand"):
                    slot = rng.randrange(span)
                else:
                    slot = seq_next[0] % span
                    seq_next[0] += 1
                lba = slot * blocks
                t0 = time.perf_counter_ns()
                if rw.endswith("read"):
                    done = await q.submit(cmd.read(0, nsid, lba, blocks, ns.block_size),
                                          read_len=bs)
                else:
                    done = await q.submit(cmd.write(0, nsid, lba, blocks, ns.block_size),
                                          data=payload)
                latencies.append(time.perf_counter_ns() - t0)
                done.check(rw)
                counts["ios"] += 1

        t_start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(qd)))
        elapsed = time.perf_counter() - t_start
    finally:
        await ctrl.close()
    return _summary(rw, bs, qd, queues, engine, counts["ios"], elapsed, latencies)


def _summary(rw: str, bs: int, qd: int, queues: int, engine: str, ios: int, elapsed: float,
             latencies: array) -> dict:
    ordered = sorted(latencies)
    return {"rw": rw, "bs": bs, "qd": qd, "queues": queues, "engine": engine,
            "seconds": round(elapsed, 3),
            "ios": ios, "iops": round(ios / elapsed, 1),
            "mb_per_s": round(ios * bs / elapsed / 1e6, 2),
            "lat_us": {"p50": percentile(ordered, 50), "p99": percentile(ordered, 99),
                       "p999": percentile(ordered, 99.9),
                       "max": ordered[-1] / 1000.0 if ordered else 0.0,
                       "mean": (sum(ordered) / len(ordered) / 1000.0) if ordered else 0.0},
            # The distribution at perf/percentiles.py's points (fio's, for a CDF beside fio's)
            # rather than every sample: 18 numbers whatever the run's length.
            "lat_pct_us": percentiles_us(ordered)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4420)
    p.add_argument("--nqn", default="nqn.2026-11.io.sbstore:demo")
    p.add_argument("--rw", default="randread", choices=PATTERNS)
    p.add_argument("--bs", type=int, default=4096)
    p.add_argument("--qd", type=int, default=32)
    p.add_argument("--queues", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--max-ios", type=int, default=10**9)
    p.add_argument("--span-bytes", type=int, default=0)
    p.add_argument("--digests", action="store_true")
    p.add_argument("--seed", type=int, default=1, help="random offsets' seed")
    p.add_argument("--start-at", type=float, default=0.0,
                   help="connect, then start the I/O at this time (seconds since the epoch)")
    p.add_argument("--rwmixread", type=int, default=70,
                   help="--rw randrw: percent of reads (fio's rwmixread)")
    p.add_argument("--flush-every", type=int, default=0,
                   help="fast engine, writes: a Flush after every N writes (0: none)")
    p.add_argument("--engine", choices=["general", "fast", "poll", "native"],
                   default="general",
                   help="general: the target.host initiator; fast: perf/fastload.py (random "
                   "reads and in-capsule writes, for measuring the target near saturation); "
                   "poll: the fast engine busy-polling its sockets, as spdk_nvme_perf does; "
                   "native: perf/native_load.py, a C program busy-polling the queues after "
                   "the Python bring-up (about 1 us per I/O, as spdk_nvme_perf)")
    args = p.parse_args()
    import uvloop
    result = uvloop.run(run_load(args.host, args.port, args.nqn, rw=args.rw, bs=args.bs,
                                 qd=args.qd, queues=args.queues, seconds=args.seconds,
                                 max_ios=args.max_ios, span_bytes=args.span_bytes,
                                 hdgst=args.digests, ddgst=args.digests, engine=args.engine,
                                 flush_every=args.flush_every, seed=args.seed,
                                 rwmixread=args.rwmixread,
                                 start_at=args.start_at))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
