"""The discovery controller and its log page: contents, filtering by host, listeners, pieces."""
from __future__ import annotations

import struct

import pytest

from target.nvme.identify import pull_identify_controller
from target.nvme.logpages import pull_discovery_log
from target.nvme.spec import (
    AEC_DISCOVERY_CHANGE,
    DISCOVERY_NQN,
    AdminOpcode,
    FeatureId,
    LogPageId,
    StatusType,
)
from target.nvme.spec import (
    CommandSpecificStatus as CS,
)
from target.nvme.spec import (
    GenericStatus as GS,
)
from target.subsystem import Subsystem
from tests.unit.controller.helpers import (
    HOSTNQN,
    HOSTNQN2,
    OTHER_NQN,
    SUBNQN,
    Conn,
    Env,
    bring_up_admin,
    connect_data,
    connect_sqe,
    get_log_page,
    identify,
    make_env,
    set_features,
    sqe,
)


async def _log(conn: Conn) -> tuple[int, list]:
    head = await conn.cmd(get_log_page(LogPageId.DISCOVERY, 1024, rae=True))
    assert head.ok
    genctr, numrec = struct.unpack_from("<QQ", head.data)
    whole = await conn.cmd(get_log_page(LogPageId.DISCOVERY, 1024 * (numrec + 1)))
    assert whole.ok and whole.data[:1024] == head.data
    got_genctr, entries = pull_discovery_log(whole.data)
    assert got_genctr == genctr and len(entries) == numrec
    return genctr, entries


def _with_restricted_subsystem(env: Env) -> None:
    env.target.add_subsystem(Subsystem(OTHER_NQN, allow_any_host=False,
                                       allowed_hosts=[HOSTNQN2]))


async def test_discovery_controller_identify() -> None:
    env = make_env()
    disc, cntlid = await bring_up_admin(env, subnqn=DISCOVERY_NQN, kato_ms=0)
    idc = pull_identify_controller((await disc.cmd(identify(1))).data)
    assert idc.cntrltype == 2 and idc.subnqn == DISCOVERY_NQN and idc.cntlid == cntlid
    assert idc.oaes & AEC_DISCOVERY_CHANGE and idc.sgls & 1 and idc.nn == 0
    assert idc.lpa & 0x4 and idc.maxcmd > 0


async def test_log_lists_what_each_host_may_connect_to() -> None:
    env = make_env()
    _with_restricted_subsystem(env)
    d1, _ = await bring_up_admin(env, subnqn=DISCOVERY_NQN, hostnqn=HOSTNQN, kato_ms=0)
    d2, _ = await bring_up_admin(env, subnqn=DISCOVERY_NQN, hostnqn=HOSTNQN2, kato_ms=0)
    genctr, entries = await _log(d1)
    assert genctr == env.target.genctr
    assert [(e.subtype, e.subnqn) for e in entries] == [(2, SUBNQN), (3, DISCOVERY_NQN)]
    nvm = entries[0]
    assert (nvm.trtype, nvm.adrfam, nvm.traddr, nvm.trsvcid) == (3, 1, "127.0.0.1", "4420")
    assert nvm.portid == env.listener.portid and nvm.cntlid == 0xFFFF and nvm.asqsz == 32
    assert nvm.treq == 0x04  # not specified, SQ flow control disable supported
    assert entries[1].eflags & 1
    _, entries = await _log(d2)
    assert [(e.subtype, e.subnqn) for e in entries] == [  # subsystems in NQN order
        (2, OTHER_NQN), (2, SUBNQN), (3, DISCOVERY_NQN)]


async def test_log_per_listener_and_reachability() -> None:
    env = make_env()
    v6 = env.target.add_listener("::1", 4421)
    only_v6 = Subsystem(OTHER_NQN, listeners=[v6.portid])
    env.target.add_subsystem(only_v6)
    disc, _ = await bring_up_admin(env, subnqn=DISCOVERY_NQN, kato_ms=0)
    _, entries = await _log(disc)
    got = [(e.subtype, e.subnqn, e.traddr, e.trsvcid, e.adrfam) for e in entries]
    assert got == [
        (2, OTHER_NQN, "::1", "4421", 2),
        (2, SUBNQN, "127.0.0.1", "4420", 1),
        (2, SUBNQN, "::1", "4421", 2),
        (3, DISCOVERY_NQN, "127.0.0.1", "4420", 1),
        (3, DISCOVERY_NQN, "::1", "4421", 2),
    ]
    # Connecting to it through the other listener is refused like an unknown subsystem.
    r = await Conn.open(env.target, env.listener).cmd(connect_sqe(), connect_data(OTHER_NQN))
    assert r.status == (StatusType.COMMAND_SPECIFIC, CS.CONNECT_INVALID_PARAMETERS)


