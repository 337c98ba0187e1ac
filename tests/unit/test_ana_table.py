"""target.ana: the ANA table's precedence and the names of the states."""
from __future__ import annotations

import pytest

from target.ana import AnaTable, parse_state, state_name
from target.nvme.logpages import AnaGroupDescriptor, pull_ana_log, push_ana_log
from target.nvme.spec import AnaState


def test_most_specific_entry_wins() -> None:
    t = AnaTable()
    assert t.state(1, "nqn.a", 1) == AnaState.OPTIMIZED
    assert t.set(1, AnaState.INACCESSIBLE)
    assert not t.set(1, AnaState.INACCESSIBLE)  # no change
    t.set(1, AnaState.NON_OPTIMIZED, nqn="nqn.a")
    t.set(1, AnaState.CHANGE, nqn="nqn.a", grpid=2)
    assert t.state(1, "nqn.a", 2) == AnaState.CHANGE
    assert t.state(1, "nqn.a", 1) == AnaState.NON_OPTIMIZED
    assert t.state(1, "nqn.b", 1) == AnaState.INACCESSIBLE
    assert t.state(2, "nqn.a", 2) == AnaState.OPTIMIZED
    assert t.set(1, None, nqn="nqn.a")
    assert t.state(1, "nqn.a", 1) == AnaState.INACCESSIBLE
    assert t.forget_port(1) and t.state(1, "nqn.a", 2) == AnaState.OPTIMIZED


def test_bad_entries_are_refused() -> None:
    t = AnaTable()
    with pytest.raises(ValueError):
        t.set(1, AnaState.CHANGE, grpid=1)  # a group needs its subsystem
    with pytest.raises(ValueError):
        t.set(1, AnaState.CHANGE, nqn="nqn.a", grpid=0)
    with pytest.raises(ValueError):
        t.set(1, AnaState.CHANGE, nqn="nqn.a", grpid=129)


def test_state_names() -> None:
    for name in ("optimized", "non-optimized", "inaccessible", "persistent-loss", "change"):
        assert state_name(parse_state(name)) == name
    assert parse_state("NON_OPTIMIZED") == AnaState.NON_OPTIMIZED
    assert parse_state(3) == AnaState.INACCESSIBLE
    with pytest.raises(ValueError):
        parse_state("gone")
    with pytest.raises(ValueError):
        parse_state(5)


def test_ana_log_layout() -> None:
    page = push_ana_log(7, [AnaGroupDescriptor(1, AnaState.OPTIMIZED, 3, (4, 2)),
                            AnaGroupDescriptor(5, AnaState.CHANGE, 7, ())])
    assert len(page) == 16 + 32 + 8 + 32
    assert page[8:10] == (2).to_bytes(2, "little")  # ngrps
    assert page[16 + 16] == AnaState.OPTIMIZED  # state at byte 16 of the descriptor
    assert pull_ana_log(page) == (7, [AnaGroupDescriptor(1, AnaState.OPTIMIZED, 3, (2, 4)),
                                      AnaGroupDescriptor(5, AnaState.CHANGE, 7, ())])
