"""Tenants and DH-HMAC-CHAP host keys in cluster mode, on real etcd and two real daemons:
a tenant made on one node governs the copies on every node (policy and membership, through
each node's own API and metrics), a replicated volume lands under its tenant everywhere, a
tenant in use cannot be deleted; a host's secret added through one node authenticates the
host on both nodes' listeners (our initiator), a wrong one is refused on both, a rotation
through the other node reaches both, and the secrets appear in no status, listing, log or
metric; every node's listeners are listed from any node, and one asked of a node through
another opens and closes there."""
from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

from sbstore.cluster.etcd import EtcdClient
from target.auth.secret import DhchapSecret
from target.host import Controller
from target.host.auth import AuthenticationFailed, HostAuth
from tests.cluster.etcd_server import EtcdServer
from tests.cluster.nodes import NQN, Cluster, Node, wait_for
from tests.linux_host.sbstore_process import free_port

HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:0c5ee07d-0000-4000-8000-0000000000b1"



def two_nodes(cluster: Cluster, etcd: EtcdServer) -> tuple[Node, Node]:
    a, b = cluster.add("a", etcd_url=etcd.url), cluster.add("b", etcd_url=etcd.url)
    a.daemon.start()
    b.daemon.start()
    wait_for("two live nodes", lambda: len([n for n in a.status()["nodes"] if n["live"]]) == 2)
    return a, b


def local_volume(node: Node, name: str) -> dict | None:
    return next((v for v in node.get("/v1/volumes") if v["name"] == name), None)


def test_tenants_are_cluster_wide(cluster: Cluster, etcd: EtcdServer) -> None:
    a, b = two_nodes(cluster, etcd)
    gold = a.cli("tenant", "create", "gold", "--write-iops", "40", "--burst-s", "0.1",
                 "--weight", "300")
    policy = gold["policy"]
    assert policy["write_iops"] == 40 and policy["weight"] == 300
    # b's API reads etcd, and b has applied the policy to its own state and QoS.
    listed = {t["name"]: t for t in b.cli("tenant", "list")}
    assert listed["gold"]["policy"] == policy and "default" in listed
    wait_for("gold applied on b", lambda: (b.cli("tenant", "show", "gold")["here"] or {})
             .get("policy") == policy)
    r = b.daemon.cli("volume", "create", "v1", "--size", "16M", "--replicas", "2",
                     "--tenant", "nosuch")
    assert r.rc == 1 and "no tenant named 'nosuch'" in r.stderr, r.describe()
    vol = b.cli("volume", "create", "v1", "--size", "16M", "--replicas", "2",
                "--tenant", "gold")
    assert vol["tenant"] == "gold"
    for node in (a, b):  # each node's copy is under gold
        wait_for(f"v1 under gold on {node.name}", lambda node=node: (
            local_volume(node, "v1") or {}).get("tenant") == "gold")
    assert b.cli("tenant", "show", "gold")["volumes"] == ["v1"]
    # A change through a reaches b.
    a.cli("tenant", "set", "gold", "--write-iops", "50")
    wait_for("new policy on b", lambda: b.cli("tenant", "show", "gold")["here"]["policy"]
             ["write_iops"] == 50)
    # Used by a replicated volume: not deleted, and the message says why.
    r = b.daemon.cli("tenant", "delete", "gold")
    assert r.rc == 1 and "used by 1 replicated volume(s) (v1)" in r.stderr, r.describe()
    # The QoS queue of whichever node serves enforces it: 60 writes at 50/s take > 0.8 s.
    a.cli("export", "create", NQN, "--volume", "v1", "--allow-any-host")
    primary = cluster.nodes[wait_for("healthy", lambda: a.healthy("v1"))["primary"]]
    took = wait_for("writes through the primary",
                    lambda: asyncio.run(timed_writes(primary, 60)))
    assert took > 0.8, took
    # ... and so does the other node's, once it serves: stop the primary (its lease is
    # revoked, the other takes over at once), write through the survivor, start it again.
    primary.daemon.stop()
    survivor = b if primary is a else a
    wait_for("the survivor serves", lambda: survivor.volume("v1")["primary"] == survivor.name)
    took = wait_for("writes through the survivor",
                    lambda: asyncio.run(timed_writes(survivor, 60)))
    assert took > 0.8, took
    primary.daemon.start()
    for node in (a, b):  # both copies are exported under gold
        assert 'sbstore_tenant_volumes{tenant="gold"} 1' in node.metrics(), node.name
    # Own limits of one copy only are refused; moving the volume moves every copy.
    r = a.daemon.cli("volume", "set", "v1", "--iops", "10")
    assert r.rc == 1 and "replicated volume" in r.stderr, r.describe()
    a.cli("volume", "set", "v1", "--tenant", "default")
    for node in (a, b):
        wait_for(f"v1 under default on {node.name}", lambda node=node: (
            local_volume(node, "v1") or {}).get("tenant") == "default")
    a.cli("tenant", "delete", "gold")
    for node in (a, b):
        wait_for(f"gold gone from {node.name}", lambda node=node: "gold" not in {
            t["name"] for t in node.get("/v1/tenants")} and not any(
            t["name"] == "gold" for t in node.daemon.cli("tenant", "list", "--json")
            .ok("tenant list")))


