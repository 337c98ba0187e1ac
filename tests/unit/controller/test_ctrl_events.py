"""Live changes reach live controllers: namespace notices and the Changed Namespace List,
discovery notices, and access revoked."""
from __future__ import annotations

from target.blockdev import RamDevice
from target.nvme.identify import pull_identify_namespace
from target.nvme.logpages import pull_changed_ns_list
from target.nvme.spec import (
    AEC_DISCOVERY_CHANGE,
    AEC_NS_ATTRIBUTE,
    DISCOVERY_NQN,
    NSID_ALL,
    AdminOpcode,
    FeatureId,
    LogPageId,
    StatusType,
)
from target.nvme.spec import (
    GenericStatus as GS,
)
from target.subsystem import Subsystem
from tests.unit.controller.helpers import (
    HOSTNQN,
    HOSTNQN2,
    OTHER_NQN,
    Conn,
    Env,
    bring_up_admin,
    connect_io,
    get_log_page,
    identify,
    make_env,
    read,
    set_features,
    sqe,
)

NS_NOTICE = 0x00040002  # type Notice, info Namespace Attribute Changed, log page 04h
DISCOVERY_NOTICE = 0x0070F002  # type Notice, info Discovery Log Changed, log page 70h


async def _admin_with_aen(env: Env, hostnqn: str = HOSTNQN) -> Conn:
    admin, _ = await bring_up_admin(env, hostnqn=hostnqn)
    assert (await admin.cmd(set_features(FeatureId.ASYNC_EVENT_CONFIG, AEC_NS_ATTRIBUTE))).ok
    return admin


async def _changed(admin: Conn, rae: bool = False) -> list[int]:
    r = await admin.cmd(get_log_page(LogPageId.CHANGED_NAMESPACE_LIST, 4096, rae=rae))
    assert r.ok
    return pull_changed_ns_list(r.data)


async def test_namespace_add_fires_an_aen_and_fills_the_changed_list() -> None:
    env = make_env()
    admin = await _admin_with_aen(env)
    other = await _admin_with_aen(env, HOSTNQN2)
    await admin.pending(sqe(AdminOpcode.ASYNC_EVENT_REQUEST, cid=40))
    nsid = env.subsystem.add_namespace(RamDevice(1 << 20))
    assert nsid == 3
    [aen] = admin.async_responses
    assert aen.ok and aen.cqe.cid == 40 and aen.cqe.dw0 == NS_NOTICE and aen.cqe.sqid == 0
    # The other controller had no AER outstanding: its event waits for the next one.
    assert other.async_responses == []
    r = await other.cmd(sqe(AdminOpcode.ASYNC_EVENT_REQUEST, cid=41))
    assert r.ok and r.cqe.cid == 41 and r.cqe.dw0 == NS_NOTICE
    assert await _changed(admin, rae=True) == [3]
    assert await _changed(admin) == [3]  # RAE clear: read and cleared
    assert await _changed(admin) == []
    ids = (await admin.cmd(identify(2))).data
    assert ids[8:12] == b"\x03\x00\x00\x00"


async def test_a_notice_is_masked_until_its_log_page_is_read() -> None:
    env = make_env()
    admin = await _admin_with_aen(env)
    await admin.pending(sqe(AdminOpcode.ASYNC_EVENT_REQUEST, cid=1))
    await admin.pending(sqe(AdminOpcode.ASYNC_EVENT_REQUEST, cid=2))
    env.subsystem.remove_namespace(2)
    env.subsystem.add_namespace(RamDevice(1 << 20))
    assert len(admin.async_responses) == 1  # the second change rides on the first notice
    assert await _changed(admin, rae=True) == [2]
    env.subsystem.remove_namespace(1)
    assert len(admin.async_responses) == 1  # RAE kept the event masked
    assert await _changed(admin) == [1, 2]
    env.subsystem.namespace_changed(2)
    assert len(admin.async_responses) == 2 and admin.async_responses[1].cqe.cid == 2


async def test_no_aen_unless_enabled_but_the_list_is_kept() -> None:
    env = make_env()
    admin, _ = await bring_up_admin(env)
    await admin.pending(sqe(AdminOpcode.ASYNC_EVENT_REQUEST, cid=9))
    env.subsystem.remove_namespace(1)
    assert admin.async_responses == []
    assert await _changed(admin) == [1]


async def test_changed_list_overflows_to_ffffffff() -> None:
    env = make_env()
    sub = Subsystem(OTHER_NQN, max_namespaces=2000)
    env.target.add_subsystem(sub)
    admin, _ = await bring_up_admin(env, subnqn=OTHER_NQN)
    dev = RamDevice(4096)
    for _ in range(1100):
        sub.add_namespace(dev)
    assert await _changed(admin) == [NSID_ALL]
    assert await _changed(admin) == []


