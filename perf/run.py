"""The target benchmark: start ``sbstore serve --demo --ram``, drive it with the load generator,
and report IOPS, latency and the target process's CPU time per I/O (user and system apart).

    python3 perf/run.py [--seconds 5] [--repeat 3] [--busy-poll 500] [--json perf/results/target.json]
    python3 perf/run.py matrix ...     # the job matrix on RAM, pool and raw disk: perf/matrix.py

The default load engine is perf/fastload.py: the general Python initiator costs 25-40 us per
I/O and, on a 2-vCPU machine, would starve the target and slow it by sharing the core.

CPU time comes from the target's own accounting (/proc/PID/stat utime and stime, read before
and after each run), so the figure holds however busy the rest of the machine is. The kernel
keeps their sum exact (the scheduler's runtime) but splits it between user and system by
sampling at the tick, so the split is an estimate; ``target_run_us_per_io`` is the exact sum
from /proc/PID/task/*/schedstat. On loopback the target's system time also holds the host's
TCP receive and its wake-up (the sender's softirq delivers the segment), which a real NIC
would not charge to the target: at QD1 that is most of it.

Placement matters more than anything else at QD1 on a small VM: a load generator on the
target's CPU is woken without an inter-processor interrupt and the target's CPU never idles,
while one on another CPU pays an IPI and an idle exit per round trip. ``--placement split``
(the default with 2+ CPUs) pins the target to CPU 0 and the load generator to the rest, as a
remote host would be; ``shared`` pins both to CPU 0; ``free`` leaves it to the scheduler (whose
choice varies from run to run).

Busy-polling (``serve --busy-poll US``) is measured against the same jobs with a second
target, the two driven in turn (off, on, off, on...), so drift on a shared machine hits both.
Each job runs ``--repeat`` times; the report shows the median run and the range.

The floor (``perf/echo_floor.py``, on unless ``--no-floor``): each 4 KiB job is also run
against a bare uvloop server that answers every command-sized request with a 4 KiB read's
bytes and does nothing else, placed and driven the same way, in turn with the targets. Its CPU
per round trip is what the event loop, the system calls and loopback TCP cost on this machine;
the report gives the target's CPU per I/O as a multiple of it, and says when a goal lies below
it (no uvloop server could meet such a goal here).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from perf.harness import cpu_times, pin_to  # noqa: E402
from perf.harness import start_ram_demo as start_target  # noqa: E402
from perf.harness import stop_process as stop_target  # noqa: E402

NQN = "nqn.2026-11.io.sbstore:demo"
JOBS = [
    {"name": "4k-randread-qd1", "rw": "randread", "bs": 4096, "qd": 1, "queues": 1},
    {"name": "4k-randread-qd32", "rw": "randread", "bs": 4096, "qd": 32, "queues": 1},
    {"name": "128k-seqread-qd16", "rw": "read", "bs": 131072, "qd": 16, "queues": 1},
]
# DESIGN.md's budget and the QD1 issue's goals: target CPU per 4k read.
GOALS_US = {"4k-randread-qd1": 15.0, "4k-randread-qd32": 8.0}


class CpuSample:
    """A process's CPU time so far: utime and stime (seconds, tick-sampled split), the exact
    runtime of all its threads (ns, from schedstat), and its context switches."""

    def __init__(self, pid: int) -> None:
        self.user, self.sys = cpu_times(pid)
        self.run_ns = 0
        self.switches = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    self.run_ns += int(f.read().split()[0])
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for text in f:
                        if "ctxt_switches" in text:  # voluntary and nonvoluntary
                            self.switches += int(text.split()[1])
            except (OSError, ValueError, IndexError):
                pass  # a thread that ended in between


def affinity(placement: str) -> tuple[set[int] | None, set[int] | None]:
    """CPU sets for (target, load generator)."""
    cpus = sorted(os.sched_getaffinity(0))
    if placement == "free" or len(cpus) < 2 and placement == "split":
        return None, None
    if placement == "shared":
        return {cpus[0]}, {cpus[0]}
    return {cpus[0]}, set(cpus[1:])


def run_job(job: dict[str, Any], port: int, target_pid: int, seconds: float, digests: bool,
            engine: str, cpus: set[int] | None = None) -> dict[str, Any]:
    cmd = [sys.executable, os.path.join(ROOT, "perf", "loadgen.py"), "--port", str(port),
           "--nqn", NQN, "--rw", job["rw"], "--bs", str(job["bs"]), "--qd", str(job["qd"]),
           "--queues", str(job["queues"]), "--seconds", str(seconds), "--engine", engine]
    if digests:
        cmd.append("--digests")
    before = CpuSample(target_pid)
    # The load generator is the only child reaped during the run, so the children's usage
    # grows by exactly its CPU time.
    gen_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    gen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=pin_to(cpus))
    try:
        stdout, stderr = gen.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        gen.kill()
        gen.communicate()
        raise
    wall = time.monotonic() - t0
    after = CpuSample(target_pid)
    gen_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if gen.returncode != 0:
        raise RuntimeError(f"load generator failed: {stderr[-2000:]}")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    ios = max(result["ios"], 1)
    user, sys_ = after.user - before.user, after.sys - before.sys
    result["name"] = job["name"] + ("-digests" if digests else "") + \
        ("-general" if engine == "general" else "")
    result["target_cpu_s"] = round(user + sys_, 3)
    result["target_cpu_us_per_io"] = round((user + sys_) / ios * 1e6, 2)
    result["target_user_us_per_io"] = round(user / ios * 1e6, 2)
    result["target_sys_us_per_io"] = round(sys_ / ios * 1e6, 2)
    result["target_run_us_per_io"] = round((after.run_ns - before.run_ns) / ios / 1e3, 2)
    result["target_switches_per_io"] = round((after.switches - before.switches) / ios, 3)
    result["target_cpu_util"] = round((after.run_ns - before.run_ns) / 1e9 / wall, 3)
    # Includes its start-up and connect (a fraction of a second of CPU): compare runs of equal
    # length only.
    result["loadgen_user_us_per_io"] = round(
        (gen_after.ru_utime - gen_before.ru_utime) / ios * 1e6, 2)
    result["loadgen_sys_us_per_io"] = round(
        (gen_after.ru_stime - gen_before.ru_stime) / ios * 1e6, 2)
    return result


def start_floor(cpus: set[int] | None) -> tuple[subprocess.Popen[str], int]:
    """perf/echo_floor.py's server, pinned like the target; (process, port)."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "perf", "echo_floor.py"), "serve"],
                            stdout=subprocess.PIPE, text=True, preexec_fn=pin_to(cpus))
    assert proc.stdout is not None
    port = proc.stdout.readline().strip()
    if not port.isdigit():
        stop_target(proc)
        raise RuntimeError("the echo floor server did not start")
    return proc, int(port)


