"""Conformance of the sbstore target with the real Linux NVMe/TCP host (kernel 6.1 nvme-tcp,
nvme-cli, fio) running in a QEMU guest.

The target runs on the host as ``python3 -m sbstore serve --demo`` (fixture ``sbstore_demo``);
the guest reaches it at 10.0.2.2:PORT. One guest and one server serve the whole module. Each
test is one step of what an operator does, so a failure names the step; each test brings the
connection to the state it needs (connected without digests, with digests, or not at all), so
it also runs alone (``-k``). A failed test's report carries the guest console, the guest dmesg
and the server's output.

The test must be able to fail: every read-back is checked against data written first (the
discarded range holds random data before the discard), and fio verifies with crc32c.
"""
from __future__ import annotations

import shlex
from collections.abc import Iterator
from typing import Any

import pytest

from . import nvme_host as nh
from .sbstore_process import DEMO_NQN, DEMO_SIZE, SbstoreServer
from .vm import HOST_FROM_GUEST, LinuxHostVM, VMError

pytestmark = pytest.mark.linux_host

MiB = 1 << 20


class DemoHost:
    """The guest's connection to the demo subsystem, shared by the module's tests."""

    def __init__(self, vm: LinuxHostVM, server: SbstoreServer) -> None:
        self.vm = vm
        self.server = server
        self.digests: bool | None = None  # None: not connected

    def connect(self, *, digests: bool) -> tuple[Any, nh.Attached | None, str]:
        """Run ``nvme connect``; return (ExecResult, what got attached or None, error text)."""
        cmd = nh.connect_args(HOST_FROM_GUEST, self.server.port, DEMO_NQN,
                              hdr_digest=digests, data_digest=digests)
        r = self.vm.exec(cmd, timeout=60)
        if r.rc != 0:
            return r, None, f"`{cmd}` failed with rc={r.rc}:\n{r.output}"
        try:
            attached = nh.wait_attached(self.vm, DEMO_NQN, timeout=20)
        except VMError as exc:
            return r, None, f"`{cmd}` returned 0 but: {exc}"
        self.digests = digests
        return r, attached, ""

    def disconnect(self) -> None:
        if nh.attached(self.vm, DEMO_NQN).controllers:
            nh.disconnect(self.vm, DEMO_NQN)
            nh.wait_detached(self.vm, DEMO_NQN)
        self.digests = None

    def ensure(self, *, digests: bool = False) -> nh.Attached:
        """Connected in the wanted digest mode (reconnecting if need be), or the test fails."""
        current = nh.attached(self.vm, DEMO_NQN)
        if self.digests == digests and current.controllers and current.namespaces:
            return current
        self.disconnect()
        _, attached, error = self.connect(digests=digests)
        if attached is None:
            pytest.fail(f"precondition: cannot connect to the demo subsystem: {error}")
        return attached


@pytest.fixture(scope="module")
def demo(linux_host: LinuxHostVM, sbstore_demo: SbstoreServer) -> Iterator[DemoHost]:
    host = DemoHost(linux_host, sbstore_demo)
    yield host
    if linux_host.alive:
        try:
            host.disconnect()
        except VMError:
            pass


def _namespace(demo: DemoHost, digests: bool = False) -> str:
    return demo.ensure(digests=digests).namespaces[0]


# --- discovery and connection -------------------------------------------------------------


def test_discover_lists_the_demo_subsystem(demo: DemoHost) -> None:
    d = nh.discover(demo.vm, HOST_FROM_GUEST, demo.server.port)
    assert d.rc == 0, f"nvme discover failed: {d.describe()}"
    assert d.data is not None, f"nvme discover -o json printed no JSON: {d.describe()}"
    records = nh.discovery_records(d)
    demo_records = [r for r in records if r.get("subnqn") == DEMO_NQN]
    assert demo_records, (f"the discovery log page does not list {DEMO_NQN}; records: "
                          f"{[r.get('subnqn') for r in records]}\n{d.describe()}")
    assert demo_records[0].get("trtype") == "tcp", f"demo record is not TCP: {demo_records[0]}"
    assert demo_records[0].get("trsvcid", "").strip() == str(demo.server.port), (
        f"demo record's port is not the one the host used: {demo_records[0]}")


def test_connect_without_digests(demo: DemoHost) -> None:
    demo.disconnect()
    _, attached, error = demo.connect(digests=False)
    assert attached is not None, error
    assert len(attached.controllers) == 1, f"expected one controller: {attached}"
    assert len(attached.namespaces) >= 1, f"no namespace block device: {attached}"
    ctrl = attached.controllers[0]
    transport = demo.vm.exec(f"cat /sys/class/nvme/{ctrl}/transport /sys/class/nvme/{ctrl}/state",
                             timeout=30).output.split()
    assert transport == ["tcp", "live"], f"controller {ctrl} transport/state: {transport}"


