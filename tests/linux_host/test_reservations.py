"""NVMe reservations with the real Linux host (6.1 and 6.12 guests, nvme-cli 2.3), one boot
each.

Two host identities (host NQN and host id) connect to the same export from the guest: the
kernel gives each its own controller (``/dev/nvmeA``, ``/dev/nvmeB``). Reservation commands
and raw reads and writes go through a controller's character device (nvme-cli's
``resv-*`` and ``io-passthru`` with ``-n 1``), so each command is sent by the host whose
controller it names; the multipath block device would pick a path by itself.

1. both hosts register; A takes a write-exclusive reservation; the report (extended data
   structure, as nvme-cli asks with ``--eds``) shows both, A holding;
2. B's write fails with Reservation Conflict and its read works; A writes;
3. the daemon stops and starts again (SIGTERM, the same state directory): both controllers
   reconnect, the report is unchanged and B's write still conflicts;
4. A releases; B writes and reads back what it wrote.
"""
from __future__ import annotations

import shlex
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from . import nvme_host as nh
from .sbstore_process import SbstoreDaemon, free_port, write_config
from .vm import HOST_FROM_GUEST, LinuxHostVM, VMError

pytestmark = pytest.mark.linux_host

SUBNQN = "nqn.2026-11.io.sbstore:e2e-resv"
BLOCK = 4096
KEY_A, KEY_B = 0xA11CE, 0xB0B
WRITE_EXCLUSIVE = 1
RECONNECT_WAIT = 30.0


@dataclass(frozen=True)
class GuestHost:
    hostid: str
    hostnqn: str


HOSTS = {name: GuestHost(hostid, f"nqn.2014-08.org.nvmexpress:uuid:{hostid}")
         for name, hostid in (("A", str(uuid.uuid4())), ("B", str(uuid.uuid4())))}


