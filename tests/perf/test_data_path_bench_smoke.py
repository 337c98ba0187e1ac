"""perf/pool_bench.py and perf/tenant_bench.py keep working: each runs briefly on a small volume
and writes its JSON with every job and scenario in it. No figure is asserted (performance lives
in perf/), only that I/O happened, fio ran beside it, and the report has its fields."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], tmp_path: Path) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_pool_bench_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "pool.json"
    text = run(["perf/pool_bench.py", "--size", "64M", "--seconds", "0.5", "--rounds", "1",
                "--dir", str(tmp_path), "--json", str(out)], tmp_path)
    report = json.loads(out.read_text())
    assert "io_uring" in report["engine"] and report["daemon_exit"] == 0
    jobs = {r["job"] for r in report["rounds"]}
    assert jobs == set(report["summary"]) == {"4k-randread-qd32", "4k-randwrite-qd32",
                                              "128k-seqread-qd16", "128k-seqwrite-qd16"}
    for r in report["rounds"]:
        assert r["fio"]["iops"] > 0 and r["sbstore"]["ios"] > 0 and r["ratio"] > 0
        assert r["sbstore"]["daemon_cpu_us_per_io"] > 0
    full = report["full_read"]
    assert full["bytes"] == 64 << 20 and full["rss_after"] > 0
    assert "NOT MET" in text or "met" in text


def test_pool_bench_with_busy_polling_restarts_on_the_same_pool(tmp_path: Path) -> None:
    """--busy-poll: the same volume served by the daemon restarted with busy_poll_us, in turn
    with the default (so the pool, its state and the volume outlive each restart)."""
    out = tmp_path / "pool.json"
    text = run(["perf/pool_bench.py", "--size", "32M", "--seconds", "0.3", "--rounds", "2",
                "--busy-poll", "300", "--jobs", "4k-randwrite-qd32,4k-randread-qd1",
                "--no-full-read",
                "--dir", str(tmp_path), "--json", str(out)], tmp_path)
    report = json.loads(out.read_text())
    assert report["busy_poll_us"] == 300 and report["daemon_exit"] == 0
    assert [(r["round"], r["job"]) for r in report["rounds"]] == [
        (0, "4k-randwrite-qd32"), (0, "4k-randread-qd1"),
        (1, "4k-randread-qd1"), (1, "4k-randwrite-qd32")]  # reversed: each sees both orders
    assert report["summary"]["4k-randread-qd1"]["goal"] is None
    assert report["summary"]["4k-randread-qd1"]["met"] is None
    for r in report["rounds"]:
        assert r["sbstore"]["ios"] > 0
        polled = r["busy_poll"]
        assert polled["sbstore"]["ios"] > 0
        assert polled["ratio"] > 0
    assert report["summary"]["4k-randwrite-qd32"]["busy_poll"]["cpu_us_per_io_median"] > 0
    for job in ("4k-randwrite-qd32", "4k-randread-qd1"):  # each went first once per mode
        firsts = [r["busy_poll_order"][0] for r in report["rounds"] if r["job"] == job]
        assert sorted(firsts) == [0, 300]
    assert "busy-poll 300" in text


def test_tenant_bench_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "tenants.json"
    run(["perf/tenant_bench.py", "--seconds", "0.5", "--rounds", "1", "--size", "32M",
         "--dir", str(tmp_path), "--json", str(out)], tmp_path)
    report = json.loads(out.read_text())
    for key in ("ram_read", "pool_read", "pool_write"):
        run0 = report[key]["runs"][0]
        assert run0["light"]["ios"] > 0 and run0["heavy"]["ios"] > 0 and run0["ratio"] > 0
    cpu = report["ram_noisy"]["runs"][0]
    assert cpu["alone"]["ios"] > 0 and cpu["with_busy"]["ios"] > 0 and cpu["busy"]["ios"] > 0
    assert cpu["p99_ratio"] > 0
    noisy = report["noisy"]["runs"][0]
    assert noisy["alone"]["ios"] > 0 and noisy["with_noisy"]["ios"] > 0
    assert noisy["noisy"]["ios"] > 0 and noisy["p99_ratio"] > 0
    device = noisy["device"]  # the yardstick: fio's two jobs on the disk itself
    assert device["alone"]["ios"] > 0 and device["with_noisy"]["ios"] > 0
    assert device["noisy"]["ios"] > 0 and device["p99_ratio"] > 0
