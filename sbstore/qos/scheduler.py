"""Weighted fair dispatch across tenants, with limits: the sans-I/O core of the QoS layer.

Theory of operation. Every I/O is a :class:`Request` in a queue (a *flow*): one flow per
volume and kind (read, write, other), so a volume held by its read limit does not hold its
writes, and one volume held by its own limit does not hold its tenant's other volumes. The
caller (``sbstore.qos.device``) owns the backend's bound on outstanding I/Os: while a slot is
free it asks :meth:`Scheduler.pop_ready` for the next request, and arms one timer at
:meth:`Scheduler.next_deadline` when every queued request is held by a limit.

Which tenant goes next: start-time fair queueing with depth D, SFQ(D) (Goyal, Vin and Cheng
1996; Jin, Chase and Kaur 2004 for a storage server with D requests outstanding). Each backlogged
tenant carries a start tag ``S = max(v, F)``; the scheduler dispatches the eligible tenant with
the smallest ``S``, sets the virtual time ``v = S`` and the tenant's finish tag
``F = S + cost / weight``. Why SFQ and not deficit round robin: a tenant with a small share and
a short queue (the 4k QD4 tenant next to a 128k QD64 flood) is served as soon as its tag is the
smallest, within about one of the other tenants' requests, whereas DRR makes it wait for the
others' whole quantum (weight x quantum bytes) each round; and SFQ needs no quantum tuned to the
largest I/O. It is work-conserving: only backlogged tenants hold tags, and a tenant that was
idle or held by its limits re-enters at ``v`` without credit saved up.

Cost: ``1 + nbytes / cost_bytes``. A device's service time is roughly a fixed part per I/O plus
a part per byte; ``cost_bytes`` is the transfer that takes as long as the fixed part (64 KiB by
default, an NVMe SSD's ballpark; a disk model or a measured device sets its own), so weights
share the device's time, whether the tenants do 4k or 128k I/O. Flush, write zeroes and
deallocate cost 1 (one I/O, no bytes).

Limits (:mod:`sbstore.qos.bucket`): a flow's head may go when its tenant's buckets and its
volume's buckets all hold >= 0 tokens for its kind; dispatching charges both. Within a tenant,
the oldest eligible head goes first. A tenant whose every head is held sleeps until the earliest
time one may go (``next_deadline``). Policy changes (:meth:`set_tenant`, :meth:`set_volume`)
apply to queued requests at once: a sleeping tenant is woken to be looked at again.

Order: the scheduler may reorder requests of different flows; NVMe allows reordering any
independent commands, and a flush need only cover writes that *completed* before it was
submitted, which the backend has already seen. Within a flow, FIFO.

Throttled time: a tenant is *throttled* from the moment the scheduler finds one of its heads
held by a limit until it finds none held (or the held queues empty). ``throttled_s`` sums those
wall-clock intervals (not I/O-seconds).

Pure: ``now`` is passed in (monotonic seconds); no clock, no asyncio.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from heapq import heappop, heappush, heapreplace
from typing import Any

from sbstore.qos.bucket import OTHER, READ, WRITE, LimitSet
from sbstore.qos.policy import DEFAULT_WEIGHT, NO_LIMITS

DEFAULT_COST_BYTES = 64 << 10

# Request states.
QUEUED, DISPATCHED, DROPPED = 0, 1, 2
# Tenant states: no queued request / in the ready heap / held by limits until ``wake_at``.
IDLE, READY, SLEEPING = 0, 1, 2

_INF = float("inf")


class Request:
    """One I/O waiting for (or given) a backend slot. ``waiter`` is the caller's (a future)."""

    __slots__ = ("cost", "flow", "kind", "nbytes", "seq", "state", "waiter")

    def __init__(self, flow: Flow, kind: int, nbytes: int, cost: float, seq: int,
                 waiter: Any) -> None:
        self.flow = flow
        self.kind = kind
        self.nbytes = nbytes
        self.cost = cost
        self.seq = seq
        self.state = QUEUED
        self.waiter = waiter

    def __repr__(self) -> str:
        return (f"Request(kind={self.kind}, nbytes={self.nbytes}, seq={self.seq}, "
                f"state={self.state})")


class TenantStats:
    """A tenant's counters on one scheduler: plain ints, the I/O path only adds."""

    __slots__ = ("other_ios", "read_bytes", "read_ios", "throttled_s", "write_bytes",
                 "write_ios")

    def __init__(self) -> None:
        self.read_ios = 0
        self.write_ios = 0
        self.other_ios = 0
        self.read_bytes = 0
        self.write_bytes = 0
        self.throttled_s = 0.0

    def count(self, kind: int, nbytes: int) -> None:
        if kind == READ:
            self.read_ios += 1
            self.read_bytes += nbytes
        elif kind == WRITE:
            self.write_ios += 1
            self.write_bytes += nbytes
        else:
            self.other_ios += 1


