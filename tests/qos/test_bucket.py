"""Token buckets and limit sets with time moved by hand."""
from __future__ import annotations

import pytest

from sbstore.qos.bucket import MIN_BURST_S, OTHER, READ, WRITE, LimitSet, TokenBucket
from sbstore.qos.policy import Limits, limits_of, weight_of


def greedy(bucket_set: LimitSet, kind: int, nbytes: int, seconds: float, t0: float = 0.0) -> int:
    """Admit I/Os as fast as the set allows for ``seconds``; count them."""
    now, n = t0, 0
    while True:
        at = bucket_set.ready_at(kind, now)
        if at >= t0 + seconds:
            return n
        now = at
        bucket_set.charge(kind, nbytes)
        n += 1


def test_bucket_starts_full_and_refills_at_its_rate():
    b = TokenBucket(100, 0.5, now=10.0)
    assert b.capacity == 50 and b.tokens == 50
    b.take(80)
    assert b.ready_at(10.0) == pytest.approx(10.3)  # 30 tokens of debt at 100/s
    assert b.ready_at(10.3) == 10.3
    b.refill(100.0)
    assert b.tokens == 50  # never above capacity


def test_debt_lets_a_large_io_through_and_makes_the_next_wait():
    b = TokenBucket(65536, 1.0, now=0.0)  # 64 KiB/s
    assert b.ready_at(0.0) == 0.0
    b.take(1 << 20)  # a 1 MiB write goes at once...
    assert b.ready_at(0.0) == pytest.approx(15.0)  # ...and the next waits for the 960 KiB owed


def test_zero_burst_still_holds_a_few_ms_of_tokens():
    b = TokenBucket(1000, 0.0, now=0.0)
    assert b.capacity == pytest.approx(1000 * MIN_BURST_S)


@pytest.mark.parametrize("burst_s", [0.0, 0.1, 2.0])
def test_iops_limit_over_ten_seconds(burst_s):
    ls = LimitSet(Limits(iops=1000, burst_s=burst_s), 0.0)
    n = greedy(ls, READ, 4096, 10.0)
    expected = 1000 * 10 + 1000 * max(burst_s, MIN_BURST_S)
    assert abs(n - expected) <= 2


def test_bytes_limit_counts_bytes():
    ls = LimitSet(Limits(bps=10 << 20, burst_s=0.0), 0.0)
    n = greedy(ls, WRITE, 128 << 10, 10.0)
    assert abs(n * (128 << 10) / 10 - (10 << 20)) / (10 << 20) < 0.01


def test_read_and_write_limits_are_separate_and_total_caps_both():
    ls = LimitSet(Limits(read_iops=300, write_iops=100, burst_s=0.0), 0.0)
    assert [b for b, _ in ls.by_kind[READ]] == [ls.buckets["read_iops"]]
    assert [b for b, _ in ls.by_kind[WRITE]] == [ls.buckets["write_iops"]]
    assert ls.by_kind[OTHER] == ()
    assert abs(greedy(ls, READ, 4096, 10.0) - 3000) <= 2
    assert abs(greedy(ls, WRITE, 4096, 10.0) - 1000) <= 2
    both = LimitSet(Limits(iops=200, read_bps=1 << 20, burst_s=0.0), 0.0)
    assert {id(b) for b, _ in both.by_kind[OTHER]} == {id(both.buckets["iops"])}
    assert [per_byte for _, per_byte in both.by_kind[READ]] == [False, True]
    assert both.by_kind[WRITE] == ((both.buckets["iops"], False),)


def test_flush_and_trim_cost_one_io_and_no_bytes():
    ls = LimitSet(Limits(iops=10, bps=1, burst_s=1.0), 0.0)
    for _ in range(10):
        assert ls.ready_at(OTHER, 0.0) == 0.0
        ls.charge(OTHER, 0)
    assert ls.buckets["bps"].tokens == 1  # untouched
    assert ls.ready_at(OTHER, 0.0) == 0.0  # 0 tokens left: one more may go (and owe)
    ls.charge(OTHER, 0)
    assert ls.ready_at(OTHER, 0.0) == pytest.approx(0.1)


def test_policy_change_keeps_debt_and_starts_new_limits_full():
    old = LimitSet(Limits(iops=100, burst_s=1.0), 0.0)
    old.buckets["iops"].take(300)  # 200 owed
    new = LimitSet(Limits(iops=1000, write_iops=50, burst_s=1.0), 0.0, previous=old)
    assert new.buckets["iops"].tokens == pytest.approx(-200)
    assert new.buckets["write_iops"].tokens == 50
    assert new.ready_at(READ, 0.0) == pytest.approx(0.2)  # the debt at the new rate
    lower = LimitSet(Limits(iops=10, burst_s=1.0), 100.0, previous=new)
    assert lower.buckets["iops"].tokens == 10  # refilled, then capped at the new capacity


def test_limits_from_policy_objects_and_mappings():
    class Policy:  # the control module's QosPolicy has these attributes
        iops, read_iops, write_iops, bps, read_bps, write_bps = 5, 0, 0, 7, 0, 0
        burst_s, weight = 0.25, 300

    assert limits_of(Policy()) == Limits(iops=5, bps=7, burst_s=0.25)
    assert weight_of(Policy()) == 300
    assert limits_of({"read_iops": 9}) == Limits(read_iops=9)
    assert limits_of(None).unlimited and weight_of(None) == 100
    with pytest.raises(ValueError, match="unknown"):
        limits_of({"iopz": 1})
    with pytest.raises(ValueError):
        limits_of({"iops": -1})
    with pytest.raises(ValueError):
        weight_of({"weight": 0})
    with pytest.raises(ValueError):
        limits_of({"burst_s": float("nan")})
