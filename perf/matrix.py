"""The benchmark matrix: every job against every chosen target, one JSON, plots and a report.

    python3 perf/run.py matrix [--targets ram,pool,raw] [--jobs 4k-randread-qd1,...]
                               [--seconds 4] [--size 1G] [--repeat 1] [--engine fast|poll|native]
                               [--io io_uring] [--dir /var/tmp] [--out perf/results/matrix]
                               [--compare OLD.json]
    python3 perf/run.py matrix --from RESULT.json --out DIR [--compare OLD.json]   # redraw only

Targets (each started once, then driven job by job, the targets in turn within each job so
that drift on a shared machine touches all of them alike):

- ``ram``: ``sbstore serve --demo --ram``: the protocol and the target alone;
- ``pool``: a volume in a pool file under ``--dir`` (a disk file system), engine ``--io``,
  written once in full before the jobs (so writes overwrite allocated clusters);
- ``raw``: fio (io_uring, O_DIRECT) on a file of the same size beside the pool, the physical
  yardstick: what the disk gives with no target in between.

The jobs are perf/fio/'s (same names, block sizes, depths and mix). The sbstore targets are
driven by perf/loadgen.py (engine ``--engine``) over loopback. Placement is the other
benchmarks' (perf/harness.py): the daemon and fio on the first CPU, the load generator on the
second. Latency is the load generator's round trip (fio's completion latency for ``raw``),
kept at perf/percentiles.py's points, which the CDF plot draws.

Writes ``DIR/matrix.json``, ``DIR/*.png`` (perf/plots.py) and ``DIR/report.md``
(perf/report.py); ``--compare OLD.json`` adds what changed since OLD to the report and prints
it. Progress goes to stdout, one line per run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from perf import harness  # noqa: E402
from sbstore.config import parse_size  # noqa: E402
from sbstore.daemon import DEMO_SIZE  # noqa: E402

FORMAT = "sbstore-bench-matrix/1"
DEMO_NQN = "nqn.2026-11.io.sbstore:demo"
POOL_NQN = "nqn.2026-12.io.sbstore.bench:matrix"
TARGETS = ("ram", "pool", "raw")
YARDSTICK = "raw"


@dataclass(frozen=True)
class Job:
    name: str
    rw: str  # fio's and the load generator's: randread, randwrite, randrw, read, write
    bs: int
    qd: int
    rwmixread: int = 70  # randrw only


# The job files in perf/fio/ (same names), so host figures and these line up.
JOBS = (
    Job("4k-randread-qd1", "randread", 4096, 1),
    Job("4k-randread-qd32", "randread", 4096, 32),
    Job("4k-randwrite-qd1", "randwrite", 4096, 1),
    Job("4k-randwrite-qd32", "randwrite", 4096, 32),
    Job("4k-randrw70-qd32", "randrw", 4096, 32),
    Job("128k-seqread-qd16", "read", 128 << 10, 16),
    Job("128k-seqwrite-qd16", "write", 128 << 10, 16),
)


class Target:
    """One thing to measure: started once, then run job by job, stopped at the end."""

    name = ""

    def start(self) -> dict[str, Any]:
        """Bring it up; what the report should say about it (engine, fill speed...)."""
        return {}

    def run(self, job: Job, seconds: float) -> dict[str, Any]:
        raise NotImplementedError

    def stop(self) -> None:
        pass


class LoadgenTarget(Target):
    """An sbstore target driven by the load generator; the target's CPU per I/O beside."""

    def __init__(self, size: int, engine: str, load_cpu: str | None) -> None:
        self.size, self.engine, self.load_cpu = size, engine, load_cpu
        self.port = 0
        self.pid = 0
        self.nqn = ""

    def run(self, job: Job, seconds: float) -> dict[str, Any]:
        cpu0 = harness.cpu_seconds(self.pid)
        cmd = harness.loadgen_cmd(self.port, self.nqn, self.load_cpu, rw=job.rw, bs=job.bs,
                                  qd=job.qd, seconds=seconds, span_bytes=self.size,
                                  engine=self.engine) + ["--rwmixread", str(job.rwmixread)]
        r = harness.finish_load(harness.start_load(cmd), seconds + 120)
        r["target_cpu_us_per_io"] = round(
            (harness.cpu_seconds(self.pid) - cpu0) / max(r["ios"], 1) * 1e6, 2)
        return r