async def test_wildcard_listener_shows_the_local_address() -> None:
    env = make_env()
    any4 = env.target.add_listener("0.0.0.0", 4430)
    disc = Conn.open(env.target, any4, local_traddr="192.0.2.7")
    assert (await disc.cmd(connect_sqe(kato_ms=0), connect_data(DISCOVERY_NQN))).ok
    from target.nvme.spec import Property
    from tests.unit.controller.helpers import CC_LINUX, prop_set

    assert (await disc.cmd(prop_set(Property.CC, CC_LINUX))).ok
    _, entries = await _log(disc)
    addrs = {(e.traddr, e.trsvcid) for e in entries}
    assert ("192.0.2.7", "4430") in addrs and ("0.0.0.0", "4430") not in addrs
    assert ("127.0.0.1", "4420") in addrs


async def test_log_read_in_pieces_and_generation_counter() -> None:
    env = make_env()
    disc, _ = await bring_up_admin(env, subnqn=DISCOVERY_NQN, kato_ms=0)
    genctr, entries = await _log(disc)
    env.target.add_subsystem(Subsystem(OTHER_NQN))
    head = await disc.cmd(get_log_page(LogPageId.DISCOVERY, 1024))
    assert struct.unpack_from("<QQ", head.data) == (genctr + 1, len(entries) + 1)
    piece = await disc.cmd(get_log_page(LogPageId.DISCOVERY, 1024, offset=2048))
    _, now_entries = await _log(disc)
    assert piece.data == (await disc.cmd(
        get_log_page(LogPageId.DISCOVERY, 4096))).data[2048:3072]
    assert {e.subnqn for e in now_entries} == {SUBNQN, OTHER_NQN, DISCOVERY_NQN}
    # Past the end reads as zeroes (the log may shrink between a host's reads).
    tail = await disc.cmd(get_log_page(LogPageId.DISCOVERY, 8192, offset=1024))
    assert tail.ok and tail.data[3 * 1024:] == bytes(8192 - 3 * 1024)


@pytest.mark.parametrize("raw,status", [
    (identify(0, nsid=1), (StatusType.GENERIC, GS.INVALID_FIELD)),
    (identify(2), (StatusType.GENERIC, GS.INVALID_FIELD)),
    (get_log_page(LogPageId.SMART_HEALTH, 512), (StatusType.COMMAND_SPECIFIC,
                                                 CS.INVALID_LOG_PAGE)),
    (set_features(FeatureId.NUMBER_OF_QUEUES, 0), (StatusType.GENERIC, GS.INVALID_FIELD)),
    (sqe(AdminOpcode.ABORT), (StatusType.GENERIC, GS.INVALID_OPCODE)),
])
async def test_discovery_controller_refuses_the_rest(raw: bytes, status: tuple) -> None:
    env = make_env()
    disc, _ = await bring_up_admin(env, subnqn=DISCOVERY_NQN, kato_ms=0)
    assert (await disc.cmd(raw)).status == status
    assert (await disc.cmd(get_log_page(LogPageId.ERROR_INFORMATION, 64))).ok


async def test_discovery_connect_needs_a_dynamic_controller_and_has_no_io_queues() -> None:
    env = make_env()
    r = await Conn.open(env.target, env.listener).cmd(
        connect_sqe(kato_ms=0), connect_data(DISCOVERY_NQN, cntlid=5))
    assert r.status == (StatusType.COMMAND_SPECIFIC, CS.CONNECT_INVALID_PARAMETERS)
    _disc, cntlid = await bring_up_admin(env, subnqn=DISCOVERY_NQN, kato_ms=0)
    io = Conn.open(env.target, env.listener)
    r = await io.cmd(connect_sqe(1, 31), connect_data(DISCOVERY_NQN, cntlid=cntlid))
    assert r.status == (StatusType.COMMAND_SPECIFIC, CS.CONNECT_INVALID_PARAMETERS)
    assert r.cqe.dw0 == 42  # qid


async def test_any_host_may_use_discovery() -> None:
    env = make_env()
    env.subsystem.set_host_acl(False, [])
    disc, _ = await bring_up_admin(env, subnqn=DISCOVERY_NQN, kato_ms=0)
    _, entries = await _log(disc)
    assert [e.subtype for e in entries] == [3]
