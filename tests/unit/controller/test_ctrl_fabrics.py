"""Connect, Property Get/Set, the CC state table and Disconnect, driven with SQE bytes."""
from __future__ import annotations

import pytest

from target.controller import CC_TRANSITIONS, CtrlState
from target.nvme.identify import (
    pull_identify_controller,
    pull_identify_namespace,
    pull_namespace_list,
    pull_ns_id_descriptors,
)
from target.nvme.spec import (
    AEC_NS_ATTRIBUTE,
    CONNECT_CATTR_DISABLE_SQFLOW,
    NSID_ALL,
    SQHD_DISABLED,
    AdminOpcode,
    FeatureId,
    NsIdDescriptorType,
    Property,
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
    CC_LINUX,
    CC_SHUTDOWN,
    HOSTNQN,
    HOSTNQN2,
    SUBNQN,
    Conn,
    bring_up_admin,
    connect_data,
    connect_io,
    connect_sqe,
    disconnect,
    fabrics,
    identify,
    make_env,
    prop_get,
    prop_set,
    read,
    set_features,
    sqe,
)

SPECIFIC = StatusType.COMMAND_SPECIFIC


async def test_linux_admin_queue_sequence() -> None:
    """The admin-queue conversation of Linux 6.1 nvme_tcp_setup_ctrl + nvme_start_ctrl."""
    env = make_env()
    conn = Conn.open(env.target, env.listener)
    r = await conn.cmd(connect_sqe(qid=0, sqsize=31, kato_ms=5000), connect_data())
    assert r.ok and r.cqe.sqid == 0 and r.cqe.sqhd == 1
    cntlid = r.cqe.dw0 & 0xFFFF
    assert 1 <= cntlid <= 0xFFEF

    cap = await conn.cmd(prop_get(Property.CAP, size8=True))
    cap_value = cap.cqe.dw0 | cap.cqe.dw1 << 32
    assert cap_value & 0xFFFF == 1023  # MQES
    assert cap_value >> 16 & 1  # CQR
    assert cap_value >> 24 & 0xFF  # TO
    assert cap_value >> 37 & 1  # CSS: NVM command set
    assert cap_value >> 48 & 0xF == 0 and cap_value >> 52 & 0xF == 0  # MPSMIN/MAX: 4 KiB
    vs = await conn.cmd(prop_get(Property.VS))
    assert vs.cqe.dw0 == 0x00010300
    assert (await conn.cmd(prop_get(Property.CSTS))).cqe.dw0 == 0  # not ready before CC.EN
    assert (await conn.cmd(prop_set(Property.CC, CC_LINUX))).ok
    assert (await conn.cmd(prop_get(Property.CC))).cqe.dw0 == CC_LINUX
    assert (await conn.cmd(prop_get(Property.CSTS))).cqe.dw0 == 1  # RDY

    idc = await conn.cmd(identify(1))
    assert idc.ok and len(idc.data) == 4096
    ctrl = pull_identify_controller(idc.data)
    assert ctrl.cntlid == cntlid and ctrl.subnqn == SUBNQN and ctrl.cntrltype == 1
    assert ctrl.ver == 0x10300 and ctrl.kas > 0 and ctrl.sqes == 0x66 and ctrl.cqes == 0x44
    assert ctrl.ioccsz == (64 + 8192) // 16 and ctrl.iorcsz == 1 and ctrl.icdoff == 0
    assert ctrl.sgls & 0x3 == 1 and ctrl.sgls & (1 << 20) and ctrl.msdbd == 1
    assert (4096 << ctrl.mdts) >= 1 << 20
    assert ctrl.maxcmd >= 128 and ctrl.nn >= 2 and ctrl.oncs & 0x0C == 0x0C
    assert ctrl.vwc & 1 and ctrl.oaes & AEC_NS_ATTRIBUTE and ctrl.aerl == 3
    assert ctrl.cmic & 0x2 and ctrl.ctratt & 1 and ctrl.lpa & 0x7 == 0x7
    assert ctrl.serial == "SBUNIT01" and ctrl.model == "sbstore unit" and ctrl.firmware

    # Linux: Identify CNS 06h (NVM controller), effects log when LPA says so.
    assert (await conn.cmd(identify(6, csi=0))).ok
    nq = await conn.cmd(set_features(FeatureId.NUMBER_OF_QUEUES, (3 << 16) | 3))
    assert nq.ok and nq.cqe.dw0 == (3 << 16) | 3  # four I/O queues granted

    ns_list = await conn.cmd(identify(2, nsid=0))
    assert pull_namespace_list(ns_list.data) == [1, 2]
    for nsid, lbads in ((1, 9), (2, 12)):
        descs = pull_ns_id_descriptors((await conn.cmd(identify(3, nsid=nsid))).data)
        ns = env.subsystem.namespaces[nsid]
        assert descs[NsIdDescriptorType.UUID] == ns.device.uuid.bytes
        assert descs[NsIdDescriptorType.NGUID] == ns.nguid
        assert descs[NsIdDescriptorType.EUI64] == ns.eui64
        assert descs[NsIdDescriptorType.CSI] == b"\x00"
        idn = pull_identify_namespace((await conn.cmd(identify(0, nsid=nsid))).data)
        assert idn.lbads == lbads and idn.nsze == idn.ncap == (1 << 20) >> lbads
        assert idn.nguid == ns.nguid and idn.eui64 == ns.eui64
        assert idn.nsfeat & 1 and idn.dlfeat & 0x7 == 1 and idn.nmic & 1
    assert (await conn.cmd(set_features(FeatureId.ASYNC_EVENT_CONFIG, AEC_NS_ATTRIBUTE))).ok
    await conn.pending(sqe(AdminOpcode.ASYNC_EVENT_REQUEST, cid=77))

    io, r = await connect_io(env, cntlid, 1)
    assert r.ok and r.cqe.dw0 & 0xFFFF == cntlid and r.cqe.sqid == 1
    assert not io.session.allow_success_flag
    assert (await io.cmd(read(1, 0, 8))).ok


