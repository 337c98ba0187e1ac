"""Rate-limited logging for messages a remote peer can provoke at will.

A line per garbage connection lets anyone who can reach the port fill the journal (issue 8:
3,000 junk connections wrote 2,255 warnings). A :class:`LogLimiter` lets ``burst`` lines of
one kind through per ``interval_s`` and counts the rest; the first line after a window with
suppressed lines (or :meth:`LogLimiter.flush`, which the server arms a timer for) says how many
were dropped, so the operator learns of the flood without reading all of it.

Rules: no clock of its own (``now`` is passed in, as for every deadline in the target); the
timer that makes the summary appear even when the flood stops is the caller's to arm, at
:meth:`LogLimiter.next_deadline`.
"""
from __future__ import annotations

import logging

# Per kind of message: enough lines to see what is going on and from whom, few enough that
# a flood costs the journal ~1 line a second.
DEFAULT_BURST = 10
DEFAULT_INTERVAL_S = 10.0


class LogLimiter:
    """At most ``burst`` lines per ``interval_s`` for one kind of message."""

    def __init__(self, logger: logging.Logger, level: int, kind: str, *,
                 burst: int = DEFAULT_BURST, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if burst < 1 or not interval_s > 0:
            raise ValueError("burst must be at least 1 and interval_s positive")
        self.logger = logger
        self.level = level
        self.kind = kind
        self.burst = burst
        self.interval_s = interval_s
        self.suppressed_total = 0  # lines not logged, ever (for the metrics)
        self._window_end = float("-inf")
        self._logged = 0  # lines logged in the current window
        self._pending = 0  # lines suppressed and not yet summarised

    def log(self, now: float, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless this window's burst is spent; True if it was logged."""
        if now >= self._window_end:
            self.flush(now)
            self._window_end = now + self.interval_s
            self._logged = 0
        if self._logged >= self.burst:
            self._pending += 1
            self.suppressed_total += 1
            return False
        self._logged += 1
        self.logger.log(self.level, msg, *args)
        return True

    def next_deadline(self) -> float | None:
        """When :meth:`flush` has a summary to write (None: nothing is pending)."""
        return self._window_end if self._pending else None

    def flush(self, now: float) -> None:
        """Write the summary of the suppressed lines, if the window they fell in is over."""
        if self._pending and now >= self._window_end:
            self.logger.log(self.level, "%d similar messages suppressed (%s) in the last %g s",
                            self._pending, self.kind, self.interval_s)
            self._pending = 0