def test_nvme_list_shows_the_namespace(demo: DemoHost) -> None:
    dev = _namespace(demo)
    listing = nh.run_json(demo.vm, "nvme list -o json")
    assert listing.rc == 0, f"nvme list failed: {listing.describe()}"
    devices = (listing.data or {}).get("Devices", [])
    entry = next((d for d in devices if d.get("DevicePath") == dev), None)
    assert entry is not None, f"nvme list does not show {dev}: {listing.describe()}"
    assert str(entry.get("ModelNumber", "")).strip(), f"empty model number: {entry}"
    assert str(entry.get("SerialNumber", "")).strip(), f"empty serial number: {entry}"
    assert entry.get("PhysicalSize") == DEMO_SIZE, f"size is not 1 GiB: {entry}"
    assert entry.get("SectorSize") in (512, 4096), f"odd sector size: {entry}"


def test_identify_controller(demo: DemoHost) -> None:
    ctrl = demo.ensure().controllers[0]
    ident = nh.run_json(demo.vm, f"nvme id-ctrl /dev/{ctrl} -o json")
    assert ident.rc == 0 and isinstance(ident.data, dict), f"id-ctrl failed: {ident.describe()}"
    c = ident.data
    assert str(c.get("mn", "")).strip(), f"model number (MN) is empty: {c.get('mn')!r}"
    assert str(c.get("sn", "")).strip(), f"serial number (SN) is empty: {c.get('sn')!r}"
    assert str(c.get("fr", "")).strip(), f"firmware revision (FR) is empty: {c.get('fr')!r}"
    assert c.get("subnqn") == DEMO_NQN, f"SUBNQN is {c.get('subnqn')!r}, not {DEMO_NQN}"
    assert int(c.get("nn", 0)) >= 1, f"NN (number of namespaces) is {c.get('nn')}"
    mdts = int(c.get("mdts", -1))
    assert 0 <= mdts <= 12, f"MDTS {mdts} is not sensible (0 = no limit, 8 = 1 MiB at 4 KiB)"
    assert int(c.get("ioccsz", 0)) >= 4, f"IOCCSZ {c.get('ioccsz')} < 4 (a 64-byte SQE)"
    assert int(c.get("iorcsz", 0)) >= 1, f"IORCSZ {c.get('iorcsz')} < 1 (a 16-byte CQE)"


def test_identify_namespace(demo: DemoHost) -> None:
    dev = _namespace(demo)
    ident = nh.run_json(demo.vm, f"nvme id-ns {dev} -o json")
    assert ident.rc == 0 and isinstance(ident.data, dict), f"id-ns failed: {ident.describe()}"
    ns = ident.data
    lbafs = ns.get("lbafs") or []
    fmt = int(ns.get("flbas", 0)) & 0xF
    assert fmt < len(lbafs), f"FLBAS {ns.get('flbas')} names no LBA format in {lbafs}"
    block = 1 << int(lbafs[fmt]["ds"])
    assert block in (512, 4096), f"LBA data size {block} is not 512 or 4096"
    nsze = int(ns.get("nsze", 0))
    assert nsze * block == DEMO_SIZE, f"NSZE {nsze} x {block} B is not 1 GiB"
    assert 0 < int(ns.get("ncap", 0)) <= nsze, f"NCAP {ns.get('ncap')} not in (0, NSZE]"
    sizes = demo.vm.exec(f"blockdev --getsize64 {dev}; blockdev --getss {dev}", timeout=30)
    assert sizes.output.split() == [str(DEMO_SIZE), str(block)], (
        f"the kernel sees {dev} as {sizes.output.split()} (bytes, sector size)")


# --- I/O ----------------------------------------------------------------------------------


def _fio_ok(job: nh.FioResult, **expected_bytes: int | None) -> None:
    """fio exited 0 with no job error, and moved the expected bytes (None: some) each way."""
    print(job.summary())
    assert job.rc == 0, f"fio failed: {job.describe()}"
    assert job.job is not None, f"fio wrote no JSON report: {job.describe()}"
    assert job.job.get("error") == 0, f"fio job error {job.job.get('error')}: {job.describe()}"
    for direction, expected in expected_bytes.items():
        done = job.io_bytes(direction)
        if expected is None:
            assert done > 0, f"fio did no {direction}s: {job.describe()}"
        else:
            assert done == expected, (
                f"fio {direction} {done} bytes, expected {expected}: {job.describe()}")


def test_fio_random_write_4k_verify(demo: DemoHost) -> None:
    dev = _namespace(demo)
    job = nh.fio(demo.vm, "randwrite-4k", dev, rw="randwrite", bs="4k", iodepth=16,
                 offset="0", size="16m", verify="crc32c", verify_fatal=1, runtime=120)
    _fio_ok(job, write=16 * MiB, read=16 * MiB)  # the verify pass reads everything back