async def test_connect_to_unknown_subsystem_is_invalid_parameter_on_subnqn() -> None:
    env = make_env()
    conn = Conn.open(env.target, env.listener)
    r = await conn.cmd(connect_sqe(), connect_data("nqn.2024-01.io.sbstore:nope"))
    assert r.status == (SPECIFIC, CS.CONNECT_INVALID_PARAMETERS) and r.dnr
    assert r.cqe.dw0 == (1 << 16) | 256  # IATTR: in the data; IPO: subnqn
    assert not conn.closed and conn.session.controller is None


async def test_disallowed_host_is_invalid_host() -> None:
    env = make_env()
    env.subsystem.set_allow_any_host(False)
    env.subsystem.add_host(HOSTNQN)
    conn = Conn.open(env.target, env.listener)
    r = await conn.cmd(connect_sqe(), connect_data(hostnqn=HOSTNQN2))
    assert r.status == (SPECIFIC, CS.CONNECT_INVALID_HOST) and r.dnr
    assert r.cqe.dw0 == (1 << 16) | 512
    ok = await Conn.open(env.target, env.listener).cmd(connect_sqe(), connect_data())
    assert ok.ok


async def test_subsystem_not_on_this_listener_is_unknown() -> None:
    env = make_env()
    other = env.target.add_listener("127.0.0.2", 4420)
    env.subsystem.set_listeners([other.portid])
    r = await Conn.open(env.target, env.listener).cmd(connect_sqe(), connect_data())
    assert r.status == (SPECIFIC, CS.CONNECT_INVALID_PARAMETERS) and r.cqe.dw0 == (1 << 16) | 256
    assert (await Conn.open(env.target, other).cmd(connect_sqe(), connect_data())).ok


