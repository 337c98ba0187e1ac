"""The asyncio side of QoS: a device wrapper per volume, a dispatcher per backend, a manager.

Theory of operation. Every I/O of a :class:`QosDevice` needs a *slot* of its backend: a
:class:`Backend` lets at most ``max_outstanding`` I/Os be in the backend at once, so that when
tenants compete they wait in our queues, where the scheduler (:mod:`sbstore.qos.scheduler`)
decides whose turn it is, and not inside the backend, where nobody does. An I/O that may not
go at once is queued with a future; the dispatcher resolves it when the scheduler picks it and
a slot is free, and the I/O's own coroutine then calls the inner device and gives the slot back
when it completes. The dispatcher runs (``pump``) when a slot frees, when an I/O is queued,
when a policy changes, and on its one timer, armed with ``loop.call_later`` only while every
queued I/O is held by a limit and a slot is free.

The fast path. When neither the volume nor its tenant has a limit and a slot is free, an I/O
goes straight to the inner device: no clock read, no future, no timer; a counter for the slot
and two for the tenant's statistics. With a slot free, nothing queued could go (every queued
I/O is held by a limit, or the dispatcher would have given it that slot), so skipping the queue
passes no one. A coroutine that completes without suspending (a RAM device, the page cache)
therefore still never needs a Task: the target's ``_run_eagerly`` keeps its property. On a
backend declared ``inline`` (its reads and writes complete within the call, see
:class:`Backend`) even the slot is skipped and the inner device's coroutine is returned as is.
Measured per 4k read on a RAM device: 0.05 us inline, 0.21 us counted (a micro-benchmark
stepping the coroutines); through the TCP target (perf/qos_bench.py "overhead") target CPU per
I/O +3.0% inline and +4.4% counted, IOPS -2.0% and -2.8%, on a shared 2-vCPU VM where the same
comparison with no layer on either side varies by 2-3%. A limited tenant with a slot free asks
:meth:`Scheduler.admit_now` (one clock read, its buckets) and also goes without a future when
its buckets allow.

Cancellation. The target cancels a handler when its connection goes (``coro.close()``, which
raises GeneratorExit where the coroutine waits, or ``Task.cancel()``). A queued I/O is taken out
of its queue; one already given a slot gives it back. Either way nothing leaks.

Order: see :mod:`sbstore.qos.scheduler`. A flush is queued like any I/O (one I/O, no bytes,
in its volume's "other" queue, so writes held by a write limit do not hold it); it reaches the
inner device after every write that completed before it was submitted, since those completed
in the inner device.

Clocks: ``time.monotonic()`` for the scheduler and the buckets (uvloop's ``loop.time()`` has
millisecond resolution); timers are relative delays of at least ``MIN_TIMER_S``, because uvloop
rounds a delay down to whole milliseconds (a 0.3 ms timer fires at once, which would spin).
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid as uuid_mod
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Hashable,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any, TypeVar

from sbstore.qos.admission import (
    DEFAULT_LATENCY_BYTES,
    DEFAULT_MAX_INFLIGHT,
    DEFAULT_TURN_BUDGET,
    CpuAdmission,
    CpuFlow,
)
from sbstore.qos.bucket import OTHER, READ, WRITE, LimitSet
from sbstore.qos.policy import NO_LIMITS, limits_of, weight_of
from sbstore.qos.scheduler import (
    DEFAULT_COST_BYTES,
    DISPATCHED,
    DROPPED,
    QUEUED,
    UNLIMITED,
    Scheduler,
    TenantQosStats,
    VolumeState,
)
from target.blockdev import USED_BLOCKS, BlockDevice, DirectDone, DirectRead, DirectWrite

_now = time.monotonic
MIN_TIMER_S = 0.001
DEFAULT_MAX_OUTSTANDING = 32
DEFAULT_BACKEND = "default"
DEFAULT_TENANT = "default"  # the control module's name for the tenant of unassigned volumes

T = TypeVar("T")


class Backend(Scheduler):
    """The dispatcher of one backend (a pool, a disk): the scheduler of its tenants' queues
    (it *is* the :class:`Scheduler`, so the fast path reads ``queued`` without a hop), its
    bound on outstanding I/Os and its timer. ``idle_slots`` = ``max_outstanding`` - I/Os in
    the backend.

    Sizing ``max_outstanding``: the device's parallelism plus what covers the turnaround from
    a completion to the next I/O reaching the device (one or two loop iterations: 0.1-0.3 ms
    measured here), or each server idles that long per I/O. With the benchmark's disk model
    (16 servers, 2 ms I/Os) a bound of 16 left it 9-13% idle, 24 under 1%.

    ``inline``: an I/O with no limit in its way is handed straight to the inner device, not
    counted against the bound. Right when the backend's reads and writes complete within the
    call (RAM, the page cache: such an I/O is never outstanding while anything else runs), and
    when something else bounds what is outstanding: the daemon's admission controller
    (:mod:`sbstore.qos.admission`) bounds the commands executing, which is where its weights
    act. Limited tenants and flush / write zeroes / deallocate (which may wait, e.g. for a
    metadata commit) still go through the counted path."""

    def __init__(self, name: Hashable, *, max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
                 cost_bytes: int = DEFAULT_COST_BYTES, inline: bool = False) -> None:
        if max_outstanding < 1:
            raise ValueError("max_outstanding must be >= 1")
        super().__init__(cost_bytes=cost_bytes)
        self.name = name
        self.inline = inline
        self.max_outstanding = max_outstanding
        self.idle_slots = max_outstanding
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    @property
    def outstanding(self) -> int:
        return self.max_outstanding - self.idle_slots

    def set_max_outstanding(self, n: int) -> None:
        """Change the bound; I/Os already in the backend stay (idle_slots may go negative for
        a while when it shrinks)."""
        if n < 1:
            raise ValueError("max_outstanding must be >= 1")
        self.idle_slots += n - self.max_outstanding
        self.max_outstanding = n
        self.pump()

    def pump(self) -> None:
        """Give free slots to the requests the scheduler picks; arm the timer if some are
        held by limits."""
        if not self.queued:
            return
        now = _now()
        while self.idle_slots > 0:
            req = self.pop_ready(now)
            if req is None:
                break
            waiter = req.waiter
            if waiter.done():  # its task was cancelled and has not run its cleanup yet
                req.state = DROPPED
                continue
            self.idle_slots -= 1
            waiter.set_result(None)
        if self.idle_slots > 0 and self.queued:
            self._arm(now)

    def release(self) -> None:
        """An I/O left the backend."""
        self.idle_slots += 1
        if self.queued:
            self.pump()

    def _arm(self, now: float) -> None:
        deadline = self.next_deadline()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # an earlier timer pumps, and re-arms
            self._timer.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer_at = deadline
        self._timer = loop.call_later(max(deadline - now, MIN_TIMER_S), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.pump()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class QosDevice:
    """A ``BlockDevice`` whose I/O goes through its volume's tenant queue on ``backend``.

    ``block_size``, ``num_blocks`` and ``uuid`` are the inner device's (read on each access);
    the inner device itself is :attr:`device`. No ``__getattr__`` forwarding on purpose: a
    class with ``__getattr__`` loses CPython's specialized attribute loads for *every*
    attribute, which measured 0.17 us per read here, more than the rest of the fast path."""

    __slots__ = ("_b", "_bs", "_v", "admission_flow", "device", "key")

    def __init__(self, device: BlockDevice, backend: Backend, volume: VolumeState,
                 admission_flow: CpuFlow | None = None) -> None:
        self.device = device
        self.key = volume.key
        self._b = backend
        self._v = volume
        self._bs = device.block_size
        # Read by target.subsystem.Namespace: whose CPU share this volume's commands use.
        self.admission_flow = admission_flow

    def __repr__(self) -> str:
        return f"QosDevice({self.device!r}, key={self.key!r})"

    @property
    def block_size(self) -> int:
        return self.device.block_size

    @property
    def num_blocks(self) -> int:
        return self.device.num_blocks

    @property
    def uuid(self) -> uuid_mod.UUID:
        return self.device.uuid

    @property
    def used_blocks(self) -> int | None:
        return getattr(self.device, USED_BLOCKS, None)

    @property
    def tenant(self) -> str:
        return self._v.tenant.name

    # Reads and writes repeat the fast path rather than share a helper: a call saved is ~0.1 us
    # of a budget of well under 1 us (see perf/qos_bench.py, "overhead"). They are plain
    # methods returning a coroutine, so that on an inline backend with no limits the inner
    # device's own coroutine is handed back: no frame of ours at all.
    def read(self, lba: int, nblocks: int
             ) -> Coroutine[Any, Any, bytes | bytearray | memoryview]:
        v = self._v
        if v.direct and self._b.inline:
            s = v.stats
            s.read_ios += 1
            s.read_bytes += nblocks * self._bs
            return self.device.read(lba, nblocks)
        return self._read(lba, nblocks)

    def write(self, lba: int, data: bytes | bytearray | memoryview, fua: bool = False
              ) -> Coroutine[Any, Any, None]:
        v = self._v
        if v.direct and self._b.inline:
            s = v.stats
            s.write_ios += 1
            s.write_bytes += len(data)
            return self.device.write(lba, data, fua)
        return self._write(lba, data, fua)

    @property
    def read_direct(self) -> DirectRead | None:
        """target.blockdev's optional direct read, when the inner device has one: taken only
        while this volume goes straight through (no limits, an inline backend), as
        :meth:`read` does; otherwise False and the command takes :meth:`read`. Read once by
        the namespace, so the closure holds what it needs rather than look it up per read."""
        inner = getattr(self.device, "read_direct", None)
        if inner is None:
            return None
        v, b, bs = self._v, self._b, self._bs

        def read_direct(lba: int, nblocks: int, done: DirectDone, tag: Any) -> bool:
            if v.direct and b.inline and inner(lba, nblocks, done, tag):
                s = v.stats
                s.read_ios += 1
                s.read_bytes += nblocks * bs
                return True
            return False
        return read_direct

    @property
    def write_direct(self) -> DirectWrite | None:
        """target.blockdev's optional direct write, on the same terms as :attr:`read_direct`."""
        inner = getattr(self.device, "write_direct", None)
        if inner is None:
            return None
        v, b = self._v, self._b

        def write_direct(lba: int, data: Any, fua: bool, done: DirectDone, tag: Any) -> bool:
            if v.direct and b.inline and inner(lba, data, fua, done, tag):
                s = v.stats
                s.write_ios += 1
                s.write_bytes += len(data)
                return True
            return False
        return write_direct

    async def _read(self, lba: int, nblocks: int) -> bytes | bytearray | memoryview:
        v = self._v
        b = self._b
        if v.direct and b.idle_slots > 0:
            b.idle_slots -= 1
            s = v.stats
            s.read_ios += 1
            s.read_bytes += nblocks * self._bs
            try:
                return await self.device.read(lba, nblocks)
            finally:
                b.idle_slots += 1
                if b.queued:
                    b.pump()
        return await self._queued(READ, nblocks * self._bs, self.device.read, lba, nblocks)

    async def _write(self, lba: int, data: bytes | bytearray | memoryview, fua: bool) -> None:
        v = self._v
        b = self._b
        if v.direct and b.idle_slots > 0:
            b.idle_slots -= 1
            s = v.stats
            s.write_ios += 1
            s.write_bytes += len(data)
            try:
                return await self.device.write(lba, data, fua)
            finally:
                b.idle_slots += 1
                if b.queued:
                    b.pump()
        return await self._queued(WRITE, len(data), self.device.write, lba, data, fua)

    async def flush(self) -> None:
        return await self._queued(OTHER, 0, self.device.flush)

    async def write_zeroes(self, lba: int, nblocks: int) -> None:
        return await self._queued(OTHER, 0, self.device.write_zeroes, lba, nblocks)

    async def deallocate(self, ranges: Sequence[tuple[int, int]]) -> None:
        return await self._queued(OTHER, 0, self.device.deallocate, ranges)

    async def _queued(self, kind: int, nbytes: int, op: Callable[..., Awaitable[T]],
                      *args: Any) -> T:
        b = self._b
        v = self._v
        if v.direct and b.idle_slots > 0:
            b.idle_slots -= 1
            v.stats.count(kind, nbytes)
        elif b.idle_slots > 0 and b.admit_now(v, kind, nbytes, _now()):
            b.idle_slots -= 1
        else:
            waiter = asyncio.get_running_loop().create_future()
            req = b.submit(v, kind, nbytes, _now(), waiter)
            b.pump()
            if not waiter.done():
                try:
                    await waiter
                except BaseException:  # cancelled, or the coroutine closed (GeneratorExit)
                    if req.state == QUEUED:
                        b.cancel(req, _now())
                    elif req.state == DISPATCHED:
                        b.release()
                    raise
        try:
            return await op(*args)
        finally:
            b.release()


