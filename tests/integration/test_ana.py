"""ANA and multipath, seen by the Python initiator: one subsystem through two listeners (two
paths), the Identify fields a multipath host needs, the ANA log of each path, the ANA change
notice, the status of I/O per state, and a removed listener as a lost path.

Real sockets on 127.0.0.1; the states are changed through the target's API (the control
module's path is tested in tests/control/test_ana_control.py)."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from target.ana import ANATT_S, MAX_ANA_GROUPS
from target.blockdev import RamDevice
from target.host import commands as cmd
from target.host.controller import Controller
from target.host.queue_client import CommandFailed
from target.nvme.logpages import pull_ana_log
from target.nvme.spec import (
    AEC_ANA_CHANGE,
    AEC_NS_ATTRIBUTE,
    ANA_LSP_RGO,
    CMIC_ANA,
    AnaState,
    AsyncEventNotice,
    AsyncEventType,
    FeatureId,
    LogPageId,
    PathStatus,
    StatusType,
)
from target.server import TargetServer
from target.subsystem import Listener, Subsystem, Target

NQN = "nqn.2026-12.io.sbstore:ana"
OTHER_NQN = "nqn.2026-12.io.sbstore:ana-other"
ANA_LOG_BYTES = 4096


@dataclass
class TwoPaths:
    target: Target
    server: TargetServer
    sub: Subsystem
    a: Listener
    b: Listener


@pytest.fixture
async def two_paths() -> AsyncIterator[TwoPaths]:
    target = Target()
    sub = Subsystem(NQN, serial="SBSANA0001")
    sub.add_namespace(RamDevice(8 << 20, block_size=4096, uuid=uuid.UUID(int=11)))
    sub.add_namespace(RamDevice(8 << 20, block_size=4096, uuid=uuid.UUID(int=12)), anagrpid=2)
    target.add_subsystem(sub)
    other = Subsystem(OTHER_NQN, serial="SBSANA0002")
    other.add_namespace(RamDevice(8 << 20, block_size=4096, uuid=uuid.UUID(int=13)))
    target.add_subsystem(other)
    server = TargetServer(target)
    a = await server.listen("127.0.0.1", 0)
    b = await server.listen("127.0.0.1", 0)
    try:
        yield TwoPaths(target, server, sub, a, b)
    finally:
        await server.close()


async def _connect(listener: Listener, nqn: str = NQN, **kw: object) -> Controller:
    return await Controller.connect(listener.traddr, int(listener.trsvcid), nqn,
                                    timeout_s=5.0, **kw)  # type: ignore[arg-type]


async def _ana_log(c: Controller, *, rgo: bool = False,
                   rae: bool = False) -> tuple[int, dict[int, tuple[int, tuple[int, ...]]]]:
    page = await c.get_log_page(LogPageId.ANA, ANA_LOG_BYTES, rae=rae,
                                lsp=ANA_LSP_RGO if rgo else 0)
    chgcnt, groups = pull_ana_log(page)
    return chgcnt, {g.grpid: (g.state, g.nsids) for g in groups}


async def test_identify_reports_ana(two_paths: TwoPaths) -> None:
    async with await _connect(two_paths.a) as c:
        info = c.info
        assert info is not None
        assert info.cmic & CMIC_ANA
        assert info.oaes & AEC_ANA_CHANGE and info.oaes & AEC_NS_ATTRIBUTE
        assert info.anatt == ANATT_S
        assert info.anacap & 0x1F == 0x1F  # optimized, non-optimized, inaccessible, loss, change
        assert info.anagrpmax == info.nanagrpid == MAX_ANA_GROUPS
        assert c.namespaces[1].anagrpid == 1 and c.namespaces[2].anagrpid == 2


async def test_ana_log_per_path(two_paths: TwoPaths) -> None:
    t = two_paths
    async with await _connect(t.a) as ca, await _connect(t.b) as cb:
        chg0, groups = await _ana_log(ca)
        assert groups == {1: (AnaState.OPTIMIZED, (1,)), 2: (AnaState.OPTIMIZED, (2,))}
        t.target.set_ana_state(t.b.portid, AnaState.INACCESSIBLE, nqn=NQN)
        t.target.set_ana_state(t.b.portid, AnaState.NON_OPTIMIZED, nqn=NQN, grpid=2)
        chg_a, groups_a = await _ana_log(ca)
        chg_b, groups_b = await _ana_log(cb)
        assert groups_a == {1: (AnaState.OPTIMIZED, (1,)), 2: (AnaState.OPTIMIZED, (2,))}
        assert groups_b == {1: (AnaState.INACCESSIBLE, (1,)), 2: (AnaState.NON_OPTIMIZED, (2,))}
        assert chg_b > chg0 and chg_a == chg_b  # one change count per subsystem
        _, rgo = await _ana_log(cb, rgo=True)
        assert rgo == {1: (AnaState.INACCESSIBLE, ()), 2: (AnaState.NON_OPTIMIZED, ())}
        # Another subsystem on the same port is not affected by a setting naming NQN.
        async with await _connect(t.b, OTHER_NQN) as co:
            assert (await _ana_log(co))[1] == {1: (AnaState.OPTIMIZED, (1,))}


async def test_io_status_follows_the_path_state(two_paths: TwoPaths) -> None:
    t = two_paths
    block = b"\xa5" * 4096
    async with await _connect(t.a) as ca, await _connect(t.b) as cb:
        await ca.write(1, 0, block)
        expected = {AnaState.INACCESSIBLE: PathStatus.ANA_INACCESSIBLE,
                    AnaState.PERSISTENT_LOSS: PathStatus.ANA_PERSISTENT_LOSS,
                    AnaState.CHANGE: PathStatus.ANA_TRANSITION}
        for state, sc in expected.items():
            t.target.set_ana_state(t.b.portid, state)
            for attempt in (cb.read(1, 0, 1), cb.write(1, 0, block), cb.flush(1)):
                with pytest.raises(CommandFailed) as failed:
                    await attempt
                assert (failed.value.sct, failed.value.sc, failed.value.dnr) == (
                    StatusType.PATH, sc, False)
            assert bytes(await ca.read(1, 0, 1)) == block  # the other path serves
        t.target.set_ana_state(t.b.portid, AnaState.NON_OPTIMIZED)
        assert bytes(await cb.read(1, 0, 1)) == block
        t.target.set_ana_state(t.b.portid, None)
        await cb.write(1, 1, block)
        # An NSID that does not exist is still Invalid Namespace, whatever the path's state.
        t.target.set_ana_state(t.b.portid, AnaState.INACCESSIBLE)
        done = await cb.queue().submit(cmd.read(0, 9, 0, 1, 4096), read_len=4096)
        assert (done.sct, done.sc) == (StatusType.GENERIC, 0x0B)
        # Admin commands work on an inaccessible path.
        assert (await cb.identify_namespace(1)).anagrpid == 1


async def _aer(c: Controller) -> asyncio.Task[object]:
    return asyncio.create_task(c.admin.submit(cmd.async_event_request(0), timeout_s=None))


async def test_ana_change_notice(two_paths: TwoPaths) -> None:
    t = two_paths
    async with await _connect(t.a) as ca, await _connect(t.b) as cb:
        for c in (ca, cb):
            await c.admin_cmd(cmd.set_features(0, FeatureId.ASYNC_EVENT_CONFIG,
                                               AEC_ANA_CHANGE | AEC_NS_ATTRIBUTE))
        aer_a, aer_b = await _aer(ca), await _aer(cb)
        await asyncio.sleep(0.05)
        t.target.set_ana_state(t.b.portid, AnaState.INACCESSIBLE, nqn=NQN, grpid=2)
        done = await asyncio.wait_for(aer_b, 5)
        dw0 = done.cqe.dw0  # type: ignore[attr-defined]
        assert dw0 & 0x7 == AsyncEventType.NOTICE
        assert (dw0 >> 8) & 0xFF == AsyncEventNotice.ANA_CHANGE
        assert (dw0 >> 16) & 0xFF == LogPageId.ANA
        assert not aer_a.done()  # path a did not change

        # Masked until the log is read without RAE: a second change sends nothing ...
        aer_b = await _aer(cb)
        t.target.set_ana_state(t.b.portid, AnaState.CHANGE, nqn=NQN, grpid=2)
        await asyncio.sleep(0.1)
        assert not aer_b.done()
        await _ana_log(cb, rae=True)  # RAE: still masked
        t.target.set_ana_state(t.b.portid, AnaState.INACCESSIBLE, nqn=NQN, grpid=2)
        await asyncio.sleep(0.1)
        assert not aer_b.done()
        # ... and reading it re-arms the notice.
        _, groups = await _ana_log(cb)
        assert groups[2][0] == AnaState.INACCESSIBLE
        t.target.set_ana_state(t.b.portid, None, nqn=NQN, grpid=2)
        done = await asyncio.wait_for(aer_b, 5)
        dw0 = done.cqe.dw0  # type: ignore[attr-defined]
        assert (dw0 >> 8) & 0xFF == AsyncEventNotice.ANA_CHANGE
        assert not aer_a.done()
        aer_a.cancel()


async def test_no_notice_unless_enabled(two_paths: TwoPaths) -> None:
    t = two_paths
    async with await _connect(t.b) as cb:
        aer = await _aer(cb)
        t.target.set_ana_state(t.b.portid, AnaState.INACCESSIBLE)
        await asyncio.sleep(0.1)
        assert not aer.done()
        aer.cancel()


async def test_removed_listener_is_a_lost_path(two_paths: TwoPaths) -> None:
    t = two_paths
    block = b"\x3c" * 4096
    ca = await _connect(t.a)
    cb = await _connect(t.b)
    try:
        await cb.write(1, 2, block)
        t.target.set_ana_state(t.b.portid, AnaState.INACCESSIBLE)
        await t.server.stop_listening(t.b)
        # The host sees the path's connections close (not an error status), the other path
        # goes on serving, and the removed port's ANA setting is gone with it.
        assert await cb.admin.wait_closed(5) and await cb.io_queues[0].wait_closed(5)
        assert bytes(await ca.read(1, 2, 1)) == block
        assert t.target.ana.state(t.b.portid, NQN, 1) == AnaState.OPTIMIZED
        # Listening again on the same port id restores the path, optimized.
        again = await t.server.listen("127.0.0.1", int(t.b.trsvcid), portid=t.b.portid)
        async with await _connect(again) as cb2:
            assert bytes(await cb2.read(1, 2, 1)) == block
            assert (await _ana_log(cb2))[1][1][0] == AnaState.OPTIMIZED
    finally:
        await cb.close(shutdown=False)
        await ca.close()


async def test_namespace_added_to_an_inaccessible_group(two_paths: TwoPaths) -> None:
    t = two_paths
    async with await _connect(t.b) as cb:
        t.target.set_ana_state(t.b.portid, AnaState.INACCESSIBLE, nqn=NQN, grpid=3)
        chg0, _ = await _ana_log(cb)
        nsid = t.sub.add_namespace(RamDevice(4 << 20, block_size=4096,
                                             uuid=uuid.UUID(int=14)), anagrpid=3)
        chg1, groups = await _ana_log(cb)
        assert chg1 > chg0 and groups[3] == (AnaState.INACCESSIBLE, (nsid,))
        await cb.refresh_namespaces()
        with pytest.raises(CommandFailed) as failed:
            await cb.read(nsid, 0, 1)
        assert failed.value.sc == PathStatus.ANA_INACCESSIBLE
        t.sub.remove_namespace(nsid)
        assert 3 not in (await _ana_log(cb))[1]
