"""Token buckets: the limits of one tenant or one volume, with time passed in (sans-I/O).

Rules of this module:
- A bucket holds tokens (I/Os or bytes) and refills at its ``rate`` up to its ``capacity``,
  ``rate * burst_s``: the burst a tenant may spend after being idle. A new bucket starts full.
- An I/O may go when every bucket it draws from holds >= 0 tokens; it then takes its whole
  cost, which may leave a bucket negative (debt), as SPDK's bdev QoS lets a timeslice's quota
  run negative. So a 1 MiB write under a 64 KiB/s limit is not stuck forever, and over any
  long run the tokens spent are ``rate * t + capacity + one I/O's cost`` at most: the limit
  holds on average. Checking every bucket before charging any means nothing needs rewinding
  (SPDK's ``rewind_quota``) when a later bucket refuses.
- ``capacity`` is at least ``MIN_BURST_S`` seconds of the rate even when ``burst_s`` is 0: the
  event loop's timers fire up to a millisecond off (uvloop rounds delays to milliseconds), and a
  bucket that cannot hold the tokens that accrue meanwhile would lose them, which would show as
  a rate below the limit.
- Which buckets an I/O draws from (:class:`LimitSet`): a read from ``iops``, ``read_iops``
  (one token each) and ``bps``, ``read_bps`` (its bytes); a write likewise with the ``write_``
  ones; flush, write zeroes and deallocate from ``iops`` only (one I/O, no bytes).
- Time is a float in seconds on one monotonic clock, passed in as ``now``; nothing here reads a
  clock. ``ready_at`` answers when an I/O could go, so the caller arms one timer for it.
"""
from __future__ import annotations

from sbstore.qos.policy import LIMIT_FIELDS, Limits

READ, WRITE, OTHER = 0, 1, 2  # the kinds of I/O; also the index of a volume's queues
KIND_NAMES = ("read", "write", "other")
MIN_BURST_S = 0.005
SLACK_S = 1e-6  # a bucket this close to 0 (in seconds of its rate) counts as 0: float error


class TokenBucket:
    """One rate: ``tokens`` refill at ``rate`` per second up to ``capacity``."""

    __slots__ = ("capacity", "last", "rate", "slack", "tokens")

    def __init__(self, rate: float, burst_s: float, now: float,
                 tokens: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("a bucket needs a positive rate")
        self.rate = float(rate)
        self.capacity = self.rate * max(burst_s, MIN_BURST_S)
        self.tokens = self.capacity if tokens is None else min(tokens, self.capacity)
        self.last = now
        self.slack = self.rate * SLACK_S

    def refill(self, now: float) -> None:
        if now > self.last:
            t = self.tokens + (now - self.last) * self.rate
            self.tokens = min(self.capacity, t)
            self.last = now

    def ready_at(self, now: float) -> float:
        """When the bucket is back at 0 tokens (``now`` if it is already)."""
        self.refill(now)
        if self.tokens >= -self.slack:
            return now
        return now + -self.tokens / self.rate

    def take(self, cost: float) -> None:
        self.tokens -= cost

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate:g}, tokens={self.tokens:g}/{self.capacity:g})"


class LimitSet:
    """The buckets of one :class:`Limits`; ``unlimited`` when it has none.

    ``previous`` (the set this one replaces after a policy change): a limit that stays keeps
    its tokens (capped at the new capacity) and its debt, so changing a policy neither grants a
    fresh burst nor forgives what was spent; a new limit starts full.
    """

    __slots__ = ("buckets", "by_kind", "limits", "unlimited")

    def __init__(self, limits: Limits, now: float, previous: LimitSet | None = None) -> None:
        self.limits = limits
        old = previous.buckets if previous is not None else {}
        self.buckets: dict[str, TokenBucket] = {}
        for name in LIMIT_FIELDS:
            rate = getattr(limits, name)
            if rate:
                prev = old.get(name)
                tokens = None
                if prev is not None:
                    prev.refill(now)
                    tokens = prev.tokens
                self.buckets[name] = TokenBucket(rate, limits.burst_s, now, tokens)
        self.by_kind: tuple[tuple[tuple[TokenBucket, bool], ...], ...] = (
            self._draw("iops", "read_iops", "bps", "read_bps"),
            self._draw("iops", "write_iops", "bps", "write_bps"),
            self._draw("iops"),
        )
        self.unlimited = not self.buckets

    def _draw(self, *names: str) -> tuple[tuple[TokenBucket, bool], ...]:
        """The (bucket, charged in bytes) pairs an I/O drawing on ``names`` takes from."""
        return tuple((self.buckets[n], n.endswith("bps")) for n in names if n in self.buckets)

    def ready_at(self, kind: int, now: float) -> float:
        """When an I/O of ``kind`` may go: ``now`` if every bucket it draws from holds >= 0."""
        t = now
        for bucket, _ in self.by_kind[kind]:
            r = bucket.ready_at(now)
            t = max(t, r)
        return t

    def charge(self, kind: int, nbytes: int) -> None:
        """Take an I/O's cost: one token from each IOPS bucket, ``nbytes`` from each byte one."""
        for bucket, per_byte in self.by_kind[kind]:
            bucket.tokens -= nbytes if per_byte else 1

    def __repr__(self) -> str:
        return f"LimitSet({self.buckets!r})"