class QosManager:
    """Tenants, their policies and volumes, and the backends their I/O goes through.

    What the daemon calls (all in the event loop's thread, all take effect at once, on queued
    I/O too, without any host reconnecting):

    - ``wrap(device, volume_key, tenant=None, backend=...)`` when a volume is exported (or
      ``device_hook(pool, volume, device)``, the control service's ``device_wrapper`` shape);
      ``forget(volume_key)`` when it is gone.
    - ``set_tenant_policy(name, policy)``, ``remove_tenant(name)``,
      ``set_volume_policy(volume_key, policy | None)``, ``assign(volume_key, tenant)``; or
      ``on_policy_change(change)`` (the control service's policy observer) and
      ``sync(tenants, volumes)`` to catch up with the whole state at once.
    - ``stats()``: per tenant, queued I/Os, throttled seconds, dispatched I/Os and bytes.

    A policy is ``sbstore.config.QosPolicy`` or anything with its fields (a mapping too); a
    volume's policy's weight is ignored (volumes share their tenant's). A volume key is any
    hashable; the control service's is ``(pool name, volume uuid string)``.
    """

    def __init__(self, *, max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
                 cost_bytes: int = DEFAULT_COST_BYTES,
                 default_tenant: str = DEFAULT_TENANT,
                 turn_budget: int = DEFAULT_TURN_BUDGET,
                 max_inflight: int = DEFAULT_MAX_INFLIGHT,
                 latency_bytes: int = DEFAULT_LATENCY_BYTES) -> None:
        self.max_outstanding = max_outstanding
        self.cost_bytes = cost_bytes
        self.default_tenant = default_tenant
        self.backends: dict[Hashable, Backend] = {}
        # The target's admission controller (TargetServer(admission=...)): tenants share the
        # CPU by weight. One for the whole daemon: the CPU is one resource for every pool.
        self.admission = CpuAdmission(turn_budget=turn_budget, max_inflight=max_inflight,
                                      cost_bytes=cost_bytes, latency_bytes=latency_bytes)
        self._flows: dict[Hashable, CpuFlow] = {}
        self._weights: dict[str, int] = {}
        self._tenant_limits: dict[str, LimitSet] = {}
        self._volume_limits: dict[Hashable, LimitSet] = {}
        self._volume_tenant: dict[Hashable, str] = {}

    # -- backends ------------------------------------------------------------------------------
    def backend(self, name: Hashable = DEFAULT_BACKEND, *, max_outstanding: int | None = None,
                cost_bytes: int | None = None, inline: bool | None = None) -> Backend:
        """The dispatcher called ``name`` (made with the manager's defaults if new; see
        :class:`Backend` for ``inline``); the arguments given change it."""
        b = self.backends.get(name)
        if b is None:
            b = self.backends[name] = Backend(
                name, max_outstanding=max_outstanding or self.max_outstanding,
                cost_bytes=cost_bytes or self.cost_bytes, inline=bool(inline))
            now = _now()
            for tenant in self._weights.keys() | self._tenant_limits.keys():
                self._apply_tenant(b, tenant, now)
            return b
        if cost_bytes is not None:
            b.cost_bytes = cost_bytes
        if inline is not None:
            b.inline = inline
        if max_outstanding is not None and max_outstanding != b.max_outstanding:
            b.set_max_outstanding(max_outstanding)
        return b

    # -- devices -------------------------------------------------------------------------------
    def wrap(self, device: BlockDevice, volume_key: Hashable, tenant: str | None = None, *,
             backend: Hashable = DEFAULT_BACKEND) -> QosDevice:
        """``device`` behind its tenant's queue on ``backend``. ``tenant`` None: the tenant
        the volume was assigned (``assign``, ``sync``), else the default tenant."""
        if tenant is not None:
            self._volume_tenant[volume_key] = tenant
        tenant = self._volume_tenant.get(volume_key, self.default_tenant)
        b = self.backend(backend)
        now = _now()
        self._apply_tenant(b, tenant, now)
        vol = b.set_volume(volume_key, tenant, now,
                                 self._volume_limits.get(volume_key, UNLIMITED))
        flow = self._flows.get(volume_key)
        if flow is None:
            flow = self._flows[volume_key] = self.admission.flow(tenant)
        else:
            self.admission.move(flow, tenant)
        return QosDevice(device, b, vol, flow)

    def device_hook(self, pool: str, volume: Any, device: BlockDevice) -> BlockDevice:
        """The control service's ``device_wrapper``: key ``(pool, str(volume.uuid))``, one
        backend per pool."""
        return self.wrap(device, (pool, str(volume.uuid)), backend=pool)

    def forget(self, volume_key: Hashable) -> None:
        """The volume is gone: drop its assignment and limits (a device still in use keeps
        working in the tenant it had)."""
        self._volume_tenant.pop(volume_key, None)
        self._volume_limits.pop(volume_key, None)
        self._flows.pop(volume_key, None)
        for b in self.backends.values():
            b.remove_volume(volume_key)

    # -- policies ------------------------------------------------------------------------------
    def set_tenant_policy(self, name: str, policy: Any) -> None:
        """Set tenant ``name``'s limits and weight (None: no limits, weight 100)."""
        limits, weight = limits_of(policy), weight_of(policy)
        now = _now()
        old = self._tenant_limits.get(name)
        self._tenant_limits[name] = LimitSet(limits, now, old) if not limits.unlimited \
            else UNLIMITED
        self._weights[name] = weight
        self.admission.set_weight(name, weight)
        for b in self.backends.values():
            self._apply_tenant(b, name, now)
            b.pump()

    def remove_tenant(self, name: str) -> None:
        """The tenant is deleted: its policy goes (volumes still naming it keep the defaults)."""
        self._weights.pop(name, None)
        self._tenant_limits.pop(name, None)
        self.admission.set_weight(name, weight_of(None))
        for b in self.backends.values():
            b.remove_tenant(name)
            b.pump()

    def set_volume_policy(self, volume_key: Hashable, policy: Any) -> None:
        """Set a volume's own limits, inside its tenant's (None: none of its own)."""
        limits = limits_of(policy) if policy is not None else NO_LIMITS
        now = _now()
        if limits.unlimited:
            self._volume_limits.pop(volume_key, None)
            ls = UNLIMITED
        else:
            ls = self._volume_limits[volume_key] = LimitSet(
                limits, now, self._volume_limits.get(volume_key))
        for b in self.backends.values():
            vol = b.volumes.get(volume_key)
            if vol is not None:
                b.set_volume(volume_key, vol.tenant.name, now, ls)
                b.pump()

    def assign(self, volume_key: Hashable, tenant: str) -> None:
        """Move a volume to ``tenant`` (its queued I/O moves with it)."""
        self._volume_tenant[volume_key] = tenant
        flow = self._flows.get(volume_key)
        if flow is not None:
            self.admission.move(flow, tenant)
        now = _now()
        for b in self.backends.values():
            if volume_key in b.volumes:
                self._apply_tenant(b, tenant, now)
                b.set_volume(volume_key, tenant, now)
                b.pump()

    def on_policy_change(self, change: Any) -> None:
        """The control service's policy observer (``PolicyChange``: ``kind`` "tenant" or
        "volume", ``tenant``, ``policy``, ``pool``, ``volume_uuid``, ``deleted``)."""
        if change.kind == "tenant":
            if change.deleted:
                self.remove_tenant(change.tenant)
            else:
                self.set_tenant_policy(change.tenant, change.policy)
        elif change.kind == "volume":
            key = (change.pool, change.volume_uuid)
            if change.deleted:
                self.forget(key)
            else:
                self.assign(key, change.tenant)
                self.set_volume_policy(key, change.policy)
        else:
            raise ValueError(f"unknown policy change kind {change.kind!r}")

    def sync(self, tenants: Mapping[str, Any], volumes: Mapping[Any, Any]) -> None:
        """Catch up with the whole state: ``tenants`` name -> policy, ``volumes`` key -> a
        record with ``tenant`` and ``limits`` (or a ``(tenant, limits)`` pair). Tenants not
        named lose their policy; volumes not named keep their devices but lose their limits
        and assignment."""
        for name in set(self._weights) - set(tenants):
            self.remove_tenant(name)
        for name, policy in tenants.items():
            self.set_tenant_policy(name, policy)
        for key in set(self._volume_tenant) | set(self._volume_limits):
            if key not in volumes:
                self._volume_tenant.pop(key, None)
                self.set_volume_policy(key, None)
        for key, rec in volumes.items():
            tenant, limits = rec if isinstance(rec, tuple) else (rec.tenant, rec.limits)
            self.assign(key, tenant)
            self.set_volume_policy(key, limits)

    def _apply_tenant(self, b: Backend, name: str, now: float) -> None:
        b.set_tenant(name, now, weight=self._weights.get(name, weight_of(None)),
                           limits=self._tenant_limits.get(name, UNLIMITED))

    # -- reporting -----------------------------------------------------------------------------
    def stats(self) -> dict[str, TenantQosStats]:
        """Per tenant, summed over backends: queued I/Os, throttled seconds, dispatched I/Os
        and bytes (read, write, other); and the admission controller's counters. Plain values,
        copied now (call it in the loop)."""
        now = _now()
        out: dict[str, TenantQosStats] = {name: TenantQosStats(name) for name in self._weights}
        for b in self.backends.values():
            for s in b.stats(now):
                prev = out.get(s.tenant)
                out[s.tenant] = s if prev is None else prev + s
        for name, t in self.admission.tenants.items():
            prev = out.get(name) or TenantQosStats(name)
            out[name] = dataclasses.replace(
                prev, cpu_admitted=self.admission.admitted(t), cpu_held=t.held,
                cpu_waiting=len(t.queue), cpu_ahead=t.ahead,
                cpu_one_at_a_time=int(self.admission.keeps_one_at_a_time(t)))
        return out

    def tenants(self) -> Iterable[str]:
        return sorted(self._weights.keys() | {t for b in self.backends.values()
                                              for t in b.tenants})

    def close(self) -> None:
        """Cancel the backends' timers (at shutdown)."""
        for b in self.backends.values():
            b.close()