@pytest.mark.parametrize("raw", [
    read(1, 0, 1),
    identify(1),
    prop_get(Property.CAP, size8=True),
    bytes(fabrics(0x08)),  # Disconnect
    bytes(64),  # Flush / Delete SQ opcode 0
])
async def test_commands_before_connect_are_sequence_errors(raw: bytes) -> None:
    env = make_env()
    r = await Conn.open(env.target, env.listener).cmd(raw)
    assert r.status == (StatusType.GENERIC, GS.COMMAND_SEQUENCE_ERROR) and r.dnr


@pytest.mark.parametrize("kwargs,data_kwargs,status,dw0", [
    ({"recfmt": 1}, {}, (SPECIFIC, CS.CONNECT_INCOMPATIBLE_FORMAT), 0),
    ({"sqsize": 0}, {}, (SPECIFIC, CS.CONNECT_INVALID_PARAMETERS), 44),
    ({"sqsize": 4096}, {}, (SPECIFIC, CS.CONNECT_INVALID_PARAMETERS), 44),
    ({}, {"cntlid": 0}, (SPECIFIC, CS.CONNECT_INVALID_PARAMETERS), (1 << 16) | 16),
    ({}, {"cntlid": 0xFFF5}, (SPECIFIC, CS.CONNECT_INVALID_PARAMETERS), (1 << 16) | 16),
])
async def test_bad_admin_connects(kwargs: dict, data_kwargs: dict, status: tuple[int, int],
                                  dw0: int) -> None:
    env = make_env()
    r = await Conn.open(env.target, env.listener).cmd(connect_sqe(**kwargs),
                                                      connect_data(**data_kwargs))
    assert r.status == status and r.dnr and r.cqe.dw0 == dw0


async def test_connect_data_must_be_1024_bytes_and_nqns_terminated() -> None:
    env = make_env()
    r = await Conn.open(env.target, env.listener).cmd(connect_sqe(), bytes(connect_data())[:512])
    assert r.status == (StatusType.GENERIC, GS.SGL_DATA_LENGTH_INVALID)
    r = await Conn.open(env.target, env.listener).cmd(connect_sqe(), None)
    assert r.status == (StatusType.GENERIC, GS.SGL_DATA_LENGTH_INVALID)
    data = connect_data()
    data[512:768] = b"x" * 256  # hostnqn without NUL
    r = await Conn.open(env.target, env.listener).cmd(connect_sqe(), data)
    assert r.status == (SPECIFIC, CS.CONNECT_INVALID_PARAMETERS) and r.cqe.dw0 == (1 << 16) | 512


async def test_static_and_dynamic_controller_ids() -> None:
    env = make_env()
    a = await Conn.open(env.target, env.listener).cmd(connect_sqe(), connect_data(cntlid=7))
    assert a.ok and a.cqe.dw0 == 7
    busy = await Conn.open(env.target, env.listener).cmd(connect_sqe(), connect_data(cntlid=7))
    assert busy.status == (SPECIFIC, CS.CONNECT_CONTROLLER_BUSY)
    ids = set()
    for _ in range(3):
        r = await Conn.open(env.target, env.listener).cmd(connect_sqe(), connect_data())
        assert r.ok
        ids.add(r.cqe.dw0)
    assert len(ids) == 3 and 7 not in ids
    anystatic = await Conn.open(env.target, env.listener).cmd(
        connect_sqe(), connect_data(cntlid=0xFFFE))
    assert anystatic.ok and anystatic.cqe.dw0 not in ids | {7}