@pytest.fixture(scope="module")
def daemon(guest: LinuxHostVM,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[SbstoreDaemon]:
    """A fresh daemon (and so fresh reservation state) for each guest kernel."""
    d = tmp_path_factory.mktemp("resv-e2e")
    port = free_port()
    config = write_config(d / "sbstore.toml", state_dir=d / "state", pool_path=d / "resv.pool",
                          pool_size="256M", api_socket=d / "api.sock", nvme_port=port)
    server = SbstoreDaemon(config, d / "api.sock", port, d / "daemon.log")
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        output = server.output()
        server.stop()
        pytest.fail(f"sbstore serve did not come up: {exc}\n{output}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def _connect(vm: LinuxHostVM, port: int, host: GuestHost) -> None:
    # Straight to the kernel: nvme-cli 2.3 refuses a second controller to the same subsystem
    # and address whatever the host NQN (see nvme_host.connect_raw).
    opts = (f"transport=tcp,traddr={HOST_FROM_GUEST},trsvcid={port},nqn={SUBNQN},"
            f"hostnqn={host.hostnqn},hostid={host.hostid},ctrl_loss_tmo=60,reconnect_delay=1")
    r = vm.exec(f"printf %s {shlex.quote(opts)} > /dev/nvme-fabrics", timeout=60)
    assert r.rc == 0, f"connect as {host.hostnqn} failed: {r.output}"


def _controllers_by_host(vm: LinuxHostVM) -> dict[str, str]:
    """Host name (A/B) -> its controller's character device."""
    out: dict[str, str] = {}
    for ctrl in nh.attached(vm, SUBNQN).controllers:
        hostid = vm.exec(f"cat /sys/class/nvme/{ctrl}/hostid", timeout=30).output.strip()
        for name, host in HOSTS.items():
            if hostid == host.hostid:
                out[name] = f"/dev/{ctrl}"
    return out


def _report(vm: LinuxHostVM, dev: str) -> dict[str, object]:
    r = nh.run_json(vm, f"nvme resv-report {dev} -n 1 --eds -o json")
    assert r.rc == 0 and isinstance(r.data, dict), f"resv-report on {dev}: {r.describe()}"
    return r.data


def _ok(vm: LinuxHostVM, cmd: str) -> str:
    r = vm.exec(cmd, timeout=60)
    assert r.rc == 0, f"$ {cmd}\nrc={r.rc}\n{r.output}"
    return r.output


def _write(vm: LinuxHostVM, dev: str, lba: int, src: str) -> tuple[int, str]:
    r = vm.exec(f"nvme io-passthru {dev} -o 0x1 -n 1 -l {BLOCK} -w -i {src} --cdw10={lba}",
                timeout=60)
    return r.rc, r.output


def _read_matches(vm: LinuxHostVM, dev: str, lba: int, src: str) -> bool:
    _ok(vm, f"nvme io-passthru {dev} -o 0x2 -n 1 -l {BLOCK} -r -b --cdw10={lba} > /tmp/rd")
    return vm.exec(f"cmp -s /tmp/rd {src}", timeout=30).rc == 0


def _wait_live(vm: LinuxHostVM, devs: dict[str, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {n: nh.controller_state(vm, d.rsplit("/", 1)[1]) for n, d in devs.items()}
        if all(s == "live" for s in states.values()):
            return
        if time.monotonic() > deadline:
            raise VMError(f"controllers not live again within {timeout}s: {states}")
        time.sleep(0.5)


def test_write_exclusive_between_two_hosts_survives_a_restart(
        guest: LinuxHostVM, daemon: SbstoreDaemon) -> None:
    vm = guest
    daemon.cli("volume", "create", "shared", "--size", "16M", "--block-size",
               str(BLOCK)).ok("volume create")
    daemon.cli("export", "create", SUBNQN, "--volume", "shared", "--host",
               HOSTS["A"].hostnqn, "--host", HOSTS["B"].hostnqn).ok("export create")
    try:
        for name in ("A", "B"):
            _connect(vm, daemon.port, HOSTS[name])
        nh.wait_attached(vm, SUBNQN, timeout=20)
        devs = _controllers_by_host(vm)
        assert sorted(devs) == ["A", "B"], f"one controller per host expected: {devs}"
        a, b = devs["A"], devs["B"]
        _ok(vm, "dd if=/dev/urandom of=/tmp/blk-a bs=4096 count=1 2>/dev/null;"
                "dd if=/dev/urandom of=/tmp/blk-b bs=4096 count=1 2>/dev/null;"
                "dd if=/dev/zero of=/tmp/zero bs=4096 count=1 2>/dev/null")

        # 1. register both, A reserves
        _ok(vm, f"nvme resv-register {a} -n 1 -k {KEY_A}")
        _ok(vm, f"nvme resv-register {b} -n 1 -k {KEY_B}")
        _ok(vm, f"nvme resv-acquire {a} -n 1 -c {KEY_A} -t {WRITE_EXCLUSIVE} -a 0")
        report = _report(vm, b)
        assert report["rtype"] == WRITE_EXCLUSIVE and report["regctl"] == 2, report
        holders = {(r["hostid"], r["rkey"], r["rcsts"]) for r in report["regctlext"]}
        assert holders == {(HOSTS["A"].hostid.replace("-", ""), KEY_A, 1),
                           (HOSTS["B"].hostid.replace("-", ""), KEY_B, 0)}, report

        # 2. B may read, not write; A writes
        rc, out = _write(vm, b, 0, "/tmp/blk-b")
        assert rc != 0 and "Reservation Conflict" in out, f"B's write: rc={rc} {out}"
        assert _read_matches(vm, b, 0, "/tmp/zero"), "B's read of a fresh block"
        rc, out = _write(vm, a, 0, "/tmp/blk-a")
        assert rc == 0, f"A's write: {out}"
        assert _read_matches(vm, b, 0, "/tmp/blk-a"), "B does not read what A wrote"

        # 3. the daemon restarts; the hosts reconnect and find the same reservation
        t0 = time.monotonic()
        assert daemon.stop() == 0, "the daemon did not stop cleanly"
        daemon.start()
        _wait_live(vm, devs, RECONNECT_WAIT)
        print(f"restart and reconnect: {time.monotonic() - t0:.1f}s")
        assert _report(vm, a) == report
        rc, out = _write(vm, b, 1, "/tmp/blk-b")
        assert rc != 0 and "Reservation Conflict" in out, f"B's write after restart: {out}"

        # 4. A releases: B writes
        _ok(vm, f"nvme resv-release {a} -n 1 -c {KEY_A} -t {WRITE_EXCLUSIVE} -a 0")
        assert _report(vm, b)["rtype"] == 0
        rc, out = _write(vm, b, 1, "/tmp/blk-b")
        assert rc == 0, f"B's write after the release: {out}"
        assert _read_matches(vm, a, 1, "/tmp/blk-b")
    finally:
        if nh.attached(vm, SUBNQN).controllers:
            nh.disconnect(vm, SUBNQN)
            nh.wait_detached(vm, SUBNQN)

