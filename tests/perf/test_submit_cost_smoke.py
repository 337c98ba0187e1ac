"""perf/submit_cost.py keeps working: a few batches of real O_DIRECT I/O through a ring, every
completion checked (the script fails on a short or failed I/O), the fit written as JSON."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_submit_cost_measures_each_batch_size(tmp_path: Path) -> None:
    out = tmp_path / "submit.json"
    proc = subprocess.run([sys.executable, "perf/submit_cost.py", "--dir", str(tmp_path),
                           "--size-mib", "16", "--batches", "1,4,8", "--repeat", "3",
                           "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    for op in ("read", "write"):
        rows = report["ops"][op]["batches"]
        assert [r["n"] for r in rows] == [1, 4, 8]
        assert all(r["all_done_us"] >= r["enter_us"] > 0 for r in rows)
        assert isinstance(report["ops"][op]["fixed_us"], float)
    assert list(tmp_path.iterdir()) == [out]  # its file removed