async def test_io_connect_checks() -> None:
    env = make_env()
    admin, cntlid = await bring_up_admin(env)
    assert (await admin.cmd(set_features(FeatureId.NUMBER_OF_QUEUES, (1 << 16) | 1))).ok  # 2
    # wrong cntlid, wrong host, wrong subsystem
    for kw in ({"cntlid": cntlid + 1}, {"hostnqn": HOSTNQN2}):
        _, r = await connect_io(env, kw.get("cntlid", cntlid), 1, hostnqn=kw.get("hostnqn", HOSTNQN))
        assert r.status == (SPECIFIC, CS.CONNECT_INVALID_PARAMETERS)
        assert r.cqe.dw0 == (1 << 16) | 16
    _, r = await connect_io(env, cntlid, 1, subnqn="nqn.2024-01.io.sbstore:nope")
    assert r.cqe.dw0 == (1 << 16) | 256
    # qid beyond the number of queues granted
    _, r = await connect_io(env, cntlid, 3)
    assert r.status == (SPECIFIC, CS.CONNECT_INVALID_PARAMETERS) and r.cqe.dw0 == 42
    # sqsize beyond MQES, or zero
    for sqsize in (0, 1024):
        _, r = await connect_io(env, cntlid, 1, sqsize=sqsize)
        assert r.status == (SPECIFIC, CS.CONNECT_INVALID_PARAMETERS) and r.cqe.dw0 == 44
    # a qid twice
    q1, r = await connect_io(env, cntlid, 1)
    assert r.ok
    _, r = await connect_io(env, cntlid, 1)
    assert r.status == (StatusType.GENERIC, GS.COMMAND_SEQUENCE_ERROR)
    # Set Features Number of Queues after I/O queues exist
    r = await admin.cmd(set_features(FeatureId.NUMBER_OF_QUEUES, 0))
    assert r.status == (StatusType.GENERIC, GS.COMMAND_SEQUENCE_ERROR)
    # Connect again on a connected queue
    r = await q1.cmd(connect_sqe(1, 127), connect_data(cntlid=cntlid))
    assert r.status == (StatusType.GENERIC, GS.COMMAND_SEQUENCE_ERROR)
    r = await admin.cmd(connect_sqe(0, 31), connect_data())
    assert r.status == (StatusType.GENERIC, GS.COMMAND_SEQUENCE_ERROR)


async def test_io_connect_needs_an_enabled_controller() -> None:
    env = make_env()
    admin = Conn.open(env.target, env.listener)
    r = await admin.cmd(connect_sqe(), connect_data())
    _, io = await connect_io(env, r.cqe.dw0, 1)
    assert io.status == (StatusType.GENERIC, GS.COMMAND_SEQUENCE_ERROR)


async def test_number_of_queues_is_capped_by_the_subsystem() -> None:
    env = make_env()
    small = Subsystem(OTHER := "nqn.2024-01.io.sbstore:small", max_io_queues=2)
    env.target.add_subsystem(small)
    admin, _ = await bring_up_admin(env, subnqn=OTHER)
    r = await admin.cmd(set_features(FeatureId.NUMBER_OF_QUEUES, (63 << 16) | 63))
    assert r.cqe.dw0 == (1 << 16) | 1
    r = await admin.cmd(set_features(FeatureId.NUMBER_OF_QUEUES, 0xFFFF))
    assert r.status == (StatusType.GENERIC, GS.INVALID_FIELD)


async def test_sq_flow_control_disabled() -> None:
    env = make_env()
    _admin, cntlid = await bring_up_admin(env)
    io, r = await connect_io(env, cntlid, 1, cattr=CONNECT_CATTR_DISABLE_SQFLOW)
    assert r.ok and r.cqe.sqhd == SQHD_DISABLED
    assert io.session.allow_success_flag
    for cid in range(5):
        done = await io.cmd(read(1, 0, 1, cid=cid))
        assert done.cqe.sqhd == 0 and done.cqe.cid == cid


async def test_sqhd_tracks_the_queue_and_wraps() -> None:
    env = make_env()
    _admin, cntlid = await bring_up_admin(env)
    io, r = await connect_io(env, cntlid, 1, sqsize=3)  # four entries
    assert r.cqe.sqhd == 1
    heads = [(await io.cmd(read(1, 0, 1, cid=i))).cqe.sqhd for i in range(6)]
    assert heads == [2, 3, 0, 1, 2, 3]


