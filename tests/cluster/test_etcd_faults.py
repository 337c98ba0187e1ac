"""etcd faults during host I/O: etcd restarted (nothing acknowledged is lost, the nodes carry
on), and one node cut off from etcd (through a TCP proxy the test cuts): it stops acknowledging
replicated writes within its lease, the other node takes over, and the cut-off node comes back
as a replica when the link is mended."""
from __future__ import annotations

import asyncio
import time

import pytest

from tests.cluster.etcd_server import EtcdServer
from tests.cluster.nodes import (
    LEASE_TTL,
    NQN,
    Cluster,
    EtcdProxy,
    MultipathHost,
    wait_for,
)
from tests.cluster.test_replicated import BS, pattern


def _setup(cluster: Cluster, urls: dict[str, str]) -> str:
    for name, url in urls.items():
        cluster.add(name, etcd_url=url).daemon.start()
    a = cluster.nodes["a"]
    wait_for("both nodes live", lambda: len([n for n in a.status()["nodes"] if n["live"]]) == 2)
    a.cli("volume", "create", "v1", "--size", "64M", "--replicas", "2")
    a.cli("export", "create", NQN, "--volume", "v1", "--allow-any-host")
    v = wait_for("healthy", lambda: a.healthy("v1"))
    for node in cluster.nodes.values():
        wait_for(f"export on {node.name}", lambda node=node: [
            e for e in node.get("/v1/subsystems") if e["nqn"] == NQN and e["namespaces"]])
    return str(v["primary"])


async def _verify(host: MultipathHost, acked: dict[int, bytes]) -> None:
    for lba, data in acked.items():
        assert await host.read(lba, 1) == data, f"lba {lba}: acknowledged data lost"


async def test_etcd_restarted_during_io(cluster: Cluster, etcd: EtcdServer) -> None:
    await asyncio.to_thread(_setup, cluster, {"a": etcd.url, "b": etcd.url})
    host = MultipathHost(cluster.nodes)
    acked: dict[int, bytes] = {}
    try:
        for name in cluster.nodes:
            await host.connect(name)
        restarted = None
        lba = 0
        start = time.monotonic()
        while time.monotonic() - start < 25:
            acked[lba] = pattern(lba, 1)
            await host.write(lba, acked[lba])
            lba += 1
            if lba == 100:
                await asyncio.to_thread(etcd.restart)
                restarted = time.monotonic()
            if restarted is not None and time.monotonic() - restarted > 4:
                break
        assert restarted is not None
        await _verify(host, acked)
        v = await asyncio.to_thread(wait_for, "healthy after the restart",
                                    lambda: cluster.nodes["a"].healthy("v1"))
        print(f"\netcd restarted during I/O: {len(acked)} acknowledged writes read back; "
              f"primary {v['primary']}, epoch {v['epoch']}")
    finally:
        await host.close()


async def test_node_cut_off_from_etcd_stops_acknowledging(cluster: Cluster,
                                                           etcd: EtcdServer) -> None:
    proxies = {name: EtcdProxy(("127.0.0.1", etcd.client_port)) for name in ("a", "b")}
    for p in proxies.values():
        await p.start()
    host = MultipathHost(cluster.nodes)
    try:
        primary = await asyncio.to_thread(_setup, cluster,
                                          {n: p.url for n, p in proxies.items()})
        other = "b" if primary == "a" else "a"
        for name in cluster.nodes:
            await host.connect(name)
        acked: dict[int, bytes] = {}
        by_node: dict[str, list[float]] = {primary: [], other: []}
        cut_at = None
        lba = 0
        start = time.monotonic()
        while time.monotonic() - start < 30:
            acked[lba] = pattern(lba, 1)
            await host.write(lba, acked[lba])
            assert host.current is not None
            by_node[host.current].append(time.monotonic())
            lba += 1
            if lba == 100:
                proxies[primary].cut()
                cut_at = time.monotonic()
            if by_node[other] and time.monotonic() - by_node[other][0] > 2:
                break
        assert cut_at is not None and by_node[other], "the other node never took over"
        last_ack = max(by_node[primary])
        print(f"\ncut off {primary}: its last acknowledgement {last_ack - cut_at:.2f} s after "
              f"the cut (lease {LEASE_TTL} s); {other} acknowledged from "
              f"{by_node[other][0] - cut_at:.2f} s")
        assert last_ack - cut_at < LEASE_TTL
        assert by_node[other][0] > last_ack
        await _verify(host, acked)
        # Mended: the cut-off node registers again, comes back in sync as a replica.
        proxies[primary].mend()
        v = await asyncio.to_thread(wait_for, "the cut-off node back in sync",
                                    lambda: cluster.nodes[other].healthy("v1"), 30.0)
        assert v["primary"] == other
        assert len(acked) * BS > 0
    finally:
        await host.close()
        for p in proxies.values():
            await p.close()


async def test_old_primary_restarted_without_etcd_takes_no_write(cluster: Cluster,
                                                                 etcd: EtcdServer) -> None:
    """Worst case for fencing: the primary dies and comes back while it cannot reach etcd, so
    it cannot learn that it is no longer the primary. Its restored export must still show
    inaccessible and refuse I/O (the local registry says it is a cluster volume)."""
    from target.host import CommandFailed, Controller
    from target.nvme.spec import AnaState, StatusType
    from tests.cluster.nodes import ana_state

    proxies = {name: EtcdProxy(("127.0.0.1", etcd.client_port)) for name in ("a", "b")}
    for p in proxies.values():
        await p.start()
    try:
        primary = await asyncio.to_thread(_setup, cluster,
                                          {n: p.url for n, p in proxies.items()})
        other = "b" if primary == "a" else "a"
        node = cluster.nodes[primary]
        node.kill()
        proxies[primary].cut()
        await asyncio.to_thread(wait_for, f"{other} takes over",
                                lambda: cluster.nodes[other].volume("v1")["primary"] == other)
        await asyncio.to_thread(node.daemon.start)
        ctrl = await Controller.connect("127.0.0.1", node.nvme_port, NQN, timeout_s=3.0,
                                        kato_ms=0)
        try:
            assert await ana_state(ctrl) == AnaState.INACCESSIBLE
            for _ in range(3):
                with pytest.raises(CommandFailed) as refused:
                    await ctrl.write(1, 0, pattern(0, 7))
                assert refused.value.sct == StatusType.PATH
                with pytest.raises(CommandFailed):
                    await ctrl.read(1, 0, 1)
                await asyncio.sleep(LEASE_TTL / 2)
        finally:
            await ctrl.close(shutdown=False)
        # Mended: it registers, learns the new primary and catches up as a replica.
        proxies[primary].mend()
        v = await asyncio.to_thread(wait_for, "back in sync",
                                    lambda: cluster.nodes[other].healthy("v1"), 30.0)
        assert v["primary"] == other
    finally:
        for p in proxies.values():
            await p.close()


def test_a_node_starts_while_etcd_is_down(cluster: Cluster, etcd: EtcdServer) -> None:
    """The daemon serves (API, local volumes) without etcd; cluster status says why it cannot
    answer; the node registers once etcd is back."""
    etcd.stop()
    a = cluster.add("a", etcd_url=etcd.url)
    a.daemon.start()
    r = a.daemon.cli("cluster", "status")
    assert r.rc == 1 and "etcd" in r.stderr, r.describe()
    assert a.cli("volume", "create", "local", "--size", "16M")["name"] == "local"
    etcd.start()
    wait_for("registered", lambda: [(n["name"], n["live"]) for n in a.status()["nodes"]]
             == [("a", True)], 20.0)