def test_fio_sequential_write_128k_verify(demo: DemoHost) -> None:
    dev = _namespace(demo)
    job = nh.fio(demo.vm, "seqwrite-128k", dev, rw="write", bs="128k", iodepth=8,
                 offset="64m", size="64m", verify="crc32c", verify_fatal=1, runtime=120)
    _fio_ok(job, write=64 * MiB, read=64 * MiB)


def test_fio_random_read_4k(demo: DemoHost) -> None:
    dev = _namespace(demo)
    job = nh.fio(demo.vm, "randread-4k", dev, rw="randread", bs="4k", iodepth=16,
                 offset="0", size="128m", runtime=5, time_based=1)
    _fio_ok(job, read=None)


def test_flush(demo: DemoHost) -> None:
    dev = _namespace(demo)
    r = demo.vm.exec(f"nvme flush {dev}", timeout=60)
    assert r.rc == 0 and "success" in r.output.lower(), f"nvme flush failed: {r.output}"


def test_discard_reads_back_zeroes(demo: DemoHost) -> None:
    vm = demo.vm
    dev = _namespace(demo)
    q = shlex.quote(dev)
    off, length = 512 * MiB, 8 * MiB
    limits = vm.exec(f"cat /sys/block/{dev.rsplit('/', 1)[1]}/queue/discard_max_bytes",
                     timeout=30).output.strip()
    assert limits.isdigit() and int(limits) > 0, (
        f"the kernel will not discard on {dev} (discard_max_bytes={limits!r}): "
        "Dataset Management not advertised in ONCS?")
    # Random data over the range and 1 MiB either side, so zeroes can only come from discard.
    r = vm.exec(f"dd if=/dev/urandom of={q} bs=1M seek={(off - MiB) // MiB} "
                f"count={(length + 2 * MiB) // MiB} oflag=direct", timeout=120)
    assert r.rc == 0, f"writing random data failed: {r.output}"
    before = nh.nonzero_bytes(vm, dev, off, length)
    assert before > length // 2, f"random data did not land: {before} non-zero bytes"

    r = vm.exec(f"blkdiscard -o {off} -l {length} {q}", timeout=120)
    assert r.rc == 0, f"blkdiscard -o {off} -l {length} failed (rc={r.rc}): {r.output}"

    left = nh.nonzero_bytes(vm, dev, off, length)
    dlfeat = nh.run_json(vm, f"nvme id-ns {q} -o json").data or {}
    assert left == 0, (f"{left} non-zero bytes read back from the discarded range "
                       f"(id-ns DLFEAT={dlfeat.get('dlfeat')})")
    assert nh.nonzero_bytes(vm, dev, off - MiB, MiB) > MiB // 2, "discard hit the MiB before"
    assert nh.nonzero_bytes(vm, dev, off + length, MiB) > MiB // 2, "discard hit the MiB after"


def test_disconnect(demo: DemoHost) -> None:
    demo.ensure(digests=False)
    r = nh.disconnect(demo.vm, DEMO_NQN)
    demo.digests = None
    assert r.rc == 0, f"nvme disconnect failed (rc={r.rc}): {r.output}"
    assert "disconnected 1 controller" in r.output, f"unexpected: {r.output}"
    left = nh.wait_detached(demo.vm, DEMO_NQN)
    assert left == nh.Attached((), ()), f"still attached after disconnect: {left}"


# --- again with header and data digests (CRC32C on every PDU header and data) --------------


def test_connect_with_header_and_data_digests(demo: DemoHost) -> None:
    demo.disconnect()
    _, attached, error = demo.connect(digests=True)
    assert attached is not None, error
    assert attached.namespaces, f"no namespace block device: {attached}"


def test_fio_verify_with_digests(demo: DemoHost) -> None:
    dev = _namespace(demo, digests=True)
    job = nh.fio(demo.vm, "digests-4k", dev, rw="randwrite", bs="4k", iodepth=16,
                 offset="256m", size="8m", verify="crc32c", verify_fatal=1, runtime=120)
    _fio_ok(job, write=8 * MiB, read=8 * MiB)
    job = nh.fio(demo.vm, "digests-128k", dev, rw="write", bs="128k", iodepth=4,
                 offset="320m", size="16m", verify="crc32c", verify_fatal=1, runtime=120)
    _fio_ok(job, write=16 * MiB, read=16 * MiB)
    log = demo.vm.dmesg()
    assert "digest error" not in log, f"the host logged digest errors:\n{log[-4000:]}"


def test_disconnect_with_digests(demo: DemoHost) -> None:
    demo.ensure(digests=True)
    r = nh.disconnect(demo.vm, DEMO_NQN)
    demo.digests = None
    assert r.rc == 0 and "disconnected 1 controller" in r.output, (
        f"nvme disconnect failed (rc={r.rc}): {r.output}")
    left = nh.wait_detached(demo.vm, DEMO_NQN)
    assert left == nh.Attached((), ()), f"still attached after disconnect: {left}"
