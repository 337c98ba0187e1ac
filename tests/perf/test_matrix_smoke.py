"""perf/run.py matrix keeps working: a tiny matrix (three jobs, every target, short runs) writes
its JSON, valid small PNGs and a report, and --compare reads an earlier result. No figure is
asserted (performance lives in perf/), only that I/O happened and the outputs hold together."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from perf.percentiles import PERCENTILES

ROOT = Path(__file__).resolve().parents[2]
JOBS = ["4k-randread-qd1", "4k-randrw70-qd32", "128k-seqwrite-qd16"]
TARGETS = ["ram", "pool", "raw"]
PLOTS = ["iops.png", "bandwidth.png", "latency.png", "latency_cdf.png"]


def run(args: list[str]) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "perf/run.py", "matrix", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_tiny_matrix_writes_json_plots_and_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    text = run(["--targets", ",".join(TARGETS), "--jobs", ",".join(JOBS), "--seconds", "0.3",
                "--size", "32M", "--dir", str(tmp_path), "--out", str(out)])
    # progress: one line per run, counted
    assert f"[  9/9] raw   {JOBS[-1]}" in text, text

    report = json.loads((out / "matrix.json").read_text())
    assert report["format"] == "sbstore-bench-matrix/1"
    assert report["targets"] == TARGETS and [j["name"] for j in report["jobs"]] == JOBS
    cells = {(r["target"], r["job"]): r for r in report["results"]}
    assert set(cells) == {(t, j) for t in TARGETS for j in JOBS}
    for (target, job), r in cells.items():
        assert r["ios"] > 0 and r["iops"] > 0 and r["mb_per_s"] > 0, (target, job, r)
        assert r["lat_us"]["p99"] >= r["lat_us"]["p50"] > 0, (target, job, r["lat_us"])
        points = [r["lat_pct_us"][f"{p:.6f}"] for p in PERCENTILES]
        assert points == sorted(points) and points[0] > 0, (target, job, points)
        if target != "raw":
            # (/proc counts CPU in 10 ms ticks: a 0.3 s run on a busy machine may see none)
            assert r["target_cpu_us_per_io"] >= 0
    assert report["setup"]["pool"]["first_write"]["mb_per_s"] > 0
    assert "io_uring" in report["setup"]["pool"]["engine"]
    assert not list(tmp_path.glob("sbs-matrix-*"))  # the pool and raw files are removed

    for name in PLOTS:
        path = out / name
        assert path.stat().st_size < 100_000, f"{name}: {path.stat().st_size} bytes"
        with Image.open(path) as img:
            img.verify()  # a truncated or corrupt PNG raises here
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width >= 400 and img.height >= 200

    md = (out / "report.md").read_text()
    for job in JOBS:
        for target in TARGETS:
            assert f"| {job} | {target} |" in md
    for name in PLOTS:
        assert f"]({name})" in md

    # Redraw from the JSON and compare with it: every cell is in both, nothing changed.
    again = tmp_path / "again"
    text = run(["--from", str(out / "matrix.json"), "--compare", str(out / "matrix.json"),
                "--out", str(again)])
    assert "Compared with the run of" in text
    md = (again / "report.md").read_text()
    assert "## What changed" in md and md.count("| same |") == len(TARGETS) * len(JOBS)
