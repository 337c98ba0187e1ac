"""Control-plane cost to the data path: a daemon with many exported volumes, a QD1 read job,
and a Prometheus scrape every second; plus how long listing the volumes takes.

    python3 perf/control_bench.py [--volumes 1000] [--seconds 10] [--rounds 2]
                                  [--per-volume full|counters|none]
                                  [--json perf/results/control.json]

What it does, in order:
1. Starts ``python -m sbstore serve --config FILE`` as a process of its own, pinned to CPU 0,
   with a file pool in a fresh directory under /var/tmp (removed at the end).
2. Creates ``--volumes`` volumes through the API and exports each in a subsystem of its own
   (``sbstore.control.client``); the time per create and per export is reported.
3. Fills the span the job reads on the first volume, so reads hit the pool file, not holes.
4. Lists the volumes through the API ``--list-rounds`` times (median reported) and scrapes
   /metrics once cold (the first render) and once warm (size, lines, duration).
5. ``--rounds`` rounds of runs of a 4k QD1 random read job (perf/fastload.py, the load engine
   perf/run.py uses, in a process of its own pinned to CPU 1): ``--seconds`` without scrapes,
   then ``--seconds`` with a scrape of /metrics every second (a thread of this process, pinned
   to CPU 1 too so it does not take the daemon's core), then (unless ``--no-listings``)
   ``--seconds`` with a listing every half second, of the volumes and of the exports in turn
   (a thread likewise).
Reports the IOPS ratio (with scrapes / without), the maximum latency of each run, scrape
durations and sizes, listing times and the daemon's CPU time per run; writes JSON.

The goal (the control-plane issue): ratio >= 0.9, max latency with scrapes < 10 ms, listing
1,000 volumes < 100 ms; and, as the issue asks of listings too, max latency with listings
< 10 ms. Timings are noisy on a shared machine: repeat with ``--rounds``.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from perf.harness import (
    Daemon,
    cpu_seconds,
    cpus,
    run_load,
    start_daemon,
    write_config,
    write_report,
)
from sbstore.control.client import Client

NQN_PREFIX = "nqn.2026-11.io.sbstore.bench:vol"
VOLUME_SIZE = 64 << 20
SCRAPE_TIMEOUT_S = 30.0
IDLE_SCRAPES = 10
GOAL_RATIO = 0.9
GOAL_MAX_LAT_MS = 10.0
GOAL_LIST_MS = 100.0


# --- API work -----------------------------------------------------------------------------------

def populate(client: Client, n: int) -> dict[str, float]:
    """``n`` volumes, each exported to any host by a subsystem of its own."""
    t_create = t_export = 0.0
    for i in range(n):
        t0 = time.perf_counter()
        client.post("/v1/volumes", {"name": f"vol{i:05d}", "size_bytes": VOLUME_SIZE})
        t1 = time.perf_counter()
        client.post("/v1/subsystems", {"nqn": f"{NQN_PREFIX}{i:05d}",
                                       "volumes": [f"vol{i:05d}"], "allow_any_host": True})
        t_export += time.perf_counter() - t1
        t_create += t1 - t0
    return {"create_ms_mean": round(t_create / max(n, 1) * 1e3, 3),
            "export_ms_mean": round(t_export / max(n, 1) * 1e3, 3)}


def list_once(client: Client, target: str, expect: int) -> float:
    """GET a listing; the seconds it took. It must have ``expect`` entries."""
    t0 = time.perf_counter()
    got = client.get(target)
    dt = time.perf_counter() - t0
    if len(got) != expect:
        raise RuntimeError(f"GET {target} listed {len(got)} entries, expected {expect}")
    return dt


def time_listing(client: Client, target: str, rounds: int, expect: int) -> dict[str, Any]:
    times = [list_once(client, target, expect) for _ in range(rounds)]
    return {"median_ms": round(statistics.median(times) * 1e3, 2),
            "min_ms": round(min(times) * 1e3, 2), "max_ms": round(max(times) * 1e3, 2),
            "rounds": rounds}


# --- scrapes ------------------------------------------------------------------------------------

def scrape_once(url: str) -> tuple[float, int, int]:
    """(seconds, bytes, lines) of one GET /metrics."""
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as r:
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"/metrics answered {r.status}")
    return time.perf_counter() - t0, len(body), body.count(b"\n")


class Periodic(threading.Thread):
    """Makes a request (:meth:`call`) at the start of every ``interval_s`` until stopped,
    keeping each one's duration and size, and any error."""

    def __init__(self, name: str, cpu: str | None, interval_s: float) -> None:
        super().__init__(name=name, daemon=True)
        self.cpu, self.interval_s = cpu, interval_s
        self.durations: list[float] = []
        self.sizes: list[int] = []
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        if self.cpu is not None:
            os.sched_setaffinity(0, {int(self.cpu)})  # this thread only (Linux)
        next_at = time.monotonic()
        calls = 0
        while not self._halt.is_set():
            try:
                dt, size = self.call(calls)
                self.durations.append(dt)
                self.sizes.append(size)
            except Exception as exc:  # noqa: BLE001 (reported, not fatal to the run)
                self.errors.append(repr(exc))
            calls += 1
            next_at += self.interval_s
            self._halt.wait(max(0.0, next_at - time.monotonic()))

    def call(self, n: int) -> tuple[float, int]:
        """The ``n``-th request: (seconds it took, its size)."""
        raise NotImplementedError

    def stop(self) -> None:
        self._halt.set()
        self.join(SCRAPE_TIMEOUT_S + 5)


