"""Exports change live, and access is controlled: a connected host sees a namespace appear and
go through an asynchronous event and the Changed Namespace List (no reconnect); a host not
allowed is refused at Connect, and discovery shows it only what it may connect to."""
from __future__ import annotations

import asyncio

import pytest

from target.host import Controller, discover
from target.host import commands as cmd
from target.host.queue_client import CommandFailed
from target.nvme.logpages import pull_changed_ns_list
from target.nvme.spec import (
    AEC_NS_ATTRIBUTE,
    CommandSpecificStatus,
    FeatureId,
    LogPageId,
    StatusType,
)
from tests.control.conftest import HOST_A, HOST_B, NQN_1, NQN_2, DaemonThread, in_thread

NS_NOTICE = 0x00040002  # Notice / Namespace Attribute Changed / log page 04h
AEN_TIMEOUT_S = 5


async def _aen_ready(ctrl: Controller) -> asyncio.Task:
    """Enable namespace notices and park an Async Event Request on the admin queue."""
    await ctrl.admin_cmd(cmd.set_features(0, FeatureId.ASYNC_EVENT_CONFIG, AEC_NS_ATTRIBUTE))
    return asyncio.ensure_future(ctrl.admin.submit(cmd.async_event_request(0), timeout_s=None))


async def _changed(ctrl: Controller) -> list[int]:
    data = await ctrl.get_log_page(LogPageId.CHANGED_NAMESPACE_LIST, 4096)
    return pull_changed_ns_list(data)


async def test_clone_appears_to_a_connected_host_and_goes(daemon: DaemonThread) -> None:
    daemon.ok("volume", "create", "vol", "--size", "16M")
    daemon.ok("export", "create", NQN_1, "--volume", "vol", "--host", HOST_A)
    async with await Controller.connect("127.0.0.1", daemon.port, NQN_1, hostnqn=HOST_A,
                                        nr_io_queues=2) as ctrl:
        assert sorted(ctrl.namespaces) == [1]
        bs = ctrl.block_size(1)
        await ctrl.write(1, 3, b"\x5a" * bs)
        await ctrl.flush(1)
        daemon.ok("snapshot", "create", "vol", "snap")
        daemon.ok("clone", "create", "snap", "clone")
        await ctrl.write(1, 3, b"\x00" * bs)  # after the snapshot: the clone keeps 0x5a

        aer = await _aen_ready(ctrl)
        await in_thread(daemon.ok, "export", "add-volume", NQN_1, "clone")
        done = await asyncio.wait_for(aer, AEN_TIMEOUT_S)
        assert done.cqe.dw0 == NS_NOTICE
        assert await _changed(ctrl) == [2]
        found = await ctrl.refresh_namespaces()
        assert sorted(found) == [1, 2]
        clone = daemon.ok("volume", "show", "clone", "--json").json
        assert found[2].nsze * found[2].block_size == clone["size_bytes"]
        assert found[2].nguid.hex() == clone["uuid"].replace("-", "")
        assert bytes(await ctrl.read(2, 3, 1)) == b"\x5a" * bs
        assert bytes(await ctrl.read(1, 3, 1)) == bytes(bs)

        aer = await _aen_ready(ctrl)
        await in_thread(daemon.ok, "export", "remove-volume", NQN_1, "clone")
        done = await asyncio.wait_for(aer, AEN_TIMEOUT_S)
        assert done.cqe.dw0 == NS_NOTICE
        assert await _changed(ctrl) == [2]
        assert sorted(await ctrl.refresh_namespaces()) == [1]
        gone = await ctrl.queue().submit(cmd.read(0, 2, 0, 1, bs), read_len=bs)
        assert (gone.sct, gone.sc) == (StatusType.GENERIC, 0x0B)  # Invalid Namespace
        # The first namespace served all along.
        assert bytes(await ctrl.read(1, 3, 1)) == bytes(bs)


async def test_resize_tells_the_host(daemon: DaemonThread) -> None:
    daemon.ok("volume", "create", "vol", "--size", "16M")
    daemon.ok("export", "create", NQN_1, "--volume", "vol", "--allow-any-host")
    async with await Controller.connect("127.0.0.1", daemon.port, NQN_1,
                                        hostnqn=HOST_B) as ctrl:
        aer = await _aen_ready(ctrl)
        await in_thread(daemon.ok, "volume", "resize", "vol", "--size", "32M")
        assert (await asyncio.wait_for(aer, AEN_TIMEOUT_S)).cqe.dw0 == NS_NOTICE
        assert await _changed(ctrl) == [1]
        ns = (await ctrl.refresh_namespaces())[1]
        assert ns.nsze * ns.block_size == 32 << 20


