"""perf/replication_bench.py keeps working: a brief run at both queue depths writes its JSON with
the single-copy yardstick, the mirrored figures (with and without busy-polling) and the
bare loopback floor. No figure is
asserted (performance lives in perf/), only that I/O happened on every side."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_replication_bench_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "replication.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "perf/replication_bench.py", "--seconds", "0.2",
                           "--size-mib", "8", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["replica_exit"] == 0
    (result,) = report["rounds"]
    assert result["loopback_rtt"]["ios"] > 0
    for qd in ("qd1", "qd32"):
        row = result[qd]
        assert row["single"]["iops"] > 0
        for mode in ("mirrored", "mirrored_busy_poll"):
            assert row[mode]["iops"] > 0 and row[mode]["p99_us"] > 0
            assert row[mode]["replica_cpu_us_per_io"] > 0
            assert row[f"{mode}/single"]["iops_ratio"] > 0
    assert "mirrored/single" in proc.stdout
