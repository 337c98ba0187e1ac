"""Snapshot schedules with retention: ``every 1h keep 24`` for a volume or for every volume of a
tenant, kept in the state database (``control.state``), so they survive restarts.

Theory of operation. Time is an input: :meth:`ScheduleRunner.tick` takes ``now`` (seconds
since the epoch) and does what is due at that instant; :meth:`ScheduleRunner.run`, the daemon's
task, only calls it with its clock and sleeps until the next schedule is due. Tests call
``tick`` with time they move by hand.

- A schedule runs once per period, on the period's boundaries in UTC (``every 1h``: at the top
  of each hour): it is due when it has not run since the latest boundary at or before ``now``.
  A daemon that was down over several boundaries takes one snapshot when it comes back, not
  one per missed boundary. ``last_run`` is persisted after each run.
- Each run first records, with its time, the snapshots it is about to take (an intent, one
  state transaction), then snapshots every target volume as ``<volume>@auto-<UTC timestamp>``
  through the control service (so the snapshot gets its volume's tenant) and records each
  snapshot's uuid; after a crash, the next tick adopts an intended snapshot that exists and
  forgets one that does not, so no snapshot is left that no schedule keeps. Then it prunes:
  per origin volume, the snapshots this schedule took beyond the newest ``keep`` are
  forgotten by it, and deleted unless another schedule still keeps them (two schedules due at
  the same instant share the snapshot they both took). A crash between a run's snapshots and
  its pruning would leave a schedule over its ``keep`` until its next period, so a runner's
  first tick (the first after a start) prunes every schedule, due or not.
- A snapshot deleted by hand is simply forgotten. A schedule whose volume is gone is removed.
  Removing a schedule leaves the snapshots it took (they become ordinary snapshots).
- Failures (a full pool, an exported snapshot that cannot be deleted) are logged and retried at
  the next run; a tick never raises for one volume's trouble.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sbstore.control.state import ScheduledSnapshot, ScheduleRecord

if TYPE_CHECKING:
    from sbstore.control.service import ControlService

log = logging.getLogger("sbstore.control.schedules")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_EVERY_RE = re.compile(r"\s*(\d+)\s*([smhdw])\s*")
MAX_SLEEP_S = 60.0  # the runner looks again at least this often (schedules added, clock jumps)
AUTO_PREFIX = "auto-"


def parse_every(text: object) -> int:
    """``"30m"``, ``"1h"``, ``"1d"``, ``"2w"`` -> seconds. ValueError says what is wrong."""
    if isinstance(text, int) and not isinstance(text, bool):
        seconds = text
    else:
        m = _EVERY_RE.fullmatch(str(text))
        if not m:
            raise ValueError(f"an interval is a number and a unit (s, m, h, d, w), e.g. 1h or "
                             f"1d, not {text!r}")
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds < 60:
        raise ValueError(f"snapshots at most every minute, not every {seconds} s")
    return seconds


def format_every(seconds: int) -> str:
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def snapshot_name(volume: str, now: float) -> str:
    return f"{volume}@{AUTO_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}"


def is_due(rec: ScheduleRecord, now: float) -> bool:
    boundary = now - now % rec.every_s
    return rec.last_run is None or rec.last_run < boundary


def next_due(rec: ScheduleRecord, now: float) -> float:
    """When ``rec`` is next due (``now`` if it is due now)."""
    if is_due(rec, now):
        return now
    return now - now % rec.every_s + rec.every_s


class ScheduleRunner:
    """Runs the service's snapshot schedules. ``await tick(now)`` does what is due;
    ``start()``/``await stop()`` run it in the daemon with ``clock``."""

    def __init__(self, service: ControlService, clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._pruned_since_start = False

    # --- the daemon's task --------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def changed(self) -> None:
        """A schedule was added or removed: look again now."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()  # (a change during the tick wakes the next wait at once)
            now = self.clock()
            try:
                await self.tick(now)
                now = self.clock()
                wait = min([MAX_SLEEP_S] + [next_due(r, now) - now
                                            for r in self.service.state.schedules()])
            except Exception:  # the runner must outlive one bad tick; it tries again later
                log.exception("snapshot schedules: a run failed")
                wait = MAX_SLEEP_S
            try:
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.05))
            except TimeoutError:
                pass

    # --- one tick -----------------------------------------------------------------------------

    async def tick(self, now: float) -> int:
        """Run every schedule due at ``now``; returns how many snapshots were taken."""
        service, state = self.service, self.service.state
        self._settle_intents()
        if not self._pruned_since_start:
            # Finish the pruning a crash may have cut short (see the module's docstring).
            self._pruned_since_start = True
            for rec in state.schedules():
                await self._prune(rec)
            await service.sync_state()
        taken = 0
        for rec in state.schedules():
            if not is_due(rec, now):
                continue
            targets = service.schedule_targets(rec)
            if targets is None:
                log.warning("snapshot schedule %d: its volume is gone; removing it", rec.id)
                await service.remove_schedule(rec.id)
                continue
            # The intent first, with the run's time, in one transaction: a crash from here on
            # leaves no snapshot that no schedule keeps, and no second run for this period.
            plan = []
            with state.transaction():
                state.set_schedule_run(rec.id, now)
                for pool_name, volume in targets:
                    origin = service.volume_uuid(pool_name, volume)
                    if origin is None:
                        continue
                    name = snapshot_name(volume, now)
                    state.add_scheduled_snapshot(
                        ScheduledSnapshot(rec.id, pool_name, name, None, origin, now))
                    plan.append((pool_name, volume, name))
            await service.sync_state()
            for pool_name, volume, name in plan:
                taken += await self._take(rec, pool_name, volume, name)
            await self._prune(rec)
            await service.sync_state()
        return taken

    def _settle_intents(self) -> None:
        """Snapshots intended by a run a crash interrupted: taken (the name exists as a
        snapshot: adopted) or not (forgotten)."""
        service, state = self.service, self.service.state
        for snap in state.scheduled_snapshots():
            if snap.uuid is not None:
                continue
            uuid = service.volume_uuid(snap.pool, snap.name)
            if uuid is not None and service.is_snapshot(snap.pool, uuid):
                state.set_scheduled_snapshot_uuid(snap.pool, snap.name, uuid)
            else:
                state.forget_scheduled_snapshot(snap.schedule, snap.pool, snap.name, None)

    async def _take(self, rec: ScheduleRecord, pool_name: str, volume: str, name: str) -> int:
        from sbstore.control.service import ControlError

        service, state = self.service, self.service.state
        existing = service.volume_uuid(pool_name, name)
        if existing is not None:
            # Another schedule due at the same instant took it already: share it.
            if any(s.uuid == existing for s in state.scheduled_snapshots()):
                state.set_scheduled_snapshot_uuid(pool_name, name, existing)
            else:
                log.warning("snapshot schedule %d: %s/%s exists and is not a scheduled "
                            "snapshot; skipped", rec.id, pool_name, name)
                state.forget_scheduled_snapshot(rec.id, pool_name, name, None)
            return 0
        try:
            info = await service.create_snapshot(volume, name, pool_name)
        except ControlError as exc:
            log.error("snapshot schedule %d: cannot snapshot %s/%s: %s", rec.id, pool_name,
                      volume, exc.message)
            state.forget_scheduled_snapshot(rec.id, pool_name, name, None)
            return 0
        state.set_scheduled_snapshot_uuid(pool_name, name, info["uuid"])
        return 1

    async def _prune(self, rec: ScheduleRecord) -> None:
        from sbstore.control.service import ControlError

        service, state = self.service, self.service.state
        by_origin: dict[tuple[str, str], list[ScheduledSnapshot]] = {}
        for snap in state.scheduled_snapshots(rec.id):
            if snap.uuid is None:
                continue  # being taken
            if service.volume_name(snap.pool, snap.uuid) is None:  # deleted by hand
                state.forget_scheduled_snapshot(None, snap.pool, snap.name, snap.uuid)
                continue
            by_origin.setdefault((snap.pool, snap.origin_uuid), []).append(snap)
        for snaps in by_origin.values():
            for old in snaps[:-rec.keep]:  # oldest first: all but the newest `keep`
                others = [s for s in state.scheduled_snapshots()
                          if (s.pool, s.uuid) == (old.pool, old.uuid) and s.schedule != rec.id]
                if not others:
                    assert old.uuid is not None
                    name = service.volume_name(old.pool, old.uuid)
                    try:
                        if name is not None:
                            await service.delete_volume(name, old.pool, kind="snapshot")
                    except ControlError as exc:
                        log.error("snapshot schedule %d: cannot delete %s/%s: %s", rec.id,
                                  old.pool, name, exc.message)
                        continue  # kept: retried at the next run
                state.forget_scheduled_snapshot(rec.id, old.pool, old.name, old.uuid)