async def test_a_host_not_allowed_is_refused_at_connect(daemon: DaemonThread) -> None:
    daemon.ok("volume", "create", "vol", "--size", "8M")
    daemon.ok("export", "create", NQN_1, "--volume", "vol", "--host", HOST_A)
    with pytest.raises(CommandFailed) as refused:
        await Controller.connect("127.0.0.1", daemon.port, NQN_1, hostnqn=HOST_B)
    assert refused.value.sct == StatusType.COMMAND_SPECIFIC
    assert refused.value.sc == CommandSpecificStatus.CONNECT_INVALID_HOST
    # Allowed now: it connects.
    daemon.ok("host", "add", NQN_1, HOST_B)
    ctrl = await Controller.connect("127.0.0.1", daemon.port, NQN_1, hostnqn=HOST_B)
    try:
        assert sorted(ctrl.namespaces) == [1]
        # Disallowed again: its connection goes at once.
        await in_thread(daemon.ok, "host", "remove", NQN_1, HOST_B)
        with pytest.raises((CommandFailed, ConnectionError, OSError, asyncio.TimeoutError)):
            for _ in range(50):
                await ctrl.read(1, 0, 1)
                await asyncio.sleep(0.05)
    finally:
        await ctrl.close(shutdown=False)
    assert daemon.ok("export", "show", NQN_1, "--json").json["controllers"] == 0


async def test_discovery_lists_only_what_the_host_may_connect_to(daemon: DaemonThread) -> None:
    daemon.ok("volume", "create", "vol", "--size", "8M")
    daemon.ok("export", "create", NQN_1, "--volume", "vol", "--host", HOST_A)
    daemon.ok("export", "create", NQN_2, "--allow-any-host")
    seen_a = {e.subnqn for e in await discover("127.0.0.1", daemon.port, hostnqn=HOST_A)}
    seen_b = {e.subnqn for e in await discover("127.0.0.1", daemon.port, hostnqn=HOST_B)}
    assert {NQN_1, NQN_2} <= seen_a
    assert NQN_2 in seen_b and NQN_1 not in seen_b


async def test_deleting_an_exported_volume_needs_force(daemon: DaemonThread) -> None:
    daemon.ok("volume", "create", "vol", "--size", "8M")
    daemon.ok("volume", "create", "keep", "--size", "8M")
    daemon.ok("export", "create", NQN_1, "--volume", "keep", "--volume", "vol",
              "--allow-any-host")
    r = daemon.cli("volume", "delete", "vol")
    assert r.rc == 1 and NQN_1 in r.err and "--force" in r.err
    async with await Controller.connect("127.0.0.1", daemon.port, NQN_1) as ctrl:
        assert sorted(ctrl.namespaces) == [1, 2]
        aer = await _aen_ready(ctrl)
        await in_thread(daemon.ok, "volume", "delete", "vol", "--force")
        assert (await asyncio.wait_for(aer, AEN_TIMEOUT_S)).cqe.dw0 == NS_NOTICE
        assert sorted(await ctrl.refresh_namespaces()) == [1]
    assert [n["volume"] for n in daemon.ok("export", "show", NQN_1, "--json").json[
        "namespaces"]] == ["keep"]
    r = daemon.cli("export", "delete", NQN_1)
    assert r.rc == 1 and "--force" in r.err


async def test_a_snapshot_exports_read_only(daemon: DaemonThread) -> None:
    daemon.ok("volume", "create", "vol", "--size", "8M")
    daemon.ok("snapshot", "create", "vol", "snap")
    e = daemon.ok("export", "create", NQN_1, "--volume", "snap", "--allow-any-host",
                  "--json").json
    assert e["namespaces"][0]["read_only"] is True
    async with await Controller.connect("127.0.0.1", daemon.port, NQN_1) as ctrl:
        bs = ctrl.block_size(1)
        assert bytes(await ctrl.read(1, 0, 1)) == bytes(bs)
        with pytest.raises(CommandFailed) as refused:
            await ctrl.write(1, 0, b"\x01" * bs)
        assert refused.value.sct == StatusType.GENERIC and refused.value.sc == 0x20
