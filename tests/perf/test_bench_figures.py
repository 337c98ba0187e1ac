"""The pieces the benchmark runner reports with: percentiles as fio computes them, fio's JSON
read from a real fio run of the job files, and the verdicts of a comparison."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from perf import fio_json
from perf.percentiles import PERCENTILES, key, percentiles_us
from perf.report import compare_rows

ROOT = Path(__file__).resolve().parents[2]


def test_percentiles_are_nearest_rank() -> None:
    ns = [i * 1000 for i in range(1, 1001)]  # 1..1000 us
    pct = percentiles_us(ns)
    assert list(pct) == [key(p) for p in PERCENTILES]
    assert pct["50.000000"] == 500.0 and pct["99.000000"] == 990.0
    assert pct["99.990000"] == 1000.0 and pct["1.000000"] == 10.0
    assert percentiles_us([7000]) == {key(p): 7.0 for p in PERCENTILES}
    assert percentiles_us([]) == {}


def test_job_files_run_and_their_reports_parse(tmp_path: Path) -> None:
    """perf/fio/run.sh on a plain file (the host side of the guest test): the mixed job's
    unified side, the latency job's total-latency percentiles, the verify job's clean pass."""
    dev = tmp_path / "dev.img"
    dev.write_bytes(b"")
    os.truncate(dev, 16 << 20)
    out = tmp_path / "out"
    env = dict(os.environ, RUNTIME="1", SIZE="8M")
    jobs = ["4k-randrw70-qd32", "latency-percentiles", "verify"]
    proc = subprocess.run(["sh", str(ROOT / "perf" / "fio" / "run.sh"), str(dev), str(out),
                           *jobs], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    mixed = fio_json.parse((out / "4k-randrw70-qd32.json").read_text())[0]
    assert set(mixed["sides"]) == {"mixed"} and mixed["iops"] > 0 and mixed["error"] == 0
    assert mixed["lat_pct_us"][key(99.99)] >= mixed["lat_pct_us"][key(50)] > 0
    tail = fio_json.parse((out / "latency-percentiles.json").read_text())[0]
    assert set(tail["sides"]) == {"read", "write"}
    assert set(tail["sides"]["read"]["total_lat_pct_us"]) == {key(p) for p in PERCENTILES}
    verify = fio_json.parse((out / "verify.json").read_text())[0]
    assert verify["error"] == 0
    assert verify["sides"]["write"]["ios"] == verify["sides"]["read"]["ios"] == 128  # 8M/64k


def test_fio_notes_before_the_json_are_skipped() -> None:
    text = 'note: both iodepth >= 1 and synchronous I/O engine are selected\n{"jobs": []}'
    assert fio_json.parse(text) == []


def _report(iops: float, p99: float) -> dict:
    return {"time": 0, "machine": "m", "results": [
        {"target": "pool", "job": "j", "iops": iops, "lat_us": {"p99": p99}}]}


def test_comparison_marks_only_changes_beyond_noise() -> None:
    old = _report(1000, 100)
    assert compare_rows(_report(1100, 95), old)[0]["verdict"] == "same"
    assert compare_rows(_report(1300, 100), old)[0]["verdict"] == "better"
    assert compare_rows(_report(1000, 60), old)[0]["verdict"] == "better"
    assert compare_rows(_report(700, 100), old)[0]["verdict"] == "worse"
    assert compare_rows(_report(1000, 150), old)[0]["verdict"] == "worse"
    assert compare_rows(_report(1300, 150), old)[0]["verdict"] == "mixed"
    row = compare_rows(_report(1300, 100), old)[0]
    assert row["iops_change"] == "+30%" and row["p99_change"] == "+0%"