async def test_property_errors() -> None:
    env = make_env()
    conn, _ = await bring_up_admin(env)
    for raw in (prop_get(Property.VS, size8=True), prop_get(0x30), prop_set(Property.CAP, 0),
                prop_set(Property.CSTS, 1), prop_set(Property.CC, 1, size8=True)):
        r = await conn.cmd(raw)
        assert r.status == (StatusType.GENERIC, GS.INVALID_FIELD) and r.dnr
    low = await conn.cmd(prop_get(Property.CAP))
    high = await conn.cmd(prop_get(Property.CAP + 4))
    whole = await conn.cmd(prop_get(Property.CAP, size8=True))
    assert (low.cqe.dw0, high.cqe.dw0) == (whole.cqe.dw0, whole.cqe.dw1)
    r = await conn.cmd(bytes(fabrics(0x05)))  # Authentication Send with SECP 0: not ours
    assert r.status == (StatusType.GENERIC, GS.INVALID_FIELD)
    r = await conn.cmd(bytes(fabrics(0x03)))  # no such fabrics command type
    assert r.status == (StatusType.GENERIC, GS.INVALID_OPCODE)


async def test_admin_commands_wait_for_cc_en() -> None:
    env = make_env()
    conn = Conn.open(env.target, env.listener)
    assert (await conn.cmd(connect_sqe(), connect_data())).ok
    r = await conn.cmd(identify(1))
    assert r.status == (StatusType.GENERIC, GS.COMMAND_SEQUENCE_ERROR)


async def test_cc_transitions_shutdown_reset_and_reenable() -> None:
    env = make_env()
    admin, cntlid = await bring_up_admin(env)
    io, _ = await connect_io(env, cntlid, 1)
    ctrl = env.subsystem.controllers[cntlid]
    assert ctrl.state is CtrlState.READY
    assert (await admin.cmd(prop_set(Property.CC, CC_SHUTDOWN))).ok
    csts = (await admin.cmd(prop_get(Property.CSTS))).cqe.dw0
    assert csts >> 2 & 3 == 2 and csts & 1  # SHST complete, RDY still set while EN is
    assert ctrl.state is CtrlState.SHUTDOWN and not io.closed
    # Reset: EN 1 -> 0 closes the I/O queues, the controller lives on.
    assert (await admin.cmd(prop_set(Property.CC, 0))).ok
    assert (await admin.cmd(prop_get(Property.CSTS))).cqe.dw0 == 0
    assert io.closed and io.close_calls == 1 and not admin.closed
    assert ctrl.state is CtrlState.DISABLED and ctrl.io_queue_count == 0
    assert (await admin.cmd(prop_set(Property.CC, CC_LINUX))).ok
    assert (await admin.cmd(prop_get(Property.CSTS))).cqe.dw0 == 1
    _, r = await connect_io(env, cntlid, 1)
    assert r.ok


@pytest.mark.parametrize("cc", [
    CC_LINUX | 1 << 7,  # MPS 8 KiB
    CC_LINUX | 1 << 4,  # CSS
    CC_LINUX & ~(0xF << 16),  # IOSQES 0 on an I/O controller
    CC_LINUX | 1 << 11,  # AMS
])
async def test_enable_with_bad_cc_is_controller_fatal(cc: int) -> None:
    env = make_env()
    conn = Conn.open(env.target, env.listener)
    assert (await conn.cmd(connect_sqe(), connect_data())).ok
    assert (await conn.cmd(prop_set(Property.CC, cc))).ok
    assert (await conn.cmd(prop_get(Property.CSTS))).cqe.dw0 == 2  # CFS
    assert (await conn.cmd(prop_set(Property.CC, 0))).ok  # reset clears it
    assert (await conn.cmd(prop_get(Property.CSTS))).cqe.dw0 == 0


def test_cc_table_only_names_existing_actions() -> None:
    from target.controller import Controller

    for (state, _event), (action, next_state) in CC_TRANSITIONS.items():
        assert callable(getattr(Controller, action)), action
        assert isinstance(state, CtrlState) and isinstance(next_state, CtrlState)


