"""One tenant's load for the QoS benchmark, in its own process with its own host NQN.

    python3 -m perf.qos.load --port P --nqn SUBNQN --hostnqn HOSTNQN --rw randread --bs 4096 \
        --qd 4 --seconds 10

It connects, prints ``ready``, waits for a line ``go`` on stdin (so every tenant's load starts
at the same moment), drives the fast engine (perf/fastload.py) closed-loop at ``qd`` for
``seconds``, and prints one JSON line: I/Os, IOPS, MB/s and latency percentiles (us), as the
host sees them.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from perf.fastload import run_fast
from perf.loadgen import percentile
from target.host import Controller


async def main(args: argparse.Namespace) -> dict:
    ctrl = await Controller.connect(args.host, args.port, args.nqn, hostnqn=args.hostnqn,
                                    queue_size=args.qd + 1, kato_ms=120_000)
    try:
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if line.strip() != "go":
            raise SystemExit("no go")
        ios, errors, lat, elapsed = await run_fast(
            ctrl, nsid=1, rw=args.rw, bs=args.bs, qd=args.qd, seconds=args.seconds,
            max_ios=10**9, span_bytes=args.span_bytes, seed=args.seed)
    finally:
        await ctrl.close(shutdown=False)
    if errors:
        raise SystemExit(f"{errors} commands failed")
    ordered = sorted(lat)
    return {"rw": args.rw, "bs": args.bs, "qd": args.qd, "ios": ios,
            "seconds": round(elapsed, 3), "iops": round(ios / elapsed, 1),
            "mb_per_s": round(ios * args.bs / elapsed / 1e6, 2),
            "lat_us": {"p50": percentile(ordered, 50), "p99": percentile(ordered, 99),
                       "p999": percentile(ordered, 99.9),
                       "mean": round(sum(ordered) / len(ordered) / 1000.0, 1) if ordered
                       else 0.0}}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--nqn", required=True)
    p.add_argument("--hostnqn", required=True)
    p.add_argument("--rw", default="randread")
    p.add_argument("--bs", type=int, default=4096)
    p.add_argument("--qd", type=int, default=4)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--span-bytes", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    import uvloop
    print(json.dumps(uvloop.run(main(p.parse_args()))), flush=True)
