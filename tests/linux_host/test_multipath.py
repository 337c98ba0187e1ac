"""Native NVMe multipath of the real Linux host (``nvme_core.multipath=Y``) over two sbstore
listeners, driven through the CLI while a fio verify job writes through the multipath block
device. Runs once per guest kernel: Debian 12's 6.1 and Debian 13's 6.12 (each boots its own
guest, the first powered off before the second boots; both use nvme-cli 2.3).

One daemon from a config file (listener 1 from the config, listener 2 added with the CLI, both
on 127.0.0.1, reached from the guest as 10.0.2.2:PORT), one export, one guest. In order:

1. the host connects the export through both listeners: one subsystem, two controllers (paths),
   one block device, both paths ``optimized`` (sysfs ``ana_state``, from the ANA log);
   ``nvme list-subsys`` shows the one subsystem with its two live paths;
2. a fio job (random writes with crc32c verify, round-robin I/O policy so both paths carry it)
   runs in the background for the rest of the test;
3. ``listener set 1 --ana-state inaccessible``: the host learns it from the ANA change event
   (``ana_state`` of path 1 becomes ``inaccessible``), and from then on only path 2 writes;
   ``--ana-state default`` brings path 1 back into use;
4. ``listener remove 2``: the path is lost (its controller reconnecting), I/O goes on through
   path 1; ``listener add`` on the same port: the host reconnects and path 2 is back, optimized;
5. fio ends with no error and every block verified.

The test must be able to fail: the per-path write counters come from the guest's own sysfs,
and fio reports any I/O error or verify mismatch (the multipath layer hides a path's failure
only if the target's statuses let it retry the I/O elsewhere).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from . import nvme_host as nh
from .sbstore_process import SbstoreDaemon, free_port, write_config
from .vm import HOST_FROM_GUEST, LinuxHostVM

pytestmark = pytest.mark.linux_host

SUBNQN = "nqn.2026-12.io.sbstore:multipath"
FIO_RUNTIME_S = 40  # covers steps 3 and 4 under TCG
FIO_NAME = "mpath"
WINDOW_S = 2.0  # how long a path's write counter is watched to say it moves or not
CTRL_LOSS_TMO = 60
RECONNECT_DELAY = 1


@dataclass
class Setup:
    vm: LinuxHostVM
    daemon: SbstoreDaemon
    port1: int
    port2: int


@pytest.fixture(scope="module")
def setup(guest: LinuxHostVM,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    linux_host = guest
    d = tmp_path_factory.mktemp("multipath")
    port1, port2 = free_port(), free_port()
    config = write_config(d / "sbstore.toml", state_dir=d / "state", pool_path=d / "mp.pool",
                          pool_size="256M", api_socket=d / "api.sock", nvme_port=port1,
                          pool_name="mp")
    daemon = SbstoreDaemon(config, d / "api.sock", port1, d / "daemon.log")
    try:
        daemon.start()
    except (RuntimeError, OSError) as exc:
        output = daemon.output()
        daemon.stop()
        pytest.fail(f"sbstore serve --config did not come up: {exc}\n{output}", pytrace=False)
    try:
        yield Setup(linux_host, daemon, port1, port2)
    finally:
        nh.detach_quietly(linux_host, SUBNQN)
        daemon.stop()


def _connect(s: Setup, port: int) -> None:
    cmd = nh.connect_args(HOST_FROM_GUEST, port, SUBNQN, ctrl_loss_tmo=CTRL_LOSS_TMO,
                          reconnect_delay=RECONNECT_DELAY)
    r = s.vm.exec(cmd, timeout=60)
    assert r.rc == 0, f"nvme connect to port {port} failed: {r.output}"


def _writes(s: Setup) -> dict[int, int]:
    return {port: p.written_sectors for port, p in nh.paths(s.vm, SUBNQN).items()}


def _moving(s: Setup) -> dict[int, bool]:
    """Which paths wrote something during WINDOW_S."""
    before = _writes(s)
    time.sleep(WINDOW_S)
    after = _writes(s)
    return {port: after.get(port, 0) > before.get(port, 0) for port in (s.port1, s.port2)}


def test_multipath_over_two_listeners(setup: Setup) -> None:
    s = setup
    t0 = time.monotonic()
    cli = s.daemon.cli
    cli("volume", "create", "vol", "--size", "64M").ok("volume create")
    cli("export", "create", SUBNQN, "--volume", "vol", "--allow-any-host").ok("export create")
    added = cli("listener", "add", "--address", "127.0.0.1", "--port",
                str(s.port2)).ok("listener add")
    lid2 = added["id"]

    # 1. Two paths, one block device, both optimized.
    _connect(s, s.port1)
    _connect(s, s.port2)
    both = nh.wait_paths(s.vm, SUBNQN, lambda p: len(p) == 2 and all(
        x.state == "live" and x.ana_state == "optimized" for x in p.values()),
        "two live optimized paths")
    att = nh.wait_attached(s.vm, SUBNQN)
    assert len(att.controllers) == 2 and len(att.namespaces) == 1, att
    listed = nh.list_subsys(s.vm, SUBNQN)
    assert len(listed.subsystems) == 1, listed.raw.describe()
    assert sorted(p.trsvcid for p in listed.subsystems[0]) == sorted((s.port1, s.port2)), \
        listed.raw.describe()
    assert all(p.state == "live" for p in listed.subsystems[0]), listed.raw.describe()
    dev = att.namespaces[0]
    # The default policy (numa) keeps to one path; round-robin lets the test see both move.
    r = s.vm.exec("for f in /sys/class/nvme-subsystem/nvme-subsys*/iopolicy; do "
                  "echo round-robin > $f; cat $f; done", timeout=30)
    assert "round-robin" in r.output, f"cannot set the I/O policy: {r.output}"
    print(f"paths up in {time.monotonic() - t0:.1f}s: {both}")

    # 2. I/O through the multipath device, in the background.
    nh.fio_start(s.vm, FIO_NAME, dev, rw="randwrite", bs="4k", size="16M", iodepth=8,
                 verify="crc32c", verify_backlog=256, time_based=1, runtime=FIO_RUNTIME_S)
    moving = _moving(s)
    assert all(moving.values()), f"round-robin I/O should use both paths: {moving}"

    # 3. Path 1 inaccessible: the host follows the ANA change event; I/O stays on path 2.
    cli("listener", "set", "1", "--ana-state", "inaccessible").ok("listener set inaccessible")
    nh.wait_paths(s.vm, SUBNQN, lambda p: p[s.port1].ana_state == "inaccessible"
                  and p[s.port2].ana_state == "optimized", "path 1 inaccessible", 15)
    moving = _moving(s)
    assert moving == {s.port1: False, s.port2: True}, f"I/O on an inaccessible path: {moving}"
    cli("listener", "set", "1", "--ana-state", "default").ok("listener set default")
    nh.wait_paths(s.vm, SUBNQN, lambda p: p[s.port1].ana_state == "optimized",
                  "path 1 optimized again", 15)
    assert _moving(s)[s.port1], "path 1 back in use"
    print(f"ANA inaccessible and back by {time.monotonic() - t0:.1f}s")

    # 4. Listener 2 removed: a lost path; I/O goes on through path 1. Re-added: it is back.
    cli("listener", "remove", str(lid2)).ok("listener remove")
    nh.wait_paths(s.vm, SUBNQN, lambda p: p[s.port2].state != "live", "path 2 lost", 15)
    moving = _moving(s)
    assert moving[s.port1] and not moving[s.port2], f"after losing path 2: {moving}"
    cli("listener", "add", "--address", "127.0.0.1", "--port", str(s.port2)).ok("listener add")
    nh.wait_paths(s.vm, SUBNQN, lambda p: p[s.port2].state == "live"
                  and p[s.port2].ana_state == "optimized", "path 2 back", 20)
    assert _moving(s)[s.port2], "path 2 back in use"
    print(f"listener removed and back by {time.monotonic() - t0:.1f}s")

    # 5. No I/O error, every block verified.
    result = nh.fio_wait(s.vm, FIO_NAME, FIO_RUNTIME_S + 60)
    assert result.rc == 0 and result.job is not None and result.job.get("error") == 0, \
        result.describe()
    assert result.io_bytes("write") > 0, result.describe()
    print(f"{result.summary()}; done in {time.monotonic() - t0:.1f}s")
