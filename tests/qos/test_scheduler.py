"""The pure scheduler: shares, work conservation, limits, policy changes, cancellation, with
time moved by hand (tests/qos/sim.py plays the backend and the clients)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbstore.qos.bucket import OTHER, READ, WRITE, LimitSet
from sbstore.qos.policy import Limits
from sbstore.qos.scheduler import DISPATCHED, DROPPED, QUEUED, Scheduler
from tests.qos.sim import Client, run


def limits(now: float = 0.0, **kw) -> LimitSet:
    kw.setdefault("burst_s", 0.0)
    return LimitSet(Limits(**kw), now)


def test_one_tenant_unlimited_is_fifo_per_flow_and_oldest_first():
    s = Scheduler()
    v = s.set_volume("v", "t", 0.0)
    assert v.direct
    reqs = [s.submit(v, kind, 4096, 0.0) for kind in (READ, WRITE, READ, OTHER)]
    assert s.queued == 4
    out = [s.pop_ready(0.0) for _ in range(4)]
    assert out == reqs and all(r.state == DISPATCHED for r in out)
    assert s.pop_ready(0.0) is None and s.queued == 0 and s.next_deadline() is None


@pytest.mark.parametrize("weights", [(100, 300), (1, 3), (250, 750)])
def test_weights_one_to_three_share_a_saturated_backend(weights):
    s = Scheduler()
    s.set_tenant("a", 0.0, weight=weights[0])
    s.set_tenant("b", 0.0, weight=weights[1])
    va, vb = s.set_volume("va", "a", 0.0), s.set_volume("vb", "b", 0.0)
    ios, _ = run(s, [Client(va), Client(vb)], until=10.0, slots=8)
    assert ios[1] / ios[0] == pytest.approx(3.0, rel=0.03)
    assert ios[0] + ios[1] == pytest.approx(8 / 0.001 * 10, rel=0.01)  # the backend never idles


def test_shares_count_bytes_so_large_ios_cannot_take_more_than_their_share():
    s = Scheduler(cost_bytes=32 << 10)
    va, vb = s.set_volume("va", "a", 0.0), s.set_volume("vb", "b", 0.0)

    def service(r):  # a device whose time per I/O is 1 ms + 1 ms per 32 KiB: cost in time
        return 0.001 * (1 + r.nbytes / (32 << 10))

    _, nbytes = run(s, [Client(va, nbytes=4096, depth=32),
                        Client(vb, kind=WRITE, nbytes=128 << 10, depth=64)],
                    until=10.0, slots=8, service=service)
    busy_a = nbytes[0] / 4096 * 0.001 * (1 + 4096 / (32 << 10))
    busy_b = nbytes[1] / (128 << 10) * 0.001 * (1 + 4)
    assert busy_a / busy_b == pytest.approx(1.0, rel=0.05)  # equal weights: equal device time


def make_pair(weight_a: int, weight_b: int) -> tuple[Scheduler, object, object]:
    s = Scheduler()
    s.set_tenant("a", 0.0, weight=weight_a)
    s.set_tenant("b", 0.0, weight=weight_b)
    return s, s.set_volume("va", "a", 0.0), s.set_volume("vb", "b", 0.0)


def test_work_conserving_alone_and_when_the_other_goes_idle():
    s, va, vb = make_pair(1, 1000)
    ios, _ = run(s, [Client(va)], until=5.0, slots=8)
    assert ios[0] == pytest.approx(8 / 0.001 * 5, rel=0.001)  # weight 1 alone: everything
    # b (weight 1000) stops at t=2.5: a (weight 1) gets everything from there on.
    s, va, vb = make_pair(1, 1000)
    ios, _ = run(s, [Client(va), Client(vb, stop=2.5)], until=5.0, slots=8)
    assert ios[1] == pytest.approx(8 / 0.001 * 2.5, rel=0.01)
    assert ios[0] == pytest.approx(8 / 0.001 * 2.5, rel=0.01)


def test_a_tenant_back_from_idle_gets_no_saved_credit():
    s = Scheduler()
    va, vb = s.set_volume("va", "a", 0.0), s.set_volume("vb", "b", 0.0)
    # b runs alone for 5 s, then a joins: from then on they alternate (equal weights), a does
    # not get 5 s of catching up.
    ios, _ = run(s, [Client(vb), Client(va, start=5.0)], until=6.0, slots=8)
    assert ios[0] == pytest.approx(8000 * 5 + 4000, rel=0.01)
    assert ios[1] == pytest.approx(4000, rel=0.02)


def test_iops_limit_holds_under_far_more_demand():
    s = Scheduler()
    s.set_tenant("a", 0.0, limits=limits(iops=500))
    va = s.set_volume("va", "a", 0.0)
    assert not va.direct
    ios, _ = run(s, [Client(va, depth=64)], until=10.0, slots=32, service=lambda r: 0.0001)
    assert ios[0] == pytest.approx(5000, rel=0.01)
    st_ = next(s.stats(10.0))
    assert st_.read_ios == ios[0] and st_.read_bytes == ios[0] * 4096
    assert st_.throttled_seconds == pytest.approx(10.0, rel=0.02)  # held the whole run
    assert st_.queued_ios > 0


def test_bandwidth_and_separate_read_write_limits():
    s = Scheduler()
    s.set_tenant("a", 0.0, limits=limits(read_bps=8 << 20, write_iops=200))
    va = s.set_volume("va", "a", 0.0)
    ios, nbytes = run(s, [Client(va, kind=READ, nbytes=64 << 10, depth=32),
                          Client(va, kind=WRITE, nbytes=4096, depth=32)],
                      until=10.0, slots=16, service=lambda r: 0.0001)
    assert nbytes[0] / 10 == pytest.approx(8 << 20, rel=0.01)
    assert ios[1] / 10 == pytest.approx(200, rel=0.01)


def test_a_held_read_queue_does_not_hold_the_writes():
    s = Scheduler()
    s.set_tenant("a", 0.0, limits=limits(read_iops=10))
    va = s.set_volume("va", "a", 0.0)
    ios, _ = run(s, [Client(va, kind=READ), Client(va, kind=WRITE)], until=1.0, slots=8)
    assert ios[0] == pytest.approx(10, abs=2)
    assert ios[1] == pytest.approx(8000, rel=0.01)  # the rest of the backend


def test_volume_limit_inside_tenant_limit():
    s = Scheduler()
    s.set_tenant("a", 0.0, limits=limits(iops=300))
    v1 = s.set_volume("v1", "a", 0.0, limits=limits(iops=100))
    v2 = s.set_volume("v2", "a", 0.0)
    assert not v2.direct  # its tenant has limits
    ios, _ = run(s, [Client(v1), Client(v2)], until=10.0, slots=8, service=lambda r: 0.0001)
    assert ios[0] == pytest.approx(1000, rel=0.02)  # its own limit
    assert ios[1] == pytest.approx(2000, rel=0.02)  # the tenant's remainder
    # A volume limit above the tenant's does not lift the tenant's.
    s2 = Scheduler()
    s2.set_tenant("a", 0.0, limits=limits(iops=100))
    v = s2.set_volume("v", "a", 0.0, limits=limits(iops=1000))
    ios, _ = run(s2, [Client(v)], until=10.0, slots=8, service=lambda r: 0.0001)
    assert ios[0] == pytest.approx(1000, rel=0.02)


def test_policy_change_mid_run_takes_effect_on_queued_io():
    s = Scheduler()
    s.set_tenant("a", 0.0, limits=limits(iops=100))
    va = s.set_volume("va", "a", 0.0)

    def raise_limit(now):
        t = s.tenants["a"]
        s.set_tenant("a", now, limits=LimitSet(Limits(iops=1000, burst_s=0.0), now,
                                                 previous=t.limits))

    ios, _ = run(s, [Client(va, depth=64)], until=10.0, slots=8, service=lambda r: 0.0001,
                 events=[(5.0, raise_limit)])
    assert ios[0] == pytest.approx(500 + 5000, rel=0.02)

    # Removing every limit: the queue drains at once and the volume goes direct.
    s2 = Scheduler()
    s2.set_tenant("a", 0.0, limits=limits(iops=1))
    v = s2.set_volume("v", "a", 0.0)
    for _ in range(10):
        s2.submit(v, READ, 4096, 0.0)
    assert s2.pop_ready(0.0) is not None and s2.pop_ready(0.0) is None
    assert s2.next_deadline() == pytest.approx(1.0 - 0.005)  # 1 IO owed at 1 IOPS, less MIN_BURST_S
    s2.set_tenant("a", 0.5, limits=limits(0.5))
    assert v.direct
    assert sum(1 for _ in iter(lambda: s2.pop_ready(0.5), None)) == 9


def test_weight_change_mid_run():
    s = Scheduler()
    va, vb = s.set_volume("va", "a", 0.0), s.set_volume("vb", "b", 0.0)
    ios, _ = run(s, [Client(va), Client(vb)], until=5.0, slots=8,
                 events=[(2.5, lambda now: s.set_tenant("b", now, weight=300))])
    # 2.5 s at 1:1 then 2.5 s at 1:3 of 8000/s.
    assert ios[0] == pytest.approx(10000 + 5000, rel=0.03)
    assert ios[1] == pytest.approx(10000 + 15000, rel=0.03)


def test_cancel_takes_a_queued_request_out():
    s = Scheduler()
    s.set_tenant("a", 0.0, limits=limits(iops=1))
    v = s.set_volume("v", "a", 0.0)
    first = s.submit(v, READ, 4096, 0.0)
    held = [s.submit(v, READ, 4096, 0.0) for _ in range(3)]
    assert s.pop_ready(0.0) is first
    assert s.pop_ready(0.0) is None  # held by the limit: the tenant is throttled
    assert s.cancel(first, 0.1) is False  # dispatched already
    assert s.cancel(held[1], 0.1) and held[1].state == DROPPED
    assert s.queued == 2 and s.tenants["a"].queued == 2
    assert s.cancel(held[0], 0.2) and s.cancel(held[2], 0.3)
    assert s.queued == 0 and s.next_deadline() is None
    st_ = next(s.stats(5.0))
    assert st_.throttled_seconds == pytest.approx(0.3)  # held from 0 until the queue emptied
    assert st_.queued_ios == 0


def test_moving_a_volume_to_another_tenant_moves_its_queue():
    s = Scheduler()
    s.set_tenant("slow", 0.0, limits=limits(iops=1))
    v = s.set_volume("v", "slow", 0.0)
    reqs = [s.submit(v, READ, 4096, 0.0) for _ in range(5)]
    assert s.pop_ready(0.0) is reqs[0] and s.pop_ready(0.0) is None
    s.set_volume("v", "fast", 0.1)
    assert v.direct and v.tenant is s.tenants["fast"] and v.stats is s.tenants["fast"].stats
    assert [s.pop_ready(0.1) for _ in range(4)] == reqs[1:]
    assert s.tenants["slow"].queued == 0 and s.tenants["fast"].queued == 0
    slow = next(t for t in s.stats(1.0) if t.tenant == "slow")
    assert slow.read_ios == 1 and slow.throttled_seconds == pytest.approx(0.1)


def test_remove_tenant_and_volume():
    s = Scheduler()
    s.set_tenant("a", 0.0, weight=7, limits=limits(iops=5))
    v = s.set_volume("v", "a", 0.0)
    s.remove_tenant("a")  # still has a volume: back to defaults
    assert s.tenants["a"].weight == 100 and v.direct
    s.remove_volume("v")
    s.remove_tenant("a")
    assert "a" not in s.tenants and "v" not in s.volumes


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["submit", "pop", "cancel", "policy", "move",
                                           "tick"]),
                          st.integers(0, 2), st.integers(0, 2), st.integers(0, 1 << 17)),
                max_size=80))
def test_bookkeeping_holds_under_any_sequence(ops):
    """Counts stay consistent and nothing is lost: every request ends dispatched, dropped or
    queued, and the queued ones all come out once limits are lifted."""
    s = Scheduler(cost_bytes=4096)
    now = 0.0
    vols = [s.set_volume(f"v{i}", f"t{i % 2}", now) for i in range(3)]
    live = []
    for op, a, b, n in ops:
        if op == "submit":
            live.append(s.submit(vols[a], b, n if b != OTHER else 0, now))
        elif op == "pop":
            s.pop_ready(now)
        elif op == "cancel" and live:
            s.cancel(live[n % len(live)], now)
        elif op == "policy":
            s.set_tenant(f"t{a % 2}", now, weight=1 + n % 1000,
                         limits=LimitSet(Limits(iops=1 + b, bps=n), now))
        elif op == "move":
            s.set_volume(f"v{a}", f"t{b % 3}", now,
                         limits=LimitSet(Limits(read_iops=n % 3), now))
        else:
            now += n / 65536
        queued = [r for r in live if r.state == QUEUED]
        assert s.queued == len(queued) == sum(t.queued for t in s.tenants.values())
        for t in s.tenants.values():
            assert t.queued == sum(len(f.queue) for f in t.active)
            assert t.blocked == sum(f.blocked for f in t.active)
            assert all(f.queue for f in t.active)
            assert t.blocked >= 0
    for name in list(s.tenants):
        s.set_tenant(name, now, limits=limits(now))
    for key in list(s.volumes):
        s.set_volume(key, s.volumes[key].tenant.name, now, limits=limits(now))
    drained = 0
    while s.pop_ready(now) is not None:
        drained += 1
        assert drained <= len(live)
    assert s.queued == 0 and all(r.state != QUEUED for r in live)
