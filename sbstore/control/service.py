"""The control service: every management operation, whoever asks (API, daemon start, tests).

Theory of operation. The service joins three holders of truth: the pools (volumes, snapshots,
clones: ``sbstore.store``), the live target (subsystems, namespaces, host ACLs, listeners:
``target.subsystem``) and the state database (``control.state``: what the pools do not hold).
Each operation goes

    validate (nothing changed yet) -> apply to the pool and/or the target -> persist

and when a later step fails, it undoes the earlier ones (compensation, as SPDK's SMA does), so
a refused or failed operation leaves the three as they were. Errors are :class:`ControlError`
with a code from :class:`ErrorCode` and a message a person can act on; store errors are
translated once, in :func:`from_store_error`.

Rules:
- Mutating operations run one at a time (``_lock``): an operation's checks still hold when it
  applies them. Inflating, which can run for minutes, does not take the lock (the pool marks the
  volume busy instead, and refuses to delete it meanwhile).
- Volumes are named ``(pool, name)``; ``pool`` may be omitted when there is one pool, or when
  only one pool has a volume of that name. State rows name them by ``(pool, uuid)``.
- A namespace's device is ``InstrumentedDevice(wrap(VolumeDevice(volume)))`` with one
  :class:`~sbstore.iostats.IoStats` per volume uuid, so metrics survive re-exports and a volume
  in two subsystems is counted once. ``wrap`` is the device hook (QoS attaches there).
- Policies (tenants' and volumes' own limits) are stored and shown; whoever enforces them
  subscribes with :meth:`ControlService.add_policy_observer` and is told every change.
- Every volume belongs to a tenant (``default`` unless said otherwise); a volume the state does
  not know yet (created offline) is given to ``default`` at start.
- ANA and multipath: each listener is a path to every export it reaches. A listener shows one
  ANA state for all exports (optimized unless set) and may show another for single exports;
  :meth:`ControlService.set_listener_ana` sets both, persists them, and hosts connected through
  the listener see the change at once. Removing a listener closes its connections: to a
  multipath host that is a lost path, and its I/O goes on through the others.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hashlib
import ipaddress
import logging
import re
import time
import uuid as uuid_mod
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass
from typing import Any, TypeVar

import sbstore
from sbstore.config import QosPolicy, check_name
from sbstore.control import dhchap
from sbstore.control.listeners import MAX_LISTENER_ID, ListenerSet, LiveListener
from sbstore.control.operations import (
    Operation,
    OperationCancelled,
    OperationRegistry,
    TrackedStream,
)
from sbstore.control.schedules import format_every, parse_every
from sbstore.control.state import (
    DEFAULT_TENANT,
    HostAuthRecord,
    ListenerRecord,
    NamespaceRecord,
    ScheduleRecord,
    StateStore,
    SubsystemRecord,
    TenantRecord,
    VolumeRecord,
)
from sbstore.iostats import InstrumentedDevice, IoStats
from sbstore.slices import yield_to_io
from sbstore.store import (
    AlreadyExists,
    Busy,
    InvalidArgument,
    NoSpace,
    NotFound,
    Pool,
    ReadOnly,
    StoreError,
    Volume,
    transfer,
)
from sbstore.store.stream import StreamHeader
from sbstore.volume_device import VolumeDevice
from target.ana import STATE_NAMES, parse_state, state_name
from target.blockdev import BlockDevice
from target.nvme.spec import DISCOVERY_NQN, NQN_MAX_LEN, AnaState
from target.reservation import ReservationRecord, Reservations
from target.server import TargetServer
from target.subsystem import MAX_NAMESPACES, Subsystem, Target

log = logging.getLogger("sbstore.control")

NQN_RE = re.compile(r"nqn\.\d{4}-\d{2}\.[A-Za-z0-9][\x21-\x7e]*")
DEFAULT_BLOCK_SIZE = 4096
LIST_SLICE_S = 0.001  # longest run of a listing between two yields to the loop
DEFAULT_MODEL = "sbstore"
T = TypeVar("T")


class ErrorCode(enum.StrEnum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"  # the request is wrong whatever the state
    NOT_FOUND = "NOT_FOUND"  # it names something that does not exist
    ALREADY_EXISTS = "ALREADY_EXISTS"  # it would create something that exists
    FAILED_PRECONDITION = "FAILED_PRECONDITION"  # the state forbids it (exported, read-only)
    BUSY = "BUSY"  # try again later (an inflate in progress)
    CANCELLED = "CANCELLED"  # a long operation was cancelled (DELETE /v1/operations/{id})
    INTERNAL = "INTERNAL"  # a bug or an I/O failure; the log says more


class ControlError(Exception):
    """A refused or failed operation: ``code`` (ErrorCode) and a message for a person."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ControlError({self.code.value}, {self.message!r})"


def invalid(message: str) -> ControlError:
    return ControlError(ErrorCode.INVALID_ARGUMENT, message)


def from_store_error(exc: StoreError) -> ControlError:
    """The one translation of the pool's errors."""
    msg = str(exc)
    if isinstance(exc, NotFound):
        return ControlError(ErrorCode.NOT_FOUND, msg)
    if isinstance(exc, AlreadyExists):
        return ControlError(ErrorCode.ALREADY_EXISTS, msg)
    if isinstance(exc, Busy):
        return ControlError(ErrorCode.BUSY, msg)
    if isinstance(exc, InvalidArgument):
        return ControlError(ErrorCode.INVALID_ARGUMENT, msg)
    if isinstance(exc, (ReadOnly, NoSpace)):
        return ControlError(ErrorCode.FAILED_PRECONDITION, msg)
    return ControlError(ErrorCode.INTERNAL, f"the pool failed: {msg}")


# --- hooks ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PolicyChange:
    """What a policy observer is told.

    ``kind`` ``"tenant"``: tenant ``tenant`` now has ``policy`` (``deleted``: it is gone).
    ``kind`` ``"volume"``: volume ``(pool, volume_uuid)`` now belongs to ``tenant`` and has its
    own limits ``policy`` (None: only the tenant's); ``deleted``: the volume is gone.
    """

    kind: str
    tenant: str
    policy: QosPolicy | None
    pool: str | None = None
    volume_uuid: str | None = None
    deleted: bool = False


PolicyObserver = Callable[[PolicyChange], None]
# (pool name, volume, device) -> the device to export in its place.
DeviceWrapper = Callable[[str, Volume, BlockDevice], BlockDevice]


# --- runtime records --------------------------------------------------------------------------

@dataclass
class _Namespace:
    nsid: int
    pool: str
    uuid: str
    device: InstrumentedDevice | None  # None: the volume is missing (pool lost it)


@dataclass
class _Export:
    subsystem: Subsystem
    namespaces: dict[int, _Namespace]


def check_nqn(nqn: object, what: str = "NQN") -> str:
    if not isinstance(nqn, str) or not nqn:
        raise invalid(f"{what} must be a non-empty string")
    if len(nqn.encode()) > NQN_MAX_LEN:
        raise invalid(f"{what} {nqn[:40]!r}... is longer than {NQN_MAX_LEN} bytes")
    if nqn == DISCOVERY_NQN:
        raise invalid(f"{nqn} is the discovery subsystem's NQN")
    if not NQN_RE.fullmatch(nqn):
        raise invalid(f"{what} {nqn!r} is not an NQN: expected 'nqn.YYYY-MM.reverse.domain:"
                      f"name' (printable ASCII, no spaces), e.g. nqn.2026-11.io.example:vol1")
    return nqn


def _policy_from(fields: Mapping[str, Any], base: QosPolicy | None = None) -> QosPolicy:
    unknown = set(fields) - set(QosPolicy.field_names())
    if unknown:
        raise invalid(f"unknown policy field {min(unknown)!r} (fields: "
                      f"{', '.join(QosPolicy.field_names())})")
    values = (base or QosPolicy()).as_dict()
    values.update(fields)
    try:
        return QosPolicy(**values)
    except (ValueError, TypeError) as exc:
        raise invalid(str(exc)) from None