def run_floor(job: dict[str, Any], port: int, server_pid: int, seconds: float, engine: str,
              cpus: set[int] | None = None) -> dict[str, Any]:
    """One run of ``job``'s queue depth against the echo floor server: its CPU per round
    trip (as the target's is measured), round trips per second and latency."""
    cmd = [sys.executable, os.path.join(ROOT, "perf", "echo_floor.py"), "drive", "--port",
           str(port), "--qd", str(job["qd"]), "--seconds", str(seconds)]
    if engine in ("poll", "native"):
        cmd.append("--poll")  # the native engine polls too: the floor's driver polls in Python
    before = CpuSample(server_pid)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                          preexec_fn=pin_to(cpus), check=False)
    after = CpuSample(server_pid)
    if proc.returncode != 0:
        raise RuntimeError(f"echo floor driver failed: {proc.stdout[-500:]}{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    n = max(result["round_trips"], 1)
    result["cpu_us_per_round_trip"] = round(
        (after.user - before.user + after.sys - before.sys) / n * 1e6, 2)
    result["run_us_per_round_trip"] = round((after.run_ns - before.run_ns) / n / 1e3, 2)
    return result


def summarize_floor(runs: list[dict[str, Any]]) -> dict[str, Any]:
    cpu = [r["cpu_us_per_round_trip"] for r in runs]
    return {"what": "bare uvloop server, 72-byte requests answered with a 4 KiB read's bytes",
            "cpu_us_per_round_trip": round(statistics.median(cpu), 2),
            "range": [min(cpu), max(cpu)],
            "per_s": round(statistics.median(r["per_s"] for r in runs), 1),
            "lat_mean_us": round(statistics.median(r["lat_us"]["mean"] for r in runs), 1),
            "runs": runs}


SUMMARY_KEYS = ("iops", "mb_per_s", "target_cpu_us_per_io", "target_user_us_per_io",
                "target_sys_us_per_io", "target_run_us_per_io", "target_switches_per_io",
                "target_cpu_util", "loadgen_user_us_per_io", "loadgen_sys_us_per_io")


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run (by target CPU per I/O) with every figure's range over the runs."""
    ordered = sorted(runs, key=lambda r: r["target_run_us_per_io"])
    result = dict(ordered[(len(ordered) - 1) // 2])
    result["repeat"] = len(runs)
    ranges: dict[str, list[float]] = {k: [min(r[k] for r in runs), max(r[k] for r in runs)]
                                      for k in SUMMARY_KEYS}
    for k in ("mean", "p50", "p99"):
        vals = [r["lat_us"][k] for r in runs]
        ranges[f"lat_{k}_us"] = [round(min(vals), 1), round(max(vals), 1)]
    result["range"] = ranges
    result["median"] = {k: round(statistics.median(r[k] for r in runs), 3) for k in SUMMARY_KEYS}
    result["runs"] = [{k: r[k] for k in SUMMARY_KEYS} | {"lat_us": r["lat_us"]} for r in runs]
    return result


def line(r: dict[str, Any]) -> str:
    rng = r.get("range", {})

    def span(key: str, fmt: str) -> str:
        if key not in rng or r.get("repeat", 1) < 2:
            return ""
        lo, hi = rng[key]
        return f" [{lo:{fmt}}-{hi:{fmt}}]"
    lat = r["lat_us"]
    return (f"{r['name']:34s} {r['iops']:>8.0f} IOPS{span('iops', '.0f')}  "
            f"lat mean {lat['mean']:.0f}{span('lat_mean_us', '.0f')} p99 {lat['p99']:.0f} us  "
            f"target CPU {r['target_cpu_us_per_io']:.2f} us/IO = user "
            f"{r['target_user_us_per_io']:.2f} + sys {r['target_sys_us_per_io']:.2f}"
            f"{span('target_cpu_us_per_io', '.1f')}  ({r['target_cpu_util'] * 100:.0f}% of a core)")


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["matrix"]:
        # The job matrix against the RAM device, a pool volume and the raw disk, with plots.
        from perf.matrix import main as matrix_main
        return matrix_main(args_in[1:])
    p = argparse.ArgumentParser(description="sbstore target benchmark (RAM device); "
                                "`perf/run.py matrix --help`: the job matrix with plots")
    p.add_argument("--seconds", type=float, default=5.0, help="per run")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs per job; the median run is reported, with the range")
    p.add_argument("--busy-poll", type=int, default=500, metavar="US",
                   help="also run the 4k jobs against a target started with --busy-poll US "
                        "(0: do not)")
    p.add_argument("--placement", choices=["split", "shared", "free"], default="split",
                   help="split: target on CPU 0, load generator on the others; shared: both "
                        "on CPU 0; free: the scheduler decides")
    p.add_argument("--digests", action="store_true", help="also run each job with digests on")
    p.add_argument("--engine", choices=["fast", "poll", "native", "general"], default="fast",
                   help="load engine (perf/loadgen.py --engine); fast leaves the target the CPU; "
                   "poll also busy-polls its socket as spdk_nvme_perf does, so the target never "
                   "pays for waking it; native polls from C (perf/native_load.py), at about "
                   "spdk_nvme_perf's cost per I/O")
    p.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the 4k jobs against perf/echo_floor.py's bare uvloop server, "
                        "the yardstick for CPU per I/O (module docstring)")
    p.add_argument("--json", default=os.path.join(ROOT, "perf", "results", "target.json"))
    args = p.parse_args(args_in)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    target_cpus, load_cpus = affinity(args.placement)
    modes = [0] + ([args.busy_poll] if args.busy_poll > 0 else [])
    targets: dict[int, tuple[subprocess.Popen[str], int]] = {}
    floor: tuple[subprocess.Popen[str], int] | None = None
    results = []
    try:
        for mode in modes:
            targets[mode] = start_target(["--busy-poll", str(mode)] if mode else [], target_cpus)
        if args.floor:
            floor = start_floor(target_cpus)
        print(f"placement {args.placement}: target on CPUs {sorted(target_cpus or [])}, load "
              f"generator on {sorted(load_cpus or [])}; {args.repeat} x {args.seconds:g} s per "
              f"job; median run [range]", flush=True)
        for job in JOBS:
            for digests in ([False, True] if args.digests else [False]):
                if digests and args.engine != "general":
                    continue  # the fast engine speaks digests-off only
                job_modes = [m for m in modes if m == 0 or job["bs"] == 4096]
                runs: dict[int, list[dict[str, Any]]] = {m: [] for m in job_modes}
                with_floor = floor is not None and job["bs"] == 4096 and not digests
                floor_runs: list[dict[str, Any]] = []
                for _ in range(args.repeat):
                    for mode in job_modes:  # interleaved: drift hits every mode alike
                        proc, port = targets[mode]
                        runs[mode].append(run_job(job, port, proc.pid, args.seconds, digests,
                                                  args.engine, load_cpus))
                    if with_floor:
                        assert floor is not None
                        floor_runs.append(run_floor(job, floor[1], floor[0].pid, args.seconds,
                                                    args.engine, load_cpus))
                job_floor = summarize_floor(floor_runs) if floor_runs else None
                for mode in job_modes:
                    r = summarize(runs[mode])
                    r["busy_poll_us"] = mode
                    r["placement"] = args.placement
                    if mode:
                        r["name"] += "-busypoll"
                    if job_floor is not None:
                        r["floor"] = job_floor
                        r["target_over_floor"] = round(
                            r["target_cpu_us_per_io"] / max(job_floor["cpu_us_per_round_trip"],
                                                            0.01), 2)
                    results.append(r)
                    print(line(r), flush=True)
                if job_floor is not None:
                    print(f"{'  floor: bare uvloop echo':34s} {job_floor['per_s']:>8.0f} /s"
                          f"        lat mean {job_floor['lat_mean_us']:.0f} us  server CPU "
                          f"{job_floor['cpu_us_per_round_trip']:.2f} us per round trip "
                          f"[{job_floor['range'][0]:.1f}-{job_floor['range'][1]:.1f}]; the "
                          f"target x{results[-len(job_modes)]['target_over_floor']:.2f} of it",
                          flush=True)
    finally:
        for proc, _ in targets.values():
            stop_target(proc)
        if floor is not None:
            stop_target(floor[0])
    goals = []
    for name, goal in GOALS_US.items():
        for r in results:
            if r["name"] == name:
                met = r["target_cpu_us_per_io"] <= goal
                entry = {"name": name, "goal_us": goal, "median_us": r["target_cpu_us_per_io"],
                         "met": met}
                note = ""
                if "floor" in r:
                    floor_us = r["floor"]["cpu_us_per_round_trip"]
                    entry |= {"floor_us": floor_us, "goal_below_floor": goal < floor_us}
                    note = f" (floor {floor_us:.2f}" + (
                        ": the goal is below what a bare uvloop server costs here)"
                        if goal < floor_us else ")")
                goals.append(entry)
                print(f"goal: {name} target CPU <= {goal:g} us/IO: median "
                      f"{r['target_cpu_us_per_io']:.2f}: {'met' if met else 'NOT MET'}{note}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": platform.node(), "cpus": os.cpu_count(),
                   "python": platform.python_version(), "time": time.time(),
                   "placement": args.placement, "target_cpus": sorted(target_cpus or []),
                   "load_cpus": sorted(load_cpus or []), "load_engine": args.engine,
                   "repeat": args.repeat,
                   "seconds": args.seconds, "goals": goals, "results": results}, f, indent=2)
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
