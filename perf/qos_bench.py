"""The QoS benchmark: limits, fair shares, a noisy neighbour, and the layer's cost.

    python3 perf/qos_bench.py [--seconds 10] [--only limits,fair,noisy,overhead]
                              [--rounds 10] [--json perf/results/qos.json]

How it runs. This process is the target: a ``Target`` + ``TargetServer`` on 127.0.0.1, one
subsystem per tenant (only that tenant's host NQNs admitted), each namespace a volume behind
``sbstore.qos.QosDevice`` (or, for the yardsticks, the same volume without it). Every load runs
in its own process (``perf/qos/load.py``: the fast engine, its own host NQN), and all the loads
of a scenario start on the same "go" line, so their windows coincide. Each scenario runs
``--seconds`` (10 s by default, as the issue asks). Figures are what the hosts measured; the
QoS layer's own counters over the same window are in the JSON too.

The backend. Limits, shares and the noisy neighbour run on ``perf/qos/simdisk.py``: a disk
model with SLOTS servers in parallel and IO_S + nbytes x BYTE_S of service per I/O, the data in
RAM. On this 2-vCPU VM a RAM or page-cache device is never the bottleneck (the target's one
core is), so only a backend with bounded capacity makes tenants compete for the device rather
than for the target's CPU; and a model's capacity is known exactly, where the VM's virtual disk
(O_DIRECT in a thread pool) would add the host's caching and a thread hop per I/O. The QoS
layer's bound on outstanding I/Os is the disk's parallelism (BOUND = SLOTS), so contention
happens in the tenant queues, and the SFQ cost per byte is the disk's (``cost_bytes`` = IO_S /
BYTE_S). The overhead scenario uses the RAM device through the real TCP target, where the
target's CPU is the bottleneck, so any cost the layer adds shows in the IOPS.

Scenarios and yardsticks:
- limits: a tenant asking far more than its limit (QD32) gets within 5% of it: IOPS limit,
  MB/s limit (128k reads), and read and write limits set separately (a reader and a writer of
  the same tenant at once). burst_s = 0.1, so the first burst adds at most 1% over 10 s.
- fair: tenants of weight 1 and 3 both saturating the disk (4k random reads at QD32 each):
  throughput ratio vs 3; the weight-1 tenant alone vs the disk's capacity measured with the
  layer bypassed (work conservation).
- noisy: tenant A 4k random reads at QD4, tenant B 128k writes at QD64. A's p50/p99 alone; with
  B and no QoS layer at all (the disk's FIFO); with B through the layer and no policy (fair
  queueing only); and with B under policy (B's write bandwidth capped, A weighted up). Ratio of
  A's p99 to alone (goal: within 2x with policies set).
- overhead: 4k random reads at QD32 on a RAM device, through a QoS-wrapped namespace with no
  policy vs a bare one, in the same target, runs rotating; IOPS ratio and target CPU per I/O
  (goal: the layer costs under 5%), for a backend declared inline (a RAM or page-cache device,
  how the RAM device is really served) and, for comparison, a counted one (each I/O takes a
  slot of the bound, as on a backend whose I/O waits on the loop).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from perf.qos.simdisk import SimDisk, SimVolume
from sbstore.qos import QosManager
from target.blockdev import RamDevice
from target.server import TargetServer
from target.subsystem import Subsystem, Target

# The disk model: 16 servers, 2 ms per I/O + 20 ns per byte (50 MB/s per server): 7.7k 4k
# IOPS, 3.5k 128k IOPS (450 MB/s) with every server busy.
SLOTS = 16
IO_S = 0.002
BYTE_S = 20e-9
BOUND = 24
VOLUME_BYTES = 64 << 20
NQN_PREFIX = "nqn.2026-11.io.sbstore.bench:"
BURST_S = 0.1

# Policies of the limit scenarios.
LIMIT_IOPS = 2000
LIMIT_BPS = 100_000_000  # bytes/s (100 MB/s)
LIMIT_READ_IOPS, LIMIT_WRITE_IOPS = 1500, 500
# Fair share: each tenant keeps this many reads outstanding, well above its share of the
# backend's BOUND, so that it stays backlogged in its queue even while some of its I/Os are in
# transit between the host and the target (a tenant whose queue runs dry is not saturating).
FAIR_QD = 64
# The noisy-neighbour policy: B's writes capped at 150 MB/s (a third of the disk's 128k
# bandwidth), A weighted 4x B.
NOISY_B_POLICY = {"write_bps": 150_000_000, "burst_s": BURST_S, "weight": 100}
NOISY_A_POLICY = {"weight": 400}


@dataclass
class Load:
    tenant: str
    rw: str = "randread"
    bs: int = 4096
    qd: int = 32
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.tenant


@dataclass
class Scenario:
    name: str
    loads: list[Load]
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    qos: bool = True  # False: the namespaces are the bare volumes (the layer bypassed)
    disk: bool = True  # False: RAM devices


def cpu_seconds() -> float:
    return time.process_time()


async def start_load(load: Load, port: int, nqn: str, hostnqn: str, seconds: float, seed: int
                     ) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "perf.qos.load", "--port", str(port), "--nqn", nqn,
        "--hostnqn", hostnqn, "--rw", load.rw, "--bs", str(load.bs), "--qd", str(load.qd),
        "--seconds", str(seconds), "--span-bytes", str(VOLUME_BYTES), "--seed", str(seed),
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)


async def run_loads(server_port: int, loads: list[tuple[Load, str]], seconds: float,
                    on_go: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Start every load (a process each), wait until all are connected, say go to all at
    once (and call ``on_go``), and collect their results."""
    procs = []
    try:
        for i, (load, nqn) in enumerate(loads):
            hostnqn = f"{NQN_PREFIX}host-{load.name}"
            procs.append(await start_load(load, server_port, nqn, hostnqn, seconds, seed=i + 1))
        for p in procs:
            assert p.stdout is not None
            line = await asyncio.wait_for(p.stdout.readline(), 30)
            if line.strip() != b"ready":
                err = await p.stderr.read() if p.stderr else b""
                raise RuntimeError(f"a load did not start: {line!r} {err[-2000:]!r}")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
        if on_go is not None:
            on_go()
        await asyncio.gather(*(p.stdin.drain() for p in procs if p.stdin))
        results = []
        for p in procs:
            out, err = await asyncio.wait_for(p.communicate(), seconds + 60)
            if p.returncode != 0:
                raise RuntimeError(f"a load failed: {err.decode()[-2000:]}")
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
        return results
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()