@dataclass(frozen=True, slots=True)
class TenantQosStats:
    """What a tenant's QoS queues report (a copy, taken at one instant)."""

    tenant: str
    queued_ios: int = 0
    throttled_seconds: float = 0.0
    read_ios: int = 0
    write_ios: int = 0
    other_ios: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    # The target's admission controller (sbstore.qos.admission), set by QosManager.stats():
    # commands run, those of them that first waited for their turn, and those waiting now.
    cpu_admitted: int = 0
    cpu_held: int = 0
    cpu_waiting: int = 0
    cpu_ahead: int = 0  # commands run at once ahead of held ones (a tenant at QD1)
    cpu_one_at_a_time: int = 0  # 1 while it counts as keeping one command at a time

    @property
    def dispatched_ios(self) -> int:
        return self.read_ios + self.write_ios + self.other_ios

    @property
    def dispatched_bytes(self) -> int:
        return self.read_bytes + self.write_bytes

    def __add__(self, other: TenantQosStats) -> TenantQosStats:
        return TenantQosStats(
            self.tenant, self.queued_ios + other.queued_ios,
            self.throttled_seconds + other.throttled_seconds,
            self.read_ios + other.read_ios, self.write_ios + other.write_ios,
            self.other_ios + other.other_ios, self.read_bytes + other.read_bytes,
            self.write_bytes + other.write_bytes, self.cpu_admitted + other.cpu_admitted,
            self.cpu_held + other.cpu_held, self.cpu_waiting + other.cpu_waiting,
            self.cpu_ahead + other.cpu_ahead,
            max(self.cpu_one_at_a_time, other.cpu_one_at_a_time))


class Flow:
    """The FIFO of one volume's I/Os of one kind."""

    __slots__ = ("blocked", "kind", "queue", "volume")

    def __init__(self, volume: VolumeState, kind: int) -> None:
        self.volume = volume
        self.kind = kind
        self.queue: deque[Request] = deque()
        self.blocked = False  # its head was found held by a limit (throttled-time accounting)


class VolumeState:
    """A volume on one scheduler: its tenant, its own limits, its flows.

    ``direct`` is True when neither the volume nor its tenant has a limit: the device then
    dispatches without asking the scheduler whenever a backend slot is free. ``stats`` is its
    tenant's :class:`TenantStats` (the device counts direct dispatches there)."""

    __slots__ = ("direct", "flows", "key", "limits", "stats", "tenant")

    def __init__(self, key: Hashable, tenant: TenantState, limits: LimitSet) -> None:
        self.key = key
        self.tenant = tenant
        self.limits = limits
        self.stats = tenant.stats
        self.flows = (Flow(self, READ), Flow(self, WRITE), Flow(self, OTHER))
        self.direct = limits.unlimited and tenant.limits.unlimited


class TenantState:
    """A tenant on one scheduler: weight, limits, SFQ tags, and which flows are backlogged."""

    __slots__ = ("active", "blocked", "finish", "limits", "name", "queued", "state", "stats",
                 "throttled_since", "token", "volumes", "wake_at", "weight")

    def __init__(self, name: str, weight: int, limits: LimitSet) -> None:
        self.name = name
        self.weight = weight
        self.limits = limits
        self.volumes: set[VolumeState] = set()
        self.active: dict[Flow, None] = {}  # backlogged flows, in the order they became so
        self.queued = 0
        self.state = IDLE
        self.token = 0  # the heap entry that is current (older ones are stale)
        self.finish = 0.0  # SFQ finish tag of the last dispatched request
        self.wake_at = _INF
        self.blocked = 0  # flows whose head is held by a limit
        self.throttled_since = 0.0
        self.stats = TenantStats()


UNLIMITED = LimitSet(NO_LIMITS, 0.0)


