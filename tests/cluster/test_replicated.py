"""Replicated volumes across real daemons on loopback, coordinated through a real etcd: placement,
the shared namespace identity, ANA by role, writes landing on both copies, failover after a
SIGKILL with no acknowledged write lost, the returning node's incremental resync, and the
refusals of a non-primary.

Each test starts its own etcd (the ``etcd`` fixture) and its own daemons (children of the test
process, stopped at the end whatever happens). Leases are 2 s, so a failover takes a few
seconds; the measured time is printed.
"""
from __future__ import annotations

import asyncio
import os
import time

import pytest

from target.host import CommandFailed
from target.nvme.spec import AnaState, PathStatus, StatusType
from tests.cluster.etcd_server import EtcdServer
from tests.cluster.nodes import (
    NQN,
    Cluster,
    MultipathHost,
    ana_state,
    await_for,
    wait_for,
)

BS = 4096
VOLUME_SIZE = 64 << 20


def pattern(lba: int, generation: int) -> bytes:
    head = f"lba {lba} gen {generation} ".encode()
    return (head * (BS // len(head) + 1))[:BS]


def start_two(cluster: Cluster, etcd: EtcdServer) -> tuple[dict[str, object], str, str]:
    for name in ("a", "b"):
        cluster.add(name, etcd_url=etcd.url).daemon.start()
    a = cluster.nodes["a"]
    wait_for("both nodes live", lambda: all(n["live"] for n in a.status()["nodes"])
             and len(a.status()["nodes"]) == 2)
    vol = a.cli("volume", "create", "v1", "--size", str(VOLUME_SIZE), "--replicas", "2")
    assert sorted(vol["replicas"]) == ["a", "b"]
    cluster.nodes["b"].cli("export", "create", NQN, "--volume", "v1", "--allow-any-host")
    v = wait_for("a primary, both in sync", lambda: a.healthy("v1"))
    primary = v["primary"]
    other = "b" if primary == "a" else "a"
    for node in cluster.nodes.values():
        wait_for(f"{NQN} served by {node.name}", lambda node=node: any(
            e["nqn"] == NQN and e["namespaces"] and e["namespaces"][0]["state"] == "serving"
            for e in node.get("/v1/subsystems")))
    return v, primary, other


async def test_replicated_volume_fails_over_and_resyncs(cluster: Cluster,
                                                        etcd: EtcdServer) -> None:
    _, primary, other = await asyncio.to_thread(start_two, cluster, etcd)
    host = MultipathHost(cluster.nodes)
    try:
        p_ctrl = await host.connect(primary)
        o_ctrl = await host.connect(other)
        # One namespace identity on both nodes (the replicas share the volume's uuid).
        assert p_ctrl.namespaces[1].nguid == o_ctrl.namespaces[1].nguid != bytes(16)
        assert p_ctrl.info is not None and o_ctrl.info is not None
        assert p_ctrl.info.serial == o_ctrl.info.serial
        # ... and controller ids from disjoint ranges: Linux refuses a second path whose
        # controller id it already has in the subsystem.
        assert p_ctrl.cntlid != o_ctrl.cntlid
        # ANA: optimized on the primary, inaccessible on the other node.
        await await_for("ANA by role", lambda: _states(p_ctrl, o_ctrl, (
            AnaState.OPTIMIZED, AnaState.INACCESSIBLE)))
        # The non-primary refuses I/O with the path status (a multipath host retries).
        with pytest.raises(CommandFailed) as refused:
            await o_ctrl.write(1, 0, pattern(0, 0))
        assert (refused.value.sct, refused.value.sc) == (StatusType.PATH,
                                                         PathStatus.ANA_INACCESSIBLE)

        # A write loop through the paths; SIGKILL the primary in the middle of it.
        acked: dict[int, bytes] = {}
        written_while_down = 0
        killed_at = first_after_kill = None
        lba = 0
        start = time.monotonic()
        while time.monotonic() - start < 30:
            data = pattern(lba, 1)
            await host.write(lba, data)
            acked[lba] = data
            now = time.monotonic()
            if killed_at is not None:
                written_while_down += BS
                if first_after_kill is None:
                    first_after_kill = now
            lba += 1
            if killed_at is None and lba == 200:
                cluster.nodes[primary].kill()
                killed_at = time.monotonic()
            if first_after_kill is not None and now - first_after_kill > 3.0:
                break
        assert killed_at is not None and first_after_kill is not None
        failover_s = first_after_kill - killed_at
        print(f"\nfailover: first write acknowledged by {other} {failover_s:.2f} s after "
              f"SIGKILL of primary {primary}; {written_while_down} bytes written while it "
              f"was down")
        assert failover_s < 10.0
        assert host.current == other
        st = await asyncio.to_thread(cluster.nodes[other].volume, "v1")
        assert st["primary"] == other and st["state"] == "degraded"
        assert st["in_sync"] == [other]

        # The killed node comes back as a replica: inaccessible, refusing writes, resynced
        # incrementally (only what was written while it was away, plus the takeover margin)
        # while the host goes on writing (overwriting what it wrote first, too).
        stop_writing = asyncio.Event()

        async def keep_writing() -> int:
            nonlocal lba
            n = 0
            while not stop_writing.is_set():
                i = lba if n % 2 else n % 200  # new blocks, and blocks written before
                acked[i] = pattern(i, 3 + n)
                await host.write(i, acked[i])
                lba += n % 2
                n += 1
            return n * BS
        writer = asyncio.create_task(keep_writing())
        await asyncio.to_thread(cluster.nodes[primary].daemon.start)
        back = await host.connect(primary)
        assert await ana_state(back) == AnaState.INACCESSIBLE
        with pytest.raises(CommandFailed) as refused:
            await back.write(1, 1000, pattern(1000, 9))
        assert refused.value.sct == StatusType.PATH
        healthy = await asyncio.to_thread(wait_for, "the returning node back in sync",
                                          lambda: cluster.nodes[other].healthy("v1"))
        stop_writing.set()
        written_while_down += await writer
        resync = healthy["last_resync_bytes"][primary]
        print(f"resync of {primary}: {resync} bytes for {written_while_down} bytes written "
              f"while it was down")
        assert 0 < resync < 2 * written_while_down
        metrics = await asyncio.to_thread(cluster.nodes[other].metrics)
        assert f'sbstore_cluster_resync_bytes_total{{volume="v1"}} {resync}' in metrics
        assert 'sbstore_cluster_is_primary{volume="v1"} 1' in metrics
        assert healthy["primary"] == other
        assert await ana_state(back) == AnaState.INACCESSIBLE

        # Now the other node dies: everything acknowledged is read back through the first.
        for i in range(lba, lba + 20):  # a few more writes that must reach the first node
            acked[i] = pattern(i, 2)
            await host.write(i, acked[i])
        cluster.nodes[other].kill()
        t0 = time.monotonic()
        await host.connect(primary)
        for i, data in acked.items():
            got = await host.read(i, 1)
            assert got == data, f"lba {i}: acknowledged data lost"
        print(f"second failover: all {len(acked)} acknowledged blocks read back through "
              f"{primary} {time.monotonic() - t0:.2f} s after SIGKILL of {other}")
    finally:
        await host.close()


async def _states(p_ctrl: object, o_ctrl: object, want: tuple[AnaState, AnaState]) -> bool:
    return (await ana_state(p_ctrl), await ana_state(o_ctrl)) == want  # type: ignore[arg-type]


if os.environ.get("SBSTORE_CLUSTER_DEBUG"):
    import logging
    logging.basicConfig(level=logging.DEBUG)
