"""Clones of replicated volumes' snapshots are replicated volumes: every node that holds the
snapshot makes its copy as a local clone of its copy of it, and the clone is served, written
and failed over as any replicated volume. The admin's refusals, against a real etcd alone;
the whole path against two real daemons."""
from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from sbstore.cluster.admin import ClusterAdmin
from sbstore.cluster.etcd import EtcdClient
from sbstore.cluster.keys import InSync, Keys, NodeInfo, SnapSpec, VolumeSpec
from sbstore.control.service import ControlError, ErrorCode
from sbstore.store.pool import Pool
from tests.cluster.etcd_server import EtcdServer
from tests.cluster.nodes import (NQN, Cluster, MultipathHost, two_nodes_with_v1,
                                 wait_for, wait_served)
from tests.cluster.test_replicated import pattern

BLOCKS = 64
CLONE_NQN = "nqn.2026-11.io.sbstore.test:clone"


async def test_pool_clone_takes_the_uuid_given(tmp_path) -> None:
    pool = Pool.create(tmp_path / "pool", 64 << 20)
    try:
        vol = await pool.create_volume("v", 1 << 20, 4096)
        snap = await pool.snapshot(vol, "s")
        want = uuid.uuid4()
        clone = await pool.clone(snap, "c", uuid=want)
        assert clone.uuid == want and clone.parent is snap
        with pytest.raises(Exception, match="already holds a volume with uuid"):
            await pool.clone(snap, "c2", uuid=want)
    finally:
        await pool.aclose()


def test_volume_record_keeps_what_it_is_a_clone_of() -> None:
    spec = VolumeSpec("c", str(uuid.uuid4()), 1 << 20, 4096, ("a", "b"), "t", ("v", "s"))
    data = json.loads(spec.to_json())
    assert data["clone_of"] == {"volume": "v", "snapshot": "s"}
    assert VolumeSpec.from_json(data, "k") == spec
    plain = VolumeSpec("v", str(uuid.uuid4()), 1 << 20, 4096, ("a",))
    assert "clone_of" not in json.loads(plain.to_json())
    assert VolumeSpec.from_json(json.loads(plain.to_json()), "k").clone_of is None


async def test_clone_admin_refusals_and_record(etcd_client: EtcdClient) -> None:
    keys = Keys("/t")
    admin = ClusterAdmin(etcd_client, keys)
    src = VolumeSpec("v", str(uuid.uuid4()), 8 << 20, 4096, ("a", "b"), "default")
    await etcd_client.put(keys.volume("v"), src.to_json())
    await etcd_client.put(keys.insync("v"), InSync(("a", "b")).to_json())
    await etcd_client.put(keys.snap("v", "s"), SnapSpec("v", "s", "done", 7, ("a", "b"))
                          .to_json())
    await etcd_client.put(keys.snap("v", "r"), SnapSpec("v", "r", "requested").to_json())
    for node in ("a", "b"):
        await etcd_client.put(keys.snapped("v", "s", node), "{}")

    async def refused(snapshot: str, name: str) -> ControlError:
        with pytest.raises(ControlError) as exc:
            await admin.create_clone(snapshot, name)
        return exc.value

    assert (await refused("nope", "c")).code == ErrorCode.NOT_FOUND
    assert (await refused("r", "c")).code == ErrorCode.FAILED_PRECONDITION
    assert (await refused("s", "bad/name")).code == ErrorCode.INVALID_ARGUMENT
    e = await refused("s", "c")  # no node is live
    assert e.code == ErrorCode.FAILED_PRECONDITION and "no live node holds" in e.message
    assert await etcd_client.get(keys.volume("c")) is None

    await etcd_client.put(keys.node("b"), json.dumps(
        NodeInfo("b", ("127.0.0.1", 1)).to_dict()))
    info = await admin.create_clone("s", "c")
    assert info["replicas"] == ["a", "b"] and info["in_sync"] == ["a", "b"]
    assert info["clone_of"] == {"volume": "v", "snapshot": "s"}
    kv = await etcd_client.get(keys.volume("c"))
    assert kv is not None
    spec = VolumeSpec.from_json(kv.json(), kv.key)
    assert spec.uuid != src.uuid and spec.clone_of == ("v", "s")
    assert (spec.size_bytes, spec.block_size, spec.tenant) == (8 << 20, 4096, "default")
    assert (await refused("s", "c")).code == ErrorCode.ALREADY_EXISTS
    assert (await refused("s", "v")).code == ErrorCode.ALREADY_EXISTS