class RamTarget(LoadgenTarget):
    name = "ram"

    def __init__(self, size: int, engine: str, load_cpu: str | None) -> None:
        # The demo's RAM device has DEMO_SIZE bytes: a larger span would address past its end.
        super().__init__(min(size, DEMO_SIZE), engine, load_cpu)

    def start(self) -> dict[str, Any]:
        daemon_cpu = harness.cpus()[0]
        self.proc, self.port = harness.start_ram_demo(
            [], {int(daemon_cpu)} if daemon_cpu is not None else None)
        self.pid, self.nqn = self.proc.pid, DEMO_NQN
        return {"what": "sbstore serve --demo --ram"}

    def stop(self) -> None:
        harness.stop_process(self.proc)


class PoolTarget(LoadgenTarget):
    name = "pool"

    def __init__(self, size: int, engine: str, load_cpu: str | None, workdir: str,
                 io: str) -> None:
        super().__init__(size, engine, load_cpu)
        self.workdir, self.io = workdir, io
        self.daemon: harness.Daemon | None = None

    def start(self) -> dict[str, Any]:
        self.daemon = harness.start_pool_daemon(self.workdir, self.size, self.io,
                                                harness.cpus()[0])
        self.pid, self.port, self.nqn = self.daemon.pid, self.daemon.nvme_port, POOL_NQN
        fill = harness.export_filled_volume(self.daemon, POOL_NQN, self.size, self.load_cpu)
        return {"what": f"a {self.size >> 20} MiB volume in a pool file, io={self.io}",
                "engine": harness.pool_engine_line(self.daemon), "first_write": fill}

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()


class RawTarget(Target):
    """fio on a plain file beside the pool: the disk with nothing in between."""

    name = "raw"

    def __init__(self, size: int, workdir: str) -> None:
        self.size = size
        self.path = os.path.join(workdir, "yardstick.img")
        self.cpu = harness.cpus()[0]  # the daemon's CPU: the core a target would have

    def start(self) -> dict[str, Any]:
        t0 = time.monotonic()
        harness.fill_file(self.path, self.size, self.cpu)
        return {"what": f"fio (io_uring, O_DIRECT) on a {self.size >> 20} MiB file",
                "fill_seconds": round(time.monotonic() - t0, 1)}

    def run(self, job: Job, seconds: float) -> dict[str, Any]:
        return harness.fio(self.path, self.cpu, rw=job.rw, bs=job.bs, qd=job.qd,
                           seconds=seconds, size=self.size, rwmixread=job.rwmixread)


def make_targets(names: list[str], size: int, engine: str, io: str,
                 workdir: str) -> list[Target]:
    load_cpu = harness.cpus()[1]
    made: dict[str, Callable[[], Target]] = {
        "ram": lambda: RamTarget(size, engine, load_cpu),
        "pool": lambda: PoolTarget(size, engine, load_cpu, workdir, io),
        "raw": lambda: RawTarget(size, workdir)}
    return [made[n]() for n in names]


KEEP = ("ios", "iops", "mb_per_s", "lat_us", "lat_pct_us", "target_cpu_us_per_io",
        "usr_cpu_pct", "sys_cpu_pct", "seconds")


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median IOPS, and the IOPS range over the runs."""
    ordered = sorted(runs, key=lambda r: r["iops"])
    best = {k: v for k, v in ordered[(len(ordered) - 1) // 2].items() if k in KEEP}
    best["repeat"] = len(runs)
    best["iops_range"] = [ordered[0]["iops"], ordered[-1]["iops"]]
    return best


def progress(done: int, total: int, t0: float, text: str) -> None:
    elapsed = time.monotonic() - t0
    eta = elapsed / done * (total - done) if done else 0.0
    print(f"[{done:>3}/{total}] {text}  ({elapsed:.0f} s, ~{eta:.0f} s left)", flush=True)


def run_matrix(targets: list[Target], jobs: list[Job], seconds: float,
               repeat: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start every target, run every job on each ``repeat`` times (targets in turn), stop them;
    (what each target said at start, one result per target and job)."""
    setup: dict[str, Any] = {}
    results: list[dict[str, Any]] = []
    started: list[Target] = []
    t0 = time.monotonic()
    try:
        for t in targets:
            print(f"starting {t.name}...", flush=True)
            setup[t.name] = t.start()
            started.append(t)
            print(f"  {t.name}: {json.dumps(setup[t.name])}", flush=True)
        total = len(jobs) * len(targets) * repeat
        done = 0
        t0 = time.monotonic()
        for job in jobs:
            runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
            for _ in range(repeat):
                for t in targets:
                    r = t.run(job, seconds)
                    runs[t.name].append(r)
                    done += 1
                    progress(done, total, t0,
                             f"{t.name:5s} {job.name:20s} {r['iops']:>9.0f} IOPS "
                             f"{r['mb_per_s']:>8.1f} MB/s p50 {r['lat_us']['p50']:>7.0f} "
                             f"p99 {r['lat_us']['p99']:>7.0f} us")
            for t in targets:
                results.append({"target": t.name, "job": job.name} | median_run(runs[t.name]))
    finally:
        for t in reversed(started):
            t.stop()
    return setup, results


