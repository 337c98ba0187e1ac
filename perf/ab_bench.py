"""Two versions of the code against each other: the same jobs on daemons started from two
source trees, run in turn, so that a shared machine's drift hits both alike.

    git worktree add ../base <commit>
    python3 perf/ab_bench.py --trees ../base,. [--target pool|ram] [--jobs randread:4096:32,...]
                             [--rounds 5] [--seconds 3] [--size-mib 512] [--io io_uring]
                             [--json perf/results/ab.json]

Why: on the VMs this project is measured on, the same code's CPU per I/O moves by 20% from one
minute to the next; a figure from one run and a figure from another an hour later compare
nothing. Here every round runs each job on every tree before the next round, and the report is
the median per tree.

What it does: starts ``python3 -m sbstore serve`` from each tree (perf/harness.py's
``start_ram_demo``/``start_daemon`` with ``tree``: ``PYTHONPATH`` and working directory that
tree), pinned to the first CPU: ``--target ram`` is ``serve --demo --ram``;
``--target pool`` a daemon with one pool file (engine ``--io``) in a fresh directory under
``--dir`` and a volume of ``--size-mib``, written once in full. Then, per round and job, each
tree in turn: the page cache dropped before a pool read job, perf/loadgen.py (``--engine``,
poll by default, as spdk_nvme_perf polls) pinned to the second CPU for ``--seconds``, and the
daemon's CPU time from /proc (utime + stime) divided by the I/Os. Prints per job and tree the
median IOPS and CPU per I/O (user and system, tick-sampled split) with every round's figure,
and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from perf.harness import (  # noqa: E402
    Daemon,
    cpu_times,
    cpus,
    drop_caches,
    export_filled_volume,
    finish_load,
    loadgen_cmd,
    start_daemon,
    start_load,
    start_ram_demo,
    stop_process,
    write_config,
)

RAM_NQN = "nqn.2026-11.io.sbstore:demo"
POOL_NQN = "nqn.2026-12.io.sbstore.bench:ab"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trees", required=True, help="comma-separated source trees (2 or more)")
    p.add_argument("--target", choices=["pool", "ram"], default="pool")
    p.add_argument("--jobs", default="randread:4096:32",
                   help="comma-separated rw:bs:qd (loadgen patterns)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--size-mib", type=int, default=512, help="the pool volume (written first)")
    p.add_argument("--io", default="io_uring")
    p.add_argument("--dir", default="/var/tmp", help="where pool files go (a disk)")
    p.add_argument("--engine", choices=["fast", "poll"], default="poll")
    p.add_argument("--json", default=os.path.join(ROOT, "perf", "results", "ab.json"))
    args = p.parse_args()
    trees = [os.path.abspath(t) for t in args.trees.split(",")]
    jobs = [(rw, int(bs), int(qd)) for rw, bs, qd in (j.split(":") for j in args.jobs.split(","))]
    daemon_cpu, load_cpu = cpus()
    size = args.size_mib << 20
    # (tree, the daemon's process, its pid, NVMe/TCP port, NQN); pool daemons also in pools
    started: list[tuple[str, subprocess.Popen[str], int, int, str]] = []
    pools: list[Daemon] = []
    workdirs: list[str] = []
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        t: {f"{rw}:{bs}:{qd}": [] for rw, bs, qd in jobs} for t in trees}
    try:
        for tree in trees:
            if args.target == "ram":
                proc, port = start_ram_demo([], {int(daemon_cpu)} if daemon_cpu else None,
                                            tree=tree)
                started.append((tree, proc, proc.pid, port, RAM_NQN))
            else:
                workdir = tempfile.mkdtemp(prefix="sbstore-ab-", dir=args.dir)
                workdirs.append(workdir)
                cfg = write_config(workdir, pool_size=f"{2 * args.size_mib + 256}M",
                                   io=args.io)
                daemon = start_daemon(cfg, daemon_cpu, tree=tree)
                pools.append(daemon)
                export_filled_volume(daemon, POOL_NQN, size, load_cpu)
                started.append((tree, daemon.proc, daemon.pid, daemon.nvme_port, POOL_NQN))
            print(f"{tree}: pid {started[-1][2]}, port {started[-1][3]}", flush=True)
        for r in range(args.rounds):
            for rw, bs, qd in jobs:
                job = f"{rw}:{bs}:{qd}"
                for tree, _proc, pid, port, nqn in started:
                    if args.target == "pool" and "read" in rw:
                        drop_caches()
                    before = cpu_times(pid)
                    out = finish_load(start_load(loadgen_cmd(
                        port, nqn, load_cpu, rw=rw, bs=bs, qd=qd, seconds=args.seconds,
                        span_bytes=size if args.target == "pool" else 0,
                        engine=args.engine)), args.seconds + 120)
                    after = cpu_times(pid)
                    ios = max(out["ios"], 1)
                    run = {"iops": out["iops"],
                           "user_us_per_io": 1e6 * (after[0] - before[0]) / ios,
                           "sys_us_per_io": 1e6 * (after[1] - before[1]) / ios,
                           "p99_us": out["lat_us"]["p99"]}
                    run["cpu_us_per_io"] = run["user_us_per_io"] + run["sys_us_per_io"]
                    runs[tree][job].append(run)
                    print(f"round {r} {job:18s} {tree}: {out['iops']:9.0f} IOPS "
                          f"{run['cpu_us_per_io']:6.2f} us CPU/IO", flush=True)
    finally:
        for daemon in pools:
            daemon.stop()
        for _tree, proc, _pid, _port, _nqn in started:
            if proc.poll() is None:  # the RAM daemons
                stop_process(proc)
        for workdir in workdirs:
            shutil.rmtree(workdir, ignore_errors=True)
    report: dict[str, Any] = {"target": args.target, "trees": trees, "rounds": args.rounds,
                              "seconds": args.seconds, "engine": args.engine, "jobs": {}}
    for rw, bs, qd in jobs:
        job = f"{rw}:{bs}:{qd}"
        report["jobs"][job] = {}
        for tree in trees:
            rs = runs[tree][job]
            med = {k: statistics.median(x[k] for x in rs) for k in rs[0]}
            report["jobs"][job][tree] = {"median": med, "runs": rs}
            print(f"{job:18s} {tree}: IOPS {med['iops']:9.0f}  us/IO {med['cpu_us_per_io']:6.2f}"
                  f" (user {med['user_us_per_io']:5.2f} sys {med['sys_us_per_io']:5.2f})  all: "
                  f"{[round(x['cpu_us_per_io'], 1) for x in rs]}")
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