async def run_scenario(sc: Scenario, seconds: float) -> dict[str, Any]:
    """Serve one volume per tenant and run the scenario's loads; returns each load's figures
    and each tenant's QoS counters over the window."""
    target = Target()
    mgr = QosManager(max_outstanding=BOUND, cost_bytes=int(IO_S / BYTE_S))
    disk = SimDisk(SLOTS, IO_S, BYTE_S) if sc.disk else None
    for tenant, policy in sc.policies.items():
        mgr.set_tenant_policy(tenant, policy)
    nqns: dict[str, str] = {}
    for load in sc.loads:
        if load.tenant in nqns:
            continue
        nqn = nqns[load.tenant] = f"{NQN_PREFIX}{sc.name}-{load.tenant}"
        hosts = [f"{NQN_PREFIX}host-{ld.name}" for ld in sc.loads if ld.tenant == load.tenant]
        sub = Subsystem(nqn, allow_any_host=False, allowed_hosts=hosts)
        dev: Any = SimVolume(disk, VOLUME_BYTES) if disk else RamDevice(VOLUME_BYTES, 4096)
        if sc.qos:
            dev = mgr.wrap(dev, load.tenant, load.tenant)
        sub.add_namespace(dev)
        target.add_subsystem(sub)
    server = TargetServer(target)
    listener = await server.listen("127.0.0.1", 0)
    try:
        box: dict[str, Any] = {}

        def window_end() -> None:
            box["stats1"], box["cpu1"] = mgr.stats(), cpu_seconds()

        def go() -> None:  # the QoS counters and the target's CPU over the loads' window
            box["stats0"], box["cpu0"] = mgr.stats(), cpu_seconds()
            asyncio.get_running_loop().call_later(seconds, window_end)

        loads = [(ld, nqns[ld.tenant]) for ld in sc.loads]
        results = await run_loads(int(listener.trsvcid), loads, seconds, go)
        if "stats1" not in box:
            window_end()
    finally:
        await server.close()
        mgr.close()
    qos = {}
    for tenant in nqns:
        s0, s1 = box["stats0"].get(tenant), box["stats1"].get(tenant)
        if s0 is None or s1 is None:
            continue
        qos[tenant] = {"dispatched_ios": s1.dispatched_ios - s0.dispatched_ios,
                       "dispatched_bytes": s1.dispatched_bytes - s0.dispatched_bytes,
                       "throttled_s": round(s1.throttled_seconds - s0.throttled_seconds, 3)}
    out = {"scenario": sc.name, "qos_layer": sc.qos, "policies": sc.policies,
           "target_cpu_util": round((box["cpu1"] - box["cpu0"]) / seconds, 3),
           "loads": {ld.name: r for ld, r in zip(sc.loads, results)}, "qos": qos}
    if disk is not None:
        out["disk"] = {"slots": SLOTS, "io_s": IO_S, "byte_s": BYTE_S, "ios": disk.ios}
    return out