def write_outputs(report: dict[str, Any], out: str, old: dict[str, Any] | None) -> list[str]:
    """matrix.json, the plots and report.md in ``out``; the files written."""
    from perf import plots
    from perf.report import markdown
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "matrix.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    written = [path, *plots.draw_all(report, out)]
    md = os.path.join(out, "report.md")
    with open(md, "w") as f:
        f.write(markdown(report, [os.path.basename(p) for p in written if p.endswith(".png")],
                         old))
    return [*written, md]


def load(path: str) -> dict[str, Any]:
    with open(path) as f:
        report: dict[str, Any] = json.load(f)
    if report.get("format") != FORMAT:
        raise SystemExit(f"{path}: not a matrix result ({FORMAT})")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="perf/run.py matrix", description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default=",".join(TARGETS),
                   help=f"comma-separated, of {', '.join(TARGETS)}")
    p.add_argument("--jobs", default="all", help="comma-separated job names, or all: "
                   + ", ".join(j.name for j in JOBS))
    p.add_argument("--seconds", type=float, default=4.0, help="per run")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per job and target; the median (by IOPS) is kept, with the range")
    p.add_argument("--size", default="1G", help="the volume, the RAM span and the raw file")
    p.add_argument("--engine", choices=["fast", "poll", "native"], default="fast",
                   help="the load generator's engine (perf/loadgen.py)")
    p.add_argument("--io", default="io_uring", choices=["auto", "io_uring", "threads",
                                                        "buffered"], help="the pool's engine")
    p.add_argument("--dir", default="/var/tmp", help="where pool and raw files go (a disk)")
    p.add_argument("--out", default=os.path.join(ROOT, "perf", "results", "matrix"))
    p.add_argument("--compare", metavar="OLD.json", help="show what changed since OLD")
    p.add_argument("--from", dest="source", metavar="RESULT.json",
                   help="do not run: draw the plots and the report from RESULT.json")
    args = p.parse_args(argv)
    old = load(args.compare) if args.compare else None
    if args.source:
        report = load(args.source)
    else:
        names = [n for n in args.targets.split(",") if n]
        if not names or set(names) - set(TARGETS):
            p.error(f"--targets: choose from {', '.join(TARGETS)}")
        jobs = list(JOBS) if args.jobs == "all" else \
            [j for j in JOBS if j.name in args.jobs.split(",")]
        if not jobs:
            p.error("--jobs: no such job")
        if args.repeat < 1:
            p.error("--repeat must be at least 1")
        size = parse_size(args.size)
        daemon_cpu, load_cpu = harness.cpus()
        print(f"{len(jobs)} jobs x {len(names)} targets ({', '.join(names)}) x {args.repeat}, "
              f"{args.seconds:g} s each; daemon and fio on CPU {daemon_cpu}, load on "
              f"{load_cpu}", flush=True)
        load_before = os.getloadavg()[0]
        work = tempfile.mkdtemp(prefix="sbs-matrix-", dir=args.dir)
        try:
            setup, results = run_matrix(make_targets(names, size, args.engine, args.io, work),
                                        jobs, args.seconds, args.repeat)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        report = {"format": FORMAT, "machine": platform.node(), "cpus": os.cpu_count(),
                  "python": platform.python_version(), "time": time.time(),
                  "seconds": args.seconds, "repeat": args.repeat, "size": size,
                  "load_engine": args.engine, "io": args.io, "dir": args.dir,
                  "pinning": {"daemon_and_fio": daemon_cpu, "load": load_cpu},
                  # The machine's 1-minute load around the run: > 2 on these 2-vCPU machines
                  # means others competed for the CPUs (the report says so).
                  "loadavg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                  "targets": names, "jobs": [asdict(j) for j in jobs], "setup": setup,
                  "results": results}
    for path in write_outputs(report, args.out, old):
        print(f"wrote {path}")
    if old is not None:
        from perf.report import compare_lines
        print("\n".join(compare_lines(report, old)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
