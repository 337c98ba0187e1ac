"""A replicated volume on a two-node cluster, used by the real Linux host through native NVMe
multipath, while its primary is killed (issue 11). Runs once per guest kernel (6.1, 6.12).

Two daemons (nodes ``a`` and ``b``) share one etcd on loopback; each has its own pool file,
NVMe/TCP listener and replication listener. The volume has two replicas; both nodes export it
under one NQN, the primary's path optimized, the other's inaccessible. In order:

1. the host connects through both nodes: one subsystem, two paths, one block device;
2. fio writes random 4k blocks with crc32c verify through the multipath device, and the
   primary is SIGKILLed in the middle: the survivor is elected, its path turns optimized (an
   ANA change notice) and fio carries on. The failover time (kill to the survivor's path
   writing) is measured and printed; fio must end with no I/O error and every block verified;
3. the killed node restarts: it comes back as a replica (its path inaccessible), and is
   resynchronised; the bytes moved are reported by the cluster and must be under twice what
   was written while it was away;
4. the other node is killed: the restarted one takes over, and the device's contents hash the
   same as before the second kill.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.etcd_server import ETCD, EtcdServer

from . import nvme_host as nh
from .sbstore_process import SbstoreDaemon, free_port, write_config
from .vm import HOST_FROM_GUEST, LinuxHostVM

pytestmark = [pytest.mark.linux_host,
              pytest.mark.skipif(not os.access(ETCD, os.X_OK), reason="etcd-server is not installed "
                                 "(./test.sh installs it)")]

SUBNQN = "nqn.2026-12.io.sbstore:replicated"
VOLUME = "rvol"
FIO_NAME = "failover"
FIO_MIB = 16
FIO_RUNTIME_S = 25
LEASE_TTL_S = 3
CTRL_LOSS_TMO = 600  # the dead node's path keeps trying; I/O waits for the survivor meanwhile
RECONNECT_DELAY = 1
FAILOVER_GOAL_S = 10.0


@dataclass
class Node:
    name: str
    daemon: SbstoreDaemon
    port: int


@dataclass
class Cluster:
    vm: LinuxHostVM
    etcd: EtcdServer
    nodes: dict[str, Node]

    def other(self, name: str) -> Node:
        return next(n for n in self.nodes.values() if n.name != name)

    def status(self, via: Node) -> dict[str, Any]:
        return via.daemon.cli("cluster", "status").ok("cluster status")


def _node(d: Path, name: str, etcd_url: str) -> Node:
    port, peer = free_port(), free_port()
    extra = f"""