def fmt_ratio(value: float, yardstick: float) -> float:
    return value / yardstick if yardstick else float("nan")


# The goals, each as a test on the figure's ratio to its yardstick.
GOALS: dict[str, Callable[[float], bool]] = {
    "within 5%": lambda r: abs(r - 1) <= 0.05,
    "within 10%": lambda r: abs(r - 1) <= 0.10,
    "within 2x": lambda r: r <= 2.0,
    "cost under 5%": lambda r: r > 0.95,
    "work-conserving (>= 95% of the pool)": lambda r: r >= 0.95,
}


def line(label: str, value: float, unit: str, yard_label: str, yardstick: float,
         goal: str = "", ratio: float | None = None) -> dict[str, Any]:
    """Print a figure beside its yardstick; with a goal, say whether this run met it (judged on
    ``ratio`` when given, e.g. a median of paired ratios, else on value / yardstick)."""
    shown = fmt_ratio(value, yardstick)
    judged = shown if ratio is None else ratio
    met = GOALS[goal](judged) if goal else None
    verdict = "" if met is None else f"goal {goal}: {'met' if met else 'NOT MET'}"
    print(f"  {label:34s} {value:>10.1f} {unit:6s} {yard_label:22s} {yardstick:>10.1f} {unit:6s} "
          f"ratio {shown:6.3f}  {verdict}", flush=True)
    return {"figure": label, "value": value, "unit": unit, "yardstick": yard_label,
            "yardstick_value": yardstick, "ratio": round(shown, 4), "goal": goal, "met": met}


# --- the scenarios ------------------------------------------------------------------------------

async def bench_limits(seconds: float) -> dict[str, Any]:
    print("limits (4k/128k random reads at QD32 against a limit, disk model)", flush=True)
    figures = []
    runs = []
    r = await run_scenario(Scenario("limit-iops", [Load("lim", qd=32)],
                                    {"lim": {"iops": LIMIT_IOPS, "burst_s": BURST_S}}), seconds)
    runs.append(r)
    got = r["loads"]["lim"]["iops"]
    figures.append(line("IOPS limit: achieved", got, "IOPS", "limit", LIMIT_IOPS,
                        "within 5%"))
    r = await run_scenario(Scenario("limit-bps", [Load("lim", bs=128 << 10, qd=32)],
                                    {"lim": {"bps": LIMIT_BPS, "burst_s": BURST_S}}), seconds)
    runs.append(r)
    got = r["loads"]["lim"]["mb_per_s"]
    figures.append(line("MB/s limit: achieved", got, "MB/s", "limit", LIMIT_BPS / 1e6,
                        "within 5%"))
    r = await run_scenario(Scenario(
        "limit-rw", [Load("lim", qd=32, name="lim-reader"),
                     Load("lim", rw="randwrite", qd=32, name="lim-writer")],
        {"lim": {"read_iops": LIMIT_READ_IOPS, "write_iops": LIMIT_WRITE_IOPS,
                 "burst_s": BURST_S}}), seconds)
    runs.append(r)
    figures.append(line("read IOPS limit: achieved", r["loads"]["lim-reader"]["iops"], "IOPS",
                        "read limit", LIMIT_READ_IOPS, "within 5%"))
    figures.append(line("write IOPS limit: achieved", r["loads"]["lim-writer"]["iops"], "IOPS",
                        "write limit", LIMIT_WRITE_IOPS, "within 5%"))
    return {"figures": figures, "runs": runs}


