"""A pool volume on disk against the disk itself: what the data path costs over the device.

    python3 perf/pool_bench.py [--size 4G] [--seconds 5] [--rounds 3] [--io io_uring]
                               [--load-engine fast|poll|native] [--dir /var/tmp]
                               [--json perf/results/pool.json]

What it does:
1. In a fresh directory under ``--dir`` (a disk file system, not tmpfs), fills a yardstick file
   of ``--size`` with fio, and starts ``sbstore serve --config`` (pinned to the first CPU) with
   a pool file of twice that size served by the ``--io`` engine; creates a volume of ``--size``
   and exports it. The volume is filled with sequential 128 KiB writes (every cluster
   allocated: that pass is the first-write figure).
2. Each round runs every job twice, interleaved: fio (io_uring, O_DIRECT) on the yardstick file,
   pinned to the daemon's CPU, then the same job through the volume, driven by the load
   generator (perf/loadgen.py, fast engine) pinned to the other CPU. The page cache is dropped
   before every read job ("cold"). Jobs: 4k random read QD32, 4k random write QD32 (allocated
   clusters), 128k sequential read QD16, 128k sequential write QD16; named in ``--jobs``, also
   4k random read and write at QD1 (latency; no goal).
3. Reads the whole volume once (128k, QD16) and reports what that did to the daemon's RSS and
   to the system's page cache.
4. With ``--busy-poll US``: each sbstore job also runs against the same daemon restarted with
   ``[target] busy_poll_us = US`` (the same pool file and volume), in turn with the default
   (whichever is running goes first, and the jobs run in reverse order every other round, so
   each job sees both orders). Its ratios and CPU per I/O are reported beside the default's;
   the goals are judged on the default.
Prints each figure as a ratio against fio's in the same round (the median of the rounds) and
writes JSON. Goals (the data-path issue): 4k read >= 0.6x fio, 4k write >= 0.8x, 128k read and
write >= 0.9x; reading the volume leaves RSS and page cache where they were.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from perf.harness import (  # noqa: E402
    cpu_seconds,
    cpus,
    drop_caches,
    export_filled_volume,
    file_cached_bytes,
    fill_file,
    fio,
    median,
    page_cache_bytes,
    pool_config,
    pool_engine_line,
    rss_bytes,
    run_load,
    start_daemon,
    write_report,
)
from sbstore.config import parse_size  # noqa: E402

NQN = "nqn.2026-12.io.sbstore.bench:pool"
JOBS = [  # name, rw (fio's), block size, queue depth, goal (ratio to fio)
    ("4k-randread-qd32", "randread", 4096, 32, 0.6),
    ("4k-randwrite-qd32", "randwrite", 4096, 32, 0.8),
    ("128k-seqread-qd16", "read", 128 << 10, 16, 0.9),
    ("128k-seqwrite-qd16", "write", 128 << 10, 16, 0.9),
]
# Run only when named in --jobs: latency at queue depth 1, reported against fio, not judged.
EXTRA_JOBS = [
    ("4k-randread-qd1", "randread", 4096, 1, None),
    ("4k-randwrite-qd1", "randwrite", 4096, 1, None),
]
LOADGEN_RW = {"randread": "randread", "randwrite": "randwrite", "read": "read",
              "write": "write"}


def sbstore_job(daemon: Any, load_cpu: str | None, rw: str, bs: int, qd: int, seconds: float,
                size: int, engine: str = "fast") -> dict[str, Any]:
    cpu0 = cpu_seconds(daemon.pid)
    r = run_load(daemon.nvme_port, NQN, load_cpu, rw=LOADGEN_RW[rw], bs=bs, qd=qd,
                 seconds=seconds, span_bytes=size, engine=engine)
    cpu = cpu_seconds(daemon.pid) - cpu0
    r["daemon_cpu_us_per_io"] = round(cpu / max(r["ios"], 1) * 1e6, 2)
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="4G", help="volume and yardstick file size")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each job")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--io", default="io_uring", choices=["auto", "io_uring", "threads",
                                                        "buffered"])
    p.add_argument("--dir", default="/var/tmp", help="where the files go (a disk, not tmpfs)")
    p.add_argument("--jobs", default=",".join(j[0] for j in JOBS),
                   help="comma-separated job names (default: the four with goals; also "
                        + ", ".join(j[0] for j in EXTRA_JOBS) + ")")
    p.add_argument("--load-engine", choices=["fast", "poll", "native"], default="fast",
                   help="the load generator's engine (perf/loadgen.py --engine): poll busy-polls "
                   "its socket as spdk_nvme_perf does, so the target never pays for waking it; "
                   "native does so from C (perf/native_load.py), at about spdk_nvme_perf's "
                   "cost per I/O")
    p.add_argument("--busy-poll", type=int, default=0, metavar="US",
                   help="also run every sbstore job against the daemon restarted with "
                        "[target] busy_poll_us = US, same pool (0: do not)")
    p.add_argument("--no-full-read", action="store_true",
                   help="skip reading the whole volume (the RSS / page-cache check)")
    p.add_argument("--json", default=os.path.join(ROOT, "perf", "results", "pool.json"))
    args = p.parse_args(argv)
    size = parse_size(args.size)
    wanted = args.jobs.split(",")
    unknown = set(wanted) - {j[0] for j in JOBS + EXTRA_JOBS}
    if unknown:
        p.error(f"unknown jobs: {', '.join(sorted(unknown))}")
    jobs = [j for j in JOBS + EXTRA_JOBS if j[0] in wanted]
    daemon_cpu, load_cpu = cpus()
    work = tempfile.mkdtemp(prefix="sbs-pool-", dir=args.dir)
    report: dict[str, Any] = {
        "machine": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "time": time.time(), "size": size, "seconds": args.seconds, "rounds": args.rounds,
        "io": args.io, "load_engine": args.load_engine, "busy_poll_us": args.busy_poll,
        "pinning": {"daemon_and_fio": daemon_cpu, "load": load_cpu},
        "dir": args.dir}
    daemon = None
    running = 0  # the busy_poll_us of the daemon now running
    configs = {0: pool_config(work, size, args.io, filename="default.toml")}
    if args.busy_poll > 0:
        configs[args.busy_poll] = pool_config(
            work, size, args.io, extra=f"[target]\nbusy_poll_us = {args.busy_poll}\n",
            filename="busy-poll.toml")

    def daemon_with(busy_poll_us: int) -> Any:
        """The daemon, restarted with the other config if it runs the wrong one."""
        nonlocal daemon, running
        if daemon is None or running != busy_poll_us:
            if daemon is not None:
                exit_code = daemon.stop()
                if exit_code != 0:
                    raise RuntimeError(f"the daemon exited with {exit_code} at a restart")
                daemon = None
            daemon = start_daemon(configs[busy_poll_us], daemon_cpu)
            running = busy_poll_us
        return daemon
    try:
        yard = os.path.join(work, "yardstick.img")
        t0 = time.monotonic()
        fill_file(yard, size, daemon_cpu)
        print(f"yardstick file: {size >> 20} MiB filled in {time.monotonic() - t0:.1f} s",
              flush=True)
        daemon = daemon_with(0)
        report["engine"] = pool_engine_line(daemon)
        print(report["engine"], flush=True)
        report["first_write"] = export_filled_volume(daemon, NQN, size, load_cpu)
        print(f"volume filled (first writes, allocating): "
              f"{report['first_write']['mb_per_s']:.0f} MB/s", flush=True)

        rounds: list[dict[str, Any]] = []
        for rnd in range(args.rounds):
            # With two daemons the jobs go in reverse order every other round, so that each
            # job finds each daemon running first in turn (see below) at one restart per job.
            for name, rw, bs, qd, _goal in (jobs[::-1] if rnd % 2 and args.busy_poll else jobs):
                reading = rw.endswith("read")
                if reading:
                    drop_caches()
                f = fio(yard, daemon_cpu, rw=rw, bs=bs, qd=qd, seconds=args.seconds, size=size)
                # The running daemon goes first (the second finds the disk as the first left
                # it): one restart per job.
                modes = sorted(configs, key=lambda mode: mode != running)
                entry: dict[str, Any] = {"round": rnd, "job": name, "fio": f,
                                         "busy_poll_order": modes}
                for mode in modes:
                    if reading:
                        drop_caches()
                    s = sbstore_job(daemon_with(mode), load_cpu, rw, bs, qd, args.seconds, size,
                                    args.load_engine)
                    ratio = s["iops"] / max(f["iops"], 1e-9)
                    if mode:
                        entry["busy_poll"] = {"sbstore": s, "ratio": round(ratio, 3)}
                    else:
                        entry |= {"sbstore": s, "ratio": round(ratio, 3)}
                    label = f"busy-poll {mode}" if mode else "sbstore"
                    print(f"round {rnd} {name:20s} fio {f['iops']:9.0f} IOPS "
                          f"{f['mb_per_s']:7.0f} MB/s | {label} {s['iops']:9.0f} IOPS "
                          f"{s['mb_per_s']:7.0f} MB/s p99 {s['lat_us']['p99']:.0f} us max "
                          f"{s['lat_us']['max'] / 1e3:.1f} ms ({s['daemon_cpu_us_per_io']:.1f} "
                          f"us CPU/IO) | ratio {ratio:.2f}", flush=True)
                rounds.append(entry)
        report["rounds"] = rounds
        summary = {}
        for name, _rw, _bs, _qd, goal in jobs:
            ratios = [r["ratio"] for r in rounds if r["job"] == name]
            summary[name] = {"ratio_median": round(median(ratios), 3),
                             "ratio_range": [min(ratios), max(ratios)], "goal": goal,
                             "met": None if goal is None else median(ratios) >= goal}
            polled = [r["busy_poll"] for r in rounds if r["job"] == name and "busy_poll" in r]
            if polled:
                summary[name]["busy_poll"] = {
                    "ratio_median": round(median([b["ratio"] for b in polled]), 3),
                    "ratio_range": [min(b["ratio"] for b in polled),
                                    max(b["ratio"] for b in polled)],
                    "cpu_us_per_io_median": round(median(
                        [b["sbstore"]["daemon_cpu_us_per_io"] for b in polled]), 2)}
        report["summary"] = summary

        if not args.no_full_read:
            daemon = daemon_with(0)
            drop_caches()
            time.sleep(1)
            pool_file = os.path.join(work, "bench.pool")
            rss0, cache0 = rss_bytes(daemon.pid), page_cache_bytes()
            file0 = file_cached_bytes(pool_file)
            full = run_load(daemon.nvme_port, NQN, load_cpu, rw="read", bs=128 << 10, qd=16,
                            seconds=3600, span_bytes=size, max_ios=size // (128 << 10))
            rss1, cache1 = rss_bytes(daemon.pid), page_cache_bytes()
            file1 = file_cached_bytes(pool_file)
            report["full_read"] = {
                "bytes": full["ios"] * (128 << 10), "mb_per_s": full["mb_per_s"],
                "rss_before": rss0, "rss_after": rss1, "rss_delta": rss1 - rss0,
                "page_cache_before": cache0, "page_cache_after": cache1,
                "page_cache_delta": cache1 - cache0,
                "pool_file_cached_before": file0, "pool_file_cached_after": file1,
                # "Where they were": the daemon's RSS within 2% of what was read, and the pool
                # file's pages in the page cache (fincore: exact) too; the system-wide figure
                # moves with everything else on the machine and is reported, not judged, when
                # fincore answers.
                "met": abs(rss1 - rss0) < size // 50 and (
                    file1 - file0 < size // 50 if file0 is not None and file1 is not None
                    else abs(cache1 - cache0) < size // 50)}
            fr = report["full_read"]
            print(f"read {fr['bytes'] >> 20} MiB through the volume at {fr['mb_per_s']:.0f} "
                  f"MB/s: daemon RSS {rss0 >> 20} -> {rss1 >> 20} MiB, page cache "
                  f"{cache0 >> 20} -> {cache1 >> 20} MiB, the pool file's cached pages "
                  f"{file0} -> {file1} bytes", flush=True)

        for name, s in summary.items():
            polled_text = ""
            if "busy_poll" in s:
                b = s["busy_poll"]
                polled_text = (f" (busy-poll {args.busy_poll}: {b['ratio_median']:.2f} "
                               f"[{b['ratio_range'][0]:.2f}-{b['ratio_range'][1]:.2f}], "
                               f"{b['cpu_us_per_io_median']:.1f} us CPU/IO)")
            figure = (f"median {s['ratio_median']:.2f} "
                      f"[{s['ratio_range'][0]:.2f}-{s['ratio_range'][1]:.2f}]")
            if s["goal"] is None:
                print(f"{name} against fio (no goal): {figure}{polled_text}")
            else:
                print(f"goal: {name} >= {s['goal']}x fio: {figure}: "
                      f"{'met' if s['met'] else 'NOT MET'}{polled_text}")
        if "full_read" in report:
            print(f"goal: reading the volume leaves RSS and page cache where they were: "
                  f"{'met' if report['full_read']['met'] else 'NOT MET'}")
    finally:
        if daemon is not None:
            report["daemon_exit"] = daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
