"""Snapshot groups and shrinking through the daemon: the CLI and API, a host writing through
our NVMe/TCP initiator (target/host) while the group is taken, and a connected host told of a
shrink."""
from __future__ import annotations

import asyncio
import struct

from target.host import Controller
from tests.control.conftest import HOST_A, NQN_1, DaemonThread, in_thread
from tests.control.test_live_export import (
    AEN_TIMEOUT_S,
    NS_NOTICE,
    _aen_ready,
    _changed,
)

SPAN = 256  # blocks each volume's writes cycle through


def _seq_block(seq: int, bs: int) -> bytes:
    return struct.pack("<Q", seq) * (bs // 8)


def _last_seq(data: bytes, bs: int) -> int:
    return max(struct.unpack_from("<Q", data, i)[0] for i in range(0, len(data), bs))


async def test_group_snapshot_of_two_volumes_under_an_alternating_writer(
        daemon: DaemonThread) -> None:
    """A host alternates sequence-numbered writes between two exported volumes, each write
    issued after the previous one completed; a group snapshot taken meanwhile through the CLI
    holds, in its two snapshots, last sequence numbers at most one write apart."""
    for name in ("a", "b"):
        daemon.ok("volume", "create", name, "--size", "8M")
    daemon.ok("export", "create", NQN_1, "--volume", "a", "--volume", "b", "--host", HOST_A)
    async with await Controller.connect("127.0.0.1", daemon.port, NQN_1, hostnqn=HOST_A,
                                        nr_io_queues=2) as ctrl:
        bs = ctrl.block_size(1)
        stop = asyncio.Event()
        done = [0]

        async def writer() -> None:
            seq = 0
            while not stop.is_set() and seq < 1_000_000:
                seq += 1
                nsid = 1 + seq % 2  # odd numbers to b (nsid 2), even ones to a (nsid 1)
                await ctrl.write(nsid, (seq // 2) % SPAN, _seq_block(seq, bs))
                done[0] = seq

        task = asyncio.create_task(writer())
        try:
            while done[0] < 2 * SPAN:  # every block written at least once
                await asyncio.sleep(0.01)
            before = done[0]
            r = await in_thread(daemon.ok, "snapshot", "create", "--group", "g1", "a", "b",
                                "--json")
            after = done[0]
            while done[0] < after + 20:  # writes go on after the snapshot
                await asyncio.sleep(0.005)
        finally:
            stop.set()
            await task
        group = r.json
        assert [s["name"] for s in group["snapshots"]] == ["a@g1", "b@g1"]
        assert all(s["group"] == "g1" and s["kind"] == "snapshot" for s in group["snapshots"])
        # Read both snapshots back through the target.
        await in_thread(daemon.ok, "export", "add-volume", NQN_1, "a@g1")
        await in_thread(daemon.ok, "export", "add-volume", NQN_1, "b@g1")
        await ctrl.refresh_namespaces()
        last_a = _last_seq(bytes(await ctrl.read(3, 0, SPAN)), bs)
        last_b = _last_seq(bytes(await ctrl.read(4, 0, SPAN)), bs)
        assert last_a % 2 == 0 and last_b % 2 == 1
        assert abs(last_a - last_b) <= 1, (last_a, last_b)
        assert before <= max(last_a, last_b) <= after + 1, (before, last_a, last_b, after)


def test_groups_listed_deleted_and_kept_across_restarts(daemon: DaemonThread) -> None:
    for name in ("a", "b", "c"):
        daemon.ok("volume", "create", name, "--size", "4M")
    daemon.ok("snapshot", "create", "--group", "nightly", "a", "b")
    daemon.ok("snapshot", "create", "--group", "other", "c")
    r = daemon.cli("snapshot", "create", "--group", "nightly", "c")
    assert r.rc == 1 and "already exists" in r.err
    r = daemon.cli("snapshot", "create", "a", "b", "c")
    assert r.rc == 2
    groups = daemon.ok("snapshot", "groups", "--json").json
    assert [(g["name"], [s["name"] for s in g["snapshots"]]) for g in groups] == [
        ("nightly", ["a@nightly", "b@nightly"]), ("other", ["c@other"])]
    assert "a@nightly,b@nightly" in daemon.ok("snapshot", "groups").out
    with daemon.client as c:
        assert c.get("/v1/snapshot-groups/nightly")["pool"] == "p1"
        assert c.get("/v1/volumes/a@nightly")["group"] == "nightly"
    daemon.restart()
    assert [g["name"] for g in daemon.ok("snapshot", "groups", "--json").json] == [
        "nightly", "other"]
    # An exported member needs --force; deleting the group deletes its snapshots.
    daemon.ok("export", "create", NQN_1, "--volume", "b@nightly", "--allow-any-host")
    r = daemon.cli("snapshot", "delete", "--group", "nightly")
    assert r.rc == 1 and "--force" in r.err
    daemon.ok("snapshot", "delete", "--group", "nightly", "--force")
    names = {v["name"] for v in daemon.ok("volume", "list", "--all", "--json").json}
    assert names == {"a", "b", "c", "c@other"}
    assert daemon.ok("export", "show", NQN_1, "--json").json["namespaces"] == []
    r = daemon.cli("snapshot", "delete", "--group", "nightly")
    assert r.rc == 1 and "no snapshot group" in r.err
    assert daemon.cli("snapshot", "delete").rc == 2
    # The state forgot the deleted snapshots' tenancy.
    uuids = {row[1] for row in daemon.state_dump()["volumes"]}
    live = {v["uuid"] for v in daemon.ok("volume", "list", "--all", "--json").json}
    assert uuids == live


async def test_shrink_needs_force_and_tells_the_host(daemon: DaemonThread) -> None:
    daemon.ok("volume", "create", "vol", "--size", "32M")
    daemon.ok("export", "create", NQN_1, "--volume", "vol", "--allow-any-host")
    async with await Controller.connect("127.0.0.1", daemon.port, NQN_1,
                                        hostnqn=HOST_A) as ctrl:
        bs = ctrl.block_size(1)
        await ctrl.write(1, 0, b"\x11" * bs)
        await ctrl.write(1, (20 << 20) // bs, b"\x22" * bs)
        await ctrl.flush(1)
        pool_before = daemon.ok("volume", "show", "vol", "--json").json["allocated_bytes"]
        r = await in_thread(daemon.cli, "volume", "resize", "vol", "--size", "16M")
        assert r.rc == 1 and "shrinking" in r.err
        aer = await _aen_ready(ctrl)
        v = (await in_thread(daemon.ok, "volume", "resize", "vol", "--size", "16M", "--force",
                             "--json")).json
        assert v["size_bytes"] == 16 << 20 and v["allocated_bytes"] < pool_before
        assert (await asyncio.wait_for(aer, AEN_TIMEOUT_S)).cqe.dw0 == NS_NOTICE
        assert await _changed(ctrl) == [1]
        ns = (await ctrl.refresh_namespaces())[1]
        assert ns.nsze * ns.block_size == 16 << 20
        assert bytes(await ctrl.read(1, 0, 1)) == b"\x11" * bs
        # Grown again, the part past the old end reads as zeroes.
        await in_thread(daemon.ok, "volume", "resize", "vol", "--size", "32M")
        await ctrl.refresh_namespaces()
        assert bytes(await ctrl.read(1, (20 << 20) // bs, 1)) == bytes(bs)
