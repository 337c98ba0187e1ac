"""The target benchmark: start ``sbstore serve --demo --ram``, drive it with the load generator,
and report IOPS, MB/s and the target process's CPU time per I/O.

    python3 perf/run.py [--seconds 10] [--json perf/results/target.json]

The default load engine is perf/fastload.py: the general Python initiator costs 25-40 us per
I/O and, on a 2-vCPU machine, would starve the target and slow it by sharing the core.
CPU time comes from the target's own accounting (/proc/PID/stat utime+stime, read before and
after each job), so the figure holds however busy the rest of the machine is. The load
generator runs as its own process (one per job), on the other core if there is one.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NQN = "nqn.2026-11.io.sbstore:demo"
JOBS = [
    {"name": "4k-randread-qd1", "rw": "randread", "bs": 4096, "qd": 1, "queues": 1},
    {"name": "4k-randread-qd32", "rw": "randread", "bs": 4096, "qd": 32, "queues": 1},
    {"name": "128k-seqread-qd16", "rw": "read", "bs": 131072, "qd": 16, "queues": 1},
]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[11], fields[12] are utime and stime (stat fields 14 and 15) in clock ticks.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_target(extra: list[str]) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "sbstore", "serve", "--demo", "--ram",
                             "--listen", "127.0.0.1:0", "--log-level", "warning", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r" on [^ ]+:(\d+)$", line.strip())
        if m:
            return proc, int(m.group(1))
    proc.kill()
    raise RuntimeError("the target did not start")


def run_job(job: dict, port: int, target_pid: int, seconds: float, digests: bool,
            engine: str) -> dict:
    cmd = [sys.executable, os.path.join(ROOT, "perf", "loadgen.py"), "--port", str(port),
           "--nqn", NQN, "--rw", job["rw"], "--bs", str(job["bs"]), "--qd", str(job["qd"]),
           "--queues", str(job["queues"]), "--seconds", str(seconds), "--engine", engine]
    if digests:
        cmd.append("--digests")
    cpu0 = cpu_seconds(target_pid)
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    wall = time.monotonic() - t0
    cpu = cpu_seconds(target_pid) - cpu0
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["name"] = job["name"] + ("-digests" if digests else "") + ("" if engine == "fast" else "-general")
    result["target_cpu_s"] = round(cpu, 3)
    result["target_cpu_us_per_io"] = round(cpu / max(result["ios"], 1) * 1e6, 2)
    result["target_cpu_util"] = round(cpu / wall, 3)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="sbstore target benchmark (RAM device)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--digests", action="store_true", help="also run each job with digests on")
    p.add_argument("--engine", choices=["fast", "general"], default="fast",
                   help="load engine (perf/loadgen.py --engine); fast leaves the target the CPU")
    p.add_argument("--json", default=os.path.join(ROOT, "perf", "results", "target.json"))
    args = p.parse_args(argv)
    proc, port = start_target([])
    results = []
    try:
        for job in JOBS:
            for digests in ([False, True] if args.digests else [False]):
                if digests and args.engine == "fast":
                    continue  # the fast engine speaks digests-off only
                r = run_job(job, port, proc.pid, args.seconds, digests, args.engine)
                results.append(r)
                print(f"{r['name']:28s} {r['iops']:>10.0f} IOPS {r['mb_per_s']:>9.1f} MB/s  "
                      f"target CPU {r['target_cpu_us_per_io']:6.2f} us/IO "
                      f"({r['target_cpu_util'] * 100:.0f}% of a core)  "
                      f"lat p50 {r['lat_us']['p50']:.0f} us p99 {r['lat_us']['p99']:.0f} us",
                      flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": platform.node(), "cpus": os.cpu_count(),
                   "python": platform.python_version(), "time": time.time(),
                   "results": results}, f, indent=2)
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