async def test_disconnect_io_queue_then_close_through_the_timer() -> None:
    env = make_env()
    admin, cntlid = await bring_up_admin(env)
    io, _ = await connect_io(env, cntlid, 1)
    ctrl = env.subsystem.controllers[cntlid]
    r = await io.cmd(disconnect(cid=9), now=3.0)
    assert r.ok and r.cqe.cid == 9
    assert 1 not in ctrl.sessions and io.close_calls == 0
    assert io.session.next_deadline() == 3.0
    after = await io.cmd(read(1, 0, 1), now=3.0)
    assert not after.ok
    io.session.handle_timer(3.0)
    assert io.closed and io.close_calls == 1 and io.session.next_deadline() is None
    _, again = await connect_io(env, cntlid, 1)  # the qid is free again
    assert again.ok and not admin.closed


async def test_disconnect_on_admin_queue_is_refused() -> None:
    env = make_env()
    admin, _ = await bring_up_admin(env)
    r = await admin.cmd(disconnect())
    assert r.status == (StatusType.GENERIC, GS.INVALID_FIELD) and not admin.closed


async def test_connection_lost_on_admin_deletes_controller_and_closes_io() -> None:
    env = make_env()
    admin, cntlid = await bring_up_admin(env)
    io, _ = await connect_io(env, cntlid, 1)
    admin.session.connection_lost()
    assert cntlid not in env.subsystem.controllers
    assert io.closed and io.close_calls == 1 and admin.close_calls == 0
    admin.session.connection_lost()  # idempotent


async def test_connection_lost_on_io_frees_only_that_queue() -> None:
    env = make_env()
    _admin, cntlid = await bring_up_admin(env)
    q1, _ = await connect_io(env, cntlid, 1)
    q2, _ = await connect_io(env, cntlid, 2)
    q1.session.connection_lost()
    ctrl = env.subsystem.controllers[cntlid]
    assert set(ctrl.sessions) == {0, 2} and not q2.closed
    assert (await q2.cmd(read(1, 0, 1))).ok


async def test_transport_data_status_completes_without_executing() -> None:
    env = make_env()
    admin, cntlid = await bring_up_admin(env)
    io, _ = await connect_io(env, cntlid, 1)
    from tests.unit.controller.helpers import write

    before = bytes(await env.ram512.read(0, 1))
    r = await io.cmd(write(1, 0, 1), b"\x99" * 512, data_status=0x22)
    assert r.status == (StatusType.GENERIC, GS.TRANSIENT_TRANSPORT_ERROR) and not r.dnr
    r = await io.cmd(write(1, 0, 1), None, data_status=0x0F)
    assert r.status == (StatusType.GENERIC, GS.SGL_DATA_LENGTH_INVALID) and r.dnr
    assert bytes(await env.ram512.read(0, 1)) == before
    r = await admin.cmd(identify(1), data_status=0x02)
    assert r.status == (StatusType.GENERIC, GS.INVALID_FIELD)


async def test_nsid_all_flush_and_other_nsid_checks() -> None:
    env = make_env()
    admin, _cntlid = await bring_up_admin(env)
    r = await admin.cmd(identify(0, nsid=NSID_ALL))
    assert r.status == (StatusType.GENERIC, GS.INVALID_NAMESPACE)
    r = await admin.cmd(identify(0, nsid=0))
    assert r.status == (StatusType.GENERIC, GS.INVALID_NAMESPACE)
    r = await admin.cmd(identify(0, nsid=5))  # inactive but valid: zeroes
    assert r.ok and r.data == bytes(4096)
    r = await admin.cmd(identify(3, nsid=5))
    assert r.status == (StatusType.GENERIC, GS.INVALID_NAMESPACE)
    r = await admin.cmd(identify(0, nsid=5000))
    assert r.status == (StatusType.GENERIC, GS.INVALID_NAMESPACE)
    r = await admin.cmd(identify(2, nsid=NSID_ALL))
    assert r.status == (StatusType.GENERIC, GS.INVALID_NAMESPACE)
    r = await admin.cmd(identify(2, nsid=1))
    assert pull_namespace_list(r.data) == [2]
