"""Three nodes, two replicated volumes (three copies and two): each export is optimized exactly
on its own volume's primary; a three-copy volume survives its primary's death with two copies
still in sync, and the data written before is read back through the new primary."""
from __future__ import annotations

import asyncio

from tests.cluster.etcd_server import EtcdServer
from tests.cluster.nodes import Cluster, MultipathHost, wait_for
from tests.cluster.test_replicated import pattern

NQN1 = "nqn.2026-11.io.sbstore.test:three"
NQN2 = "nqn.2026-11.io.sbstore.test:two"



def _ana_by_node(cluster: Cluster, nqn: str) -> dict[str, str]:
    """The ANA state each live node's (only) listener shows for ``nqn``."""
    out = {}
    for name, node in cluster.nodes.items():
        if node.daemon.alive:
            [listener] = node.get("/v1/listeners")
            out[name] = listener["ana_exports"].get(nqn, "none")
    return out


def _setup(cluster: Cluster, etcd: EtcdServer) -> dict[str, str]:
    for name in ("a", "b", "c"):
        cluster.add(name, etcd_url=etcd.url).daemon.start()
    a = cluster.nodes["a"]
    wait_for("three live nodes",
             lambda: len([n for n in a.status()["nodes"] if n["live"]]) == 3)
    a.cli("volume", "create", "v1", "--size", "16M", "--replicas", "3")
    a.cli("volume", "create", "v2", "--size", "16M", "--replicas", "2")
    a.cli("export", "create", NQN1, "--volume", "v1", "--allow-any-host")
    a.cli("export", "create", NQN2, "--volume", "v2", "--allow-any-host")
    primaries = {v: wait_for(f"{v} healthy", lambda v=v: a.healthy(v))["primary"]
                 for v in ("v1", "v2")}
    for volume, nqn in (("v1", NQN1), ("v2", NQN2)):
        holders = a.volume(volume)["replicas"]
        want = {n: ("optimized" if n == primaries[volume] else "inaccessible")
                for n in holders}
        wait_for(f"ANA of {nqn}", lambda nqn=nqn, want=want: {
            n: s for n, s in _ana_by_node(cluster, nqn).items() if n in want} == want)
    return primaries


async def test_three_copies_and_two_exports(cluster: Cluster, etcd: EtcdServer) -> None:
    primaries = await asyncio.to_thread(_setup, cluster, etcd)
    host = MultipathHost(cluster.nodes, NQN1)
    acked: dict[int, bytes] = {}
    try:
        for name in cluster.nodes:
            await host.connect(name)
        for lba in range(64):
            acked[lba] = pattern(lba, 1)
            await host.write(lba, acked[lba])
        dead = primaries["v1"]
        cluster.nodes[dead].kill()
        survivors = sorted(set(cluster.nodes) - {dead})
        def taken_over() -> dict[str, object] | None:
            # (the new primary's key comes first, the dead copy leaves insync just after)
            v = cluster.nodes[survivors[0]].volume("v1")
            return v if v["primary"] in survivors and sorted(v["in_sync"]) == survivors \
                else None
        v = await asyncio.to_thread(wait_for, "a new primary of v1", taken_over)
        assert v["state"] == "degraded"
        # What only the primary knows (the dead copy's dirty bytes) shows on the other node.
        bystander = next(n for n in survivors if n != v["primary"])
        seen = await asyncio.to_thread(
            wait_for, "dirty bytes on the bystander",
            lambda: (cluster.nodes[bystander].volume("v1")["dirty_bytes"] or {}).get(dead)
            is not None and cluster.nodes[bystander].volume("v1"))
        assert seen["dirty_bytes"][dead] >= 0
        for lba, data in acked.items():
            assert await host.read(lba, 1) == data, f"lba {lba}: acknowledged data lost"
        assert host.current == v["primary"]
    finally:
        await host.close()
