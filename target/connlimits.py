"""How many connections the target accepts, and how long one may take to identify itself.

Anyone who reaches a listener can open connections before proving anything (NVMe/TCP has no
authentication before the Connect command). This module holds the limits that keep such
clients from exhausting the daemon (issue 8) and the counts they act on:

- a deadline for the ICReq after accept, and for the Connect after the ICResp: a connection
  that misses one is closed (the server arms the timer; this module only says how long);
- a cap on the connections open per listener and per source address (over all listeners): a
  connection beyond one is closed at once, and counted by reason.

Rules: plain counters and no I/O (the server calls :meth:`ConnectionGate.admit` when a
connection arrives and :meth:`ConnectionGate.release` when it goes); a connected queue is
never closed by these limits: the caps act at accept, the deadlines only before Connect.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ConnectionLimits:
    """The defaults are generous enough for real hypervisors and still bound the damage."""

    # A Linux host sends its ICReq as soon as TCP is up and its Connect as soon as the ICResp
    # comes back (nvme_tcp_alloc_queue, then nvmf_connect_*_queue): both take milliseconds
    # even on a loaded host. 10 s and 20 s leave room for a host that stalls (CPU starved,
    # paging) without letting an idle socket hold its slot for long.
    icreq_timeout_s: float = 10.0
    connect_timeout_s: float = 20.0
    # One connection per queue: a host opens 1 admin + one I/O queue per CPU for each
    # subsystem it attaches (nr_io_queues defaults to the number of CPUs), so a 128-CPU
    # hypervisor with 7 subsystems attached holds ~900 connections from one address. A
    # listener serves several such hosts. Established connections cost ~0.3 MiB each (the
    # receive buffer), so 4,096 on a listener is ~1.2 GiB at worst.
    max_per_listener: int = 4096
    max_per_source: int = 1024

    MAX_TIMEOUT_S = 3600.0
    MAX_CONNECTIONS = 1 << 20

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            raise ValueError(problem)

    def problem(self) -> str | None:
        """Why these limits are invalid, or None."""
        for name in ("icreq_timeout_s", "connect_timeout_s"):
            value = getattr(self, name)
            if (type(value) not in (int, float) or math.isnan(value)
                    or not 0 < value <= self.MAX_TIMEOUT_S):
                return f"{name} must be a number of seconds above 0, at most " \
                       f"{self.MAX_TIMEOUT_S:g}, not {value!r}"
        for name in ("max_per_listener", "max_per_source"):
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= self.MAX_CONNECTIONS:
                return f"{name} must be an integer from 1 to {self.MAX_CONNECTIONS}, " \
                       f"not {value!r}"
        return None


# Why a connection was refused at accept (the metrics' label values).
REFUSED_LISTENER = "listener_cap"
REFUSED_SOURCE = "source_cap"
# Which handshake step a connection closed for missing its deadline was waiting for.
WAITING_ICREQ = "icreq"
WAITING_CONNECT = "connect"


class ConnectionGate:
    """Open connections per listener and per source address, and what the limits did."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open_by_listener: Counter[Hashable] = Counter()
        self.open_by_source: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # by REFUSED_*
        self.timed_out: Counter[str] = Counter()  # by WAITING_*

    def admit(self, listener: Hashable, source: str) -> str | None:
        """Count a new connection in, or say why it is refused (a REFUSED_* reason; it is
        counted as refused and not as open)."""
        if self.open_by_listener[listener] >= self.limits.max_per_listener:
            reason = REFUSED_LISTENER
        elif self.open_by_source[source] >= self.limits.max_per_source:
            reason = REFUSED_SOURCE
        else:
            self.open_by_listener[listener] += 1
            self.open_by_source[source] += 1
            return None
        self.refused[reason] += 1
        return reason

    def release(self, listener: Hashable, source: str) -> None:
        """An admitted connection is gone."""
        _decrement(self.open_by_listener, listener)
        _decrement(self.open_by_source, source)

    def note_timed_out(self, waiting_for: str) -> None:
        self.timed_out[waiting_for] += 1


def _decrement(counts: Counter[Any], key: Hashable) -> None:
    left = counts[key] - 1
    if left > 0:
        counts[key] = left
    else:  # no entry kept per address ever seen: the dict is as small as what is open
        del counts[key]