async def test_clone_of_a_replicated_snapshot_is_replicated(cluster: Cluster,
                                                           etcd: EtcdServer) -> None:
    await asyncio.to_thread(two_nodes_with_v1, cluster, etcd.url)
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    src = MultipathHost(cluster.nodes)
    clone = MultipathHost(cluster.nodes, CLONE_NQN)
    try:
        for name in cluster.nodes:
            await src.connect(name)
        for lba in range(BLOCKS):
            await src.write(lba, pattern(lba, 0))
        snap = await asyncio.to_thread(a.cli, "snapshot", "create", "v1", "s1")
        assert snap["state"] == "done" and sorted(snap["nodes"]) == ["a", "b"], snap
        for lba in range(BLOCKS // 2):  # after the snapshot: not the clone's
            await src.write(lba, pattern(lba, 1))
        source_now = [pattern(i, 1 if i < BLOCKS // 2 else 0) for i in range(BLOCKS)]

        # Cloned through the other node's API: a replicated volume on both nodes.
        c = await asyncio.to_thread(b.cli, "clone", "create", "s1", "c1")
        assert sorted(c["replicas"]) == ["a", "b"], c
        assert c["clone_of"] == {"volume": "v1", "snapshot": "s1"}
        v1 = await asyncio.to_thread(a.volume, "v1")
        assert c["uuid"] != v1["uuid"] and c["size_bytes"] == v1["size_bytes"]
        await asyncio.to_thread(a.cli, "export", "create", CLONE_NQN, "--volume", "c1",
                                "--allow-any-host")
        healthy = await asyncio.to_thread(wait_for, "c1 healthy", lambda: a.healthy("c1"))
        assert sorted(healthy["in_sync"]) == ["a", "b"]
        await asyncio.to_thread(wait_served, cluster, CLONE_NQN)
        for name, node in cluster.nodes.items():
            local = next(v for v in await asyncio.to_thread(node.get, "/v1/volumes")
                         if v["name"] == "c1")
            assert local["uuid"] == c["uuid"]
            assert local["parent"] == "s1", f"{name}'s copy is not a clone of s1: {local}"
        ctrls = {name: await clone.connect(name) for name in cluster.nodes}
        assert ctrls["a"].namespaces[1].nguid == ctrls["b"].namespaces[1].nguid

        # It reads the snapshot's data (not what was written after it) through its primary.
        assert await clone.read(0, BLOCKS) == b"".join(pattern(i, 0) for i in range(BLOCKS))
        assert clone.current == healthy["primary"]
        # A write to the clone lands on both copies, and not on the source.
        for lba in range(8):
            await clone.write(lba, pattern(lba, 7))
        want = [pattern(i, 7 if i < 8 else 0) for i in range(BLOCKS)]
        assert await src.read(0, BLOCKS) == b"".join(source_now)

        # Deleting the source snapshot: every node drops it; the clones keep their data.
        await asyncio.to_thread(a.cli, "snapshot", "delete", "s1")
        for name, node in cluster.nodes.items():
            await asyncio.to_thread(wait_for, f"s1 gone from {name}", lambda node=node: not [
                v for v in node.get("/v1/snapshots") if v["name"] == "s1"])

        # The clone's primary dies: the survivor serves the clone's data, the write included.
        primary = healthy["primary"]
        survivor = "b" if primary == "a" else "a"
        cluster.nodes[primary].kill()
        assert await clone.read(0, BLOCKS) == b"".join(want)
        assert clone.current == survivor
        # The source is unchanged too (read through the survivor, after its own failover
        # when the killed node was its primary).
        assert await src.read(0, BLOCKS) == b"".join(source_now)
        st = await asyncio.to_thread(cluster.nodes[survivor].volume, "c1")
        assert st["primary"] == survivor and st["clone_of"]["snapshot"] == "s1"
    finally:
        await clone.close()
        await src.close()


async def test_a_listed_node_lacking_the_snapshot_gets_a_full_copy(cluster: Cluster,
                                                                   etcd: EtcdServer) -> None:
    """A node named in the clone's replicas and in-sync set whose copy of the source lacks the
    snapshot (here: added to the source after the snapshot, then listed as a holder by hand)
    takes itself out of the in-sync set before making an empty copy, and gets a full copy
    from the clone's primary; after that it serves the snapshot's data alone."""
    for name in ("a", "b"):
        cluster.add(name, etcd_url=etcd.url).daemon.start()
    a = cluster.nodes["a"]
    await asyncio.to_thread(wait_for, "two live nodes", lambda: len(
        [n for n in a.status()["nodes"] if n["live"]]) == 2)
    v2 = await asyncio.to_thread(a.cli, "volume", "create", "v2", "--size", "8M",
                                 "--replicas", "1")
    holder = v2["replicas"][0]
    other = "b" if holder == "a" else "a"
    await asyncio.to_thread(a.cli, "export", "create", NQN, "--volume", "v2",
                            "--allow-any-host")
    await asyncio.to_thread(wait_for, "v2 healthy", lambda: a.healthy("v2"))
    await asyncio.to_thread(wait_served, cluster, NQN, holder)
    src = MultipathHost({holder: cluster.nodes[holder]})
    clone = MultipathHost(cluster.nodes, CLONE_NQN)
    keys = Keys("/t")
    client = EtcdClient([etcd.url], timeout=2.0)
    try:
        await src.connect(holder)
        for lba in range(BLOCKS):
            await src.write(lba, pattern(lba, 0))
        snap = await asyncio.to_thread(a.cli, "snapshot", "create", "v2", "s2")
        assert snap["nodes"] == [holder], snap
        for lba in range(BLOCKS):
            await src.write(lba, pattern(lba, 1))
        await asyncio.to_thread(a.cli, "cluster", "add-replica", "v2", other)
        await asyncio.to_thread(wait_for, "v2 on both", lambda: a.volume("v2")["state"]
                                == "healthy" and len(a.volume("v2")["in_sync"]) == 2)
        # The lie: the other node took s2 too.
        await client.put(keys.snap("v2", "s2"), SnapSpec("v2", "s2", "done", snap_epoch(
            await client.get(keys.snap("v2", "s2"))), (holder, other)).to_json())
        await client.put(keys.snapped("v2", "s2", other), "{}")

        c = await asyncio.to_thread(cluster.nodes[other].cli, "clone", "create", "s2", "c2")
        assert sorted(c["replicas"]) == ["a", "b"] and sorted(c["in_sync"]) == ["a", "b"]
        healthy = await asyncio.to_thread(wait_for, "c2 healthy after a full copy", lambda: (
            lambda v: v if v["state"] == "healthy" and other in v["last_resync_bytes"]
            else None)(a.volume("c2")))
        assert healthy["primary"] == holder
        parents = {name: next(v["parent"] for v in node.get("/v1/volumes")
                              if v["name"] == "c2") for name, node in cluster.nodes.items()}
        assert parents == {holder: "s2", other: None}
        await asyncio.to_thread(a.cli, "export", "create", CLONE_NQN, "--volume", "c2",
                                "--allow-any-host")
        await asyncio.to_thread(wait_served, cluster, CLONE_NQN)
        for name in cluster.nodes:
            await clone.connect(name)
        await clone.write(0, pattern(0, 7))
        cluster.nodes[holder].kill()
        want = [pattern(0, 7)] + [pattern(i, 0) for i in range(1, BLOCKS)]
        assert await clone.read(0, BLOCKS) == b"".join(want)
        assert clone.current == other
    finally:
        await client.close()
        await clone.close()
        await src.close()


def snap_epoch(kv: object) -> int:
    assert kv is not None
    return SnapSpec.from_json(kv.json(), kv.key).epoch  # type: ignore[attr-defined]
