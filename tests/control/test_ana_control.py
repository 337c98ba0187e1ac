"""ANA through the control module: ``sbstore listener set ID --ana-state STATE [--export NQN]``
changes what connected hosts see through that listener (an ANA change event, the ANA log, I/O
status), is kept across a restart, goes with its export or listener, and a removed listener is
a lost path while the other goes on serving."""
from __future__ import annotations

import asyncio
from pathlib import Path

from sbstore.commands.listener import ANA_STATE_CHOICES as CLI_CHOICES
from sbstore.control.service import ANA_STATE_CHOICES
from target.host import Controller
from target.host import commands as cmd
from target.host.queue_client import CommandFailed
from target.nvme.logpages import pull_ana_log
from target.nvme.spec import (
    AEC_ANA_CHANGE,
    AnaState,
    FeatureId,
    LogPageId,
    PathStatus,
    StatusType,
)
from tests.control.conftest import NQN_1, NQN_2, DaemonThread, in_thread, make_config
from tests.control.test_metrics_scrape import scrape, value

ANA_NOTICE = 0x000C0302  # Notice / ANA change / log page 0Ch
AEN_TIMEOUT_S = 5


def test_cli_choices_are_the_services() -> None:
    assert CLI_CHOICES == ANA_STATE_CHOICES


def _second_listener(d: DaemonThread) -> tuple[int, int]:
    x = d.ok("listener", "add", "--address", "127.0.0.1", "--port", "0", "--json").json
    return x["id"], x["bound"][0]["port"]


async def _states(ctrl: Controller) -> dict[int, int]:
    _, groups = pull_ana_log(await ctrl.get_log_page(LogPageId.ANA, 4096))
    return {g.grpid: g.state for g in groups}


async def _aer(ctrl: Controller) -> asyncio.Future:  # type: ignore[type-arg]
    await ctrl.admin_cmd(cmd.set_features(0, FeatureId.ASYNC_EVENT_CONFIG, AEC_ANA_CHANGE))
    return asyncio.ensure_future(ctrl.admin.submit(cmd.async_event_request(0), timeout_s=None))


async def test_listener_set_reaches_connected_hosts(daemon: DaemonThread) -> None:
    daemon.ok("volume", "create", "vol", "--size", "16M")
    daemon.ok("volume", "create", "other", "--size", "16M")
    daemon.ok("export", "create", NQN_1, "--volume", "vol", "--allow-any-host")
    daemon.ok("export", "create", NQN_2, "--volume", "other", "--allow-any-host")
    lid, port2 = _second_listener(daemon)
    async with await Controller.connect("127.0.0.1", daemon.port, NQN_1) as ca, \
            await Controller.connect("127.0.0.1", port2, NQN_1) as cb, \
            await Controller.connect("127.0.0.1", port2, NQN_2) as c2:
        bs = ca.block_size(1)
        await ca.write(1, 0, b"\x11" * bs)
        assert await _states(cb) == {1: AnaState.OPTIMIZED}
        aer = await _aer(cb)
        out = (await in_thread(daemon.ok, "listener", "set", str(lid), "--ana-state",
                               "inaccessible")).out
        assert out == f"listener {lid}: ANA inaccessible\n"
        assert (await asyncio.wait_for(aer, AEN_TIMEOUT_S)).cqe.dw0 == ANA_NOTICE
        assert await _states(cb) == {1: AnaState.INACCESSIBLE}
        assert await _states(c2) == {1: AnaState.INACCESSIBLE}
        assert await _states(ca) == {1: AnaState.OPTIMIZED}
        try:
            await cb.read(1, 0, 1)
            raise AssertionError("a read through an inaccessible path succeeded")
        except CommandFailed as e:
            assert (e.sct, e.sc, e.dnr) == (StatusType.PATH, PathStatus.ANA_INACCESSIBLE, False)
        assert bytes(await ca.read(1, 0, 1)) == b"\x11" * bs
        samples = await in_thread(scrape, daemon.metrics_url)
        assert value(samples, "sbstore_ana_groups", portid=str(lid), state="inaccessible") == 2
        assert value(samples, "sbstore_ana_groups", portid="1", state="optimized") == 2

        # One export's own state wins over the listener's; "default" drops it again.
        x = (await in_thread(daemon.ok, "listener", "set", str(lid), "--ana-state",
                             "non-optimized", "--export", NQN_2, "--json")).json
        assert x["ana_state"] == "inaccessible" and x["ana_exports"] == {NQN_2: "non-optimized"}
        assert await _states(c2) == {1: AnaState.NON_OPTIMIZED}
        assert await _states(cb) == {1: AnaState.INACCESSIBLE}
        table = daemon.ok("listener", "list").out.splitlines()
        assert table[0].split()[-1] == "ANA"
        assert table[2].endswith(f"inaccessible, {NQN_2} non-optimized")
        await in_thread(daemon.ok, "listener", "set", str(lid), "--ana-state", "default")
        assert await _states(cb) == {1: AnaState.OPTIMIZED}
        assert await _states(c2) == {1: AnaState.NON_OPTIMIZED}
        assert bytes(await cb.read(1, 0, 1)) == b"\x11" * bs


