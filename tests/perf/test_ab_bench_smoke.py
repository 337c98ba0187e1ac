"""perf/ab_bench.py keeps working: two RAM daemons (here both from this tree), one brief round,
and its JSON holds both trees' runs with IOPS and CPU per I/O. No figure is asserted
(performance lives in perf/), only that I/O happened on both and the report is complete."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ab_bench_runs_both_trees_in_turn(tmp_path: Path) -> None:
    out = tmp_path / "ab.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    other = tmp_path / "same-tree"
    other.symlink_to(ROOT)  # a second name for this tree: two daemons, two entries
    proc = subprocess.run([sys.executable, "perf/ab_bench.py", "--trees", f"{ROOT},{other}",
                           "--target", "ram", "--rounds", "1", "--seconds", "0.3",
                           "--json", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    job = report["jobs"]["randread:4096:32"]
    assert set(job) == {str(ROOT), str(other)}
    for tree in job.values():
        assert len(tree["runs"]) == 1
        assert tree["median"]["iops"] > 0 and tree["median"]["cpu_us_per_io"] > 0
