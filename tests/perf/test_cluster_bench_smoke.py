"""perf/cluster_bench.py keeps working: a brief run (etcd, two cluster daemons, one repeat)
writes its JSON with both volumes' figures at both queue depths, the ratio, each daemon's CPU
per write, and both transports. No figure is asserted (performance lives in perf/), only that
I/O happened everywhere and every process stopped cleanly."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.etcd_server import ETCD

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_bench_runs_and_reports(tmp_path: Path) -> None:
    if not os.access(ETCD, os.X_OK):
        pytest.skip(f"no etcd at {ETCD} (test.sh installs the Debian package etcd-server)")
    out = tmp_path / "cluster.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "perf/cluster_bench.py", "--seconds", "0.3",
                           "--repeat", "1", "--size-mib", "8", "--dir", str(tmp_path),
                           "--json", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["daemon_exit"] == {"a": 0, "b": 0}
    assert report["volumes"]["rep"]["primary"] == "a"
    assert sorted(report["volumes"]["rep"]["replicas"]) == ["a", "b"]
    assert report["volumes"]["single"]["replicas"] == ["a"]
    assert set(report["idle_cpu_ms_per_s"]) == {"a", "b"}
    for job in ("4k-randwrite-qd1", "4k-randwrite-qd32"):
        row = report["host"][job]
        for vol in ("rep", "single"):
            assert row[vol]["runs"] == 1
            assert row[vol]["iops"]["median"] > 0
            for key in ("mean_us", "p99_us", "cpu_us_per_io_a", "cpu_us_per_io_b",
                        "run_us_per_io_a", "run_us_per_io_b"):
                assert key in row[vol]
        assert row["rep"]["run_us_per_io_b"]["median"] > 0  # the replica did work
        assert set(row["rep/single"]) >= {"iops", "mean_us", "p99_us"}
        assert len(report["runs"][job]["rep"]) == 1
    for kind in ("stream", "nvme_tcp"):
        for qd in ("qd1", "qd32"):
            r = report["transport"][kind][qd]
            assert r["ios"] > 0 and r["mean_us"] > 0
            assert "sender_cpu_us_per_io" in r and "cpu_us_per_io_b" in r
    assert set(report["transport"]["stream_vs_nvme_tcp"]) == {"qd1", "qd32"}
    assert "rep/single" in proc.stdout and "stream/nvme_tcp" in proc.stdout
    assert not list(tmp_path.glob("sbs-cluster-*")), "the work directory was left behind"