def test_listener_set_refusals(daemon: DaemonThread) -> None:
    r = daemon.cli("listener", "set", "9", "--ana-state", "inaccessible", "--json")
    assert r.rc != 0 and r.error["code"] == "NOT_FOUND"
    r = daemon.cli("listener", "set", "1", "--ana-state", "optimized", "--export",
                   "nqn.2026-11.io.sbstore.test:none", "--json")
    assert r.rc != 0 and r.error["code"] == "NOT_FOUND"
    r = daemon.cli("listener", "set", "1", "--ana-state", "sideways")
    assert r.rc != 0 and "invalid choice" in r.err
    with daemon.client as c:  # the API checks the value too
        try:
            c.patch("/v1/listeners/1", {"ana_state": "sideways"})
            raise AssertionError("accepted")
        except Exception as e:  # noqa: BLE001 (the client's error type is not the point)
            assert "ana_state" in str(e)


async def test_settings_persist_and_go_with_their_export_and_listener(
        tmp_path: Path, sock_dir: Path) -> None:
    d = DaemonThread(make_config(tmp_path, sock_dir)).start()
    try:
        d.ok("volume", "create", "vol", "--size", "16M")
        d.ok("export", "create", NQN_1, "--volume", "vol", "--allow-any-host")
        lid, port2 = _second_listener(d)
        d.ok("listener", "set", str(lid), "--ana-state", "non-optimized")
        d.ok("listener", "set", "1", "--ana-state", "change", "--export", NQN_1)
        def ana() -> list[tuple[int, str, dict[str, str]]]:
            return [(x["id"], x["ana_state"], x["ana_exports"]) for x in d.listeners()]

        before = ana()
        assert before == [(1, "optimized", {NQN_1: "change"}), (lid, "non-optimized", {})]
        d.restart()
        assert ana() == before
        async with await Controller.connect("127.0.0.1", port2, NQN_1) as cb, \
                await Controller.connect("127.0.0.1", d.port, NQN_1) as ca:
            assert await _states(cb) == {1: AnaState.NON_OPTIMIZED}
            assert await _states(ca) == {1: AnaState.CHANGE}
        assert len(d.state_dump()["ana_states"]) == 2
        d.ok("export", "delete", NQN_1, "--force")
        assert d.state_dump()["ana_states"] == [(lid, None, "non-optimized")]
        assert [x["ana_exports"] for x in d.listeners()] == [{}, {}]
        d.ok("listener", "remove", str(lid))
        assert d.state_dump()["ana_states"] == []
    finally:
        d.stop()


async def test_removed_listener_is_a_lost_path(daemon: DaemonThread) -> None:
    daemon.ok("volume", "create", "vol", "--size", "16M")
    daemon.ok("export", "create", NQN_1, "--volume", "vol", "--allow-any-host")
    lid, port2 = _second_listener(daemon)
    ca = await Controller.connect("127.0.0.1", daemon.port, NQN_1)
    cb = await Controller.connect("127.0.0.1", port2, NQN_1)
    try:
        bs = ca.block_size(1)
        await cb.write(1, 5, b"\x22" * bs)
        await in_thread(daemon.ok, "listener", "remove", str(lid))
        assert await cb.admin.wait_closed(5)
        assert bytes(await ca.read(1, 5, 1)) == b"\x22" * bs
    finally:
        await cb.close(shutdown=False)
        await ca.close()


async def test_a_listeners_settings_reach_every_port_it_binds() -> None:
    """An interface listener binds a port per address, as addresses come: each port shows the
    listener's states, from the moment it is bound (driven here without a netlink watcher:
    _follow is what the watcher calls; test_listener_interface.py covers the watcher)."""
    from sbstore.control.listeners import ListenerSet
    from sbstore.control.state import ListenerRecord
    from target.server import TargetServer
    from target.subsystem import Target

    target = Target()
    server = TargetServer(target)
    listeners = ListenerSet(server)
    try:
        live = await listeners.open(ListenerRecord(1, "api", 0, address="127.0.0.1"),
                                    {None: AnaState.INACCESSIBLE, NQN_2: AnaState.CHANGE})
        await listeners._follow(live, {"127.0.0.2"}, set())  # a new address of the interface
        portids = sorted(x.portid for x in live.bound.values())
        assert len(portids) == 2
        for portid in portids:
            assert target.ana.state(portid, NQN_1, 1) == AnaState.INACCESSIBLE
            assert target.ana.state(portid, NQN_2, 1) == AnaState.CHANGE
        listeners.set_ana(1, None, None)
        listeners.forget_export(NQN_2)
        assert all(target.ana.state(p, n, 1) == AnaState.OPTIMIZED
                   for p in portids for n in (NQN_1, NQN_2))
        listeners.set_ana(1, None, AnaState.NON_OPTIMIZED)
        await listeners._follow(live, set(), {"127.0.0.2"})  # the address went away
        gone = next(p for p in portids if p not in {x.portid for x in live.bound.values()})
        assert target.ana.state(gone, NQN_1, 1) == AnaState.OPTIMIZED  # forgotten with it
        assert live.info()["ana_state"] == "non-optimized"
    finally:
        await listeners.close_all()
        await server.close()