class ControlService:
    """Pools, target and state, driven together. Build it, ``await restore()``, then
    ``await open_listeners(config_listeners)``; ``await close()`` at the end (pools are the
    caller's to close)."""

    def __init__(self, state: StateStore, pools: Mapping[str, Pool], target: Target,
                 server: TargetServer, *, device_wrapper: DeviceWrapper | None = None) -> None:
        self.state = state
        self.pools: dict[str, Pool] = dict(pools)
        self.target = target
        self.server = server
        self.listeners = ListenerSet(server)
        self.device_wrapper = device_wrapper
        self.started = time.time()
        self._lock = asyncio.Lock()
        self.operations = OperationRegistry()  # inflate, export, import: progress, cancel
        # Commits write the WAL only; _mutation() makes them durable off the loop before an
        # operation returns (a commit's fsync on the loop stalled every I/O of the daemon).
        state.defer_sync()
        self._exports: dict[str, _Export] = {}
        self._stats: dict[str, IoStats] = {}  # volume uuid -> counters (kept across exports)
        self._tenants: dict[str, QosPolicy] = {}
        self._volumes: dict[tuple[str, str], VolumeRecord] = {}
        self._observers: list[PolicyObserver] = []
        # pool -> uuid -> volume: the pool looks volumes up by uuid with a scan, which made
        # a scrape or a listing of n exported volumes cost n^2. Checked on every use.
        self._by_uuid: dict[str, dict[str, Volume]] = {}
        # Told when a snapshot schedule is added or removed (the daemon's ScheduleRunner).
        self.on_schedules_changed: Callable[[], None] | None = None
        # (pool, uuid) -> the volume's NVMe reservations, shared by every namespace that
        # serves it, and what the state held at start (restored when first exported).
        self._reservations: dict[tuple[str, str], Reservations] = {}
        self._stored_reservations: dict[tuple[str, str], ReservationRecord] = {}

    # === one operation at a time, durable when it returns ======================================

    @contextlib.asynccontextmanager
    async def _mutation(self) -> AsyncIterator[None]:
        """Hold the operations' lock; on the way out (done, refused or failed after
        compensating), make what it committed durable before the next operation and before
        the caller hears of it."""
        async with self._lock:
            try:
                yield
            finally:
                await self._sync_state()

    async def _sync_state(self) -> None:
        if self.state.needs_sync:
            await asyncio.get_running_loop().run_in_executor(None, self.state.sync)

    # === hooks ===================================================================================

    def add_policy_observer(self, observer: PolicyObserver) -> None:
        """Call ``observer`` (in the loop) after every change of a tenant's policy, a volume's
        tenant or limits, and when either is deleted. Its exceptions are logged."""
        self._observers.append(observer)

    def _notify(self, change: PolicyChange) -> None:
        for observer in list(self._observers):
            try:
                observer(change)
            except Exception:  # an observer must not undo a committed change
                log.exception("policy observer %r failed on %s", observer, change)

    def policies(self) -> tuple[dict[str, QosPolicy], dict[tuple[str, str], VolumeRecord]]:
        """Every tenant's policy and every volume's tenancy and limits, as they are now (for
        an observer that attaches late)."""
        return dict(self._tenants), dict(self._volumes)

    # === start and stop ==========================================================================

    async def restore(self) -> None:
        """Load tenants, reconcile volume rows with the pools, and rebuild every export."""
        self._tenants = {t.name: t.policy for t in self.state.tenants()}
        if DEFAULT_TENANT not in self._tenants:
            self.state.put_tenant(TenantRecord(DEFAULT_TENANT, QosPolicy()))
            self._tenants[DEFAULT_TENANT] = QosPolicy()
        rows = {(r.pool, r.uuid): r for r in self.state.volumes()}
        with self.state.transaction():
            for pool_name, pool in self.pools.items():
                present = {str(v.uuid) for v in pool.volumes}
                for key, row in list(rows.items()):
                    if key[0] == pool_name and key[1] not in present:
                        log.warning("volume %s of pool %s is gone from the pool; forgetting "
                                    "its tenancy", key[1], pool_name)
                        self.state.remove_volume(*key)
                        self.state.remove_reservation(*key)
                        del rows[key]
                for vol in pool.volumes:
                    key = (pool_name, str(vol.uuid))
                    if key not in rows:
                        rows[key] = VolumeRecord(pool_name, key[1], DEFAULT_TENANT)
                        self.state.put_volume(rows[key])
        self._volumes = rows
        self._stored_reservations = self.state.reservations()
        for rec in self.state.subsystems():
            self._restore_export(rec)
        for auth in self.state.host_auth():
            export = self._exports.get(auth.subsystem)
            if export is not None:
                export.subsystem.set_host_credentials(auth.host_nqn,
                                                      dhchap.credentials(auth))
        await self._sync_state()

    def _restore_export(self, rec: SubsystemRecord) -> None:
        subsystem = Subsystem(rec.nqn, serial=rec.serial, model=rec.model,
                              allow_any_host=rec.allow_any_host, allowed_hosts=rec.hosts)
        export = _Export(subsystem, {})
        for ns in rec.namespaces:
            vol = self._volume_by_uuid(ns.pool, ns.volume_uuid)
            if vol is None:
                log.error("export %s: namespace %d names volume %s of pool %s, which is not "
                          "there; it is not served (remove it with 'sbstore export "
                          "remove-volume %s --nsid %d')", rec.nqn, ns.nsid, ns.volume_uuid,
                          ns.pool, rec.nqn, ns.nsid)
                export.namespaces[ns.nsid] = _Namespace(ns.nsid, ns.pool, ns.volume_uuid, None)
                continue
            device = self._device(ns.pool, vol)
            subsystem.add_namespace(device, ns.nsid,
                                    reservations=self._reservations_of(ns.pool, ns.volume_uuid))
            export.namespaces[ns.nsid] = _Namespace(ns.nsid, ns.pool, ns.volume_uuid, device)
        self.target.add_subsystem(subsystem)
        self._exports[rec.nqn] = export
        log.info("restored export %s (%d namespaces, %d hosts%s)", rec.nqn,
                 len(export.namespaces), len(rec.hosts),
                 ", any host" if rec.allow_any_host else "")

    async def open_listeners(self, configured: Iterable[ListenerRecord]) -> list[str]:
        """Open the config's listeners (an address listener that cannot bind raises OSError)
        and restore the API-added ones (failures logged, returned as messages)."""
        problems: list[str] = []
        stored = self.state.listeners()
        wanted = list(configured)
        keep: dict[int, ListenerRecord] = {}
        with self.state.transaction():
            for rec in stored:
                if rec.source != "config":
                    continue
                match = next((w for w in wanted if (w.address, w.interface, w.port)
                              == (rec.address, rec.interface, rec.port)), None)
                if match is None:
                    self.state.remove_listener(rec.id)
                else:
                    keep[rec.id] = dataclasses.replace(rec, tls=match.tls)
                    wanted.remove(match)
            for w in wanted:
                rec = dataclasses.replace(w, id=self._next_listener_id(keep), source="config")
                self.state.add_listener(rec)
                keep[rec.id] = rec
        await self._sync_state()
        ana = self._ana_settings()
        for rec in sorted(keep.values(), key=lambda r: r.id):
            await self.listeners.open(rec, ana.get(rec.id))  # fatal: the config asks for it
        for rec in self.state.listeners():
            if rec.source != "api":
                continue
            try:
                await self.listeners.open(rec, ana.get(rec.id))
            except (OSError, ValueError) as exc:
                what = f"listener {rec.id} ({_where(rec)}): {getattr(exc, 'strerror', None) or exc}"
                log.error("cannot restore %s", what)
                problems.append(what)
        return problems

    def _ana_settings(self) -> dict[int, dict[str | None, AnaState]]:
        out: dict[int, dict[str | None, AnaState]] = {}
        for row in self.state.ana_states():
            try:
                out.setdefault(row.listener, {})[row.export] = parse_state(row.state)
            except ValueError:
                log.error("listener %d: unknown ANA state %r in the state database; ignored",
                          row.listener, row.state)
        return out

    def _next_listener_id(self, extra: Mapping[int, Any] = {}) -> int:
        used = {r.id for r in self.state.listeners()} | set(extra)
        for i in range(1, MAX_LISTENER_ID + 1):
            if i not in used:
                return i
        raise ControlError(ErrorCode.FAILED_PRECONDITION, "every listener id is in use")

    async def close(self) -> None:
        """Close the listeners (connections stay until the server closes them)."""
        await self.listeners.close_all()

    # === helpers =================================================================================

    def _device(self, pool_name: str, vol: Volume) -> InstrumentedDevice:
        inner: BlockDevice = VolumeDevice(vol)
        if self.device_wrapper is not None:
            inner = self.device_wrapper(pool_name, vol, inner)
        stats = self._stats.setdefault(str(vol.uuid), IoStats())
        return InstrumentedDevice(inner, stats)

    def _reservations_of(self, pool_name: str, uuid: str) -> Reservations:
        """The volume's reservation state: made once, from the stored record if it asked to
        persist through power loss (PTPL), and written back at every change."""
        key = (pool_name, uuid)
        resv = self._reservations.get(key)
        if resv is not None:
            return resv
        stored = self._stored_reservations.pop(key, None)
        if stored is not None and stored.ptpl:
            try:
                resv = Reservations.from_record(stored)
            except ValueError as exc:
                log.error("volume %s of pool %s: stored reservation ignored: %s", uuid,
                          pool_name, exc)
        if resv is None:
            # PTPL clear: registrations and the reservation end with the power (restart).
            resv = Reservations(generation=stored.generation if stored else 0,
                                ptpl=stored.ptpl if stored else True)
        elif resv.holder is not None or resv.registrants:
            log.info("volume %s of pool %s: %d registrant(s)%s restored", uuid, pool_name,
                     len(resv.registrants),
                     f", type {resv.rtype} reservation" if resv.holder is not None else "")

        async def persist(rec: ReservationRecord) -> None:
            self.state.put_reservation(pool_name, uuid, rec)
            # Always sync (not only when needs_sync): another operation's sync in flight
            # clears the flag before its fsync is done.
            await asyncio.get_running_loop().run_in_executor(None, self.state.sync)

        resv.on_change = persist
        self._reservations[key] = resv
        return resv

    def _volume_by_uuid(self, pool_name: str, uuid: str) -> Volume | None:
        pool = self.pools.get(pool_name)
        if pool is None:
            return None
        index = self._by_uuid.get(pool_name)
        vol = index.get(uuid) if index is not None else None
        if vol is not None and _alive(pool, vol):
            return vol
        # Created, replaced or deleted since the index was made: make it again, once.
        self._by_uuid[pool_name] = index = {str(v.uuid): v for v in pool.volumes}
        return index.get(uuid)

    def _pool(self, name: str | None) -> tuple[str, Pool]:
        if name is None:
            if len(self.pools) == 1:
                return next(iter(self.pools.items()))
            if not self.pools:
                raise ControlError(ErrorCode.FAILED_PRECONDITION,
                                   "the daemon has no pool: add one to the config's [[pools]]")
            raise invalid(f"there are {len(self.pools)} pools ({', '.join(sorted(self.pools))}):"
                          f" say which one with --pool (API: \"pool\")")
        if not isinstance(name, str):
            raise invalid("pool must be a string")
        try:
            return name, self.pools[name]
        except KeyError:
            raise ControlError(ErrorCode.NOT_FOUND,
                               f"no pool named {name!r} (pools: "
                               f"{', '.join(sorted(self.pools)) or 'none'})") from None

    def _find(self, name: object, pool: str | None = None, *, what: str = "volume"
              ) -> tuple[str, Volume]:
        """The volume or snapshot ``name`` (in ``pool``, or the one pool that has it)."""
        if not isinstance(name, str) or not name:
            raise invalid(f"a {what} name must be a non-empty string")
        if pool is None and len(self.pools) > 1:
            found = [(p, vol) for p, pl in self.pools.items()
                     for vol in [_named(pl, name)] if vol is not None]
            if len(found) == 1:
                return found[0]
            if not found:
                raise ControlError(ErrorCode.NOT_FOUND, f"no {what} named {name!r} in any pool")
            raise invalid(f"pools {', '.join(p for p, _ in found)} each have a {what} named "
                          f"{name!r}: say which with --pool")
        pool_name, pl = self._pool(pool)
        try:
            return pool_name, pl.volume(name)
        except NotFound:
            raise ControlError(ErrorCode.NOT_FOUND,
                               f"no {what} named {name!r} in pool {pool_name!r}") from None

    def _exports_of(self, pool_name: str, uuid: str) -> list[tuple[str, int]]:
        return [(nqn, ns.nsid) for nqn, e in sorted(self._exports.items())
                for ns in e.namespaces.values() if (ns.pool, ns.uuid) == (pool_name, uuid)]

    def _tenant_of(self, pool_name: str, uuid: str) -> str:
        row = self._volumes.get((pool_name, uuid))
        return row.tenant if row else DEFAULT_TENANT

    def _export(self, nqn: object) -> _Export:
        if not isinstance(nqn, str) or not nqn:
            raise invalid("a subsystem NQN must be a non-empty string")
        try:
            return self._exports[nqn]
        except KeyError:
            raise ControlError(ErrorCode.NOT_FOUND, f"no export (subsystem) {nqn!r}") from None

    def _tenant_name(self, name: object) -> str:
        try:
            return check_name("tenant", name)
        except ValueError as exc:
            raise invalid(str(exc)) from None

    @staticmethod
    def _size(value: object, what: str = "size_bytes") -> int:
        if type(value) is not int or value <= 0:
            raise invalid(f"{what} must be a positive number of bytes, not {value!r}")
        return value

    @staticmethod
    def _wanted_uuid(value: str | None) -> uuid_mod.UUID | None:
        """The identity a replica of a cluster volume or clone must have (None: a new one)."""
        if value is None:
            return None
        try:
            return uuid_mod.UUID(value)
        except (ValueError, TypeError, AttributeError):
            raise invalid(f"uuid {value!r} is not a UUID") from None

    # === descriptions ============================================================================

    def volume_info(self, pool_name: str, vol: Volume) -> dict[str, Any]:
        parent = vol.parent
        return self._describe(pool_name, vol, parent.name if parent else None,
                              [c.name for c in vol.children],
                              self._exports_of(pool_name, str(vol.uuid)))

    def _describe(self, pool_name: str, vol: Volume, parent: str | None, children: list[str],
                  exports: list[tuple[str, int]]) -> dict[str, Any]:
        """What the API shows of a volume: ``Volume.info()``'s fields (built here from its
        lineage, which the caller finds: ``Volume.children`` scans the pool, so a listing
        that asked each volume would cost n^2) and the control module's."""
        uuid = str(vol.uuid)
        row = self._volumes.get((pool_name, uuid))
        return {
            "name": vol.name, "id": vol.id, "uuid": uuid,
            "kind": "snapshot" if vol.is_snapshot else "volume",
            "size_bytes": vol.size_bytes, "block_size": vol.block_size,
            "allocated_bytes": vol.allocated_bytes,
            "parent": parent,
            "children": children,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(vol.created)),
            "pool": pool_name,
            "read_only": vol.read_only,
            "tenant": row.tenant if row else DEFAULT_TENANT,
            "limits": row.limits.as_dict() if row and row.limits else None,
            "exports": [{"nqn": nqn, "nsid": nsid} for nqn, nsid in exports],
            "group": vol.group or None,
        }

    def export_info(self, nqn: str, host_auth: dict[str, Any] | None = None) -> dict[str, Any]:
        """``host_auth``: the export's DH-HMAC-CHAP hosts as listed, when the caller has read
        them already (a listing reads the table once for all exports)."""
        export = self._exports[nqn]
        sub = export.subsystem
        namespaces = []
        for nsid in sorted(export.namespaces):
            ns = export.namespaces[nsid]
            vol = self._volume_by_uuid(ns.pool, ns.uuid)
            namespaces.append({
                "nsid": nsid, "pool": ns.pool, "uuid": ns.uuid,
                "volume": vol.name if vol else None,
                "size_bytes": vol.size_bytes if vol else None,
                "block_size": vol.block_size if vol else None,
                "read_only": vol.read_only if vol else None,
                "state": "serving" if ns.device is not None else "missing",
            })
        if host_auth is None:
            host_auth = self._host_auth_views().get(nqn, {})
        return {"nqn": nqn, "serial": sub.serial, "model": sub.model,
                "allow_any_host": sub.allow_any_host, "hosts": sorted(sub.allowed_hosts),
                "host_auth": host_auth,
                "namespaces": namespaces, "controllers": len(sub.controllers)}

    def tenant_info(self, name: str) -> dict[str, Any]:
        volumes = sorted(f"{pool}/{vol.name}" for (pool, uuid), row in self._volumes.items()
                         if row.tenant == name
                         for vol in [self._volume_by_uuid(pool, uuid)] if vol is not None)
        return {"name": name, "policy": self._tenants[name].as_dict(), "volumes": volumes}

    # === pools and status ========================================================================

    def list_pools(self) -> list[dict[str, Any]]:
        return [self.pool_info(name) for name in sorted(self.pools)]

    def pool_info(self, name: str | None) -> dict[str, Any]:
        pool_name, pool = self._pool(name)
        # The engine's counters: submit_calls against reads + writes says how well submissions
        # batch, inflight and backlog how deep the device queue runs.
        return {"name": pool_name, **pool.stats().as_dict(), "io_stats": pool.engine.stats()}

    def status(self) -> dict[str, Any]:
        return {
            "version": sbstore.__version__,
            "uptime_s": round(time.time() - self.started, 3),
            "pools": len(self.pools),
            "volumes": sum(1 for p in self.pools.values() for v in p.volumes
                           if not v.is_snapshot),
            "snapshots": sum(1 for p in self.pools.values() for v in p.volumes if v.is_snapshot),
            "exports": len(self._exports),
            "namespaces": sum(len(e.namespaces) for e in self._exports.values()),
            "listeners": len(self.listeners.live),
            "tenants": len(self._tenants),
            "connections": self.server.connection_count,
            "controllers": sum(len(s.controllers) for s in self.target.subsystems.values()),
        }

    # === volumes =================================================================================

    def list_volumes(self, pool: str | None = None, tenant: str | None = None,
                     kind: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for _ in self._list_volumes(out, pool, tenant, kind):
            pass
        return out

    async def list_volumes_sliced(self, pool: str | None = None, tenant: str | None = None,
                                  kind: str | None = None) -> list[dict[str, Any]]:
        """:meth:`list_volumes` from the loop (1,000 volumes take 15-30 ms): see
        :meth:`_sliced`."""
        out: list[dict[str, Any]] = []
        await self._sliced(lambda: self._list_volumes(out, pool, tenant, kind))
        return out

    async def _sliced(self, steps: Callable[[], Iterator[None]]) -> None:
        """Run a listing's steps from the loop, yielding to it every :data:`LIST_SLICE_S` so
        I/O is served meanwhile, under the operations' lock so that no change lands between
        two slices."""
        async with self._lock:
            start = time.perf_counter()
            for _ in steps():
                if time.perf_counter() - start >= LIST_SLICE_S:
                    await yield_to_io()
                    start = time.perf_counter()

    def _list_volumes(self, out: list[dict[str, Any]], pool: str | None, tenant: str | None,
                      kind: str | None) -> Iterator[None]:
        """Appends the listing to ``out``, yielding every few volumes."""
        if kind not in (None, "volume", "snapshot"):
            raise invalid(f"kind must be 'volume' or 'snapshot', not {kind!r}")
        if tenant is not None and tenant not in self._tenants:
            raise ControlError(ErrorCode.NOT_FOUND, f"no tenant named {tenant!r}")
        pools = [self._pool(pool)] if pool is not None else sorted(self.pools.items())
        # One pass over the exports and one over each pool's lineage, for all the volumes.
        exports: dict[tuple[str, str], list[tuple[str, int]]] = {}
        for i, (nqn, e) in enumerate(sorted(self._exports.items())):
            if i % 128 == 127:
                yield
            for ns in e.namespaces.values():
                exports.setdefault((ns.pool, ns.uuid), []).append((nqn, ns.nsid))
        for pool_name, pl in pools:
            vols = pl.volumes  # in id order, as Volume.children lists them
            names = {v.id: v.name for v in vols}
            children: dict[int, list[str]] = {}
            for v in vols:
                if v.parent_id:
                    children.setdefault(v.parent_id, []).append(v.name)
            yield
            for i, vol in enumerate(vols):
                if i % 32 == 31:
                    yield
                if kind is not None and kind != ("snapshot" if vol.is_snapshot else "volume"):
                    continue
                uuid = str(vol.uuid)
                if tenant is not None and self._tenant_of(pool_name, uuid) != tenant:
                    continue
                out.append(self._describe(
                    pool_name, vol, names.get(vol.parent_id) if vol.parent_id else None,
                    children.get(vol.id, []), exports.get((pool_name, uuid), [])))

    def show_volume(self, name: str, pool: str | None = None) -> dict[str, Any]:
        return self.volume_info(*self._find(name, pool))

    async def create_volume(self, name: str, size_bytes: int, *, pool: str | None = None,
                            block_size: int = DEFAULT_BLOCK_SIZE,
                            tenant: str = DEFAULT_TENANT,
                            uuid: str | None = None) -> dict[str, Any]:
        """A new thin volume; ``uuid`` (a replica of a cluster volume): the identity it must
        have, else a new one."""
        self._size(size_bytes)
        want = self._wanted_uuid(uuid)
        if block_size not in (512, 4096):
            raise invalid(f"block_size must be 512 or 4096, not {block_size!r}")
        tenant = self._tenant_name(tenant)
        async with self._mutation():
            pool_name, pl = self._pool(pool)
            if tenant not in self._tenants:
                raise ControlError(ErrorCode.NOT_FOUND, f"no tenant named {tenant!r} (create "
                                   f"it first: sbstore tenant create {tenant})")
            try:
                vol = await pl.create_volume(name, size_bytes, block_size=block_size,
                                             uuid=want)
            except StoreError as exc:
                raise from_store_error(exc) from None
            await self._adopt(pool_name, vol, tenant)
            log.info("created volume %s/%s (%d bytes)", pool_name, vol.name, size_bytes)
            return self.volume_info(pool_name, vol)

    async def _adopt(self, pool_name: str, vol: Volume, tenant: str) -> None:
        """Persist a new volume's tenancy; delete the volume again if that fails."""
        row = VolumeRecord(pool_name, str(vol.uuid), tenant)
        try:
            self.state.put_volume(row)
        except Exception:
            await self.pools[pool_name].delete(vol)
            raise
        self._volumes[(pool_name, row.uuid)] = row
        self._notify(PolicyChange("volume", tenant, None, pool_name, row.uuid))

    async def resize_volume(self, name: str, size_bytes: int, pool: str | None = None, *,
                            force: bool = False) -> dict[str, Any]:
        """Grow a volume, or shrink it with ``force`` (the data past the new end goes);
        connected hosts are told either way (Namespace Attribute Changed)."""
        self._size(size_bytes)
        async with self._mutation():
            pool_name, vol = self._find(name, pool)
            try:
                await self.pools[pool_name].resize(vol, size_bytes, shrink=force)
            except StoreError as exc:
                raise from_store_error(exc) from None
            self._namespaces_changed(pool_name, str(vol.uuid))
            return self.volume_info(pool_name, vol)

    def _namespaces_changed(self, pool_name: str, uuid: str) -> None:
        for nqn, nsid in self._exports_of(pool_name, uuid):
            self._exports[nqn].subsystem.namespace_changed(nsid)

    async def rename_volume(self, name: str, new_name: str, pool: str | None = None
                            ) -> dict[str, Any]:
        if not isinstance(new_name, str) or not new_name:
            raise invalid("the new name must be a non-empty string")
        async with self._mutation():
            pool_name, vol = self._find(name, pool)
            try:
                await self.pools[pool_name].rename(vol, new_name)
            except StoreError as exc:
                raise from_store_error(exc) from None
            return self.volume_info(pool_name, vol)

    async def set_volume(self, name: str, pool: str | None = None, *,
                         tenant: str | None = None, limits: Mapping[str, Any] | None = None,
                         clear_limits: bool = False) -> dict[str, Any]:
        """Move a volume to another tenant and/or set (merge) or clear its own limits."""
        if limits and clear_limits:
            raise invalid("clear the limits or set them, not both")
        if tenant is None and not limits and not clear_limits:
            raise invalid("nothing to change: give a tenant, limits, or clear the limits")
        if tenant is not None:
            tenant = self._tenant_name(tenant)
        async with self._mutation():
            pool_name, vol = self._find(name, pool)
            uuid = str(vol.uuid)
            old = self._volumes.get((pool_name, uuid)) or VolumeRecord(pool_name, uuid,
                                                                       DEFAULT_TENANT)
            if tenant is not None and tenant not in self._tenants:
                raise ControlError(ErrorCode.NOT_FOUND, f"no tenant named {tenant!r}")
            new_limits = old.limits
            if clear_limits:
                new_limits = None
            elif limits:
                new_limits = _policy_from(limits, old.limits)
            row = VolumeRecord(pool_name, uuid, tenant or old.tenant, new_limits)
            self.state.put_volume(row)
            self._volumes[(pool_name, uuid)] = row
            self._notify(PolicyChange("volume", row.tenant, row.limits, pool_name, uuid))
            return self.volume_info(pool_name, vol)

    async def delete_volume(self, name: str, pool: str | None = None, *, force: bool = False,
                            kind: str | None = "volume") -> None:
        """Delete a volume (``kind`` "snapshot": a snapshot; None: either). Exported: refused
        unless ``force``, which removes it from its exports first."""
        async with self._mutation():
            pool_name, vol = self._find(name, pool, what=kind or "volume")
            actual = "snapshot" if vol.is_snapshot else "volume"
            if kind is not None and actual != kind:
                verb = "sbstore snapshot delete" if actual == "snapshot" else \
                    "sbstore volume delete"
                raise invalid(f"{name!r} is a {actual}, not a {kind}: use '{verb}'")
            uuid = str(vol.uuid)
            exports = self._exports_of(pool_name, uuid)
            if exports and not force:
                where = ", ".join(f"{nqn} (nsid {nsid})" for nqn, nsid in exports)
                raise ControlError(ErrorCode.FAILED_PRECONDITION,
                                   f"{actual} {name!r} is exported by {where}: remove it from "
                                   f"them first (sbstore export remove-volume {exports[0][0]} {name}) or "
                                   f"delete with --force")
            removed = [self._unexport(nqn, nsid) for nqn, nsid in exports]
            try:
                await self.pools[pool_name].delete(vol)
            except StoreError as exc:
                for nqn, ns in removed:
                    self._reexport(nqn, ns)
                raise from_store_error(exc) from None
            except BaseException:
                for nqn, ns in removed:
                    self._reexport(nqn, ns)
                raise
            row = self._volumes.pop((pool_name, uuid), None)
            self.state.remove_volume(pool_name, uuid)
            self.state.remove_reservation(pool_name, uuid)
            self._reservations.pop((pool_name, uuid), None)
            self._stored_reservations.pop((pool_name, uuid), None)
            self._stats.pop(uuid, None)
            self._notify(PolicyChange("volume", row.tenant if row else DEFAULT_TENANT, None,
                                      pool_name, uuid, deleted=True))
            log.info("deleted %s %s/%s%s", actual, pool_name, name,
                     f" (removed from {len(exports)} export(s))" if exports else "")

    def _unexport(self, nqn: str, nsid: int) -> tuple[str, _Namespace]:
        """Remove a namespace from the target and the state, together."""
        export = self._exports[nqn]
        ns = export.namespaces[nsid]
        self.state.remove_namespace(nqn, nsid)
        del export.namespaces[nsid]
        if ns.device is not None:
            export.subsystem.remove_namespace(nsid)
        return nqn, ns

    def _reexport(self, nqn: str, ns: _Namespace) -> None:
        """Undo :meth:`_unexport` (compensation)."""
        export = self._exports[nqn]
        self.state.add_namespace(nqn, NamespaceRecord(ns.nsid, ns.pool, ns.uuid))
        export.namespaces[ns.nsid] = ns
        if ns.device is not None:
            export.subsystem.add_namespace(ns.device, ns.nsid,
                                           reservations=self._reservations_of(ns.pool, ns.uuid))

    # === snapshots and clones ====================================================================

    async def create_snapshot(self, volume: str, name: str, pool: str | None = None
                              ) -> dict[str, Any]:
        if not isinstance(name, str) or not name:
            raise invalid("a snapshot name must be a non-empty string")
        async with self._mutation():
            pool_name, vol = self._find(volume, pool)
            try:
                snap = await self.pools[pool_name].snapshot(vol, name)
            except StoreError as exc:
                raise from_store_error(exc) from None
            await self._adopt(pool_name, snap, self._tenant_of(pool_name, str(vol.uuid)))
            return self.volume_info(pool_name, snap)

    async def revert_volume(self, volume: str, snapshot: str, pool: str | None = None, *,
                            force: bool = False) -> dict[str, Any]:
        async with self._mutation():
            pool_name, vol = self._find(volume, pool)
            _, snap = self._find(snapshot, pool_name, what="snapshot")
            exports = self._exports_of(pool_name, str(vol.uuid))
            if exports and not force:
                where = ", ".join(nqn for nqn, _ in exports)
                raise ControlError(ErrorCode.FAILED_PRECONDITION,
                                   f"volume {volume!r} is exported by {where}: its hosts would "
                                   f"see its data change under them; disconnect them and "
                                   f"revert with --force")
            try:
                await self.pools[pool_name].revert(vol, snap)
            except StoreError as exc:
                raise from_store_error(exc) from None
            self._namespaces_changed(pool_name, str(vol.uuid))
            return self.volume_info(pool_name, vol)

    async def create_clone(self, snapshot: str, name: str, pool: str | None = None, *,
                           tenant: str | None = None,
                           uuid: str | None = None) -> dict[str, Any]:
        """A writable volume sharing ``snapshot``'s data; ``uuid`` (a replica of a cluster
        clone): the identity it must have, else a new one."""
        if not isinstance(name, str) or not name:
            raise invalid("a clone name must be a non-empty string")
        want = self._wanted_uuid(uuid)
        if tenant is not None:
            tenant = self._tenant_name(tenant)
        async with self._mutation():
            pool_name, snap = self._find(snapshot, pool, what="snapshot")
            if tenant is not None and tenant not in self._tenants:
                raise ControlError(ErrorCode.NOT_FOUND, f"no tenant named {tenant!r}")
            try:
                vol = await self.pools[pool_name].clone(snap, name, uuid=want)
            except StoreError as exc:
                raise from_store_error(exc) from None
            await self._adopt(pool_name, vol,
                              tenant or self._tenant_of(pool_name, str(snap.uuid)))
            return self.volume_info(pool_name, vol)

    async def inflate_volume(self, name: str, pool: str | None = None) -> dict[str, Any]:
        """Inflate as an operation (progress in clusters; a cancel leaves the clone valid,
        partly inflated, still depending on its snapshot)."""
        pool_name, vol = self._find(name, pool)
        op = self.operations.start("inflate", pool_name, vol.name, unit="clusters",
                                   total=vol.n_clusters)

        async def work(op: Operation) -> None:
            await self.pools[pool_name].inflate(vol, progress=op.progress)
            op.progress(vol.n_clusters, vol.n_clusters)
        await self._run(op, work)
        return self.volume_info(pool_name, vol)

    # === operations, diff, export and import =====================================================

    async def _run(self, op: Operation, work: Callable[[Operation], Awaitable[T]]) -> T:
        try:
            return await self.operations.run(op, work)
        except StoreError as exc:
            raise from_store_error(exc) from None
        except OperationCancelled as exc:
            raise ControlError(ErrorCode.CANCELLED, str(exc)) from None

    def list_operations(self) -> list[dict[str, Any]]:
        return [op.info() for op in self.operations.list()]

    def show_operation(self, op_id: int) -> dict[str, Any]:
        op = self.operations.get(op_id)
        if op is None:
            raise ControlError(ErrorCode.NOT_FOUND, f"no operation {op_id} (finished ones are "
                               f"kept for a while only)")
        return op.info()

    def cancel_operation(self, op_id: int) -> dict[str, Any]:
        op = self.operations.cancel(op_id)
        if op is None:
            raise ControlError(ErrorCode.NOT_FOUND, f"no operation {op_id}")
        return op.info()

    async def diff_snapshots(self, snapshot: str, base: str | None = None,
                             pool: str | None = None) -> dict[str, Any]:
        pool_name, snap = self._find(snapshot, pool, what="snapshot")
        old = None if base is None else self._find(base, pool_name, what="snapshot")[1]
        try:
            extents = await transfer.diff(self.pools[pool_name], snap, old)
        except StoreError as exc:
            raise from_store_error(exc) from None
        data = sum(e.length for e in extents if not e.zero)
        return {"pool": pool_name, "snapshot": snap.name, "base": old.name if old else None,
                "size_bytes": snap.size_bytes, "data_bytes": data,
                "zero_bytes": sum(e.length for e in extents) - data,
                "extents": [e.as_dict() for e in extents]}

    async def export_snapshot(self, snapshot: str, since: str | None = None,
                              pool: str | None = None) -> tuple[Operation, AsyncIterator[bytes]]:
        """Plan the export and return its operation and the stream (an async iterator the
        caller sends piece by piece: nothing holds more than one piece)."""
        pool_name, snap = self._find(snapshot, pool, what="snapshot")
        base = None if since is None else self._find(since, pool_name, what="snapshot")[1]
        try:
            exp = await transfer.prepare_export(self.pools[pool_name], snap, base)
        except StoreError as exc:
            raise from_store_error(exc) from None
        op = self.operations.start("export", pool_name, snap.name, total=exp.total_bytes)
        op.detail["since"] = base.name if base else None
        return op, TrackedStream(self.operations, op, exp.chunks(op.progress))

    async def import_volume(self, name: str, source: AsyncIterable[bytes], *,
                            pool: str | None = None, tenant: str | None = None,
                            force: bool = False) -> dict[str, Any]:
        """Read an export stream into volume ``name`` (new for a full stream; for an
        increment, an existing volume with the base in its history, refused if exported
        unless ``force``). Nothing is left behind unless the whole stream verifies."""
        if not isinstance(name, str) or not name:
            raise invalid("a volume name must be a non-empty string")
        if tenant is not None:
            tenant = self._tenant_name(tenant)
            if tenant not in self._tenants:
                raise ControlError(ErrorCode.NOT_FOUND, f"no tenant named {tenant!r}")
        pool_name, pl = self._pool(pool)
        op = self.operations.start("import", pool_name, name)

        def check_target(header: StreamHeader) -> None:
            op.total = header.data_bytes
            op.detail["snapshot"] = header.name
            op.detail["increment"] = header.increment
            if not header.increment:
                return
            target = _named(pl, name)
            exports = self._exports_of(pool_name, str(target.uuid)) if target else []
            if exports and not force:
                raise ControlError(ErrorCode.FAILED_PRECONDITION,
                                   f"volume {name!r} is exported by {exports[0][0]}: an "
                                   f"increment changes its data under its hosts; disconnect "
                                   f"them and import with --force")

        async def work(op: Operation) -> transfer.Imported:
            return await transfer.import_stream(pl, name, source, progress=op.progress,
                                                on_header=check_target)
        got = await self._run(op, work)
        async with self._mutation():
            if got.header.increment:
                self._namespaces_changed(pool_name, str(got.volume.uuid))
            else:
                await self._adopt(pool_name, got.volume, tenant or DEFAULT_TENANT)
            await self._adopt(pool_name, got.snapshot,
                              tenant or self._tenant_of(pool_name, str(got.volume.uuid)))
            log.info("imported %s %s/%s (snapshot %s, %d bytes of data)",
                     "an increment into" if got.header.increment else "volume", pool_name,
                     name, got.snapshot.name, got.header.data_bytes)
            return self.volume_info(pool_name, got.volume)

    # === snapshot groups =========================================================================

    def _group_members(self, group: object, pool: str | None) -> tuple[str, list[Volume]]:
        """The pool holding snapshot group ``group`` (as :meth:`_find` picks) and its members."""
        if not isinstance(group, str) or not group:
            raise invalid("a snapshot group name must be a non-empty string")
        if pool is None and len(self.pools) > 1:
            found = [(p, pl.groups()[group]) for p, pl in sorted(self.pools.items())
                     if group in pl.groups()]
            if len(found) == 1:
                return found[0]
            if not found:
                raise ControlError(ErrorCode.NOT_FOUND,
                                   f"no snapshot group named {group!r} in any pool")
            raise invalid(f"pools {', '.join(p for p, _ in found)} each have a snapshot group "
                          f"named {group!r}: say which with --pool")
        pool_name, pl = self._pool(pool)
        members = pl.groups().get(group)
        if not members:
            raise ControlError(ErrorCode.NOT_FOUND,
                               f"no snapshot group named {group!r} in pool {pool_name!r}")
        return pool_name, members

    def _group_info(self, pool_name: str, group: str, members: list[Volume]) -> dict[str, Any]:
        return {"name": group, "pool": pool_name,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                         time.gmtime(min(m.created for m in members))),
                "snapshots": [self.volume_info(pool_name, m) for m in members]}

    def list_snapshot_groups(self, pool: str | None = None) -> list[dict[str, Any]]:
        pools = [self._pool(pool)] if pool is not None else sorted(self.pools.items())
        return [self._group_info(pool_name, group, members)
                for pool_name, pl in pools for group, members in sorted(pl.groups().items())]

    def show_snapshot_group(self, group: str, pool: str | None = None) -> dict[str, Any]:
        pool_name, members = self._group_members(group, pool)
        return self._group_info(pool_name, group, members)

    async def create_snapshot_group(self, group: str, volumes: Iterable[str],
                                    pool: str | None = None) -> dict[str, Any]:
        """Snapshot ``volumes`` (all in one pool) at one instant as group ``group``: volume V
        gets the snapshot ``V@group``, in the tenant of V."""
        if not isinstance(group, str) or not group:
            raise invalid("a snapshot group name must be a non-empty string")
        names = list(volumes)
        if not names:
            raise invalid("a snapshot group needs at least one volume")
        async with self._mutation():
            found = [self._find(name, pool) for name in names]
            pools = sorted({p for p, _ in found})
            if len(pools) > 1:
                raise invalid(f"a snapshot group's volumes must be in one pool, not "
                              f"{', '.join(pools)}")
            pool_name = pools[0]
            vols = [v for _, v in found]
            try:
                snaps = await self.pools[pool_name].snapshot_group(group, vols)
            except StoreError as exc:
                raise from_store_error(exc) from None
            rows = [VolumeRecord(pool_name, str(s.uuid),
                                 self._tenant_of(pool_name, str(v.uuid)))
                    for v, s in zip(vols, snaps)]
            try:
                with self.state.transaction():
                    for row in rows:
                        self.state.put_volume(row)
            except Exception:
                await self.pools[pool_name].delete_group(group)  # compensate: all or nothing
                raise
            for row in rows:
                self._volumes[(pool_name, row.uuid)] = row
                self._notify(PolicyChange("volume", row.tenant, None, pool_name, row.uuid))
            log.info("created snapshot group %s/%s of %s", pool_name, group, ", ".join(names))
            return self._group_info(pool_name, group, snaps)

    async def delete_snapshot_group(self, group: str, pool: str | None = None, *,
                                    force: bool = False) -> None:
        """Delete every snapshot of the group. Exported members: refused unless ``force``,
        which removes them from their exports first."""
        async with self._mutation():
            pool_name, members = self._group_members(group, pool)
            exports = [(m, nqn, nsid) for m in members
                       for nqn, nsid in self._exports_of(pool_name, str(m.uuid))]
            if exports and not force:
                where = ", ".join(f"{m.name} by {nqn} (nsid {nsid})" for m, nqn, nsid in exports)
                raise ControlError(ErrorCode.FAILED_PRECONDITION,
                                   f"snapshot group {group!r} is exported ({where}): remove "
                                   f"them from their exports first or delete with --force")
            removed = [self._unexport(nqn, nsid) for _, nqn, nsid in exports]
            try:
                await self.pools[pool_name].delete_group(group)
            except BaseException as exc:
                for nqn, ns in removed:
                    self._reexport(nqn, ns)
                if isinstance(exc, StoreError):
                    raise from_store_error(exc) from None
                raise
            with self.state.transaction():
                for m in members:
                    self.state.remove_volume(pool_name, str(m.uuid))
            for m in members:
                uuid = str(m.uuid)
                row = self._volumes.pop((pool_name, uuid), None)
                self._stats.pop(uuid, None)
                self._notify(PolicyChange("volume", row.tenant if row else DEFAULT_TENANT, None,
                                          pool_name, uuid, deleted=True))
            log.info("deleted snapshot group %s/%s (%d snapshots)", pool_name, group,
                     len(members))

    # === snapshot schedules (control.schedules runs them) ==========================================

    async def sync_state(self) -> None:
        """Make the state's committed changes durable (off the loop), for writers that run
        outside an operation (the schedule runner)."""
        await self._sync_state()

    def find_by_uuid(self, uuid: str) -> tuple[str, Volume] | None:
        """(pool, volume) of the volume or snapshot ``uuid`` in any pool, through the index
        (no scan of the pool per call)."""
        for pool_name in self.pools:
            vol = self._volume_by_uuid(pool_name, uuid)
            if vol is not None:
                return pool_name, vol
        return None

    def volume_uuid(self, pool_name: str, name: str) -> str | None:
        """The uuid of volume or snapshot ``name`` of ``pool_name``, or None."""
        pool = self.pools.get(pool_name)
        vol = _named(pool, name) if pool is not None else None
        return str(vol.uuid) if vol is not None else None

    def is_snapshot(self, pool_name: str, uuid: str) -> bool:
        vol = self._volume_by_uuid(pool_name, uuid)
        return vol is not None and vol.is_snapshot

    def volume_name(self, pool_name: str, uuid: str) -> str | None:
        vol = self._volume_by_uuid(pool_name, uuid)
        return vol.name if vol is not None else None

    def schedule_targets(self, rec: ScheduleRecord) -> list[tuple[str, str]] | None:
        """(pool, volume name) of every volume ``rec`` snapshots now; None when its volume
        is gone."""
        if rec.volume_uuid is not None:
            assert rec.pool is not None
            name = self.volume_name(rec.pool, rec.volume_uuid)
            return None if name is None else [(rec.pool, name)]
        out = []
        for (pool_name, uuid), row in sorted(self._volumes.items()):
            if row.tenant != rec.tenant:
                continue
            vol = self._volume_by_uuid(pool_name, uuid)
            if vol is not None and not vol.is_snapshot:
                out.append((pool_name, vol.name))
        return out

    def schedule_info(self, rec: ScheduleRecord) -> dict[str, Any]:
        taken = [s for s in self.state.scheduled_snapshots(rec.id)
                 if s.uuid is not None and self.volume_name(s.pool, s.uuid) is not None]
        return {
            "id": rec.id, "every": format_every(rec.every_s), "every_s": rec.every_s,
            "keep": rec.keep, "pool": rec.pool,
            "volume": self.volume_name(rec.pool, rec.volume_uuid) if rec.volume_uuid and rec.pool
            else None,
            "tenant": rec.tenant,
            "last_run": None if rec.last_run is None else time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(rec.last_run)),
            "snapshots": [self.volume_name(s.pool, s.uuid) for s in taken if s.uuid],
        }

    def list_schedules(self) -> list[dict[str, Any]]:
        return [self.schedule_info(rec) for rec in self.state.schedules()]

    async def add_schedule(self, every: object, keep: int, *, volume: str | None = None,
                           tenant: str | None = None, pool: str | None = None
                           ) -> dict[str, Any]:
        """Snapshot ``volume`` (or every volume of ``tenant``) every ``every`` ("1h", "1d"),
        keeping the newest ``keep`` the schedule took (per volume)."""
        try:
            every_s = parse_every(every)
        except ValueError as exc:
            raise invalid(str(exc)) from None
        if type(keep) is not int or keep < 1:
            raise invalid(f"keep must be a whole number of at least 1, not {keep!r}")
        if (volume is None) == (tenant is None):
            raise invalid("a schedule snapshots a volume or a tenant's volumes: give one")
        async with self._mutation():
            if volume is not None:
                pool_name, vol = self._find(volume, pool)
                if vol.is_snapshot:
                    raise invalid(f"{volume!r} is a snapshot: schedule its volume instead")
                rec = ScheduleRecord(0, every_s, keep, pool=pool_name,
                                     volume_uuid=str(vol.uuid))
            else:
                tenant = self._tenant_name(tenant)
                if tenant not in self._tenants:
                    raise ControlError(ErrorCode.NOT_FOUND, f"no tenant named {tenant!r}")
                rec = ScheduleRecord(0, every_s, keep, tenant=tenant)
            rec = dataclasses.replace(rec, id=self.state.add_schedule(rec))
            log.info("added snapshot schedule %d: %s every %s, keep %d", rec.id,
                     volume or f"tenant {tenant}", format_every(every_s), keep)
        if self.on_schedules_changed is not None:
            self.on_schedules_changed()
        return self.schedule_info(rec)

    async def remove_schedule(self, schedule_id: int) -> None:
        """Stop a schedule; the snapshots it took stay (as ordinary snapshots)."""
        async with self._mutation():
            if not any(r.id == schedule_id for r in self.state.schedules()):
                raise ControlError(ErrorCode.NOT_FOUND, f"no snapshot schedule {schedule_id}")
            self.state.remove_schedule(schedule_id)
        if self.on_schedules_changed is not None:
            self.on_schedules_changed()

    # === exports (subsystems), namespaces, hosts =================================================

    def _host_auth_views(self) -> dict[str, dict[str, Any]]:
        """Export NQN -> host NQN -> what a listing shows of its DH-HMAC-CHAP settings."""
        views: dict[str, dict[str, Any]] = {}
        for rec in self.state.host_auth():
            views.setdefault(rec.subsystem, {})[rec.host_nqn] = dhchap.public_view(rec)
        return views

    def list_exports(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for _ in self._list_exports(out):
            pass
        return out

    async def list_exports_sliced(self) -> list[dict[str, Any]]:
        """:meth:`list_exports` from the loop: see :meth:`_sliced`."""
        out: list[dict[str, Any]] = []
        await self._sliced(lambda: self._list_exports(out))
        return out

    def _list_exports(self, out: list[dict[str, Any]]) -> Iterator[None]:
        """Appends every export's description to ``out``, yielding every few exports. The
        host keys are read once for all of them (one query each was most of a listing's time:
        1,000 exports took 13-24 ms in one piece)."""
        auth = self._host_auth_views()
        for i, nqn in enumerate(sorted(self._exports)):
            if i % 32 == 31:
                yield
            out.append(self.export_info(nqn, auth.get(nqn, {})))

    def show_export(self, nqn: str) -> dict[str, Any]:
        self._export(nqn)
        return self.export_info(nqn)

    async def create_export(self, nqn: str, *, volumes: Iterable[str] = (),
                            hosts: Iterable[str] = (), allow_any_host: bool = False,
                            pool: str | None = None, model: str = DEFAULT_MODEL,
                            serial: str | None = None) -> dict[str, Any]:
        check_nqn(nqn, "subsystem NQN")
        volumes, hosts = list(volumes), list(hosts)
        for host in hosts:
            check_nqn(host, "host NQN")
        if len(set(hosts)) != len(hosts):
            raise invalid("a host NQN is listed twice")
        if hosts and allow_any_host:
            raise invalid("allow_any_host admits every host: give host NQNs or allow any "
                          "host, not both")
        if len(set(volumes)) != len(volumes):
            raise invalid("a volume is listed twice")
        if len(volumes) > MAX_NAMESPACES:
            raise invalid(f"at most {MAX_NAMESPACES} namespaces per subsystem")
        if not isinstance(model, str) or not model.isascii() or not 0 < len(model) <= 40:
            raise invalid("model must be 1 to 40 ASCII characters")
        serial = serial or hashlib.sha1(nqn.encode()).hexdigest()[:20]
        if not serial.isascii() or len(serial) > 20:
            raise invalid("serial must be at most 20 ASCII characters")
        async with self._mutation():
            if nqn in self._exports or self.target.find_subsystem(nqn) is not None:
                raise ControlError(ErrorCode.ALREADY_EXISTS, f"export {nqn!r} exists")
            found = [self._find(v, pool) for v in volumes]
            uuids = [(p, str(v.uuid)) for p, v in found]
            if len(set(uuids)) != len(uuids):
                raise invalid("the same volume is listed twice")
            subsystem = Subsystem(nqn, serial=serial, model=model,
                                  allow_any_host=allow_any_host, allowed_hosts=hosts)
            export = _Export(subsystem, {})
            for pool_name, vol in found:
                device = self._device(pool_name, vol)
                nsid = subsystem.add_namespace(
                    device, reservations=self._reservations_of(pool_name, str(vol.uuid)))
                export.namespaces[nsid] = _Namespace(nsid, pool_name, str(vol.uuid), device)
            rec = SubsystemRecord(nqn, allow_any_host, serial, model, tuple(sorted(hosts)),
                                  tuple(NamespaceRecord(n.nsid, n.pool, n.uuid)
                                        for n in export.namespaces.values()))
            self.target.add_subsystem(subsystem)
            try:
                self.state.add_subsystem(rec)
            except BaseException:
                self.target.remove_subsystem(nqn)
                raise
            self._exports[nqn] = export
            log.info("created export %s (%d namespaces, hosts: %s)", nqn, len(found),
                     "any" if allow_any_host else ", ".join(hosts) or "none yet")
            return self.export_info(nqn)

    async def delete_export(self, nqn: str, *, force: bool = False) -> None:
        async with self._mutation():
            export = self._export(nqn)
            if export.namespaces and not force:
                raise ControlError(ErrorCode.FAILED_PRECONDITION,
                                   f"export {nqn!r} still has {len(export.namespaces)} "
                                   f"namespace(s): remove them first or delete with --force")
            self.state.remove_subsystem(nqn)  # and its listeners' ANA settings (cascade)
            del self._exports[nqn]
            self.target.remove_subsystem(nqn)
            self.listeners.forget_export(nqn)
            log.info("deleted export %s", nqn)

    async def set_export(self, nqn: str, *, allow_any_host: bool) -> dict[str, Any]:
        if type(allow_any_host) is not bool:
            raise invalid("allow_any_host must be true or false")
        async with self._mutation():
            export = self._export(nqn)
            if allow_any_host and export.subsystem.allowed_hosts:
                raise invalid(f"export {nqn!r} lists hosts; remove them before allowing any "
                              f"host")
            self.state.set_allow_any_host(nqn, allow_any_host)
            export.subsystem.set_allow_any_host(allow_any_host)
            return self.export_info(nqn)

    async def add_namespace(self, nqn: str, volume: str, *, pool: str | None = None,
                            nsid: int | None = None) -> dict[str, Any]:
        if nsid is not None and (type(nsid) is not int or not 1 <= nsid <= MAX_NAMESPACES):
            raise invalid(f"nsid must be an integer from 1 to {MAX_NAMESPACES}, not {nsid!r}")
        async with self._mutation():
            export = self._export(nqn)
            pool_name, vol = self._find(volume, pool)
            uuid = str(vol.uuid)
            for ns in export.namespaces.values():
                if (ns.pool, ns.uuid) == (pool_name, uuid):
                    raise ControlError(ErrorCode.ALREADY_EXISTS,
                                       f"{volume!r} is already namespace {ns.nsid} of {nqn}")
            if nsid is not None and nsid in export.namespaces:
                raise ControlError(ErrorCode.ALREADY_EXISTS,
                                   f"{nqn} already has a namespace {nsid}")
            if nsid is None:
                nsid = next((n for n in range(1, MAX_NAMESPACES + 1)
                             if n not in export.namespaces), None)
                if nsid is None:
                    raise ControlError(ErrorCode.FAILED_PRECONDITION,
                                       f"{nqn} has all {MAX_NAMESPACES} namespaces in use")
            device = self._device(pool_name, vol)
            ns = _Namespace(nsid, pool_name, uuid, device)
            self.state.add_namespace(nqn, NamespaceRecord(nsid, pool_name, uuid))
            export.namespaces[nsid] = ns
            try:
                export.subsystem.add_namespace(  # tells connected hosts
                    device, nsid, reservations=self._reservations_of(pool_name, uuid))
            except BaseException:
                del export.namespaces[nsid]
                self.state.remove_namespace(nqn, nsid)
                raise
            log.info("export %s: namespace %d is %s/%s", nqn, nsid, pool_name, vol.name)
            return self.export_info(nqn)

    async def remove_namespace(self, nqn: str, *, volume: str | None = None,
                               pool: str | None = None, nsid: int | None = None
                               ) -> dict[str, Any]:
        if (volume is None) == (nsid is None):
            raise invalid("name the namespace by its volume or by its nsid (one of them)")
        if nsid is not None and type(nsid) is not int:
            raise invalid(f"nsid must be an integer, not {nsid!r}")
        async with self._mutation():
            export = self._export(nqn)
            if volume is not None:
                pool_name, vol = self._find(volume, pool)
                nsid = next((n.nsid for n in export.namespaces.values()
                             if (n.pool, n.uuid) == (pool_name, str(vol.uuid))), None)
                if nsid is None:
                    raise ControlError(ErrorCode.NOT_FOUND, f"{volume!r} is not exported by "
                                       f"{nqn}")
            assert nsid is not None
            if nsid not in export.namespaces:
                raise ControlError(ErrorCode.NOT_FOUND, f"{nqn} has no namespace {nsid}")
            self._unexport(nqn, nsid)
            log.info("export %s: namespace %d removed", nqn, nsid)
            return self.export_info(nqn)

    async def add_host(self, nqn: str, host: str,
                       auth: dhchap.AuthRequest | None = None) -> dict[str, Any]:
        """Allow ``host`` on export ``nqn``, with DH-HMAC-CHAP when ``auth`` is given. The
        answer carries a generated secret once (``generated``); never a given one."""
        check_nqn(host, "host NQN")
        async with self._mutation():
            export = self._export(nqn)
            if host in export.subsystem.allowed_hosts:
                raise ControlError(ErrorCode.ALREADY_EXISTS, f"{host} may already connect to "
                                   f"{nqn}")
            if export.subsystem.allow_any_host:
                raise ControlError(ErrorCode.FAILED_PRECONDITION,
                                   f"{nqn} allows any host; to restrict it, turn that off "
                                   f"first (sbstore export set {nqn} --no-allow-any-host)")
            rec, generated = self._auth_record(nqn, host, auth)
            with self.state.transaction():
                self.state.add_host(nqn, host)
                if rec is not None:
                    self.state.put_host_auth(rec)
            if rec is not None:
                export.subsystem.set_host_credentials(host, dhchap.credentials(rec))
            export.subsystem.add_host(host)
            return self._with_generated(self.export_info(nqn), generated)

    async def set_host(self, nqn: str, host: str, auth: dhchap.AuthRequest | None,
                       *, remove_auth: bool = False) -> dict[str, Any]:
        """Set (rotate) or remove a host's DH-HMAC-CHAP secrets. Connected hosts stay
        connected: the new secret is needed at their next authentication."""
        if (auth is None) == (not remove_auth):
            raise invalid("give new DH-HMAC-CHAP settings or remove them (one of the two)")
        async with self._mutation():
            export = self._export(nqn)
            if host not in export.subsystem.allowed_hosts:
                raise ControlError(ErrorCode.NOT_FOUND, f"{host} is not among {nqn}'s hosts")
            rec, generated = self._auth_record(nqn, host, auth)
            if rec is None:
                self.state.remove_host_auth(nqn, host)
                export.subsystem.set_host_credentials(host, None)
                log.info("export %s: host %s no longer authenticates", nqn, host)
            else:
                self.state.put_host_auth(rec)
                export.subsystem.set_host_credentials(host, dhchap.credentials(rec))
                log.info("export %s: DH-HMAC-CHAP settings of %s set (%s)", nqn, host,
                         "bidirectional" if rec.ctrl_key else "host only")
            return self._with_generated(self.export_info(nqn), generated)

    @staticmethod
    def _auth_record(nqn: str, host: str, auth: dhchap.AuthRequest | None,
                     ) -> tuple[HostAuthRecord | None, dict[str, str]]:
        if auth is None:
            return None, {}
        try:
            return dhchap.build_record(nqn, host, auth.host, auth.ctrl, auth.hashes,
                                       auth.dhgroups)
        except dhchap.DhchapSettingsError as e:
            raise invalid(str(e)) from None

    @staticmethod
    def _with_generated(info: dict[str, Any], generated: dict[str, str]) -> dict[str, Any]:
        if generated:
            info = {**info, "generated": generated}
        return info

    async def remove_host(self, nqn: str, host: str) -> dict[str, Any]:
        if not isinstance(host, str) or not host:
            raise invalid("a host NQN must be a non-empty string")
        async with self._mutation():
            export = self._export(nqn)
            if host not in export.subsystem.allowed_hosts:
                raise ControlError(ErrorCode.NOT_FOUND, f"{host} is not among {nqn}'s hosts")
            self.state.remove_host(nqn, host)  # and its DH-HMAC-CHAP settings (cascade)
            export.subsystem.set_host_credentials(host, None)
            export.subsystem.remove_host(host)  # its controllers are deleted at once
            return self.export_info(nqn)

    # === listeners ===============================================================================

    def list_listeners(self) -> list[dict[str, Any]]:
        return self.listeners.info()

    async def add_listener(self, *, port: int, address: str | None = None,
                           interface: str | None = None) -> dict[str, Any]:
        from sbstore.control.netif import InterfaceNotFound, resolve_interface

        if (address is None) == (interface is None):
            raise invalid("give an address or an interface (one of them)")
        if type(port) is not int or not 0 <= port <= 65535:
            raise invalid(f"port must be an integer from 0 to 65535, not {port!r}")
        if address is not None:
            try:
                address = ipaddress.ip_address(address).compressed
            except ValueError:
                raise invalid(f"{address!r} is not an IP address") from None
        else:
            if not isinstance(interface, str) or not re.fullmatch(r"[^\s/:]{1,15}", interface):
                raise invalid(f"{interface!r} is not an interface name")
        async with self._mutation():
            for rec in self.state.listeners():
                if (rec.address, rec.interface, rec.port) == (address, interface, port) \
                        and port != 0:
                    raise ControlError(ErrorCode.ALREADY_EXISTS,
                                       f"listener {rec.id} is {_where(rec)} already")
            if interface is not None:
                try:
                    await resolve_interface(interface)
                except InterfaceNotFound as exc:
                    raise ControlError(ErrorCode.NOT_FOUND, str(exc)) from None
            rec = ListenerRecord(self._next_listener_id(), "api", port, address, interface)
            try:
                live = await self.listeners.open(rec)
            except (OSError, ValueError) as exc:
                raise ControlError(ErrorCode.FAILED_PRECONDITION,
                                   f"cannot listen on {_where(rec)}: "
                                   f"{getattr(exc, 'strerror', None) or exc}") from None
            if address is not None and port == 0:
                # Keep the port the kernel chose, so a restart listens where hosts connect.
                bound = next(iter(live.bound.values()))
                rec = dataclasses.replace(rec, port=int(bound.trsvcid))
                live.record = rec
            try:
                self.state.add_listener(rec)
            except BaseException:
                await self.listeners.close(rec.id)
                raise
            return live.info(self.listeners.forced)

    async def remove_listener(self, listener_id: int) -> None:
        if type(listener_id) is not int:
            raise invalid(f"a listener id is an integer, not {listener_id!r}")
        async with self._mutation():
            live = self.listeners.live.get(listener_id)
            stored = {r.id: r for r in self.state.listeners()}
            if live is None and listener_id not in stored:
                raise ControlError(ErrorCode.NOT_FOUND, f"no listener {listener_id}")
            rec = live.record if live else stored[listener_id]
            if rec.source == "config":
                raise ControlError(ErrorCode.FAILED_PRECONDITION,
                                   f"listener {listener_id} ({_where(rec)}) comes from the "
                                   f"config file; remove it there and restart")
            self.state.remove_listener(listener_id)
            if live is not None:
                await self.listeners.close(listener_id)

    async def set_listener_ana(self, listener_id: int, state: str,
                               export: str | None = None) -> dict[str, Any]:
        """Set the ANA state listener ``listener_id`` shows for every export, or (``export``)
        for one; ``state`` ``default`` removes the setting (an export then follows the
        listener's state, a listener is optimized). Returns the listener."""
        if type(listener_id) is not int:
            raise invalid(f"a listener id is an integer, not {listener_id!r}")
        if not isinstance(state, str):
            raise invalid(f"an ANA state is a string, not {state!r}")
        wanted: AnaState | None = None
        if state != ANA_DEFAULT:
            try:
                wanted = parse_state(state)
            except ValueError:
                raise invalid(f"ANA state {state!r}: one of {', '.join(ANA_STATE_CHOICES)}"
                              ) from None
        async with self._mutation():
            live = self.listeners.live.get(listener_id)
            stored = {r.id: r for r in self.state.listeners()}
            if live is None and listener_id not in stored:
                raise ControlError(ErrorCode.NOT_FOUND, f"no listener {listener_id}")
            if export is not None:
                self._export(export)  # NOT_FOUND unless it exists
            self.state.set_ana_state(listener_id, export,
                                     None if wanted is None else state_name(wanted))
            log.info("listener %d: ANA state %s for %s", listener_id,
                     "default" if wanted is None else state_name(wanted),
                     f"export {export}" if export else "every export")
            if live is None:  # stored but not listening (it failed to bind at start)
                return LiveListener(stored[listener_id],
                                    ana=self._ana_settings().get(listener_id, {})).info()
            self.listeners.set_ana(listener_id, export, wanted)
            return live.info(self.listeners.forced)

    # === tenants =================================================================================

    def list_tenants(self) -> list[dict[str, Any]]:
        return [self.tenant_info(name) for name in sorted(self._tenants)]

    def show_tenant(self, name: str) -> dict[str, Any]:
        if name not in self._tenants:
            raise ControlError(ErrorCode.NOT_FOUND, f"no tenant named {name!r}")
        return self.tenant_info(name)

    async def create_tenant(self, name: str, policy: Mapping[str, Any] | None = None
                            ) -> dict[str, Any]:
        name = self._tenant_name(name)
        new = _policy_from(policy or {})
        async with self._mutation():
            if name in self._tenants:
                raise ControlError(ErrorCode.ALREADY_EXISTS, f"tenant {name!r} exists")
            self.state.put_tenant(TenantRecord(name, new))
            self._tenants[name] = new
            self._notify(PolicyChange("tenant", name, new))
            return self.tenant_info(name)

    async def set_tenant(self, name: str, policy: Mapping[str, Any]) -> dict[str, Any]:
        if not policy:
            raise invalid("nothing to change: give at least one policy field (iops, "
                          "read_iops, write_iops, bps, read_bps, write_bps, burst_s, weight)")
        async with self._mutation():
            if name not in self._tenants:
                raise ControlError(ErrorCode.NOT_FOUND, f"no tenant named {name!r}")
            new = _policy_from(policy, self._tenants[name])
            self.state.put_tenant(TenantRecord(name, new))
            self._tenants[name] = new
            self._notify(PolicyChange("tenant", name, new))
            return self.tenant_info(name)

    async def delete_tenant(self, name: str) -> None:
        async with self._mutation():
            if name not in self._tenants:
                raise ControlError(ErrorCode.NOT_FOUND, f"no tenant named {name!r}")
            if name == DEFAULT_TENANT:
                raise ControlError(ErrorCode.FAILED_PRECONDITION,
                                   "the default tenant cannot be deleted")
            members = self.tenant_info(name)["volumes"]
            if members:
                shown = ", ".join(members[:5]) + (" ..." if len(members) > 5 else "")
                raise ControlError(ErrorCode.FAILED_PRECONDITION,
                                   f"tenant {name!r} still has {len(members)} volume(s) "
                                   f"({shown}): move them (sbstore volume set VOL --tenant "
                                   f"OTHER) or delete them first")
            # Rows of volumes missing from their pool (pool not configured) go with it.
            with self.state.transaction():
                for key, row in list(self._volumes.items()):
                    if row.tenant == name:
                        self.state.remove_volume(*key)
                        del self._volumes[key]
                self.state.remove_tenant(name)
            del self._tenants[name]
            self._notify(PolicyChange("tenant", name, None, deleted=True))

    # === what metrics see ========================================================================

    def exported_volumes(self) -> list[tuple[str, Volume, str, IoStats]]:
        """(pool, volume, tenant, stats) of each exported volume, once each."""
        return list(self.iter_exported_volumes())

    def iter_exported_volumes(self) -> Iterator[tuple[str, Volume, str, IoStats]]:
        """:meth:`exported_volumes`, one at a time: a metrics scrape walks it in slices and
        lets the loop run between them, so exports may change meanwhile. It walks copies of
        the dicts (a change does not break it) and checks each volume as it comes to it."""
        seen: set[tuple[str, str]] = set()
        for export in list(self._exports.values()):
            for ns in list(export.namespaces.values()):
                key = (ns.pool, ns.uuid)
                if ns.device is None or key in seen:
                    continue
                vol = self._volume_by_uuid(ns.pool, ns.uuid)
                if vol is None:
                    continue
                seen.add(key)
                yield ns.pool, vol, self._tenant_of(*key), ns.device.stats


def _alive(pool: Pool, vol: Volume) -> bool:
    """``vol`` is still the pool's volume of its id (not deleted, not replaced)."""
    try:
        return pool.volume_by_id(vol.id) is vol
    except NotFound:
        return False


def _named(pool: Pool, name: str) -> Volume | None:
    try:
        return pool.volume(name)
    except NotFound:
        return None


ANA_DEFAULT = "default"
ANA_STATE_CHOICES = (*STATE_NAMES, ANA_DEFAULT)


def _where(rec: ListenerRecord) -> str:
    if rec.interface is not None:
        return f"interface {rec.interface} port {rec.port}"
    host = f"[{rec.address}]" if rec.address and ":" in rec.address else rec.address
    return f"{host}:{rec.port}"
