"""LogLimiter with time moved by hand: a burst per window, the rest counted and summarised."""
from __future__ import annotations

import logging

import pytest

from target.loglimit import LogLimiter


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.loglimit"]


def test_burst_then_summary_when_the_window_ends(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.loglimit")
    limiter = LogLimiter(logging.getLogger("test.loglimit"), logging.WARNING, "junk", burst=3,
                         interval_s=10)
    logged = [limiter.log(100.0 + i * 0.01, "line %d", i) for i in range(1000)]
    assert logged == [True] * 3 + [False] * 997
    assert messages(caplog) == ["line 0", "line 1", "line 2"]
    assert limiter.suppressed_total == 997
    assert limiter.next_deadline() == 110.0
    limiter.flush(109.9)  # the window is not over: nothing yet
    assert len(messages(caplog)) == 3
    limiter.flush(110.0)
    assert messages(caplog)[-1] == "997 similar messages suppressed (junk) in the last 10 s"
    assert limiter.next_deadline() is None
    limiter.flush(200.0)  # said once only
    assert len(messages(caplog)) == 4


def test_next_window_reports_what_the_last_one_dropped(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    caplog.set_level(logging.INFO, logger="test.loglimit")
    limiter = LogLimiter(logging.getLogger("test.loglimit"), logging.INFO, "junk", burst=1,
                         interval_s=1)
    for t in (0.0, 0.5, 0.6):
        limiter.log(t, "at %g", t)
    limiter.log(1.2, "at %g", 1.2)  # a new window: the summary comes first, then the line
    assert messages(caplog) == ["at 0", "2 similar messages suppressed (junk) in the last 1 s",
                                "at 1.2"]
    assert limiter.suppressed_total == 2


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        LogLimiter(logging.getLogger("x"), logging.INFO, "k", burst=0)
    with pytest.raises(ValueError):
        LogLimiter(logging.getLogger("x"), logging.INFO, "k", interval_s=0)
