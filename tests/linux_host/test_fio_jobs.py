"""perf/fio's job files, run by the real Linux host against an sbstore namespace.

What a perf engineer does on a hypervisor host (perf/fio/README.md), in the QEMU guest: copy
the job files and run.sh, connect to the demo subsystem, find its block device by NQN, run every
job with ``perf/fio/run.sh`` (RUNTIME 2 s, a 16 MiB region: the guest is TCG-emulated, about a
thousand IOPS), and read each JSON report with perf/fio_json.py. Every job must finish without
an error and do I/O; the mixed job reports one unified side; the latency job has total-latency
percentiles; the verify job writes and checks every block of the region. One guest boot.
"""
from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from perf import fio_json
from perf.percentiles import PERCENTILES, key

from . import nvme_host as nh
from .sbstore_process import DEMO_NQN, SbstoreServer
from .vm import HOST_FROM_GUEST, LinuxHostVM

pytestmark = pytest.mark.linux_host

FIO_DIR = Path(__file__).resolve().parents[2] / "perf" / "fio"
GUEST_DIR = "/tmp/perf-fio"
GUEST_OUT = "/tmp/perf-fio-out"
REGION = 16 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SbstoreServer]:
    """The demo target on its pool (io_uring), for this module alone."""
    srv = SbstoreServer(tmp_path_factory.mktemp("sbstore-fio-jobs"),
                        extra_args=("--io", "io_uring"))
    try:
        srv.start()
    except (RuntimeError, OSError) as exc:
        output = srv.output()
        srv.stop()
        pytest.fail(f"sbstore serve --demo did not come up: {exc}\n{output}", pytrace=False)
    try:
        yield srv
    finally:
        srv.stop()


def push_job_files(vm: LinuxHostVM) -> list[str]:
    """Copy perf/fio's job files and run.sh into the guest; the job names."""
    vm.exec(f"rm -rf {GUEST_DIR} {GUEST_OUT}; mkdir -p {GUEST_DIR}", timeout=30, check=True)
    files = sorted(FIO_DIR.glob("*.fio")) + [FIO_DIR / "run.sh"]
    for f in files:
        text = f.read_text()
        assert "SBSTORE_EOF" not in text
        vm.exec(f"cat > {GUEST_DIR}/{f.name} <<'SBSTORE_EOF'\n{text}SBSTORE_EOF\n",
                timeout=30, check=True)
    return [f.stem for f in files if f.suffix == ".fio"]


def test_every_job_file_runs_against_an_sbstore_namespace(linux_host: LinuxHostVM,
                                                          server: SbstoreServer) -> None:
    vm = linux_host
    jobs = push_job_files(vm)
    assert len(jobs) == 9, jobs
    vm.exec(nh.connect_args(HOST_FROM_GUEST, server.port, DEMO_NQN), timeout=60, check=True)
    try:
        dev = nh.wait_attached(vm, DEMO_NQN, timeout=20).namespaces[0]
        run = vm.exec(f"RUNTIME=2 SIZE={REGION} LOOPS=1 sh {GUEST_DIR}/run.sh "
                      f"{shlex.quote(dev)} {GUEST_OUT}", timeout=180)
        assert run.rc == 0, f"run.sh failed (rc={run.rc}):\n{run.output}"
        reports = {}
        for name in jobs:
            raw = vm.exec(f"cat {GUEST_OUT}/{name}.json", timeout=30, check=True).output
            summaries = fio_json.parse(raw)
            assert len(summaries) == 1, f"{name}: {raw[:2000]}"
            reports[name] = summaries[0]
    finally:
        nh.disconnect(vm, DEMO_NQN)
        nh.wait_detached(vm, DEMO_NQN)

    for name, s in reports.items():
        assert s["name"] == name
        assert s["error"] == 0 and s["ios"] > 0 and s["iops"] > 0, (name, s)
        assert s["lat_us"]["p99"] >= s["lat_us"]["p50"] > 0, (name, s["lat_us"])
        assert set(s["lat_pct_us"]) == {key(p) for p in PERCENTILES}, name
    directions = {name: set(s["sides"]) for name, s in reports.items()}
    assert directions["4k-randread-qd32"] == {"read"}
    assert directions["128k-seqwrite-qd16"] == {"write"}
    assert directions["4k-randrw70-qd32"] == {"mixed"}
    assert directions["latency-percentiles"] == {"read", "write"}
    assert "total_lat_pct_us" in reports["latency-percentiles"]["sides"]["write"]
    verify = reports["verify"]["sides"]
    assert verify["write"]["ios"] == verify["read"]["ios"] == REGION // (64 << 10)
    print("\n".join(fio_json.line(s) for s in reports.values()))