class Scraper(Periodic):
    """Scrapes ``url`` every ``interval_s``; sizes in bytes."""

    def __init__(self, url: str, cpu: str | None, interval_s: float = 1.0) -> None:
        super().__init__("scraper", cpu, interval_s)
        self.url = url

    def call(self, n: int) -> tuple[float, int]:
        dt, size, _ = scrape_once(self.url)
        return dt, size


class Lister(Periodic):
    """Lists the volumes and the exports in turn through the API every ``interval_s``, each
    expected to have ``expect`` entries; sizes in entries."""

    def __init__(self, socket_path: str, cpu: str | None, expect: int,
                 interval_s: float = 0.5) -> None:
        super().__init__("lister", cpu, interval_s)
        self.client = Client(socket_path)
        self.expect = expect

    def call(self, n: int) -> tuple[float, int]:
        return list_once(self.client, "/v1/volumes" if n % 2 == 0 else "/v1/subsystems",
                         self.expect), self.expect


# --- the load job -------------------------------------------------------------------------------

# --- the run ------------------------------------------------------------------------------------

def one_run(daemon: Daemon, nqn: str, load_cpu: str | None, seconds: float, span: int,
            scrape: bool, listings: int = 0) -> dict[str, Any]:
    """``scrape``: a scrape every second; ``listings`` > 0: instead, a listing every half
    second of volumes and exports, each expected to have that many entries."""
    scraper: Periodic | None = None
    if scrape:
        scraper = Scraper(daemon.metrics_url, load_cpu)
    elif listings:
        scraper = Lister(daemon.socket, load_cpu, listings)
    cpu0 = cpu_seconds(daemon.pid)
    if scraper is not None:
        scraper.start()
    try:
        r = run_load(daemon.nvme_port, nqn, load_cpu, rw="randread", bs=4096, qd=1,
                     seconds=seconds, span_bytes=span)
    finally:
        if scraper is not None:
            scraper.stop()
    r["daemon_cpu_s"] = round(cpu_seconds(daemon.pid) - cpu0, 3)
    if scraper is not None:
        if scraper.errors:
            raise RuntimeError(f"{scraper.name} failed: {scraper.errors[:3]}")
        d = sorted(scraper.durations)
        r["listings" if listings else "scrapes"] = {"count": len(d),
                        "median_ms": round(statistics.median(d) * 1e3, 2) if d else 0.0,
                        "max_ms": round(d[-1] * 1e3, 2) if d else 0.0,
                        "bytes": max(scraper.sizes, default=0)}
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--volumes", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    p.add_argument("--rounds", type=int, default=2,
                   help="rounds of runs (without scrapes, with scrapes, with listings)")
    p.add_argument("--listings", action=argparse.BooleanOptionalAction, default=True,
                   help="also a run with a listing every half second, in each round")
    p.add_argument("--list-rounds", type=int, default=5)
    p.add_argument("--span-mib", type=int, default=32, help="span of the read job (filled)")
    p.add_argument("--per-volume", choices=["full", "counters", "none"], default=None,
                   help="[metrics] per_volume in the daemon's config (default: the daemon's)")
    p.add_argument("--wrap", default="", help="a command prefix for the daemon, e.g. "
                   "'py-spy record -f raw -o prof.txt --' (profiling)")
    p.add_argument("--workdir-base", default="/var/tmp")
    p.add_argument("--json", default=os.path.join(ROOT, "perf", "results", "control.json"))
    args = p.parse_args(argv)
    if args.volumes < 1 or args.rounds < 1 or args.list_rounds < 1:
        p.error("--volumes, --rounds and --list-rounds must be at least 1")

    daemon_cpu, load_cpu = cpus()
    workdir = tempfile.mkdtemp(prefix="sbs-ctl-", dir=args.workdir_base)
    daemon: Daemon | None = None
    report: dict[str, Any] = {
        "machine": platform.node(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "time": time.time(),
        "volumes": args.volumes, "seconds": args.seconds, "rounds": args.rounds,
        "per_volume": args.per_volume or "default", "pinning": {"daemon": daemon_cpu,
                                                              "load": load_cpu}}
    try:
        extra = f'[metrics]\nper_volume = "{args.per_volume}"\n' if args.per_volume else ""
        daemon = start_daemon(write_config(workdir, metrics_extra=extra), daemon_cpu,
                              shlex.split(args.wrap))
        client = Client(daemon.socket)
        t0 = time.perf_counter()
        report["populate"] = populate(client, args.volumes)
        report["populate"]["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"{args.volumes} volumes created and exported in "
              f"{report['populate']['seconds']:.1f} s (create "
              f"{report['populate']['create_ms_mean']:.1f} ms, export "
              f"{report['populate']['export_ms_mean']:.1f} ms each)", flush=True)

        nqn = f"{NQN_PREFIX}00000"
        span = args.span_mib << 20
        fill = run_load(daemon.nvme_port, nqn, load_cpu, rw="write", bs=128 << 10, qd=16,
                        seconds=600, span_bytes=span, max_ios=span // (128 << 10))
        report["fill_ios"] = fill["ios"]

        report["list_volumes"] = time_listing(client, "/v1/volumes", args.list_rounds,
                                              args.volumes)
        report["list_exports"] = time_listing(client, "/v1/subsystems", args.list_rounds,
                                              args.volumes)
        print(f"list {args.volumes} volumes: {report['list_volumes']['median_ms']:.1f} ms "
              f"(median of {args.list_rounds}); exports: "
              f"{report['list_exports']['median_ms']:.1f} ms", flush=True)

        scrapes = [scrape_once(daemon.metrics_url) for _ in range(3)]
        # The daemon's CPU per scrape, from its own accounting with no I/O running: the
        # steadiest figure on a shared machine (IOPS move with everyone else's load).
        cpu0 = cpu_seconds(daemon.pid)
        for _ in range(IDLE_SCRAPES):
            scrape_once(daemon.metrics_url)
        cpu_per_scrape = (cpu_seconds(daemon.pid) - cpu0) / IDLE_SCRAPES
        report["scrape_idle"] = {"first_ms": round(scrapes[0][0] * 1e3, 2),
                                 "warm_ms": round(min(s[0] for s in scrapes[1:]) * 1e3, 2),
                                 "daemon_cpu_ms": round(cpu_per_scrape * 1e3, 2),
                                 "bytes": scrapes[-1][1], "lines": scrapes[-1][2]}
        print(f"scrape: {scrapes[-1][2]} lines, {scrapes[-1][1] / 1e6:.2f} MB; first "
              f"{report['scrape_idle']['first_ms']:.1f} ms, then "
              f"{report['scrape_idle']['warm_ms']:.1f} ms; daemon CPU "
              f"{report['scrape_idle']['daemon_cpu_ms']:.1f} ms per scrape", flush=True)

        runs = []
        kinds = ["none", "scrapes"] + (["listings"] if args.listings else [])
        for i in range(args.rounds):
            for kind in kinds:
                scrape = kind == "scrapes"
                r = one_run(daemon, nqn, load_cpu, args.seconds, span, scrape,
                            args.volumes if kind == "listings" else 0)
                r["scrape"] = scrape
                r["with"] = kind
                r["round"] = i
                runs.append(r)
                extra = ""
                if kind != "none":
                    b = r[kind]
                    extra = (f"  {kind} {b['count']} median {b['median_ms']:.1f} ms max "
                             f"{b['max_ms']:.1f} ms")
                label = {"none": "without scrapes", "scrapes": "with    scrapes",
                         "listings": "with    listings"}[kind]
                print(f"round {i} {label}: "
                      f"{r['iops']:9.0f} IOPS  lat p50 {r['lat_us']['p50']:.0f} us  "
                      f"p99.9 {r['lat_us']['p999']:.0f} us  max {r['lat_us']['max'] / 1e3:.2f} ms"
                      f"  daemon CPU {r['daemon_cpu_s']:.2f} s{extra}", flush=True)
        report["runs"] = runs
        base = [r for r in runs if r["with"] == "none"]
        scraped = [r for r in runs if r["with"] == "scrapes"]
        listed = [r for r in runs if r["with"] == "listings"]
        iops_base = sum(r["ios"] for r in base) / sum(r["seconds"] for r in base)
        iops_scraped = sum(r["ios"] for r in scraped) / sum(r["seconds"] for r in scraped)
        # Each round's ratio too: runs of one round are seconds apart, so load from outside
        # changes less within a round than across rounds.
        ratios = [w["iops"] / wo["iops"] for wo, w in zip(base, scraped)]
        report["summary"] = {
            "iops_without": round(iops_base, 1), "iops_with": round(iops_scraped, 1),
            "iops_ratio": round(iops_scraped / iops_base, 3),
            "iops_ratio_median_of_rounds": round(statistics.median(ratios), 3),
            "max_lat_ms_without": round(max(r["lat_us"]["max"] for r in base) / 1e3, 3),
            "max_lat_ms_with": round(max(r["lat_us"]["max"] for r in scraped) / 1e3, 3),
            "daemon_cpu_ms_per_scrape": report["scrape_idle"]["daemon_cpu_ms"],
            "scrape_median_ms": round(statistics.median(
                r["scrapes"]["median_ms"] for r in scraped), 2),
            "scrape_bytes": report["scrape_idle"]["bytes"],
            "scrape_lines": report["scrape_idle"]["lines"],
            "list_volumes_ms": report["list_volumes"]["median_ms"],
        }
        if listed:
            iops_listed = sum(r["ios"] for r in listed) / sum(r["seconds"] for r in listed)
            report["summary"] |= {
                "iops_with_listings": round(iops_listed, 1),
                "iops_ratio_listings": round(iops_listed / iops_base, 3),
                "max_lat_ms_with_listings": round(
                    max(r["lat_us"]["max"] for r in listed) / 1e3, 3),
                "listing_median_ms": round(statistics.median(
                    r["listings"]["median_ms"] for r in listed), 2)}
        s = report["summary"]
        goals = {
            "iops_ratio >= 0.9": s["iops_ratio"] >= GOAL_RATIO,
            "max latency with scrapes < 10 ms": s["max_lat_ms_with"] < GOAL_MAX_LAT_MS,
            f"list {args.volumes} volumes < 100 ms": s["list_volumes_ms"] < GOAL_LIST_MS,
        }
        if listed:
            goals["max latency with listings < 10 ms"] = \
                s["max_lat_ms_with_listings"] < GOAL_MAX_LAT_MS
        report["goals"] = goals
        print(f"IOPS with/without scrapes: {s['iops_with']:.0f} / {s['iops_without']:.0f} = "
              f"{s['iops_ratio']:.3f} (median of rounds {s['iops_ratio_median_of_rounds']:.3f})"
              f"; max latency {s['max_lat_ms_with']:.2f} ms with, "
              f"{s['max_lat_ms_without']:.2f} ms without; a scrape costs the daemon "
              f"{s['daemon_cpu_ms_per_scrape']:.1f} ms of CPU")
        if listed:
            print(f"with listings (every 0.5 s, {s['listing_median_ms']:.1f} ms each): IOPS "
                  f"x{s['iops_ratio_listings']:.3f}, max latency "
                  f"{s['max_lat_ms_with_listings']:.2f} ms")
        for goal, met in goals.items():
            print(f"  {goal}: {'met' if met else 'NOT MET'}")
    finally:
        if daemon is not None:
            rc = daemon.stop()
            report["daemon_exit"] = rc
            errors = [line for line in daemon.lines if "ERROR" in line or "Traceback" in line]
            if errors:
                print("daemon errors:\n" + "\n".join(errors[:20]), file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
    write_report(args.json, report, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