async def timed_writes(node: Node, count: int) -> float:
    loop = asyncio.get_running_loop()
    async with await Controller.connect("127.0.0.1", node.nvme_port, NQN, timeout_s=5,
                                        kato_ms=0) as ctrl:
        started = loop.time()
        for i in range(count):
            await ctrl.write(1, i, b"\x5a" * 4096)
        return loop.time() - started


async def connects(node: Node, secret: DhchapSecret,
                   ctrl_secret: DhchapSecret | None = None) -> bool:
    """Does the host authenticate with ``secret`` on this node's listener (and the
    controller with ``ctrl_secret``, when given)?"""
    try:
        ctrl = await Controller.connect("127.0.0.1", node.nvme_port, NQN, hostnqn=HOSTNQN,
                                        auth=HostAuth(secret, ctrl_secret), timeout_s=5,
                                        kato_ms=0)
    except AuthenticationFailed:
        return False
    await ctrl.close(shutdown=False)
    return True


def test_host_keys_on_cluster_exports(cluster: Cluster, etcd: EtcdServer,
                                      tmp_path: Path) -> None:
    a, b = two_nodes(cluster, etcd)
    a.cli("volume", "create", "v2", "--size", "16M", "--replicas", "2")
    a.cli("export", "create", NQN, "--volume", "v2", "--host",
          "nqn.2014-08.org.nvmexpress:uuid:0c5ee07d-0000-4000-8000-0000000000b2")
    secret, wrong = DhchapSecret.generate(1), DhchapSecret.generate(1)
    ctrl_secret = DhchapSecret.generate(2)
    key_file, ctrl_file = tmp_path / "key", tmp_path / "ctrl"
    key_file.write_text(secret.format())
    ctrl_file.write_text(ctrl_secret.format())
    added = b.cli("host", "add", NQN, HOSTNQN, "--dhchap-key", f"@{key_file}",
                  "--ctrl-key", f"@{ctrl_file}")
    assert added["host_auth"][HOSTNQN]["dhchap"] == "set" and "generated" not in added
    assert added["host_auth"][HOSTNQN]["ctrl_key"]["dhchap"] == "set"
    for node in (a, b):
        wait_for(f"key applied on {node.name}", lambda node=node: HOSTNQN in node.get(
            f"/v1/subsystems/{NQN}")["host_auth"])
    for node in (a, b):  # every path: the right secrets in (both ways), a wrong one out
        assert asyncio.run(connects(node, secret, ctrl_secret)), node.name
        assert not asyncio.run(connects(node, wrong)), node.name
    # Rotation through a (a generated secret, returned once) reaches both nodes.
    rotated = a.api("PATCH", f"/v1/subsystems/{NQN}/hosts/{HOSTNQN}", {"generate_key": True})
    new = DhchapSecret.parse(rotated["generated"]["dhchap_key"])
    for node in (a, b):
        wait_for(f"rotated on {node.name}", lambda node=node: asyncio.run(
            connects(node, new)))
        assert not asyncio.run(connects(node, secret)), node.name
    # The secrets are in no status, listing, log or metric of either node.
    secrets = [secret.format(), ctrl_secret.format(), new.format()]
    for node in (a, b):
        shown = [json.dumps(node.status()), json.dumps(node.get("/v1/subsystems")),
                 node.daemon.cli("host", "list", NQN).stdout,
                 node.daemon.cli("cluster", "status").stdout, node.metrics(),
                 node.daemon.output()]
        for text in shown:
            assert not any(s in text for s in secrets), node.name
        assert node.status()["exports"][0]["host_auth"][HOSTNQN]["dhchap"] == "set"
    # Removing the host removes its secrets from etcd too.
    b.cli("host", "remove", NQN, HOSTNQN)

    async def hostkeys() -> int:
        client = EtcdClient([etcd.url])
        try:
            kvs, _ = await client.get_prefix("/t/hostkeys/")
            return len(kvs)
        finally:
            await client.close()
    assert asyncio.run(hostkeys()) == 0


def test_listeners_by_node(cluster: Cluster, etcd: EtcdServer) -> None:
    a, b = two_nodes(cluster, etcd)
    # Every node's listeners, from any node (each node's config listener, to begin with).
    def both() -> list[dict] | None:
        xs = a.cli("listener", "list", "--all-nodes")
        return xs if [x["node"] for x in xs if x["bound"]] == ["a", "b"] else None
    listed = wait_for("both nodes' listeners", both)
    assert {x["node"]: x["bound"] for x in listed} == {
        n.name: [f"127.0.0.1:{n.nvme_port}"] for n in (a, b)}
    # A listener asked of b through a: b opens it (hosts can connect there) and lists it.
    port = free_port()
    added = a.cli("listener", "add", "--node", "b", "--address", "127.0.0.1", "--port",
                  str(port))
    assert added["node"] == "b" and added["bound"] == [f"127.0.0.1:{port}"], added
    assert [x["port"] for x in b.get("/v1/listeners")].count(port) == 1
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    # b's config listener is not the cluster's to remove; the added one is.
    r = a.daemon.cli("listener", "remove", str(listed[1]["id"]), "--node", "b")
    assert r.rc == 1 and "added through the cluster" in r.stderr, r.describe()
    a.cli("listener", "remove", str(added["id"]), "--node", "b")
    wait_for("listener closed on b", lambda: port not in [
        x["port"] for x in b.get("/v1/listeners")])
    assert [x["bound"] for x in b.get("/v1/listeners")] != []
