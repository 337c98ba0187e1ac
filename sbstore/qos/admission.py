"""Weighted fair admission of commands to the target's CPU (``target.admission.Admission``).

Why: tenant weights must hold when the scarce thing is the target's CPU, which on a Python
target it nearly always is. The backend slots of :mod:`sbstore.qos.device` order I/Os waiting
for a *device*; a command that costs CPU and completes at once (a RAM device, a page-cache
hit) never waits there, so without this module every connection would be served at the rate
its host sends, whatever the weights.

Theory of operation. Two bounds decide when a command may run:
- ``max_inflight``: while several tenants are active, the *cost* of the commands executing at
  once, from admission until their response is queued (``finished``); a command costs
  ``1 + nbytes / cost_bytes`` (a 4k read about 1, a 128k write 3). On an asynchronous device
  (io_uring) most of a command's CPU comes after its admission, at its completion, and the
  device queue is what a small I/O waits behind: bounding what executes makes commands wait
  for room here, where weights decide. A tenant alone is not bounded: holding its commands
  would only cost it batching (measured: 30% more CPU per 4k read at QD32 on a pool).
- ``turn_budget``: commands run per *turn* of the event loop (read every connection with data,
  run what arrived, poll again). A command on a synchronous device (RAM, the page cache)
  finishes within its turn and never holds room for long; the turn budget is what makes those
  wait.
While nothing is held and both bounds allow, a command runs as soon as it arrives (counter
bumps: the fast path). So does, once per turn, the command of a tenant that keeps one command
at a time (a host at QD1), whatever is held and however full the room: waiting for the next
turn, where it would come first anyway, cost such a reader beside a tenant saturating the CPU
its p50 x4.5 of alone instead of x2.4 (perf/tenant_bench.py ram-noisy). Otherwise a command
is held in its tenant's FIFO, and at the end of the turn (a ``call_soon`` callback, which runs
after the loop has read every ready connection), or once room frees, the controller runs held
commands while the bounds allow. Which tenant goes next:
- the one executing least for its weight (``inflight / weight``): with hosts that keep a fixed
  number of commands outstanding (every real host), the share of what executes is the share of
  what completes, so room goes by weight whatever the order commands arrive in. (Start-time
  fair queueing alone served 3:1 weights 1:1 here: two hosts at QD32 sharing 32 slots send
  their commands in waves, and at each release only one tenant had any waiting.) A quiet
  tenant, executing little, is always first: its latency does not queue behind a busy one.
- on a tie (synchronous devices: nothing stays in execution), start-time fair queueing (as in
  :mod:`sbstore.qos.scheduler`): the smallest start tag; a tag advances by ``cost / weight``.
  A tenant idle (nothing held, nothing executing) re-enters at the virtual time: no credit for
  idling.
- while other tenants are active (executing, holding, or seen in the last ``ACTIVE_S``: a host
  at QD1 has its next command in transit most of the time), a tenant may use no more than its
  weight's share of the room, even if room is free (one command, if none of its own executes): otherwise a busy tenant fills the room
  whenever the others' commands are in flight to us, its large writes queue at the device, and
  a quiet tenant's read waits behind them (measured: a QD1 reader's p99 x7.8 next to 128k
  writes at QD32, x2 with a room it could not fill). Alone, a tenant uses all of it.
- while a tenant that keeps one command at a time is active, the others' executing commands
  may move at most ``latency_bytes`` of data at once (one command each always may): the disk
  then has little of theirs queued ahead of that tenant's next read. Measured on this VM's
  disk, a QD1 reader beside 128k writes at QD32 with a Flush every 64 (perf/tenant_bench.py
  noisy, medians of 8-10 rounds): its p99 is x2.9 of alone without the bound (the writer at
  0.74-1.16 GB/s), x1.9-2.0 with 256 KiB (0.31-0.55 GB/s), x1.6 with 128 KiB, the default
  (0.31-0.36 GB/s). Linux's write-back throttling makes the same trade for a disk's readers.
Under saturation hosts keep their queues full, so a tenant with three times the weight
completes three times the commands.

Back-pressure is the connection's (``target.server``): one that holds many commands stops
being read. Limits (IOPS, bandwidth) stay with the backend dispatcher in ``device``.

A flow (:class:`CpuFlow`) is one volume's handle, given to the target through
``QosDevice.admission_flow``; moving a volume to another tenant moves its flow.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from sbstore.qos.policy import DEFAULT_WEIGHT
from sbstore.qos.scheduler import DEFAULT_COST_BYTES

DEFAULT_TURN_BUDGET = 16
DEFAULT_MAX_INFLIGHT = 32
DEFAULT_LATENCY_BYTES = 128 << 10
ACTIVE_S = 0.002  # a tenant counts as active this long after its last command arrived
SHALLOW_S = 0.1  # a tenant goes ahead of held commands after this long with one at a time


class CpuTenant:
    """A tenant's FIFO of held commands, what it has executing, its SFQ tags, counters."""

    __slots__ = ("admitted", "ahead", "deep", "finish", "held", "inflight", "name", "queue",
                 "running", "seen", "start", "turn", "weight")

    def __init__(self, name: str, weight: int) -> None:
        self.name = name
        self.weight = weight
        # (connection, command, cost, flow, nbytes)
        self.queue: deque[tuple[Any, Any, float, CpuFlow, int]] = deque()
        self.start = 0.0  # SFQ start tag of the head of its queue
        self.finish = 0.0  # SFQ finish tag of its last command run
        self.inflight = 0.0  # cost of its commands executing now
        self.running = 0  # how many commands that is
        self.seen = -1.0  # when its last command arrived (monotonic seconds)
        self.admitted = 0  # commands run, directly or after being held
        self.held = 0  # commands that had to wait for their turn (a counter)
        self.ahead = 0  # commands run at once though others were held (_goes_ahead; a counter)
        self.turn = -1  # the last turn in which it ran a command ahead of held ones
        self.deep = -1.0  # when it last had two commands or more at once (executing or held)


