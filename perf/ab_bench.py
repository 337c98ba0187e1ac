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

What it does: starts ``python3 -m sbstore serve`` from each tree (``PYTHONPATH`` and working
directory that tree), pinned to the first CPU: ``--target ram`` is ``serve --demo --ram``;
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
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from perf.harness import (  # noqa: E402
    Daemon,
    cpus,
    drop_caches,
    export_filled_volume,
    finish_load,
    loadgen_cmd,
    pinned,
    start_load,
    stop_process,
    write_config,
)

RAM_NQN = "nqn.2026-11.io.sbstore:demo"
POOL_NQN = "nqn.2026-12.io.sbstore.bench:ab"
START_TIMEOUT_S = 60


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) seconds of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def start_from(tree: str, args: argparse.Namespace, cpu: str | None, workdir: str
               ) -> tuple[subprocess.Popen[str], int, str | None]:
    """The daemon of ``tree``: (process, NVMe/TCP port, API socket or None)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=tree)
    if args.target == "ram":
        cmd = [sys.executable, "-m", "sbstore", "serve", "--demo", "--ram", "--listen",
               "127.0.0.1:0", "--log-level", "warning"]
    else:
        cfg = write_config(workdir, pool_size=f"{2 * args.size_mib + 256}M", io=args.io)
        cmd = [sys.executable, "-m", "sbstore", "serve", "--config", cfg]
    proc = subprocess.Popen([*pinned(cpu), *cmd], cwd=tree, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    port = sock = None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and (port is None or (sock is None and
                                                            args.target == "pool")):
        line = proc.stdout.readline()
        if not line:
            break
        if m := re.search(r" on [^ ]+:(\d+)$", line.strip()):
            port = int(m.group(1))
        if m := re.search(r"--socket (\S+)", line):
            sock = m.group(1)
    if port is None:
        stop_process(proc)
        raise RuntimeError(f"the daemon of {tree} did not start")
    out = proc.stdout

    def drain() -> None:  # the daemon must never block on a full stdout pipe
        for _ in out:
            pass
    threading.Thread(target=drain, daemon=True).start()
    return proc, port, sock


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
    started: list[tuple[str, subprocess.Popen[str], int, str]] = []
    workdirs: list[str] = []
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        t: {f"{rw}:{bs}:{qd}": [] for rw, bs, qd in jobs} for t in trees}
    try:
        for tree in trees:
            workdir = tempfile.mkdtemp(prefix="sbstore-ab-", dir=args.dir)
            workdirs.append(workdir)
            proc, port, sock = start_from(tree, args, daemon_cpu, workdir)
            nqn = RAM_NQN
            if args.target == "pool":
                assert sock is not None
                nqn = POOL_NQN
                export_filled_volume(Daemon(proc, proc.pid, sock, port, None), nqn, size,
                                     load_cpu)
            started.append((tree, proc, port, nqn))
            print(f"{tree}: pid {proc.pid}, port {port}", flush=True)
        for r in range(args.rounds):
            for rw, bs, qd in jobs:
                job = f"{rw}:{bs}:{qd}"
                for tree, proc, port, nqn in started:
                    if args.target == "pool" and "read" in rw:
                        drop_caches()
                    before = cpu_times(proc.pid)
                    out = finish_load(start_load(loadgen_cmd(
                        port, nqn, load_cpu, rw=rw, bs=bs, qd=qd, seconds=args.seconds,
                        span_bytes=size if args.target == "pool" else 0,
                        engine=args.engine)), args.seconds + 120)
                    after = cpu_times(proc.pid)
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
        for _tree, proc, _port, _nqn in started:
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
