"""Keep-alive with time moved by hand: expiry takes the controller and all its queues, and only
that controller."""
from __future__ import annotations

from target.nvme.spec import DISCOVERY_NQN, AdminOpcode, FeatureId
from tests.unit.controller.helpers import (
    HOSTNQN2,
    bring_up_admin,
    connect_io,
    make_env,
    read,
    set_features,
    sqe,
)


async def test_kato_expiry_drops_the_silent_controller_only() -> None:
    env = make_env(keep_alive_slack=0)
    silent, silent_id = await bring_up_admin(env, kato_ms=1000, now=0.0)
    silent_io, _ = await connect_io(env, silent_id, 1, now=0.0)
    talker, talker_id = await bring_up_admin(env, hostnqn=HOSTNQN2, kato_ms=1000, now=0.0)
    talker_io, _ = await connect_io(env, talker_id, 1, hostnqn=HOSTNQN2, now=0.0)
    assert silent.session.next_deadline() == 1.0
    assert silent_io.session.next_deadline() is None  # the admin queue owns the timer

    t = 0.0
    while t < 5.0:
        t += 0.5
        assert (await talker.cmd(sqe(AdminOpcode.KEEP_ALIVE), now=t)).ok
        for conn in (silent, talker):
            deadline = conn.session.next_deadline()
            if deadline is not None and deadline <= t:
                conn.session.handle_timer(t)
        if silent.closed:
            break
    # The bring-up commands count as traffic, so expiry comes within 2 x KATO.
    assert silent.closed and 1.0 < t <= 2.0
    assert silent.close_calls == 1 and silent_io.close_calls == 1 and silent_io.closed
    assert silent_id not in env.subsystem.controllers
    assert not talker.closed and not talker_io.closed and talker_id in env.subsystem.controllers
    assert (await talker_io.cmd(read(1, 0, 1), now=t)).ok
    assert not (await silent_io.cmd(read(1, 0, 1), now=t)).ok


async def test_keep_alive_restarts_the_timer() -> None:
    env = make_env(keep_alive_slack=0)
    admin, cntlid = await bring_up_admin(env, kato_ms=2000, now=10.0)
    ctrl = env.subsystem.controllers[cntlid]
    assert (await admin.cmd(sqe(AdminOpcode.KEEP_ALIVE), now=11.5)).ok
    assert admin.session.next_deadline() == 13.5
    admin.session.handle_timer(13.4)
    assert not admin.closed
    admin.session.handle_timer(13.5)  # no command since the Keep Alive
    assert admin.closed and ctrl.deleted


async def test_io_traffic_counts_as_keep_alive() -> None:
    env = make_env(keep_alive_slack=0)
    admin, cntlid = await bring_up_admin(env, kato_ms=1000, now=0.0)
    io, _ = await connect_io(env, cntlid, 1)
    for t in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0):
        assert (await io.cmd(read(1, 0, 1), now=t)).ok
        admin.session.handle_timer(t)
        assert not admin.closed, t
    # The 3.0 check saw traffic and moved the deadline to 4.0; nothing came after that.
    admin.session.handle_timer(3.99)
    assert not admin.closed
    admin.session.handle_timer(4.0)
    assert admin.closed and io.closed


async def test_kato_zero_disables_and_set_features_rearms() -> None:
    env = make_env(keep_alive_slack=0)
    admin, _ = await bring_up_admin(env, kato_ms=0, now=0.0)
    assert admin.session.next_deadline() is None
    admin.session.handle_timer(1e9)
    assert not admin.closed
    assert (await admin.cmd(set_features(FeatureId.KEEP_ALIVE_TIMER, 500), now=100.0)).ok
    assert admin.session.next_deadline() == 100.5
    admin.session.handle_timer(100.5)
    assert admin.closed


async def test_discovery_controller_without_kato_gets_the_target_default() -> None:
    env = make_env(keep_alive_slack=0)
    admin, _ = await bring_up_admin(env, subnqn=DISCOVERY_NQN, kato_ms=0, now=0.0)
    assert admin.session.next_deadline() == env.target.discovery_kato_ms / 1000


async def test_default_slack_gives_a_late_host_half_a_kato_more() -> None:
    env = make_env()  # keep_alive_slack 0.5: Linux sends Keep Alive every KATO/2, no grace
    admin, _ = await bring_up_admin(env, kato_ms=4000, now=0.0)
    assert (await admin.cmd(sqe(AdminOpcode.KEEP_ALIVE), now=2.0)).ok
    assert admin.session.next_deadline() == 8.0
    admin.session.handle_timer(7.9)
    assert not admin.closed
    admin.session.handle_timer(8.0)
    assert admin.closed
