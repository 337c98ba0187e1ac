"""The benchmarks keep working: each runs briefly and writes its JSON. No figure is asserted
(DESIGN: performance lives in perf/, never in timed tests); only that I/O happened without
errors and the report has its fields."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_target_benchmark_runs_and_reports(tmp_path):
    out = tmp_path / "target.json"
    proc = subprocess.run([sys.executable, "perf/run.py", "--seconds", "0.5", "--repeat", "2",
                           "--busy-poll", "300", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    names = {r["name"] for r in report["results"]}
    assert {"4k-randread-qd1", "4k-randread-qd32", "128k-seqread-qd16",
            "4k-randread-qd1-busypoll", "4k-randread-qd32-busypoll"} <= names
    for r in report["results"]:
        assert r["ios"] > 0 and r["iops"] > 0 and r["target_cpu_us_per_io"] > 0
        assert r["lat_us"]["p99"] >= r["lat_us"]["p50"] > 0 and r["lat_us"]["mean"] > 0
        # user and system apart, adding up to the total (each rounded to 0.01)
        assert abs(r["target_user_us_per_io"] + r["target_sys_us_per_io"]
                   - r["target_cpu_us_per_io"]) < 0.05
        assert r["repeat"] == 2 and len(r["runs"]) == 2
        assert r["busy_poll_us"] == (300 if r["name"].endswith("-busypoll") else 0)
        if r["bs"] == 4096:  # the echo floor ran beside every 4k job, in turn with it
            floor = r["floor"]
            assert len(floor["runs"]) == 2
            assert all(f["errors"] == 0 and f["round_trips"] > 0 and f["qd"] == r["qd"]
                       for f in floor["runs"])
            assert 0 < floor["cpu_us_per_round_trip"] and r["target_over_floor"] > 0
        else:
            assert "floor" not in r
    assert {g["name"] for g in report["goals"]} == {"4k-randread-qd1", "4k-randread-qd32"}
    assert all(g["floor_us"] > 0 and isinstance(g["goal_below_floor"], bool)
               for g in report["goals"])
    assert "floor: bare uvloop echo" in proc.stdout
    assert "IOPS" in proc.stdout and "us/IO" in proc.stdout and "user" in proc.stdout


def test_general_engine_with_digests(tmp_path):
    out = tmp_path / "target.json"
    proc = subprocess.run([sys.executable, "perf/run.py", "--seconds", "0.3", "--engine",
                           "general", "--digests", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = {r["name"] for r in json.loads(out.read_text())["results"]}
    assert "4k-randread-qd32-digests-general" in names


def test_polling_load_engine(tmp_path):
    """The spdk_nvme_perf-like engine (busy-polling its socket) completes every job, writes
    included (in-capsule 4k and R2T-driven 128k are exercised by the fast engine's own test)."""
    out = tmp_path / "target.json"
    proc = subprocess.run([sys.executable, "perf/run.py", "--seconds", "0.3", "--repeat", "1",
                           "--busy-poll", "0", "--engine", "poll", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["load_engine"] == "poll"
    for r in report["results"]:
        assert r["engine"] == "poll" and r["ios"] > 0 and r["lat_us"]["p99"] > 0
        if r["bs"] == 4096:  # the floor was driven the same way: polling
            assert all(f["engine"] == "poll" for f in r["floor"]["runs"])
