"""A discrete-event driver for the pure scheduler: a backend with ``slots`` parallel servers
and a service time per request, closed-loop clients at a fixed depth, time moved by hand."""
from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from sbstore.qos.bucket import READ
from sbstore.qos.scheduler import Request, Scheduler, VolumeState


@dataclass
class Client:
    volume: VolumeState
    kind: int = READ
    nbytes: int = 4096
    depth: int = 32
    start: float = 0.0  # when it starts submitting
    stop: float = float("inf")  # when it stops resubmitting


def run(sched: Scheduler, clients: list[Client], *, until: float, slots: int = 8,
        service: Callable[[Request], float] = lambda r: 0.001, t0: float = 0.0,
        events: list[tuple[float, Callable[[float], None]]] = (),
        ) -> tuple[Counter[Hashable], Counter[Hashable]]:
    """Run until ``until``; returns (dispatches, bytes) per client index. ``events``: (time, fn)
    called at that time (policy changes)."""
    ios: Counter[Hashable] = Counter()
    nbytes: Counter[Hashable] = Counter()
    owner: dict[int, int] = {}
    busy: list[tuple[float, int, int]] = []  # (done at, seq, client)
    pending = sorted(events, key=lambda e: e[0])
    started = [False] * len(clients)
    now = t0
    steps = 0

    def submit(i: int) -> None:
        c = clients[i]
        req = sched.submit(c.volume, c.kind, c.nbytes, now)
        owner[req.seq] = i

    while now < until:
        steps += 1
        assert steps < 5_000_000
        for i, c in enumerate(clients):
            if not started[i] and c.start <= now:
                started[i] = True
                for _ in range(c.depth):
                    submit(i)
        while pending and pending[0][0] <= now:
            pending.pop(0)[1](now)
        while busy and busy[0][0] <= now:
            _, _seq, i = heapq.heappop(busy)
            if now < clients[i].stop:
                submit(i)
        while len(busy) < slots:
            req = sched.pop_ready(now)
            if req is None:
                break
            i = owner.pop(req.seq)
            ios[i] += 1
            nbytes[i] += req.nbytes
            heapq.heappush(busy, (now + service(req), req.seq, i))
        nxt = [until]
        if busy:
            nxt.append(busy[0][0])
        d = sched.next_deadline()
        if d is not None and len(busy) < slots:
            nxt.append(d)
        nxt += [c.start for i, c in enumerate(clients) if not started[i]]
        if pending:
            nxt.append(pending[0][0])
        later = [t for t in nxt if t > now]
        now = min(later) if later else until
    return ios, nbytes