class Scheduler:
    """Tenants' queues in front of one backend (see the module's theory of operation)."""

    def __init__(self, *, cost_bytes: int = DEFAULT_COST_BYTES) -> None:
        if cost_bytes <= 0:
            raise ValueError("cost_bytes must be positive")
        self.cost_bytes = cost_bytes
        self.tenants: dict[str, TenantState] = {}
        self.volumes: dict[Hashable, VolumeState] = {}
        self.queued = 0  # requests QUEUED over all tenants
        self.vtime = 0.0  # SFQ virtual time: the start tag of the last dispatched request
        self._ready: list[tuple[float, int, TenantState]] = []  # (start tag, token, tenant)
        self._sleeping: list[tuple[float, int, TenantState]] = []  # (wake_at, token, tenant)
        self._seq = 0

    # -- configuration -------------------------------------------------------------------------
    def tenant(self, name: str) -> TenantState:
        """The tenant called ``name`` (created unlimited with the default weight if new)."""
        t = self.tenants.get(name)
        if t is None:
            t = self.tenants[name] = TenantState(name, DEFAULT_WEIGHT, UNLIMITED)
        return t

    def set_tenant(self, name: str, now: float, *, weight: int | None = None,
                   limits: LimitSet | None = None) -> TenantState:
        """Change a tenant's weight and/or limits; queued requests see them at once."""
        t = self.tenant(name)
        if weight is not None:
            if not 1 <= weight:
                raise ValueError("weight must be >= 1")
            t.weight = weight
        if limits is not None:
            t.limits = limits
            for vol in t.volumes:
                vol.direct = vol.limits.unlimited and limits.unlimited
        self._recheck(t)
        return t

    def set_volume(self, key: Hashable, tenant: str, now: float,
                   limits: LimitSet | None = None) -> VolumeState:
        """Put volume ``key`` in ``tenant`` (moving its queued requests) with its own
        ``limits`` (None: keep what it has; a new volume gets none)."""
        t = self.tenant(tenant)
        vol = self.volumes.get(key)
        if vol is None:
            vol = self.volumes[key] = VolumeState(key, t, limits or UNLIMITED)
            t.volumes.add(vol)
            return vol
        if limits is not None:
            vol.limits = limits
        if vol.tenant is not t:
            self._move(vol, t, now)
        vol.direct = vol.limits.unlimited and t.limits.unlimited
        self._recheck(t)
        return vol

    def remove_volume(self, key: Hashable) -> None:
        """Forget ``key``: policy changes no longer reach it. Requests already queued still go
        (through the tenant it had), so a device in use keeps working until it is dropped."""
        vol = self.volumes.pop(key, None)
        if vol is not None:
            vol.tenant.volumes.discard(vol)

    def remove_tenant(self, name: str) -> None:
        """Forget a tenant that has no volumes and nothing queued; else only reset its policy
        (weight and no limits), as for a tenant never configured."""
        t = self.tenants.get(name)
        if t is None:
            return
        if not t.volumes and not t.queued:
            del self.tenants[name]
            t.token = -1
            return
        self.set_tenant(name, 0.0, weight=DEFAULT_WEIGHT, limits=UNLIMITED)

    def _move(self, vol: VolumeState, new: TenantState, now: float) -> None:
        old = vol.tenant
        old.volumes.discard(vol)
        moved = 0
        for flow in vol.flows:
            if flow in old.active:
                del old.active[flow]
                if flow.blocked:
                    self._unblock(flow, old, now)
                new.active[flow] = None
                moved += len(flow.queue)
        old.queued -= moved
        new.queued += moved
        if not old.queued:
            self._idle(old)
        vol.tenant = new
        vol.stats = new.stats
        new.volumes.add(vol)

    def _recheck(self, t: TenantState) -> None:
        """Look at ``t``'s queues again at the next :meth:`pop_ready` (a policy changed)."""
        if t.queued and t.state != READY:
            self._make_ready(t)

    # -- the I/O path ----------------------------------------------------------------------------
    def admit_now(self, vol: VolumeState, kind: int, nbytes: int, now: float) -> bool:
        """Let an I/O go at once, bypassing the queues, if its tenant has nothing queued and
        its limits allow it (then they are charged and it is counted). For a caller that holds
        a free backend slot: with a slot free, every queued request is held by a limit, so
        going now passes no one who could go."""
        t = vol.tenant
        if t.queued:
            return False
        tl, vl = t.limits, vol.limits
        if tl.by_kind[kind] and tl.ready_at(kind, now) > now:
            return False
        if vl.by_kind[kind] and vl.ready_at(kind, now) > now:
            return False
        tl.charge(kind, nbytes)
        vl.charge(kind, nbytes)
        t.stats.count(kind, nbytes)
        return True

    def submit(self, vol: VolumeState, kind: int, nbytes: int, now: float,
               waiter: Any = None) -> Request:
        """Queue an I/O of ``vol``; :meth:`pop_ready` hands it out when its turn comes."""
        self._seq += 1
        flow = vol.flows[kind]
        req = Request(flow, kind, nbytes,
                      1.0 + nbytes / self.cost_bytes if kind != OTHER else 1.0, self._seq,
                      waiter)
        t = vol.tenant
        if not flow.queue:
            t.active[flow] = None
        flow.queue.append(req)
        t.queued += 1
        self.queued += 1
        if t.state != READY:
            self._make_ready(t)
        return req

    def pop_ready(self, now: float) -> Request | None:
        """The next request to give a backend slot (charged and counted, state DISPATCHED), or
        None when nothing queued may go now."""
        sleeping = self._sleeping
        while sleeping and sleeping[0][0] <= now:
            _, token, t = heappop(sleeping)
            if token == t.token:
                self._make_ready(t)
        ready = self._ready
        while ready:
            start, token, t = ready[0]
            if token != t.token:
                heappop(ready)
                continue
            flow = self._pick(t, now)
            if flow is None:
                heappop(ready)
                self._sleep(t, t.wake_at)
                continue
            req = flow.queue.popleft()
            if not flow.queue:
                del t.active[flow]
                if flow.blocked:
                    self._unblock(flow, t, now)
            kind, nbytes = req.kind, req.nbytes
            t.limits.charge(kind, nbytes)
            flow.volume.limits.charge(kind, nbytes)
            t.stats.count(kind, nbytes)
            req.state = DISPATCHED
            self.vtime = start
            t.finish = start + req.cost / t.weight
            t.queued -= 1
            self.queued -= 1
            if t.queued:
                # Still backlogged: its next start tag is max(v, F) = F.
                self._seq += 1
                t.token = self._seq
                heapreplace(ready, (t.finish, self._seq, t))
            else:
                heappop(ready)
                t.state = IDLE
            return req
        return None

    def next_deadline(self) -> float | None:
        """When a request held by a limit may go (None: none is held)."""
        sleeping = self._sleeping
        while sleeping and sleeping[0][1] != sleeping[0][2].token:
            heappop(sleeping)
        return sleeping[0][0] if sleeping else None

    def cancel(self, req: Request, now: float) -> bool:
        """Take a queued request out (its host went away). False if it was not queued."""
        if req.state != QUEUED:
            return False
        flow = req.flow
        flow.queue.remove(req)
        req.state = DROPPED
        t = flow.volume.tenant
        if not flow.queue:
            del t.active[flow]
            if flow.blocked:
                self._unblock(flow, t, now)
        t.queued -= 1
        self.queued -= 1
        if not t.queued:
            self._idle(t)
        return True

    # -- helpers -------------------------------------------------------------------------------
    def _pick(self, t: TenantState, now: float) -> Flow | None:
        """The flow of ``t`` whose head may go now (the oldest such head), or None; sets
        ``t.wake_at`` to when the earliest held head may go."""
        best: Flow | None = None
        best_seq = 0
        wake = _INF
        tl = t.limits
        for flow in t.active:
            kind = flow.queue[0].kind
            r = tl.ready_at(kind, now) if tl.by_kind[kind] else now
            vl = flow.volume.limits
            if vl.by_kind[kind]:
                r2 = vl.ready_at(kind, now)
                r = max(r, r2)
            if r <= now:
                if flow.blocked:
                    self._unblock(flow, t, now)
                seq = flow.queue[0].seq
                if best is None or seq < best_seq:
                    best, best_seq = flow, seq
            else:
                if not flow.blocked:
                    flow.blocked = True
                    t.blocked += 1
                    if t.blocked == 1:
                        t.throttled_since = now
                wake = min(wake, r)
        t.wake_at = wake
        return best

    def _unblock(self, flow: Flow, t: TenantState, now: float) -> None:
        flow.blocked = False
        t.blocked -= 1
        if t.blocked == 0:
            t.stats.throttled_s += max(0.0, now - t.throttled_since)

    def _make_ready(self, t: TenantState) -> None:
        self._seq += 1
        t.token = self._seq
        t.state = READY
        heappush(self._ready, (max(self.vtime, t.finish), self._seq, t))

    def _sleep(self, t: TenantState, wake_at: float) -> None:
        self._seq += 1
        t.token = self._seq
        t.state = SLEEPING
        heappush(self._sleeping, (wake_at, self._seq, t))

    def _idle(self, t: TenantState) -> None:
        self._seq += 1
        t.token = self._seq  # its heap entries are stale now
        t.state = IDLE

    # -- reporting -----------------------------------------------------------------------------
    def stats(self, now: float) -> Iterator[TenantQosStats]:
        """Each tenant's counters as of ``now`` (a throttled interval still open counts up to
        ``now``)."""
        for t in self.tenants.values():
            s = t.stats
            throttled = s.throttled_s
            if t.blocked:
                throttled += max(0.0, now - t.throttled_since)
            yield TenantQosStats(t.name, t.queued, throttled, s.read_ios, s.write_ios,
                                 s.other_ios, s.read_bytes, s.write_bytes)