class Growable(RamDevice):
    """A RAM device whose visible size can grow up to its buffer (a volume being resized)."""

    def __init__(self, size_bytes: int, visible_bytes: int) -> None:
        super().__init__(size_bytes)
        self.visible_blocks = visible_bytes // 512

    @property
    def num_blocks(self) -> int:
        return self.visible_blocks


async def test_resize_is_a_namespace_change() -> None:
    env = make_env()
    dev = Growable(2 << 20, 1 << 20)
    nsid = env.subsystem.add_namespace(dev)
    admin = await _admin_with_aen(env)
    await admin.pending(sqe(AdminOpcode.ASYNC_EVENT_REQUEST, cid=3))
    cntlid = admin.session.controller.cntlid
    io, _ = await connect_io(env, cntlid, 1)
    assert (await io.cmd(read(nsid, 3000, 1))).status == (StatusType.GENERIC,
                                                            GS.LBA_OUT_OF_RANGE)
    dev.visible_blocks *= 2
    env.subsystem.namespace_changed(nsid)
    assert admin.async_responses[0].cqe.dw0 == NS_NOTICE
    assert await _changed(admin) == [nsid]
    idn = pull_identify_namespace((await admin.cmd(identify(0, nsid=nsid))).data)
    assert idn.nsze == (2 << 20) // 512
    assert (await io.cmd(read(nsid, 3000, 1))).ok


async def test_discovery_controllers_hear_about_log_changes() -> None:
    env = make_env()
    disc, _ = await bring_up_admin(env, subnqn=DISCOVERY_NQN, kato_ms=0)
    quiet, _ = await bring_up_admin(env, subnqn=DISCOVERY_NQN, kato_ms=0)
    assert (await disc.cmd(set_features(FeatureId.ASYNC_EVENT_CONFIG, AEC_DISCOVERY_CHANGE))).ok
    r = await disc.cmd(set_features(FeatureId.ASYNC_EVENT_CONFIG, AEC_NS_ATTRIBUTE))
    assert r.status == (StatusType.GENERIC, GS.INVALID_FIELD)
    await disc.pending(sqe(AdminOpcode.ASYNC_EVENT_REQUEST, cid=5))
    await quiet.pending(sqe(AdminOpcode.ASYNC_EVENT_REQUEST, cid=5))
    genctr = env.target.genctr
    env.target.add_subsystem(Subsystem(OTHER_NQN))
    assert env.target.genctr > genctr
    [aen] = disc.async_responses
    assert aen.cqe.dw0 == DISCOVERY_NOTICE and aen.cqe.cid == 5
    assert quiet.async_responses == []
    env.subsystem.remove_namespace(1)  # namespaces are not in the discovery log
    assert len(disc.async_responses) == 1


async def test_revoking_a_host_deletes_its_controllers() -> None:
    env = make_env()
    a, a_id = await bring_up_admin(env, hostnqn=HOSTNQN)
    a_io, _ = await connect_io(env, a_id, 1, hostnqn=HOSTNQN)
    b, _b_id = await bring_up_admin(env, hostnqn=HOSTNQN2)
    env.subsystem.set_host_acl(False, [HOSTNQN2])
    assert env.subsystem.allowed_hosts == {HOSTNQN2} and not env.subsystem.allow_any_host
    assert a.closed and a_io.closed and a.close_calls == 1 and a_io.close_calls == 1
    assert a_id not in env.subsystem.controllers and not b.closed
    env.subsystem.remove_host(HOSTNQN2)
    assert b.closed and not env.subsystem.controllers


async def test_add_host_then_disallow_others_keeps_the_added_host() -> None:
    env = make_env()
    a, _ = await bring_up_admin(env, hostnqn=HOSTNQN)
    b, _ = await bring_up_admin(env, hostnqn=HOSTNQN2)
    env.subsystem.add_host(HOSTNQN2)
    assert not a.closed and not b.closed  # any host is still allowed
    env.subsystem.set_allow_any_host(False)
    assert a.closed and not b.closed


async def test_removing_the_subsystem_or_the_listener_closes_its_controllers() -> None:
    env = make_env()
    a, _a_id = await bring_up_admin(env)
    env.target.remove_subsystem(env.subsystem.nqn)
    assert a.closed
    env2 = make_env()
    d, _ = await bring_up_admin(env2, subnqn=DISCOVERY_NQN)
    b, _ = await bring_up_admin(env2)
    env2.target.remove_listener(env2.listener)
    assert b.closed and d.closed