class CpuFlow:
    """One volume's commands: the tenant they count against (``tenant`` changes on assign)
    and the cost and number of those executing."""

    __slots__ = ("inflight", "running", "tenant")

    def __init__(self, tenant: CpuTenant) -> None:
        self.tenant = tenant
        self.inflight = 0.0
        self.running = 0


class CpuAdmission:
    """The admission controller (``target.admission.Admission``) with per-tenant weights."""

    def __init__(self, *, turn_budget: int = DEFAULT_TURN_BUDGET,
                 max_inflight: int = DEFAULT_MAX_INFLIGHT,
                 cost_bytes: int = DEFAULT_COST_BYTES,
                 latency_bytes: int = DEFAULT_LATENCY_BYTES) -> None:
        if turn_budget < 1 or max_inflight < 1:
            raise ValueError("turn_budget and max_inflight must be >= 1")
        if cost_bytes <= 0:
            raise ValueError("cost_bytes must be positive")
        if latency_bytes < 0:
            raise ValueError("latency_bytes must be >= 0")
        self.turn_budget = turn_budget
        self.max_inflight = float(max_inflight)
        self.cost_bytes = cost_bytes
        self.latency_bytes = latency_bytes
        self.inflight_bytes = 0  # data of the admitted commands not finished yet
        # Active tenants keeping one command at a time (found when _others prunes).
        self._shallow: frozenset[CpuTenant] = frozenset()
        self.tenants: dict[str, CpuTenant] = {}
        self.inflight = 0.0  # cost of the admitted commands not finished yet
        self._used = 0  # commands run this turn
        self._backlog = 0  # commands held
        self._active: list[CpuTenant] = []  # tenants with held commands
        self._live: dict[CpuTenant, None] = {}  # tenants taken as active (pruned lazily)
        self._live_weight = 0
        self._pruned_at = 0.0
        self._vtime = 0.0
        self._armed = False
        self._turns = 0  # turns run (_turn): a shallow tenant goes ahead once per turn
        # target.admission.Admission: nothing to share while there is one tenant at most. The
        # server then skips admit/finished and only counts the commands in solo_admitted,
        # which goes to the lone tenant's ``admitted`` when a second one appears.
        self.solo = True
        self.solo_admitted = 0

    # --- tenants and flows --------------------------------------------------------------------
    def tenant(self, name: str) -> CpuTenant:
        t = self.tenants.get(name)
        if t is None:
            if self.tenants and self.solo:
                # A second tenant: from now on commands are admitted and counted. The lone
                # tenant's commands run solo and still executing are not counted as executing
                # (they finish uncounted too); the shares are exact once they are done.
                only = next(iter(self.tenants.values()))
                only.admitted += self.solo_admitted
                self.solo_admitted = 0
                self.solo = False
            t = self.tenants[name] = CpuTenant(name, DEFAULT_WEIGHT)
        return t

    def admitted(self, t: CpuTenant) -> int:
        """Commands of ``t`` run so far, those run solo included."""
        return t.admitted + (self.solo_admitted if self.solo else 0)

    def set_weight(self, name: str, weight: int) -> None:
        """Takes effect at once for the choice of the next tenant (tags already given stay)."""
        if weight < 1:
            raise ValueError("weight must be >= 1")
        t = self.tenant(name)
        if t in self._live:
            self._live_weight += weight - t.weight
        t.weight = weight

    def _others(self, t: CpuTenant, now: float) -> int:
        """The weight of the tenants other than ``t`` that are active (executing, holding, or
        seen in the last ACTIVE_S). Kept as a set pruned lazily (at most twice per ACTIVE_S), so
        a check costs a dict lookup whatever the number of tenants."""
        if now - self._pruned_at > ACTIVE_S / 2:
            self._pruned_at = now
            for u in [u for u in self._live if u.inflight < 1e-9 and not u.queue
                      and now - u.seen >= ACTIVE_S]:
                del self._live[u]
                self._live_weight -= u.weight
            for u in self._live:
                if len(u.queue) + u.running > 1:  # several outstanding, however long ago
                    u.deep = now
            self._shallow = frozenset(u for u in self._live if now - u.deep >= SHALLOW_S)
        return self._live_weight - (t.weight if t in self._live else 0)

    def _fits(self, t: CpuTenant, cost: float, others: int) -> bool:
        """May a command of ``t`` costing ``cost`` execute now, ``others`` being the weight of
        the other active tenants? Alone, a tenant is not bounded (the device gets its whole
        queue depth); among active tenants the room and each one's weighted share of it apply
        (one command always may, if none of its own executes)."""
        if not others or self.inflight < 1e-9:
            return True
        room = self.max_inflight
        if self.inflight + cost > room:
            return False
        if t.inflight < 1e-9:
            return True
        shallow = self._shallow
        if shallow and self.latency_bytes and len(shallow) > (t in shallow) and (
                self.inflight_bytes + (cost - 1.0) * self.cost_bytes > self.latency_bytes):
            return False  # another tenant is at QD1: the data in flight stays small
        return t.inflight + cost <= room * t.weight / (t.weight + others)

    def _touch(self, t: CpuTenant, now: float) -> None:
        t.seen = now
        if t not in self._live:
            self._live[t] = None
            self._live_weight += t.weight

    def flow(self, tenant: str) -> CpuFlow:
        return CpuFlow(self.tenant(tenant))

    def move(self, flow: CpuFlow, tenant: str) -> None:
        new = self.tenant(tenant)
        flow.tenant.inflight -= flow.inflight  # its executing commands finish in the new one
        new.inflight += flow.inflight
        flow.tenant.running -= flow.running
        new.running += flow.running
        flow.tenant = new

    @property
    def backlog(self) -> int:
        return self._backlog

    # --- target.admission.Admission -----------------------------------------------------------
    def admit(self, flow: CpuFlow, nbytes: int) -> bool:
        cost = 1.0 + nbytes / self.cost_bytes
        t = flow.tenant
        now = _now()
        t.seen = now
        if t not in self._live:
            self._live[t] = None
            self._live_weight += t.weight
        if t.inflight > 1e-9:
            t.deep = now
        # A command that would wait (behind held ones, or for the budget or room) runs at once
        # all the same if its tenant keeps one command at a time (see _goes_ahead).
        if self._backlog:
            if not self._goes_ahead(t, cost, now):
                return False
        else:
            others = self._others(t, now)
            if others:
                # Tenants compete: the turn budget and the shares apply.
                if self._used < self.turn_budget and self._fits(t, cost, others):
                    self._used += 1
                elif not self._goes_ahead(t, cost, now):
                    return False
                if self._used >= self.turn_budget and not self._armed:
                    self._arm()  # the end of this turn gives the next one its budget
        # Alone, a tenant is held by nothing: holding its commands for the next turn would
        # only cost it CPU (a hold, a turn and a second dispatch per command: about 3 us per
        # 4k read on a pool at QD32, where the turn budget held 80% of the commands).
        self.inflight += cost
        self.inflight_bytes += nbytes
        flow.inflight += cost
        t.inflight += cost
        t.running += 1
        flow.running += 1
        t.admitted += 1
        return True

    def keeps_one_at_a_time(self, t: CpuTenant) -> bool:
        """Whether ``t`` is an active tenant that keeps one command at a time: its commands go
        ahead, and the others' data in flight is bounded by ``latency_bytes`` (as of the last
        pruning of the active tenants, at most a few milliseconds old)."""
        return t in self._shallow

    def _goes_ahead(self, t: CpuTenant, cost: float, now: float) -> bool:
        """May ``t``'s command, which would wait (behind held commands, for the turn's budget
        or for room), run now? Yes, once per turn, for a tenant that has kept one command at
        a time (nothing executing or held when each came) for the last SHALLOW_S: a host at
        queue depth 1, whose latency is all it has, and whose share of the CPU is tiny.
        Waiting cost such a reader a loop turn or more per command (module docstring). It
        may exceed the room by that one command; it is charged to the turn's budget and to
        its start-time tag. A tenant that keeps several commands outstanding waits with the
        others, or the weights would not hold: on a RAM device every command completes
        within its turn, so even a saturating tenant has nothing executing when its next one
        comes."""
        if t.queue or t.inflight > 1e-9 or t.turn == self._turns or now - t.deep < SHALLOW_S:
            return False
        t.turn = self._turns
        t.ahead += 1
        self._used += 1
        t.finish = max(self._vtime, t.finish) + cost / t.weight
        return True

    def finished(self, flow: CpuFlow, n: int, nbytes: int) -> None:
        cost = n + nbytes / self.cost_bytes
        self.inflight -= cost
        self.inflight_bytes -= nbytes
        flow.inflight -= cost
        flow.running -= n
        flow.tenant.inflight -= cost
        flow.tenant.running -= n
        if self._backlog and not self._armed:
            self._arm()

    def hold(self, flow: CpuFlow, nbytes: int, conn: Any, event: Any) -> None:
        t = flow.tenant
        now = _now()
        self._touch(t, now)
        if t.queue or t.inflight > 1e-9:
            t.deep = now
        if not t.queue:
            # Idle (nothing executing either): back at the virtual time, no credit saved up.
            t.start = t.finish if t.inflight > 1e-9 else max(self._vtime, t.finish)
            self._active.append(t)
        t.queue.append((conn, event, 1.0 + nbytes / self.cost_bytes, flow, nbytes))
        t.held += 1
        self._backlog += 1
        if not self._armed:
            self._arm()

    def forget(self, conn: Any) -> int:
        dropped = 0
        for t in self.tenants.values():
            if not t.queue:
                continue
            keep = deque(item for item in t.queue if item[0] is not conn)
            dropped += len(t.queue) - len(keep)
            t.queue = keep
        if dropped:
            self._backlog -= dropped
            self._active = [t for t in self._active if t.queue]
        return dropped

    # --- turns --------------------------------------------------------------------------------
    def _arm(self) -> None:
        self._armed = True
        asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        """The loop has read every ready connection: a new turn, run what is held by weight."""
        self._armed = False
        self._used = 0
        self._turns += 1
        active = self._active
        ran: dict[Any, None] = {}
        budget = self.turn_budget
        now = _now()
        while active and self._used < budget:
            # The tenant executing least for its weight among those within their share
            # (start tag on a tie); a plain loop: there are few tenants, and this runs per
            # command.
            t = None
            best = (0.0, 0.0)
            for u in active:
                if not self._fits(u, u.queue[0][2], self._others(u, now)):
                    continue
                key = (u.inflight / u.weight, u.start)
                if t is None or key < best:
                    t, best = u, key
            if t is None:
                break  # each has its share executing: the next finished() brings a turn
            conn, event, cost, flow, nbytes = t.queue.popleft()
            self._vtime = t.start
            t.finish = t.start + cost / t.weight
            if t.queue:
                t.start = t.finish
            else:
                active.remove(t)
            self._backlog -= 1
            self._used += 1
            self.inflight += cost
            self.inflight_bytes += nbytes
            flow.inflight += cost
            t.inflight += cost
            t.running += 1
            flow.running += 1
            t.admitted += 1
            ran[conn] = None
            conn.run_held(event, flow, nbytes)
        for conn in ran:
            conn.end_turn()
        if self._backlog and not self._armed and self._used >= budget:
            self._arm()  # stopped by the turn budget (not by room): go on next turn


_now = time.monotonic
