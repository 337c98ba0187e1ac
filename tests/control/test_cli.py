"""Every CLI verb against a running daemon: the table a person reads and the ``--json`` a script
parses, both checked against what the API then reports."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.control.conftest import HOST_A, HOST_B, NQN_1, NQN_2, DaemonThread

REPO = Path(__file__).resolve().parents[2]


def test_volume_verbs(daemon: DaemonThread) -> None:
    v = daemon.ok("volume", "create", "vol1", "--size", "64M", "--json").json
    assert (v["name"], v["pool"], v["size_bytes"], v["block_size"], v["tenant"]) == \
        ("vol1", "p1", 64 << 20, 4096, "default")
    r = daemon.ok("volume", "create", "vol2", "--size", "32M", "--block-size", "512")
    assert r.out.startswith("created volume vol2 in pool p1 (32M, uuid ")

    listing = daemon.ok("volume", "list").out.splitlines()
    assert listing[0].split() == ["POOL", "NAME", "KIND", "SIZE", "ALLOC", "TENANT", "PARENT",
                                  "EXPORTS"]
    assert [line.split()[:4] for line in listing[1:]] == [["p1", "vol1", "volume", "64M"],
                                                          ["p1", "vol2", "volume", "32M"]]
    assert [x["name"] for x in daemon.ok("volume", "list", "--json").json] == ["vol1", "vol2"]

    shown = daemon.ok("volume", "show", "vol2").out
    assert "block_size" not in shown and "512-byte blocks" in shown and "tenant:" in shown
    assert daemon.ok("volume", "show", "vol2", "--json").json["block_size"] == 512

    r = daemon.ok("volume", "resize", "vol1", "--size", "128M", "--json")
    assert r.json["size_bytes"] == 128 << 20
    assert daemon.ok("volume", "resize", "vol1", "--size", "256M").out == \
        "resized vol1 to 256M\n"

    assert daemon.ok("volume", "rename", "vol2", "small").out == "renamed vol2 to small\n"
    assert daemon.ok("volume", "rename", "small", "vol2", "--json").json["name"] == "vol2"

    daemon.ok("tenant", "create", "gold")
    r = daemon.ok("volume", "set", "vol2", "--tenant", "gold", "--iops", "500", "--json")
    assert r.json["tenant"] == "gold" and r.json["limits"]["iops"] == 500
    assert "iops=500" in daemon.ok("volume", "show", "vol2").out
    r = daemon.ok("volume", "set", "vol2", "--clear-limits", "--json")
    assert r.json["limits"] is None and r.json["tenant"] == "gold"
    assert [x["name"] for x in daemon.ok("volume", "list", "--tenant", "gold", "--json").json] \
        == ["vol2"]

    assert daemon.ok("volume", "delete", "vol2").out == "deleted volume vol2\n"
    assert daemon.ok("volume", "delete", "vol1", "--json").json == \
        {"deleted": {"volume": "vol1", "pool": None}}
    assert daemon.ok("volume", "list").out == "(none)\n"
    assert daemon.ok("volume", "list", "--json").json == []


def test_snapshot_and_clone_verbs(daemon: DaemonThread) -> None:
    daemon.ok("volume", "create", "base", "--size", "16M")
    s = daemon.ok("snapshot", "create", "base", "s1", "--json").json
    assert (s["kind"], s["read_only"], s["children"]) == ("snapshot", True, ["base"])
    assert daemon.ok("snapshot", "create", "base", "s2").out.startswith(
        "created snapshot s2 of base (uuid ")
    assert [x["name"] for x in daemon.ok("snapshot", "list", "--json").json] == ["s1", "s2"]
    # The volume's history, newest first.
    assert [x["name"] for x in daemon.ok("snapshot", "list", "--volume", "base",
                                         "--json").json] == ["s2", "s1"]
    table = daemon.ok("snapshot", "list").out.splitlines()
    assert table[0].split()[:3] == ["POOL", "NAME", "SIZE"] and len(table) == 3
    assert daemon.ok("snapshot", "show", "s1", "--json").json["name"] == "s1"
    assert "kind:" in daemon.ok("snapshot", "show", "s1").out

    c = daemon.ok("clone", "create", "s1", "c1", "--json").json
    assert (c["kind"], c["parent"], c["read_only"]) == ("volume", "s1", False)
    assert daemon.ok("clone", "inflate", "c1", "--json").json["parent"] is None
    assert daemon.ok("clone", "create", "s2", "c2").out.startswith("created clone c2 of s2")
    assert "no longer depends" in daemon.ok("clone", "inflate", "c2").out

    assert daemon.ok("snapshot", "revert", "base", "s1", "--json").json["parent"] == "s1"
    assert daemon.ok("snapshot", "revert", "base", "s1").out == "reverted base to s1\n"
    assert daemon.ok("snapshot", "delete", "s2").out == "deleted snapshot s2\n"
    assert daemon.ok("snapshot", "delete", "s1", "--json").json["deleted"]["snapshot"] == "s1"
    assert daemon.ok("snapshot", "list", "--json").json == []


def test_export_host_verbs(daemon: DaemonThread) -> None:
    for name in ("a", "b", "c"):
        daemon.ok("volume", "create", name, "--size", "8M")
    e = daemon.ok("export", "create", NQN_1, "--volume", "a", "--volume", "b", "--host",
                  HOST_A, "--json").json
    assert [(n["nsid"], n["volume"]) for n in e["namespaces"]] == [(1, "a"), (2, "b")]
    assert e["hosts"] == [HOST_A] and e["allow_any_host"] is False
    assert daemon.ok("export", "create", NQN_2, "--allow-any-host").out == \
        f"created export {NQN_2} with 0 namespace(s)\n"

    listing = daemon.ok("export", "list").out.splitlines()
    assert listing[0].split() == ["NQN", "NAMESPACES", "HOSTS", "CONTROLLERS"]
    assert listing[1].split() == [NQN_1, "1:a", "2:b", HOST_A, "0"]
    assert listing[2].split() == [NQN_2, "-", "*", "0"]
    assert [x["nqn"] for x in daemon.ok("export", "list", "--json").json] == [NQN_1, NQN_2]
    shown = daemon.ok("export", "show", NQN_1).out
    assert HOST_A in shown and "NSID" in shown

    r = daemon.ok("export", "add-volume", NQN_1, "c", "--nsid", "7", "--json")
    assert [n["nsid"] for n in r.json["namespaces"]] == [1, 2, 7]
    assert daemon.ok("export", "remove-volume", NQN_1, "--nsid", "7").out == \
        f"{NQN_1}: removed namespace 7\n"
    assert daemon.ok("export", "add-volume", NQN_1, "c").out == f"{NQN_1}: namespace 3 is c\n"
    r = daemon.ok("export", "remove-volume", NQN_1, "c", "--json")
    assert [n["volume"] for n in r.json["namespaces"]] == ["a", "b"]
    # The volume's own view names its exports.
    assert daemon.ok("volume", "show", "a", "--json").json["exports"] == \
        [{"nqn": NQN_1, "nsid": 1}]

    assert daemon.ok("host", "add", NQN_1, HOST_B).out == f"{HOST_B} may connect to {NQN_1}\n"
    assert daemon.ok("host", "list", NQN_1, "--json").json == sorted([HOST_A, HOST_B])
    assert daemon.ok("host", "list", NQN_1).out.split() == sorted([HOST_A, HOST_B])
    assert daemon.ok("host", "remove", NQN_1, HOST_B, "--json").json["hosts"] == [HOST_A]

    assert daemon.ok("export", "set", NQN_2, "--no-allow-any-host", "--json").json[
        "allow_any_host"] is False
    assert daemon.ok("export", "set", NQN_2, "--allow-any-host").out == f"{NQN_2}: any host\n"

    assert daemon.ok("export", "delete", NQN_2).out == f"deleted export {NQN_2}\n"
    assert daemon.ok("export", "delete", NQN_1, "--force", "--json").json == \
        {"deleted": {"export": NQN_1}}
    assert daemon.ok("export", "list").out == "(none)\n"


def test_listener_verbs(daemon: DaemonThread) -> None:
    before = daemon.ok("listener", "list", "--json").json
    assert [(x["id"], x["source"]) for x in before] == [(1, "config")]
    r = daemon.ok("listener", "add", "--address", "127.0.0.1", "--port", "0", "--json").json
    assert r["id"] == 2 and r["source"] == "api" and r["state"] == "listening"
    port = r["bound"][0]["port"]
    assert r["port"] == port != 0  # the chosen port is kept for restarts
    out = daemon.ok("listener", "add", "--interface", "lo", "--port", "0").out
    assert out.startswith("listener 3: interface lo port 0 (") and "127.0.0.1:" in out
    table = daemon.ok("listener", "list").out.splitlines()
    assert table[0].split() == ["ID", "SOURCE", "WHERE", "STATE", "BOUND", "ANA"]
    assert [line.split()[:2] for line in table[1:]] == [["1", "config"], ["2", "api"],
                                                         ["3", "api"]]
    assert daemon.ok("listener", "remove", "3").out == "removed listener 3\n"
    assert daemon.ok("listener", "remove", "2", "--json").json == {"deleted": {"listener": 2}}
    assert [x["id"] for x in daemon.ok("listener", "list", "--json").json] == [1]


def test_tenant_verbs(daemon: DaemonThread) -> None:
    t = daemon.ok("tenant", "create", "acme", "--iops", "5000", "--bps", "200M",
                  "--json").json
    assert t["policy"]["iops"] == 5000 and t["policy"]["bps"] == 200 << 20
    assert t["policy"]["weight"] == 100 and t["volumes"] == []
    r = daemon.ok("tenant", "set", "acme", "--iops", "6000", "--weight", "3", "--burst-s",
                  "0.5", "--json").json
    assert (r["policy"]["iops"], r["policy"]["weight"], r["policy"]["burst_s"],
            r["policy"]["bps"]) == (6000, 3, 0.5, 200 << 20)
    assert daemon.ok("tenant", "set", "acme", "--read-iops", "10").out == \
        "tenant acme: iops=6000 read_iops=10 bps=200M/s burst_s=0.5 weight=3\n"
    daemon.ok("volume", "create", "v", "--size", "4M", "--tenant", "acme")
    shown = daemon.ok("tenant", "show", "acme").out
    assert "p1/v" in shown and "weight=3" in shown
    listing = daemon.ok("tenant", "list").out.splitlines()
    assert listing[0].split() == ["NAME", "POLICY", "VOLUMES"]
    assert [line.split()[0] for line in listing[1:]] == ["acme", "default"]
    assert [x["name"] for x in daemon.ok("tenant", "list", "--json").json] == \
        ["acme", "default"]
    daemon.ok("volume", "delete", "v")
    assert daemon.ok("tenant", "delete", "acme").out == "deleted tenant acme\n"
    assert daemon.ok("tenant", "show", "default", "--json").json["name"] == "default"


def test_status(daemon: DaemonThread) -> None:
    daemon.ok("volume", "create", "v", "--size", "4M")
    s = daemon.ok("status", "--json").json
    assert s["status"]["volumes"] == 1 and s["pools"][0]["name"] == "p1"
    text = daemon.ok("status").out
    assert "version:" in text and "p1" in text and "CAPACITY" in text


def test_pool_flag_with_two_pools(daemon2: DaemonThread) -> None:
    r = daemon2.cli("volume", "create", "v", "--size", "4M")
    assert r.rc == 1 and "say which one with --pool" in r.err
    daemon2.ok("volume", "create", "v", "--size", "4M", "--pool", "p2")
    daemon2.ok("volume", "create", "w", "--size", "4M", "--pool", "p1")
    daemon2.ok("volume", "create", "w", "--size", "8M", "--pool", "p2")
    # A name only one pool has needs no --pool; one two pools have does.
    assert daemon2.ok("volume", "show", "v", "--json").json["pool"] == "p2"
    r = daemon2.cli("volume", "show", "w")
    assert r.rc == 1 and "p1, p2" in r.err and "--pool" in r.err
    assert daemon2.ok("volume", "show", "w", "--pool", "p2", "--json").json["size_bytes"] == \
        8 << 20
    assert [v["name"] for v in daemon2.ok("volume", "list", "--pool", "p1", "--json").json] \
        == ["w"]
    e = daemon2.ok("export", "create", NQN_1, "--volume", "w", "--pool", "p2",
                   "--allow-any-host", "--json").json
    assert e["namespaces"][0]["pool"] == "p2"


def test_cli_as_a_subprocess(daemon: DaemonThread) -> None:
    """The installed entry point (python -m sbstore) with the socket from the environment."""
    env = {**os.environ, "SBSTORE_SOCKET": daemon.socket,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                       os.environ.get("PYTHONPATH")]))}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sbstore", *args], capture_output=True,
                              text=True, env=env, cwd=REPO, timeout=60, check=False)

    r = run("volume", "create", "sub", "--size", "4M", "--json")
    assert r.returncode == 0, r.stderr
    assert '"name": "sub"' in r.stdout
    r = run("volume", "list")
    assert r.returncode == 0 and "sub" in r.stdout
    r = run("volume", "create", "sub", "--size", "4M")
    assert r.returncode == 1 and "already exists" in r.stderr
    r = run("volume", "create", "x", "--size", "lots")
    assert r.returncode == 2 and "is not a size" in r.stderr
    r = run("--socket", "/nonexistent/api.sock", "volume", "list")
    assert r.returncode == 3 and "cannot reach the sbstore daemon" in r.stderr


async def test_snapshot_delete_with_clones_and_later_snapshots(daemon: DaemonThread) -> None:
    """Through the daemon and a host: a snapshot whose origin has a later snapshot and from
    which two clones were made is deleted with the CLI; every other volume reads back the same
    bytes (hashes) over NVMe/TCP, and the listing shows the children in its place."""
    import asyncio
    import hashlib

    from target.host import Controller
    from tests.control.conftest import in_thread

    daemon.ok("volume", "create", "vm", "--size", "4M")
    daemon.ok("export", "create", NQN_1, "--volume", "vm", "--allow-any-host")
    async with await Controller.connect("127.0.0.1", daemon.port, NQN_1) as host:
        await host.write(1, 0, os.urandom(256 << 10))
    await in_thread(daemon.ok, "snapshot", "create", "vm", "s1")
    await in_thread(daemon.ok, "clone", "create", "s1", "c1")
    await in_thread(daemon.ok, "clone", "create", "s1", "c2")
    async with await Controller.connect("127.0.0.1", daemon.port, NQN_1) as host:
        await host.write(1, 16, os.urandom(64 << 10))  # the origin moves on
    await in_thread(daemon.ok, "snapshot", "create", "vm", "s2")
    names = ["vm", "s2", "c1", "c2"]
    for name in names[1:]:
        await in_thread(daemon.ok, "export", "add-volume", NQN_1, name)

    async def hashes() -> dict[str, str]:
        async with await Controller.connect("127.0.0.1", daemon.port, NQN_1) as host:
            out = {}
            for nsid, name in enumerate(names, start=1):
                data = await asyncio.gather(*(host.read(nsid, lba, 64)
                                              for lba in range(0, 1024, 64)))
                out[name] = hashlib.sha256(b"".join(bytes(d) for d in data)).hexdigest()
            return out

    before = await hashes()
    r = await in_thread(daemon.ok, "snapshot", "delete", "s1")
    assert r.out == "deleted snapshot s1\n"
    assert await hashes() == before
    listing = {x["name"]: x for x in (await in_thread(daemon.ok, "volume", "list", "--json")).json}
    assert set(listing) == {"vm", "c1", "c2"}
    assert (listing["vm"]["parent"], listing["c1"]["parent"], listing["c2"]["parent"]) == \
        ("s2", None, None)


async def test_nuse_follows_what_a_volume_holds(daemon: DaemonThread) -> None:
    """Identify Namespace over NVMe/TCP: NUSE counts the blocks a thin volume holds (none
    before a write, a cluster's worth after one, none again after a deallocate), NSZE stays
    the size, NSFEAT says thin provisioning; and the pool gives the space back."""
    from target.host import Controller
    from tests.control.conftest import in_thread

    daemon.ok("volume", "create", "thin", "--size", "16M")
    daemon.ok("export", "create", NQN_1, "--volume", "thin", "--allow-any-host")
    cluster = daemon.client.get("/v1/pools/p1")["cluster_size"]
    async with await Controller.connect("127.0.0.1", daemon.port, NQN_1) as host:
        idn = await host.identify_namespace(1)
        assert (idn.nsze, idn.nuse, idn.nsfeat & 1) == ((16 << 20) // 4096, 0, 1)
        await host.write(1, 0, os.urandom(4096))
        assert (await host.identify_namespace(1)).nuse == cluster // 4096
        await host.deallocate(1, [(0, cluster // 4096)])
        assert (await host.identify_namespace(1)).nuse == 0
        await host.flush(1)
    pool = await in_thread(daemon.client.get, "/v1/pools/p1")
    assert pool["allocated_bytes"] == 0
