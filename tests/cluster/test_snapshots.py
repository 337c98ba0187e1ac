"""Snapshots of a replicated volume are taken on every in-sync copy at the same point of the
host's writes, even while the host writes: the primary holds the writes above the mirror while
the copies take theirs. Compared by cloning each node's snapshot locally and reading it."""
from __future__ import annotations

import asyncio
import time

from target.host import Controller
from tests.cluster.etcd_server import EtcdServer
from tests.cluster.nodes import Cluster, MultipathHost, two_nodes_with_v1, wait_for
from tests.cluster.test_replicated import pattern

BLOCKS = 256



async def _read_clone(cluster: Cluster, node: str, snap: str) -> bytes:
    """Clone ``snap`` on ``node`` (``--local``: a plain local volume of that node's copy),
    export it there, read it."""
    n = cluster.nodes[node]
    nqn = f"nqn.2026-11.io.sbstore.test:clone-{node}"
    await asyncio.to_thread(n.cli, "clone", "create", snap, f"clone-{node}", "--local")
    await asyncio.to_thread(n.cli, "export", "create", nqn, "--volume", f"clone-{node}",
                            "--allow-any-host")
    ctrl = await Controller.connect("127.0.0.1", n.nvme_port, nqn, timeout_s=3.0, kato_ms=0)
    try:
        return bytes(await ctrl.read(1, 0, BLOCKS))
    finally:
        await ctrl.close(shutdown=False)
        await asyncio.to_thread(n.cli, "export", "delete", nqn, "--force")
        await asyncio.to_thread(n.cli, "volume", "delete", f"clone-{node}")


async def test_snapshot_of_a_replicated_volume_under_writes(cluster: Cluster,
                                                            etcd: EtcdServer) -> None:
    await asyncio.to_thread(two_nodes_with_v1, cluster, etcd.url)
    host = MultipathHost(cluster.nodes)
    try:
        for name in cluster.nodes:
            await host.connect(name)
        for lba in range(BLOCKS):
            await host.write(lba, pattern(lba, 0))
        stop = asyncio.Event()
        gaps: list[float] = []

        async def keep_writing() -> None:
            n, last = 0, time.monotonic()
            while not stop.is_set():
                await host.write(n % BLOCKS, pattern(n % BLOCKS, 1 + n // BLOCKS))
                now = time.monotonic()
                gaps.append(now - last)
                last, n = now, n + 1
        writer = asyncio.create_task(keep_writing())
        await asyncio.sleep(0.3)
        snap = await asyncio.to_thread(cluster.nodes["b"].cli, "snapshot", "create", "v1",
                                       "s1")
        await asyncio.sleep(0.3)
        stop.set()
        await writer
        assert snap["state"] == "done" and sorted(snap["nodes"]) == ["a", "b"], snap
        print(f"\nsnapshot s1 under writes: the longest pause between two writes "
              f"{max(gaps):.3f} s ({len(gaps)} writes)")
        copies = {node: await _read_clone(cluster, node, "s1") for node in ("a", "b")}
        assert copies["a"] == copies["b"], "the copies' snapshots differ"
        assert copies["a"] != b"".join(pattern(i, 0) for i in range(BLOCKS)), \
            "the snapshot should hold some of the writes made under way"
        st = await asyncio.to_thread(cluster.nodes["a"].volume, "v1")
        assert [(s["name"], s["state"]) for s in st["snapshots"]] == [("s1", "done")]
        # Deleted cluster-wide: every node drops its copy.
        await asyncio.to_thread(cluster.nodes["a"].cli, "snapshot", "delete", "s1")
        for name, node in cluster.nodes.items():
            await asyncio.to_thread(wait_for, f"s1 gone from {name}", lambda node=node: not [
                v for v in node.get("/v1/snapshots") if v["name"] == "s1"])
    finally:
        await host.close()
