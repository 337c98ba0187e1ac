"""The cluster's admin surface on real daemons: placement (never two replicas on one node, a
clear error when too few nodes are live), the CLI and API on any node, refusals of what would
act on one copy only, cluster-wide delete, ``cluster status`` and the metrics."""
from __future__ import annotations

from tests.cluster.etcd_server import EtcdServer
from tests.cluster.nodes import NQN, Cluster, wait_for


def test_admin_on_any_node(cluster: Cluster, etcd: EtcdServer) -> None:
    a = cluster.add("a", etcd_url=etcd.url)
    a.daemon.start()
    wait_for("a live", lambda: a.status()["nodes"][0]["live"])
    # One live node cannot hold two replicas (never two on one node).
    r = a.daemon.cli("volume", "create", "v1", "--size", "16M", "--replicas", "2")
    assert r.rc == 1 and "2 live nodes" in r.stderr, r.describe()
    b = cluster.add("b", etcd_url=etcd.url)
    b.daemon.start()
    wait_for("two live nodes", lambda: len([n for n in a.status()["nodes"] if n["live"]]) == 2)
    vol = b.cli("volume", "create", "v1", "--size", "16M", "--replicas", "2")
    assert sorted(vol["replicas"]) == ["a", "b"]
    r = a.daemon.cli("volume", "create", "v1", "--size", "16M", "--replicas", "2")
    assert r.rc == 1 and "exists" in r.stderr
    c = cluster.add("c", etcd_url=etcd.url)  # a third node, holding no replica of v1
    c.daemon.start()
    b.cli("volume", "create", "v2", "--size", "16M", "--replicas", "1")
    r = c.daemon.cli("export", "create", NQN, "--volume", "v1", "--volume", "v2",
                     "--allow-any-host")
    assert r.rc == 1 and "exactly one volume" in r.stderr, r.describe()
    c.cli("export", "create", NQN, "--volume", "v1", "--allow-any-host")
    healthy = wait_for("healthy", lambda: a.healthy("v1"))
    # Both nodes hold a replica with the same uuid, and both export it.
    for node in (a, b):
        local = wait_for(f"replica on {node.name}", lambda node=node: [
            v for v in node.get("/v1/volumes") if v["name"] == "v1"])
        assert local[0]["uuid"] == healthy["uuid"]
        wait_for(f"export on {node.name}", lambda node=node: [
            e for e in node.get("/v1/subsystems") if e["nqn"] == NQN])
    # The node without a replica serves neither the volume nor its export.
    assert not [v for v in c.get("/v1/volumes") if v["name"] == "v1"]
    assert not [e for e in c.get("/v1/subsystems") if e["nqn"] == NQN]
    b.cli("volume", "delete", "v2")
    # Growing acts on every copy (the primary's last); shrinking is refused.
    grown = a.cli("volume", "resize", "v1", "--size", "32M")
    assert grown["size_bytes"] == 32 << 20
    for node in (a, b):
        wait_for(f"{node.name}'s copy grown", lambda node=node: [
            v for v in node.get("/v1/volumes") if v["name"] == "v1"
            and v["size_bytes"] == 32 << 20])
    r = b.daemon.cli("volume", "resize", "v1", "--size", "16M", "--force")
    assert r.rc == 1 and "shrinking a replicated volume" in r.stderr, r.describe()
    # What would act on one copy only is refused, with the reason.
    for args in (("schedule", "add", "--volume", "v1", "--every", "1h", "--keep", "3"),
                 ("volume", "rename", "v1", "v2")):
        r = b.daemon.cli(*args)
        assert r.rc == 1 and "replicated volume" in r.stderr, r.describe()
    # Hosts of a cluster export change on every node, whichever node is asked.
    host = "nqn.2014-08.org.nvmexpress:uuid:0c5ee07d-0000-4000-8000-00000000000a"
    b.cli("export", "set", NQN, "--no-allow-any-host")
    a.cli("host", "add", NQN, host)
    for node in (a, b):
        wait_for(f"host on {node.name}", lambda node=node: [
            e for e in node.get("/v1/subsystems") if e["nqn"] == NQN
            and e["hosts"] == [host] and not e["allow_any_host"]])
    r = a.daemon.cli("export", "add-volume", NQN, "plain")
    assert r.rc == 1 and "cluster export" in r.stderr, r.describe()
    # cluster status, from the CLI of either node: nodes, primary, epoch, in-sync set.
    st = b.cli("cluster", "status")
    assert {n["name"]: n["live"] for n in st["nodes"]} == {"a": True, "b": True, "c": True}
    [v] = st["volumes"]
    assert v["primary"] in ("a", "b") and v["epoch"] > 0 and sorted(v["in_sync"]) == ["a", "b"]
    assert next(n for n in st["nodes"] if n["self"])["lease_left_s"] > 0
    text = b.daemon.cli("cluster", "status")
    assert text.rc == 0
    # Metrics: the primary shows is_primary 1, nobody is degraded.
    primary = v["primary"]
    m = cluster.nodes[primary].metrics()
    assert 'sbstore_cluster_is_primary{volume="v1"} 1' in m
    assert 'sbstore_cluster_volume_degraded{volume="v1"} 0' in m
    # A snapshot is taken on both copies; deleting the volume deletes it everywhere too.
    snap = b.cli("snapshot", "create", "v1", "s1")
    assert snap["state"] == "done" and sorted(snap["nodes"]) == ["a", "b"]
    # Delete: refused while exported, then cluster-wide with --force; each node drops its copy.
    r = a.daemon.cli("volume", "delete", "v1")
    assert r.rc == 1 and "exported" in r.stderr
    a.cli("volume", "delete", "v1", "--force")
    for node in (a, b):
        wait_for(f"replica gone from {node.name}", lambda node=node: not [
            v for v in node.get("/v1/volumes") if v["name"] == "v1"])
    for node in (a, b):
        wait_for(f"snapshot gone from {node.name}", lambda node=node: not [
            v for v in node.get("/v1/snapshots") if v["name"] == "s1"])
    a.cli("export", "delete", NQN, "--force")
    for node in (a, b):
        wait_for(f"export gone from {node.name}", lambda node=node: not [
            e for e in node.get("/v1/subsystems") if e["nqn"] == NQN])
    assert a.status()["volumes"] == []
    # Single-node features still work beside it: a local volume is a plain volume.
    local = a.cli("volume", "create", "plain", "--size", "16M")
    assert local["name"] == "plain"
    a.cli("snapshot", "create", "plain", "s1")
