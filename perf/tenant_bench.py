"""Tenants sharing a saturated target: do weights hold, and is a quiet tenant protected?

    python3 perf/tenant_bench.py [--seconds 10] [--rounds 2] [--size 1G] [--io io_uring]
                                 [--scenarios ram-read,pool-read,pool-write,noisy]
                                 [--json perf/results/tenants.json]

Scenarios (the target pinned to the first CPU; each tenant's load, perf/loadgen.py with the
fast engine and one connection, is a process of its own pinned to the second CPU):
- ``ram-read``: perf/ram_tenants.py, RAM devices for tenants ``light`` (weight 100) and
  ``heavy`` (weight 300), both saturating 4k random reads at QD32: the CPU is all they share.
- ``pool-read`` / ``pool-write``: ``sbstore serve`` with a pool file on ``--dir`` (engine
  ``--io``), one volume of ``--size`` per tenant (filled first), weights 100 and 300 set through
  the API, 4k random reads (writes) at QD32 each.
- ``ram-noisy``: perf/ram_tenants.py again, equal weights: tenant ``quiet`` runs 4k random
  reads at QD1 alone, then while tenant ``busy`` saturates the target's CPU with 4k random
  reads at QD32. What the CPU alone (no device between) does to a quiet tenant's latency:
  reports quiet's p50 and p99 with / without, and busy's IOPS.
- ``noisy``: the same daemon, equal weights: tenant ``quiet`` runs 4k random reads at QD1 alone,
  then again while tenant ``noisy`` runs 128k writes at QD32 with a Flush after every 64
  writes. Reports quiet's p99 with / without (the goal: at most 2x). The yardstick, in each
  round (unless ``--no-device-yardstick``): the same two jobs by fio straight on a file of the
  same disk, pinned to the target's CPU: what the device itself does to a QD1 reader under
  that neighbour.
The weight ratio is heavy's IOPS / light's (goal: 3 +- 10%). Each figure is the median over
``--rounds``; each run is printed as it goes. Writes JSON.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from perf.harness import (  # noqa: E402
    child_env,
    cpu_seconds,
    cpus,
    fill_file,
    finish_load,
    fio_timed_options,
    loadgen_cmd,
    median,
    pinned,
    run_fio,
    run_load,
    start_daemon,
    start_load,
    write_config,
    write_report,
)
from sbstore.config import parse_size  # noqa: E402

NQN_PREFIX = "nqn.2026-12.io.sbstore.bench:"
WEIGHTS = {"light": 100, "heavy": 300}


def concurrent(port: int, jobs: dict[str, dict[str, Any]], load_cpu: str | None,
               seconds: float) -> dict[str, dict[str, Any]]:
    """Run one load generator per tenant at once (connected first, then started together, so
    the runs overlap); their summaries by tenant."""
    start_at = time.time() + 3.0
    procs = {name: start_load(loadgen_cmd(port, NQN_PREFIX + name, load_cpu, seconds=seconds,
                                          seed=i + 1, start_at=start_at, **job))
             for i, (name, job) in enumerate(jobs.items())}
    return {name: finish_load(proc, seconds + 120) for name, proc in procs.items()}


def start_ram_target(cpu: str | None, tenants: dict[str, int] = WEIGHTS
                     ) -> tuple[subprocess.Popen[str], int]:
    cmd = [*pinned(cpu), sys.executable, os.path.join(ROOT, "perf", "ram_tenants.py"),
           *(f"--tenant={n}:{w}" for n, w in tenants.items())]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if m := re.search(r"listening on [^:]+:(\d+)", line):
            return proc, int(m.group(1))
    proc.kill()
    proc.wait(10)
    raise RuntimeError("perf/ram_tenants.py did not start")


def weight_runs(port: int, pid: int, load_cpu: str | None, rw: str, seconds: float,
                rounds: int, span: int, label: str) -> dict[str, Any]:
    runs = []
    for rnd in range(rounds):
        cpu0 = cpu_seconds(pid)
        r = concurrent(port, {n: {"rw": rw, "bs": 4096, "qd": 32, "span_bytes": span}
                              for n in WEIGHTS}, load_cpu, seconds)
        cpu = cpu_seconds(pid) - cpu0
        ratio = r["heavy"]["iops"] / max(r["light"]["iops"], 1e-9)
        total = r["heavy"]["ios"] + r["light"]["ios"]
        runs.append({"round": rnd, "light": r["light"], "heavy": r["heavy"],
                     "ratio": round(ratio, 3), "target_cpu_us_per_io": round(
                         cpu / max(total, 1) * 1e6, 2)})
        print(f"{label} round {rnd}: heavy {r['heavy']['iops']:8.0f} IOPS, light "
              f"{r['light']['iops']:8.0f} IOPS: ratio {ratio:.2f} (target "
              f"{runs[-1]['target_cpu_us_per_io']:.1f} us CPU/IO)", flush=True)
    ratios = [r["ratio"] for r in runs]
    return {"runs": runs, "ratio_median": round(median(ratios), 3),
            "ratio_range": [min(ratios), max(ratios)], "goal": "3 +- 10%",
            "met": abs(median(ratios) - 3.0) <= 0.3}


def ram_noisy_runs(port: int, load_cpu: str | None, seconds: float, rounds: int,
                   span: int) -> dict[str, Any]:
    quiet = {"rw": "randread", "bs": 4096, "qd": 1, "span_bytes": span}
    busy = {"rw": "randread", "bs": 4096, "qd": 32, "span_bytes": span}
    runs = []
    for rnd in range(rounds):
        alone = run_load(port, NQN_PREFIX + "quiet", load_cpu, seconds=seconds, **quiet)
        both = concurrent(port, {"quiet": quiet, "busy": busy}, load_cpu, seconds)
        a, w = alone["lat_us"], both["quiet"]["lat_us"]
        run = {"round": rnd, "alone": alone, "with_busy": both["quiet"], "busy": both["busy"],
               "p50_ratio": round(w["p50"] / max(a["p50"], 1e-9), 3),
               "p99_ratio": round(w["p99"] / max(a["p99"], 1e-9), 3)}
        runs.append(run)
        print(f"ram-noisy round {rnd}: quiet p50/p99 alone {a['p50']:.0f}/{a['p99']:.0f} us, "
              f"beside busy {w['p50']:.0f}/{w['p99']:.0f} us (x{run['p50_ratio']:.2f}/"
              f"x{run['p99_ratio']:.2f}); busy read {both['busy']['iops']:.0f} IOPS",
              flush=True)
    return {"runs": runs,
            "p50_ratio_median": round(median([r["p50_ratio"] for r in runs]), 3),
            "p99_ratio_median": round(median([r["p99_ratio"] for r in runs]), 3)}


def fio_noisy(path: str, cpu: str | None, seconds: float, span: int, flush_every: int,
              with_neighbour: bool) -> dict[str, dict[str, Any]]:
    """The yardstick: the same two jobs with fio straight on the disk (io_uring, O_DIRECT,
    one file: the quiet job reads its first ``span`` bytes, the neighbour writes the next
    ``span``, with an fsync every ``flush_every`` writes), pinned to the target's CPU. What
    the device itself does to a QD1 reader under that neighbour, with no target between."""
    common = fio_timed_options(path, seconds)
    jobs = ["--name=quiet", *common, "--rw=randread", "--bs=4k", "--iodepth=1", "--offset=0",
            f"--size={span}"]
    if with_neighbour:
        jobs += ["--name=noisy", *common, "--rw=write", "--bs=128k", "--iodepth=32",
                 f"--offset={span}", f"--size={span}"]
        if flush_every:
            jobs.append(f"--fsync={flush_every}")
    return {job["name"]: job for job in run_fio(cpu, jobs, seconds + 120)}


def noisy_runs(port: int, load_cpu: str | None, seconds: float, rounds: int,
               span: int, flush_every: int = 64, yardstick: str | None = None,
               daemon_cpu: str | None = None) -> dict[str, Any]:
    quiet = {"rw": "randread", "bs": 4096, "qd": 1, "span_bytes": span}
    noisy = {"rw": "write", "bs": 128 << 10, "qd": 32, "span_bytes": span,
             "flush_every": flush_every}
    runs = []
    for rnd in range(rounds):
        run: dict[str, Any] = {"round": rnd}
        if yardstick is not None:
            settle()
            alone_fio = fio_noisy(yardstick, daemon_cpu, seconds, span, flush_every, False)
            both_fio = fio_noisy(yardstick, daemon_cpu, seconds, span, flush_every, True)
            run["device"] = noisy_pair(f"noisy round {rnd}, the disk alone (fio)",
                                       alone_fio["quiet"], both_fio)
        settle()
        alone = run_load(port, NQN_PREFIX + "quiet", load_cpu, seconds=seconds, **quiet)
        both = concurrent(port, {"quiet": quiet, "noisy": noisy}, load_cpu, seconds)
        run.update(noisy_pair(f"noisy round {rnd}", alone, both))
        runs.append(run)
    ratios = [r["p99_ratio"] for r in runs]
    out = {"runs": runs, "p99_ratio_median": round(median(ratios), 3),
           "p99_ratio_range": [min(ratios), max(ratios)], "goal": "<= 2",
           "met": median(ratios) <= 2.0}
    if yardstick is not None:
        out["device_p99_ratio_median"] = round(median([r["device"]["p99_ratio"]
                                                       for r in runs]), 3)
    return out


def noisy_pair(label: str, alone: dict[str, Any], both: dict[str, dict[str, Any]]
               ) -> dict[str, Any]:
    """Quiet's run ``alone`` and the runs of ``both`` jobs at once: the record of one round
    (quiet's p99 ratio with / without the neighbour), printed as ``label``."""
    ratio = both["quiet"]["lat_us"]["p99"] / max(alone["lat_us"]["p99"], 1e-9)
    print(f"{label}: quiet p99 alone {alone['lat_us']['p99']:.0f} us, with the neighbour "
          f"{both['quiet']['lat_us']['p99']:.0f} us (x{ratio:.2f}); the neighbour wrote "
          f"{both['noisy']['mb_per_s']:.0f} MB/s", flush=True)
    return {"alone": alone, "with_noisy": both["quiet"], "noisy": both["noisy"],
            "p99_ratio": round(ratio, 3)}


def settle() -> None:
    """The disk still writes back what the last run's neighbour wrote: let it settle, or the
    next "alone" run measures that instead."""
    os.sync()
    time.sleep(3)


def pool_daemon(work: str, io: str, size: int, tenants: dict[str, int], daemon_cpu: str | None,
                load_cpu: str | None, extra: str = "") -> Any:
    cfg = write_config(work, pool_size=str(len(tenants) * size + (512 << 20)), io=io,
                       extra=extra)
    daemon = start_daemon(cfg, daemon_cpu)
    client = daemon.client()
    for name, weight in tenants.items():
        client.post("/v1/tenants", {"name": name, "weight": weight})
        client.post("/v1/volumes", {"name": name, "size_bytes": size, "block_size": 4096})
        client.patch(f"/v1/volumes/{name}", {"tenant": name})
        client.post("/v1/subsystems", {"nqn": NQN_PREFIX + name, "volumes": [name],
                                       "allow_any_host": True})
        run_load(daemon.nvme_port, NQN_PREFIX + name, load_cpu, rw="write", bs=128 << 10,
                 qd=16, seconds=3600, span_bytes=size, max_ios=size // (128 << 10))
    return daemon


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--size", default="1G", help="each pool volume (filled before the runs)")
    p.add_argument("--io", default="io_uring")
    p.add_argument("--dir", default="/var/tmp")
    p.add_argument("--scenarios", default="ram-read,ram-noisy,pool-read,pool-write,noisy")
    p.add_argument("--noisy-flush-every", type=int, default=64,
                   help="the noisy neighbour's writes between two Flush commands (0: none)")
    p.add_argument("--no-device-yardstick", action="store_true",
                   help="noisy: skip the same two jobs run by fio on the disk itself")
    p.add_argument("--qos", default="", help="extra [qos] settings for the daemon, e.g. "
                   "'max_inflight = 16' (default: the daemon's defaults)")
    p.add_argument("--json", default=os.path.join(ROOT, "perf", "results", "tenants.json"))
    args = p.parse_args(argv)
    scenarios = args.scenarios.split(",")
    qos_extra = "[qos]\n" + args.qos.replace(";", "\n") + "\n" if args.qos else ""
    size = parse_size(args.size)
    daemon_cpu, load_cpu = cpus()
    report: dict[str, Any] = {
        "machine": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "time": time.time(), "seconds": args.seconds, "rounds": args.rounds, "io": args.io,
        "size": size, "pinning": {"target": daemon_cpu, "load": load_cpu}, "weights": WEIGHTS,
        "qos": args.qos}
    if "ram-read" in scenarios:
        proc, port = start_ram_target(daemon_cpu)
        try:
            report["ram_read"] = weight_runs(port, proc.pid, load_cpu, "randread", args.seconds,
                                             args.rounds, 256 << 20, "ram-read")
        finally:
            proc.terminate()
            proc.wait(30)
    if "ram-noisy" in scenarios:
        proc, port = start_ram_target(daemon_cpu, {"quiet": 100, "busy": 100})
        try:
            report["ram_noisy"] = ram_noisy_runs(port, load_cpu, args.seconds, args.rounds,
                                                 256 << 20)
        finally:
            proc.terminate()
            proc.wait(30)
    if {"pool-read", "pool-write"} & set(scenarios):
        work = tempfile.mkdtemp(prefix="sbs-ten-", dir=args.dir)
        daemon = None
        try:
            daemon = pool_daemon(work, args.io, size, WEIGHTS, daemon_cpu, load_cpu, qos_extra)
            for sc, rw in (("pool-read", "randread"), ("pool-write", "randwrite")):
                if sc in scenarios:
                    report[sc.replace("-", "_")] = weight_runs(
                        daemon.nvme_port, daemon.pid, load_cpu, rw, args.seconds, args.rounds,
                        size, sc)
        finally:
            if daemon is not None:
                daemon.stop()
            shutil.rmtree(work, ignore_errors=True)
    if "noisy" in scenarios:
        work = tempfile.mkdtemp(prefix="sbs-noisy-", dir=args.dir)
        daemon = None
        try:
            yardstick = None
            if not args.no_device_yardstick:
                yardstick = os.path.join(work, "yardstick.img")
                fill_file(yardstick, 2 * size, daemon_cpu)
            daemon = pool_daemon(work, args.io, size, {"quiet": 100, "noisy": 100},
                                 daemon_cpu, load_cpu, qos_extra)
            report["noisy"] = noisy_runs(daemon.nvme_port, load_cpu, args.seconds,
                                         args.rounds, size, args.noisy_flush_every,
                                         yardstick, daemon_cpu)
        finally:
            if daemon is not None:
                daemon.stop()
            shutil.rmtree(work, ignore_errors=True)
    for key in ("ram_read", "pool_read", "pool_write"):
        if key in report:
            r = report[key]
            print(f"goal: {key} weights 1:3 -> ratio {r['ratio_median']:.2f} "
                  f"[{r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}]: "
                  f"{'met' if r['met'] else 'NOT MET'}")
    if "ram_noisy" in report:
        r = report["ram_noisy"]
        print(f"ram-noisy: quiet's latency beside a tenant saturating the CPU: p50 "
              f"x{r['p50_ratio_median']:.2f}, p99 x{r['p99_ratio_median']:.2f} of alone")
    if "noisy" in report:
        r = report["noisy"]
        print(f"goal: quiet tenant's p99 with a noisy neighbour <= 2x alone: "
              f"x{r['p99_ratio_median']:.2f}: {'met' if r['met'] else 'NOT MET'}")
        if "device_p99_ratio_median" in r:
            print(f"yardstick: the same two jobs by fio on the disk itself: quiet's p99 "
                  f"x{r['device_p99_ratio_median']:.2f}")
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
