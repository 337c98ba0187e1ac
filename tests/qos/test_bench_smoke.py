"""perf/qos_bench.py keeps working: a short run of every scenario writes its JSON. No figure is
asserted (performance lives in perf/, not in timed tests), only that every scenario ran its
loads without errors and reported its figures."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_qos_bench_runs_every_scenario_and_writes_json(tmp_path):
    out = tmp_path / "qos.json"
    proc = subprocess.run([sys.executable, "perf/qos_bench.py", "--seconds", "0.3", "--rounds",
                           "2", "--json", str(out)],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    for scenario in ("limits", "fair", "noisy", "overhead"):
        figures = report[scenario]["figures"]
        assert figures and all(f["value"] > 0 and f["yardstick_value"] > 0 for f in figures)
    loads = [ld for run in report["noisy"]["runs"] for ld in run["loads"].values()]
    assert all(ld["ios"] > 0 and ld["lat_us"]["p99"] >= ld["lat_us"]["p50"] > 0 for ld in loads)
    names = [f["figure"] for f in report["noisy"]["figures"]]
    assert any("A alone" in n for n in names) and any("under policy" in n for n in names)
    assert "ratio" in proc.stdout and "results written" in proc.stdout
