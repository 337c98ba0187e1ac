"""A replicated volume moves between nodes online: a third node gets a full copy while the host
writes, the old replica is removed (its node deletes its copy), and the data survives the
primary's death through the new node."""
from __future__ import annotations

import asyncio
import time

from tests.cluster.etcd_server import EtcdServer
from tests.cluster.nodes import NQN, Cluster, MultipathHost, wait_for
from tests.cluster.test_replicated import BS, pattern


def _setup(cluster: Cluster, etcd: EtcdServer) -> tuple[str, str]:
    for name in ("a", "b"):
        cluster.add(name, etcd_url=etcd.url).daemon.start()
    a = cluster.nodes["a"]
    wait_for("two live nodes", lambda: len([n for n in a.status()["nodes"] if n["live"]]) == 2)
    a.cli("volume", "create", "v1", "--size", "32M", "--replicas", "2")
    a.cli("export", "create", NQN, "--volume", "v1", "--allow-any-host")
    primary = wait_for("healthy", lambda: a.healthy("v1"))["primary"]
    cluster.add("c", etcd_url=etcd.url).daemon.start()  # the node the replica moves to
    return primary, "b" if primary == "a" else "a"


async def test_move_a_replica_online(cluster: Cluster, etcd: EtcdServer) -> None:
    primary, old = await asyncio.to_thread(_setup, cluster, etcd)
    host = MultipathHost(cluster.nodes)
    acked: dict[int, bytes] = {}
    try:
        for name in (primary, old):
            await host.connect(name)
        for lba in range(0, 2000, 2):  # 4 MiB of data, every other block
            acked[lba] = pattern(lba, 1)
            await host.write(lba, acked[lba])
        stop = asyncio.Event()

        async def keep_writing() -> None:
            n = 0
            while not stop.is_set():  # rewrites old blocks and fills the holes meanwhile
                lba = (n * 7) % 4000
                acked[lba] = pattern(lba, 2 + n)
                await host.write(lba, acked[lba])
                n += 1
        writer = asyncio.create_task(keep_writing())
        t0 = time.monotonic()
        moved = await asyncio.to_thread(cluster.nodes["a"].cli, "cluster", "move", "v1", old,
                                        "c", "--wait", "60")
        stop.set()
        await writer
        assert sorted(moved["replicas"]) == sorted([primary, "c"])
        c = cluster.nodes["c"]
        v = await asyncio.to_thread(wait_for, "c in sync, old replica gone",
                                    lambda: c.healthy("v1"))
        print(f"\nmoved v1 from {old} to c in {time.monotonic() - t0:.2f} s; full copy: "
              f"{v['last_resync_bytes'].get('c')} bytes")
        assert sorted(v["in_sync"]) == sorted([primary, "c"]) and v["primary"] == primary
        assert v["last_resync_bytes"]["c"] >= 1000 * BS  # the data, not the holes
        old_node = cluster.nodes[old]
        await asyncio.to_thread(wait_for, f"{old}'s copy deleted", lambda: not [
            x for x in old_node.get("/v1/volumes") if x["name"] == "v1"])
        await asyncio.to_thread(wait_for, f"{old}'s export deleted", lambda: not [
            e for e in old_node.get("/v1/subsystems") if e["nqn"] == NQN])
        # Grown online: every copy grows (the primary's last); writes past the old end land
        # on both.
        await asyncio.to_thread(cluster.nodes["c"].cli, "volume", "resize", "v1", "--size",
                                "48M")
        for name in (primary, "c"):
            n = cluster.nodes[name]
            await asyncio.to_thread(wait_for, f"{name}'s copy grown", lambda n=n: [
                x for x in n.get("/v1/volumes") if x["name"] == "v1"
                and x["size_bytes"] == 48 << 20])
        for lba in range((32 << 20) // BS, (32 << 20) // BS + 16):
            acked[lba] = pattern(lba, 99)
            await host.write(lba, acked[lba])
        # The primary dies: the data is all there through c.
        await host.close()
        cluster.nodes[primary].kill()
        await host.connect("c")
        for lba, data in acked.items():
            assert await host.read(lba, 1) == data, f"lba {lba}: acknowledged data lost"
    finally:
        await host.close()