async def bench_fair(seconds: float) -> dict[str, Any]:
    print(f"fair share (4k random reads at QD{FAIR_QD} each, weights 1 and 3, disk model)", flush=True)
    figures = []
    both = await run_scenario(Scenario("fair-1-3", [Load("w1", qd=FAIR_QD), Load("w3", qd=FAIR_QD)],
                                       {"w1": {"weight": 1}, "w3": {"weight": 3}}), seconds)
    w1, w3 = both["loads"]["w1"]["iops"], both["loads"]["w3"]["iops"]
    figures.append(line("weight 3 : weight 1 (IOPS ratio)", w3 / w1, "x", "weights", 3.0,
                        "within 10%"))
    alone = await run_scenario(Scenario("fair-1-alone", [Load("w1", qd=FAIR_QD)],
                                        {"w1": {"weight": 1}}), seconds)
    pool = await run_scenario(Scenario("fair-pool-bypassed", [Load("w1", qd=FAIR_QD)], qos=False),
                              seconds)
    figures.append(line("weight 1 alone", alone["loads"]["w1"]["iops"], "IOPS",
                        "disk, layer bypassed", pool["loads"]["w1"]["iops"],
                        "work-conserving (>= 95% of the pool)"))
    figures.append(line("weights 1+3 together", w1 + w3, "IOPS", "disk, layer bypassed",
                        pool["loads"]["w1"]["iops"], ""))
    print(f"  (disk model capacity at 4k: {SLOTS / (IO_S + 4096 * BYTE_S):.0f} IOPS)")
    return {"figures": figures, "runs": [both, alone, pool]}


async def bench_noisy(seconds: float) -> dict[str, Any]:
    print("noisy neighbour (A: 4k random reads QD4; B: 128k writes QD64; disk model)",
          flush=True)
    a = Load("A", qd=4)
    b = Load("B", rw="randwrite", bs=128 << 10, qd=64)
    alone = await run_scenario(Scenario("noisy-a-alone", [a]), seconds)
    raw = await run_scenario(Scenario("noisy-no-qos", [a, b], qos=False), seconds)
    fair = await run_scenario(Scenario("noisy-qos-no-policy", [a, b]), seconds)
    pol = await run_scenario(Scenario("noisy-b-under-policy", [a, b],
                                      {"A": NOISY_A_POLICY, "B": NOISY_B_POLICY}), seconds)
    base = alone["loads"]["A"]["lat_us"]
    figures = []
    for label, r in (("A alone", alone), ("A + B, no QoS layer", raw),
                     ("A + B unthrottled (QoS, no policy)", fair),
                     ("A + B under policy", pol)):
        lat = r["loads"]["A"]["lat_us"]
        goal = "within 2x" if r is pol else ""
        figures.append(line(f"{label}: A p50", lat["p50"], "us", "A alone p50", base["p50"]))
        figures.append(line(f"{label}: A p99", lat["p99"], "us", "A alone p99", base["p99"],
                            goal))
        if "B" in r["loads"]:
            print(f"  {'':34s} (A {r['loads']['A']['iops']:.0f} IOPS, B "
                  f"{r['loads']['B']['mb_per_s']:.0f} MB/s)", flush=True)
    return {"figures": figures, "runs": [alone, raw, fair, pol]}