[cluster]
etcd = ["{etcd_url}"]
node = "{name}"
peer_address = "127.0.0.1:{peer}"
lease_ttl = {LEASE_TTL_S}
"""
    config = write_config(d / f"{name}.toml", state_dir=d / f"state-{name}",
                          pool_path=d / f"{name}.pool", pool_size="256M",
                          api_socket=d / f"{name}.sock", nvme_port=port,
                          pool_name=f"pool-{name}", extra=extra)
    return Node(name, SbstoreDaemon(config, d / f"{name}.sock", port, d / f"{name}.log"), port)


@pytest.fixture(scope="module")
def cluster(guest: LinuxHostVM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    d = tmp_path_factory.mktemp("cluster")
    etcd = EtcdServer(d / "etcd")
    etcd.start()
    nodes = {name: _node(d, name, etcd.url) for name in ("a", "b")}
    try:
        for n in nodes.values():
            try:
                n.daemon.start()
            except (RuntimeError, OSError) as exc:
                pytest.fail(f"node {n.name} did not come up: {exc}\n{n.daemon.output()}",
                            pytrace=False)
        yield Cluster(guest, etcd, nodes)
    finally:
        nh.detach_quietly(guest, SUBNQN)
        for n in nodes.values():
            n.daemon.stop()
        etcd.stop()


def _volume(status: dict[str, Any]) -> dict[str, Any]:
    for v in status["volumes"]:
        if v["name"] == VOLUME:
            return v
    raise AssertionError(f"{VOLUME} not in the cluster status: {status}")


def _wait(what: str, check: Any, timeout: float, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(interval)


def _primary(c: Cluster, via: Node) -> str | None:
    try:
        return _volume(c.status(via)).get("primary")
    except AssertionError:
        return None


def _connect(c: Cluster, port: int) -> None:
    cmd = nh.connect_args(HOST_FROM_GUEST, port, SUBNQN, ctrl_loss_tmo=CTRL_LOSS_TMO,
                          reconnect_delay=RECONNECT_DELAY)
    r = c.vm.exec(cmd, timeout=60)
    assert r.rc == 0, f"nvme connect to port {port} failed: {r.output}"


def _written(c: Cluster, port: int) -> int:
    p = nh.paths(c.vm, SUBNQN).get(port)
    return p.written_sectors if p else 0


def _kill(n: Node) -> None:
    assert n.daemon.proc is not None
    n.daemon.proc.kill()
    n.daemon.proc.wait(timeout=30)
    n.daemon.stop()  # records the exit status


def test_replicated_volume_survives_its_primary(cluster: Cluster) -> None:
    c = cluster
    t0 = time.monotonic()
    a = c.nodes["a"]
    a.daemon.cli("volume", "create", VOLUME, "--size", "64M", "--replicas", "2").ok(
        "volume create --replicas 2")
    a.daemon.cli("export", "create", SUBNQN, "--volume", VOLUME, "--allow-any-host").ok(
        "export create")
    primary_name = _wait("a primary elected", lambda: _primary(c, a), 30)
    primary, replica = c.nodes[primary_name], c.other(primary_name)
    in_sync = _wait("both replicas in sync", lambda: sorted(
        _volume(c.status(replica)).get("in_sync") or []) == ["a", "b"], 30)
    assert in_sync

    # 1. Two paths: the primary's optimized, the replica's inaccessible.
    _connect(c, primary.port)
    _connect(c, replica.port)
    nh.wait_paths(c.vm, SUBNQN, lambda p: len(p) == 2 and all(
        x.state == "live" for x in p.values())
        and p[primary.port].ana_state == "optimized"
        and p[replica.port].ana_state == "inaccessible",
        "primary optimized, replica inaccessible", 30)
    att = nh.wait_attached(c.vm, SUBNQN)
    assert len(att.controllers) == 2 and len(att.namespaces) == 1, att
    dev = att.namespaces[0]
    print(f"paths up in {time.monotonic() - t0:.1f}s; primary {primary.name}")

    # 2. fio with verify; the primary is killed while it runs.
    nh.fio_start(c.vm, FIO_NAME, dev, rw="randwrite", bs="4k", size=f"{FIO_MIB}M", iodepth=8,
                 verify="crc32c", verify_backlog=256, verify_fatal=1, time_based=1,
                 runtime=FIO_RUNTIME_S)
    _wait("fio writing through the primary", lambda: _written(c, primary.port) > 0, 20)
    time.sleep(3)
    killed_at = time.monotonic()
    _kill(primary)
    before = _written(c, replica.port)
    _wait("I/O through the survivor", lambda: _written(c, replica.port) > before, 60,
          interval=0.1)
    failover_s = time.monotonic() - killed_at
    paths = nh.paths(c.vm, SUBNQN)
    print(f"failover: {failover_s:.2f}s from SIGKILL of {primary.name} to writes through "
          f"{replica.name} (goal {FAILOVER_GOAL_S:.0f}s); paths {paths}")
    assert paths[replica.port].ana_state == "optimized", paths
    assert _primary(c, replica) == replica.name
    assert failover_s < FAILOVER_GOAL_S, f"failover took {failover_s:.1f}s"
    result = nh.fio_wait(c.vm, FIO_NAME, FIO_RUNTIME_S + 120)
    assert result.rc == 0 and result.job is not None and result.job.get("error") == 0, \
        result.describe()
    print(f"fio through the failover: {result.summary()}")

    # 3. The killed node comes back as a replica and is resynchronised.
    away_sectors = _written(c, replica.port) - before
    primary.daemon.start()
    nh.wait_paths(c.vm, SUBNQN, lambda p: p[primary.port].state == "live"
                  and p[primary.port].ana_state == "inaccessible",
                  "the restarted node's path back, inaccessible", 60)
    def resynced() -> dict[str, Any] | None:
        v = _volume(c.status(replica))
        return v if sorted(v.get("in_sync") or []) == ["a", "b"] else None
    vol = _wait("resync done", resynced, 90)
    resync_bytes = int(vol["last_resync_bytes"].get(primary.name, 0))
    away_bytes = away_sectors * 512
    print(f"resync: {resync_bytes} bytes moved for {away_bytes} bytes written while "
          f"{primary.name} was down (ratio {resync_bytes / max(away_bytes, 1):.2f})")
    assert 0 < resync_bytes < 2 * away_bytes, (resync_bytes, away_bytes)
    digest = nh.sha256_device(c.vm, dev, FIO_MIB)

    # 4. The other node is killed: the resynchronised one serves the same data.
    _kill(replica)
    _wait("the restarted node is primary", lambda: _primary(c, primary) == primary.name, 30)
    nh.wait_paths(c.vm, SUBNQN, lambda p: p[primary.port].ana_state == "optimized",
                  "the restarted node's path optimized", 30)
    assert nh.sha256_device(c.vm, dev, FIO_MIB) == digest, "data changed across the failover"
    print(f"done in {time.monotonic() - t0:.1f}s")
