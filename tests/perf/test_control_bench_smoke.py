"""perf/control_bench.py keeps working: a daemon process with a few exported volumes, short
runs with and without scrapes, listings; the JSON has every figure. No figure is asserted
(DESIGN: performance lives in perf/, never in timed tests)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_control_bench_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "control.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "perf/control_bench.py", "--volumes", "3",
                           "--seconds", "1.2", "--rounds", "1", "--list-rounds", "2",
                           "--span-mib", "1", "--per-volume", "counters",
                           "--workdir-base", str(tmp_path), "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["volumes"] == 3 and report["per_volume"] == "counters"
    assert report["daemon_exit"] == 0
    assert report["fill_ios"] == 8  # 1 MiB in 128 KiB writes
    for listing in ("list_volumes", "list_exports"):
        assert report[listing]["rounds"] == 2 and report[listing]["median_ms"] > 0
    idle = report["scrape_idle"]
    assert idle["lines"] > 0 and idle["bytes"] > 0 and idle["first_ms"] > 0
    assert idle["daemon_cpu_ms"] >= 0
    runs = report["runs"]
    assert [r["with"] for r in runs] == ["none", "scrapes", "listings"]
    assert [r["scrape"] for r in runs] == [False, True, False]
    for r in runs:
        assert r["ios"] > 0 and r["iops"] > 0 and r["daemon_cpu_s"] >= 0
        assert r["lat_us"]["max"] >= r["lat_us"]["p50"] > 0
    assert runs[1]["scrapes"]["count"] >= 1 and runs[1]["scrapes"]["bytes"] > 0
    # volumes and exports in turn, each listing all 3 (else the run fails)
    assert runs[2]["listings"]["count"] >= 2 and runs[2]["listings"]["bytes"] == 3
    summary = report["summary"]
    for key in ("iops_without", "iops_with", "iops_ratio", "iops_ratio_median_of_rounds",
                "max_lat_ms_without", "max_lat_ms_with", "scrape_median_ms", "scrape_bytes",
                "scrape_lines", "list_volumes_ms", "iops_ratio_listings",
                "max_lat_ms_with_listings", "listing_median_ms"):
        assert summary[key] > 0, key
    assert summary["daemon_cpu_ms_per_scrape"] >= 0
    assert set(report["goals"]) == {"iops_ratio >= 0.9", "max latency with scrapes < 10 ms",
                                    "list 3 volumes < 100 ms",
                                    "max latency with listings < 10 ms"}
    assert "IOPS with/without scrapes" in proc.stdout
    assert not list(tmp_path.glob("sbs-ctl-*"))  # the work directory is removed
