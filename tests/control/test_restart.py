"""Stop the daemon, start it again on the same state directory: volumes, snapshots, clones,
exports with their namespaces and hosts, listeners and tenants are all back, the data is
intact, and a host reconnects."""
from __future__ import annotations

import socket
from pathlib import Path

from sbstore.config import ListenerConfig
from target.host import Controller
from tests.control.conftest import (
    HOST_A,
    HOST_B,
    NQN_1,
    NQN_2,
    DaemonThread,
    make_config,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _view(d: DaemonThread) -> dict[str, object]:
    """Everything the API shows, minus what legitimately changes across a restart."""
    with d.client as c:
        volumes = [{k: v for k, v in x.items() if k != "allocated_bytes"}
                   for x in c.get("/v1/volumes")]
        exports = [{**e, "controllers": None} for e in c.get("/v1/subsystems")]
        listeners = [{k: x[k] for k in ("id", "source", "address", "interface", "port")}
                     for x in c.get("/v1/listeners")]
        return {"volumes": volumes, "exports": exports, "listeners": listeners,
                "tenants": c.get("/v1/tenants")}


async def test_restart_restores_everything(tmp_path: Path, sock_dir: Path) -> None:
    config_port, api_port = _free_port(), _free_port()
    d = DaemonThread(make_config(tmp_path, sock_dir,
                                 listeners=(ListenerConfig(config_port, "127.0.0.1"),)))
    d.start()
    try:
        d.ok("tenant", "create", "acme", "--iops", "1000", "--weight", "7")
        d.ok("volume", "create", "vol", "--size", "16M", "--tenant", "acme")
        d.ok("volume", "set", "vol", "--write-bps", "10M")
        d.ok("export", "create", NQN_1, "--volume", "vol", "--host", HOST_A)
        async with await Controller.connect("127.0.0.1", config_port, NQN_1,
                                            hostnqn=HOST_A) as ctrl:
            bs = ctrl.block_size(1)
            await ctrl.write(1, 10, b"\xa1" * bs)
            await ctrl.flush(1)
        d.ok("snapshot", "create", "vol", "snap")
        d.ok("clone", "create", "snap", "clone")
        d.ok("export", "add-volume", NQN_1, "clone", "--nsid", "5")
        d.ok("host", "add", NQN_1, HOST_B)
        d.ok("export", "create", NQN_2, "--volume", "snap", "--allow-any-host")
        d.ok("listener", "add", "--address", "127.0.0.1", "--port", str(api_port))
        before = _view(d)
        state_before = d.state_dump()

        d.restart()
        assert _view(d) == before
        assert d.state_dump() == state_before
        assert any(x["bound"] and x["bound"][0]["port"] == api_port
                   for x in d.listeners())

        # The host reconnects, on either listener, and finds its data in both namespaces.
        for port in (config_port, api_port):
            async with await Controller.connect("127.0.0.1", port, NQN_1,
                                                hostnqn=HOST_B) as ctrl:
                assert sorted(ctrl.namespaces) == [1, 5]
                assert bytes(await ctrl.read(1, 10, 1)) == b"\xa1" * bs
                assert bytes(await ctrl.read(5, 10, 1)) == b"\xa1" * bs
        async with await Controller.connect("127.0.0.1", config_port, NQN_2) as ctrl:
            assert bytes(await ctrl.read(1, 10, 1)) == b"\xa1" * bs

        # A change after the restart persists too.
        d.ok("export", "remove-volume", NQN_1, "--nsid", "5")
        d.ok("tenant", "set", "acme", "--iops", "2000")
        after = _view(d)
        d.restart()
        assert _view(d) == after
        assert d.ok("tenant", "show", "acme", "--json").json["policy"]["iops"] == 2000
    finally:
        d.stop()


def test_a_config_listener_dropped_from_the_config_goes(tmp_path: Path, sock_dir: Path) -> None:
    first, second = _free_port(), _free_port()
    d = DaemonThread(make_config(tmp_path, sock_dir,
                                 listeners=(ListenerConfig(first, "127.0.0.1"),)))
    d.start()
    try:
        assert [(x["source"], x["port"]) for x in d.listeners()] == [("config", first)]
        d.stop()
        d.config = make_config(tmp_path, sock_dir,
                               listeners=(ListenerConfig(second, "127.0.0.1"),))
        d.start()
        assert [(x["source"], x["port"]) for x in d.listeners()] == [("config", second)]
    finally:
        d.stop()


def test_a_volume_created_offline_joins_the_default_tenant(tmp_path: Path,
                                                           sock_dir: Path) -> None:
    import asyncio

    from sbstore.store import Pool

    d = DaemonThread(make_config(tmp_path, sock_dir)).start()
    d.ok("volume", "create", "online", "--size", "4M")
    d.stop()

    async def offline() -> None:
        pool = Pool.open(tmp_path / "p1.pool")
        try:
            await pool.create_volume("offline", 4 << 20)
            await pool.delete("online")
        finally:
            await pool.aclose()
    asyncio.run(offline())

    d.start()
    try:
        vols = d.ok("volume", "list", "--json").json
        assert [(v["name"], v["tenant"]) for v in vols] == [("offline", "default")]
        rows = d.state_dump()["volumes"]
        assert [r[1] for r in rows] == [vols[0]["uuid"]]
    finally:
        d.stop()


def test_an_exported_volume_gone_offline_shows_missing(tmp_path: Path, sock_dir: Path) -> None:
    import asyncio

    from sbstore.store import Pool

    d = DaemonThread(make_config(tmp_path, sock_dir)).start()
    d.ok("volume", "create", "keep", "--size", "4M")
    d.ok("volume", "create", "lost", "--size", "4M")
    d.ok("export", "create", NQN_1, "--volume", "keep", "--volume", "lost", "--allow-any-host")
    d.stop()

    async def offline() -> None:
        pool = Pool.open(tmp_path / "p1.pool")
        try:
            await pool.delete("lost")
        finally:
            await pool.aclose()
    asyncio.run(offline())

    d.start()
    try:
        ns = d.ok("export", "show", NQN_1, "--json").json["namespaces"]
        assert [(n["nsid"], n["volume"], n["state"]) for n in ns] == [
            (1, "keep", "serving"), (2, None, "missing")]
        assert "?" in d.ok("export", "list").out  # a missing volume is shown by its uuid
        r = d.cli("export", "add-volume", NQN_1, "keep")
        assert r.rc == 1 and "already namespace 1" in r.err
        d.ok("export", "remove-volume", NQN_1, "--nsid", "2")
        assert [n["nsid"] for n in d.ok("export", "show", NQN_1, "--json").json[
            "namespaces"]] == [1]
    finally:
        d.stop()