async def bench_overhead(seconds: float, rounds: int = 10) -> dict[str, Any]:
    """Same target, three namespaces on RAM devices: bare; behind the QoS layer with no policy
    on a backend declared inline (what a RAM or page-cache device is: the layer hands the
    inner coroutine back); and behind the layer on a counted backend (each I/O takes and gives
    back a slot). ``rounds`` rounds of back-to-back runs (``seconds / rounds`` each, the order
    rotating); each figure is the median over rounds of its ratio to the bare run of the same
    round, so that drift in a shared machine's load hits both sides alike."""
    print("overhead (4k random reads at QD32, RAM device, fast engine; QoS layer with no policy "
          "vs bypassed)", flush=True)
    target = Target()
    mgr = QosManager()
    mgr.backend("inline", inline=True)
    mgr.backend("counted", inline=False)
    nqns = {kind: f"{NQN_PREFIX}overhead-{kind}" for kind in ("raw", "inline", "counted")}
    for kind, nqn in nqns.items():
        sub = Subsystem(nqn, allow_any_host=True)
        dev: Any = RamDevice(VOLUME_BYTES, 4096)
        sub.add_namespace(dev if kind == "raw" else mgr.wrap(dev, nqn, "t", backend=kind))
        target.add_subsystem(sub)
    server = TargetServer(target)
    listener = await server.listen("127.0.0.1", 0)
    per = max(seconds / rounds, 0.2)
    kinds = list(nqns)
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    try:
        for i in range(rounds):
            for kind in kinds[i % 3:] + kinds[:i % 3]:
                cpu0 = cpu_seconds()
                (r,) = await run_loads(int(listener.trsvcid),
                                       [(Load(f"overhead-{kind}", qd=32), nqns[kind])], per)
                cpu = cpu_seconds() - cpu0
                samples[kind].append({"iops": r["iops"], "cpu_us_per_io":
                                      cpu / max(r["ios"], 1) * 1e6, "p50": r["lat_us"]["p50"]})
    finally:
        await server.close()
        mgr.close()
    med = {k: {m: statistics.median(s[m] for s in v) for m in ("iops", "cpu_us_per_io", "p50")}
           for k, v in samples.items()}
    figures = []
    paired = {}
    for kind, label in (("inline", "inline backend"), ("counted", "counted backend")):
        iops_ratio = statistics.median(q["iops"] / r["iops"]
                                       for r, q in zip(samples["raw"], samples[kind]))
        cpu_ratio = statistics.median(q["cpu_us_per_io"] / r["cpu_us_per_io"]
                                      for r, q in zip(samples["raw"], samples[kind]))
        paired[kind] = {"iops_ratio": round(iops_ratio, 4), "cpu_ratio": round(cpu_ratio, 4)}
        f = line(f"IOPS, layer with no policy, {label}", med[kind]["iops"], "IOPS",
                 "layer bypassed", med["raw"]["iops"], "cost under 5%", ratio=iops_ratio)
        f["paired_ratio"] = round(iops_ratio, 4)
        figures.append(f)
        f = line(f"target CPU/IO, {label}", med[kind]["cpu_us_per_io"], "us",
                 "layer bypassed", med["raw"]["cpu_us_per_io"], "")
        f["paired_ratio"] = round(cpu_ratio, 4)
        figures.append(f)
        print(f"  {label}: cost in IOPS {(1 - iops_ratio) * 100:.1f}%, target CPU per I/O "
              f"+{(cpu_ratio - 1) * 100:.1f}% (medians over {rounds} rounds of the ratio to the "
              f"bare run; runs of {per:.1f} s)", flush=True)
    return {"figures": figures, "samples": samples, "medians": med, "paired": paired}


BENCHES = {"limits": bench_limits, "fair": bench_fair, "noisy": bench_noisy,
           "overhead": bench_overhead}


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "machine": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "time": time.time(), "seconds": args.seconds,
        "disk_model": {"slots": SLOTS, "io_s": IO_S, "byte_s": BYTE_S, "bound": BOUND,
                       "capacity_4k_iops": round(SLOTS / (IO_S + 4096 * BYTE_S)),
                       "capacity_128k_mb_s": round(SLOTS / (IO_S + (128 << 10) * BYTE_S)
                                                   * (128 << 10) / 1e6)}}
    for name in args.only:
        if name == "overhead":
            report[name] = await bench_overhead(args.seconds, args.rounds)
        else:
            report[name] = await BENCHES[name](args.seconds)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    p.add_argument("--only", default=",".join(BENCHES),
                   help=f"comma-separated scenarios among {', '.join(BENCHES)}")
    p.add_argument("--rounds", type=int, default=10,
                   help="overhead: rounds of runs (each --seconds / rounds long)")
    p.add_argument("--json", default=os.path.join(ROOT, "perf", "results", "qos.json"))
    args = p.parse_args(argv)
    args.only = [s for s in args.only.split(",") if s]
    unknown = set(args.only) - set(BENCHES)
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    import uvloop
    report = uvloop.run(amain(args))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
