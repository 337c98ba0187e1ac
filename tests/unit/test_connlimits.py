"""ConnectionGate against a plain model: the caps hold whatever the order of arrivals and
departures, refusals are counted by the cap that was hit, and nothing is kept per address once
its connections are gone."""
from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from target.connlimits import (
    REFUSED_LISTENER,
    REFUSED_SOURCE,
    ConnectionGate,
    ConnectionLimits,
)

LISTENERS = ("l1", "l2")
SOURCES = ("10.0.0.1", "10.0.0.2", "10.0.0.3")

# An arrival (True, listener, source) or the departure of the n-th open connection (False, n).
steps = hs.lists(hs.one_of(
    hs.tuples(hs.just(True), hs.sampled_from(LISTENERS), hs.sampled_from(SOURCES)),
    hs.tuples(hs.just(False), hs.integers(0, 50))), max_size=200)


@settings(max_examples=300, deadline=None)
@given(steps, hs.integers(1, 6), hs.integers(1, 6))
def test_gate_matches_the_model(script: list[tuple[object, ...]], per_listener: int,
                                per_source: int) -> None:
    gate = ConnectionGate(ConnectionLimits(max_per_listener=per_listener,
                                           max_per_source=per_source))
    open_: list[tuple[str, str]] = []
    refused: Counter[str] = Counter()
    for step in script:
        if step[0]:
            _, listener, source = step
            assert isinstance(listener, str) and isinstance(source, str)
            on_listener = sum(1 for x, _ in open_ if x == listener)
            from_source = sum(1 for _, s in open_ if s == source)
            expected = (REFUSED_LISTENER if on_listener >= per_listener
                        else REFUSED_SOURCE if from_source >= per_source else None)
            assert gate.admit(listener, source) == expected
            if expected is None:
                open_.append((listener, source))
            else:
                refused[expected] += 1
        elif open_:
            n = step[1]
            assert isinstance(n, int)
            listener, source = open_.pop(n % len(open_))
            gate.release(listener, source)
        assert gate.open_by_listener == Counter(x for x, _ in open_)
        assert gate.open_by_source == Counter(s for _, s in open_)
        assert all(v <= per_listener for v in gate.open_by_listener.values())
        assert all(v <= per_source for v in gate.open_by_source.values())
    assert gate.refused == refused
    for listener, source in open_:
        gate.release(listener, source)
    assert not gate.open_by_listener and not gate.open_by_source


@pytest.mark.parametrize("kw", [{"icreq_timeout_s": 0}, {"icreq_timeout_s": float("nan")},
                                {"connect_timeout_s": 3601}, {"max_per_listener": 0},
                                {"max_per_source": 1.5}, {"max_per_source": True}])
def test_bad_limits_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kw))):
        ConnectionLimits(**kw)  # type: ignore[arg-type]
