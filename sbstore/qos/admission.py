"""Weighted fair admission of commands to the target's CPU (``target.admission.Admission``).

Why: tenant weights must hold when the scarce thing is the target's CPU, which on a Python
target it nearly always is. The backend slots of :mod:`sbstore.qos.device` order I/Os waiting
for a *device*; a command that costs CPU and completes at once (a RAM device, a page-cache
hit) never waits there, so without this module every connection would be served at the rate
its host sends, whatever the weights.

Theory of operation. The event loop works in *turns*: it reads every connection with data,
parses the commands, runs them, and polls again. This controller lets at most ``turn_budget``
commands run per turn. While nothing is held, a command runs as soon as it arrives (one counter
bump: the fast path). Once a turn's budget is spent, or while any command is held, new commands
are held in their tenant's FIFO, and at the end of the turn (a ``call_soon`` callback, which
runs after the loop has read every ready connection) the controller runs up to
``turn_budget`` held commands, choosing between tenants by start-time fair queuing (the same
rule as :mod:`sbstore.qos.scheduler`: the backlogged tenant with the smallest start tag goes
next; its finish tag advances by ``cost / weight``, cost = ``1 + nbytes / cost_bytes``). Under
saturation every turn runs exactly ``turn_budget`` commands, picked by weight; hosts keep their
queues full, so a tenant with three times the weight completes three times the commands.

Back-pressure is the connection's (``target.server``): one that holds many commands stops
being read. Limits (IOPS, bandwidth) stay with the backend dispatcher in ``device``.

A flow (:class:`CpuFlow`) is one volume's handle, given to the target through
``QosDevice.admission_flow``; moving a volume to another tenant moves its flow.
"""
from __future__ import annotations

import asyncio
from collections import deque
from heapq import heappop, heappush, heapreplace
from typing import Any

from sbstore.qos.policy import DEFAULT_WEIGHT
from sbstore.qos.scheduler import DEFAULT_COST_BYTES

DEFAULT_TURN_BUDGET = 16


class CpuTenant:
    """A tenant's FIFO of held commands, its SFQ tags and counters."""

    __slots__ = ("admitted", "finish", "held", "name", "queue", "weight")

    def __init__(self, name: str, weight: int) -> None:
        self.name = name
        self.weight = weight
        self.queue: deque[tuple[Any, Any, float]] = deque()  # (connection, command, cost)
        self.finish = 0.0
        self.admitted = 0  # commands run, directly or after being held
        self.held = 0  # commands that had to wait for their turn (a counter)


class CpuFlow:
    """One volume's commands: the tenant they count against (``tenant`` changes on assign)."""

    __slots__ = ("tenant",)

    def __init__(self, tenant: CpuTenant) -> None:
        self.tenant = tenant


class CpuAdmission:
    """The admission controller (``target.admission.Admission``) with per-tenant weights."""

    def __init__(self, *, turn_budget: int = DEFAULT_TURN_BUDGET,
                 cost_bytes: int = DEFAULT_COST_BYTES) -> None:
        if turn_budget < 1:
            raise ValueError("turn_budget must be >= 1")
        if cost_bytes <= 0:
            raise ValueError("cost_bytes must be positive")
        self.turn_budget = turn_budget
        self.cost_bytes = cost_bytes
        self.tenants: dict[str, CpuTenant] = {}
        self._used = 0  # commands run this turn
        self._backlog = 0  # commands held
        self._heap: list[tuple[float, int, CpuTenant]] = []  # backlogged tenants by start tag
        self._seq = 0
        self._vtime = 0.0
        self._armed = False

    # --- tenants and flows --------------------------------------------------------------------
    def tenant(self, name: str) -> CpuTenant:
        t = self.tenants.get(name)
        if t is None:
            t = self.tenants[name] = CpuTenant(name, DEFAULT_WEIGHT)
        return t

    def set_weight(self, name: str, weight: int) -> None:
        """Takes effect for commands held from now on (tags already given stay)."""
        if weight < 1:
            raise ValueError("weight must be >= 1")
        self.tenant(name).weight = weight

    def flow(self, tenant: str) -> CpuFlow:
        return CpuFlow(self.tenant(tenant))

    def move(self, flow: CpuFlow, tenant: str) -> None:
        flow.tenant = self.tenant(tenant)

    @property
    def backlog(self) -> int:
        return self._backlog

    # --- target.admission.Admission -----------------------------------------------------------
    def admit(self, flow: CpuFlow, nbytes: int) -> bool:
        if self._backlog or self._used >= self.turn_budget:
            return False
        self._used += 1
        flow.tenant.admitted += 1
        if self._used >= self.turn_budget and not self._armed:
            self._arm()  # the end of this turn gives the next one its budget
        return True

    def hold(self, flow: CpuFlow, nbytes: int, conn: Any, event: Any) -> None:
        t = flow.tenant
        if not t.queue:
            # SFQ: a tenant that becomes backlogged starts at the virtual time (no credit for
            # having been idle), or where its last command left it if that is later.
            self._seq += 1
            heappush(self._heap, (max(self._vtime, t.finish), self._seq, t))
        t.queue.append((conn, event, 1.0 + nbytes / self.cost_bytes))
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
            # Tenants whose queue emptied leave the heap; the others keep their tags.
            self._heap = [entry for entry in self._heap if entry[2].queue]
            self._heap.sort()
        return dropped

    # --- turns --------------------------------------------------------------------------------
    def _arm(self) -> None:
        self._armed = True
        asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        """The loop has read every ready connection: a new turn, run what is held by weight."""
        self._armed = False
        self._used = 0
        heap = self._heap
        ran: dict[Any, None] = {}
        budget = self.turn_budget
        while heap and self._used < budget:
            start, _, t = heap[0]
            conn, event, cost = t.queue.popleft()
            self._vtime = start
            t.finish = start + cost / t.weight
            if t.queue:
                self._seq += 1
                heapreplace(heap, (t.finish, self._seq, t))
            else:
                heappop(heap)
            self._backlog -= 1
            self._used += 1
            t.admitted += 1
            ran[conn] = None
            conn.run_held(event)
        for conn in ran:
            conn.end_turn()
        if self._backlog and not self._armed:
            self._arm()
