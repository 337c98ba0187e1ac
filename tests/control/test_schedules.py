"""Snapshot schedules with retention: a real pool and state database, the control service, and
the schedule runner driven with time moved by hand; then the CLI against a real daemon."""
from __future__ import annotations

import calendar
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sbstore.control.schedules import ScheduleRunner, parse_every, snapshot_name
from sbstore.control.service import ControlError, ControlService
from sbstore.control.state import ScheduledSnapshot, StateStore
from sbstore.store import Pool
from target.server import TargetServer
from target.subsystem import Target
from tests.control.conftest import DaemonThread

T0 = calendar.timegm((2026, 12, 1, 0, 0, 0))  # a UTC midnight
HOUR = 3600
TICK = 600  # the runner looks every ten minutes of moved time


@contextlib.asynccontextmanager
async def control(tmp_path: Path) -> AsyncIterator[ControlService]:
    """The service over the pool and state in ``tmp_path`` (made on first use)."""
    path = tmp_path / "p.pool"
    pool = Pool.open(path) if path.exists() else Pool.create(path, 256 << 20)
    state = StateStore(tmp_path / "state.db")
    target = Target()
    server = TargetServer(target)
    service = ControlService(state, {"p": pool}, target, server)
    await service.restore()
    try:
        yield service
    finally:
        await service.close()
        await server.close()
        await pool.aclose()
        state.close()


def snapshots_of(service: ControlService, volume: str) -> list[str]:
    return sorted(v["name"] for v in service.list_volumes(kind="snapshot")
                  if v["name"].startswith(f"{volume}@"))


def names(volume: str, hours: range | list[int]) -> list[str]:
    return sorted(snapshot_name(volume, T0 + h * HOUR) for h in hours)


async def test_48_hours_of_moved_time_leave_exactly_the_retained_snapshots(
        tmp_path: Path) -> None:
    async with control(tmp_path) as service:
        await service.create_volume("v", 4 << 20)
        await service.create_tenant("gold")
        for name in ("a", "b"):
            await service.create_volume(name, 4 << 20, tenant="gold")
        await service.create_volume("other", 4 << 20)  # in no schedule
        await service.add_schedule("1h", 24, volume="v")
        await service.add_schedule("1d", 7, volume="v")
        await service.add_schedule("6h", 3, tenant="gold")
        runner = ScheduleRunner(service, clock=lambda: pytest.fail("the test moves time"))
        taken = 0
        for t in range(T0, T0 + 48 * HOUR, TICK):
            taken += await runner.tick(t)
        # v: the newest 24 hourly ones, and the daily ones of hours 0 and 24 (the hourly
        # schedule took those too, at the same instants: shared, kept by the daily one).
        assert snapshots_of(service, "v") == sorted(set(names("v", range(24, 48))
                                                        + names("v", [0])))
        for name in ("a", "b"):  # per volume of the tenant: the newest three
            assert snapshots_of(service, name) == names(name, [30, 36, 42])
        assert snapshots_of(service, "other") == []
        assert taken == 48 + 2 * 8  # the daily ones at hours 0 and 24 were shared
        listed = {(s["volume"], s["tenant"], s["every"]): s for s in service.list_schedules()}
        assert len(listed[("v", None, "1h")]["snapshots"]) == 24
        assert sorted(listed[("v", None, "1d")]["snapshots"]) == names("v", [0, 24])
        assert len(listed[(None, "gold", "6h")]["snapshots"]) == 6


async def test_schedules_survive_a_restart_and_catch_up_once(tmp_path: Path) -> None:
    async with control(tmp_path) as service:
        await service.create_volume("v", 4 << 20)
        await service.add_schedule("1h", 2, volume="v")
        runner = ScheduleRunner(service)
        assert await runner.tick(T0 + 5) == 1
        assert await runner.tick(T0 + 1800) == 0  # this hour's is taken
    async with control(tmp_path) as service:  # a restart: the state has the schedule
        runner = ScheduleRunner(service)
        assert await runner.tick(T0 + 3000) == 0
        assert [s["last_run"] for s in service.list_schedules()] == ["2026-12-01T00:00:05Z"]
        # Down over five boundaries: one snapshot on the way back, then retention.
        assert await runner.tick(T0 + 6 * HOUR + 10) == 1
        assert await runner.tick(T0 + 7 * HOUR) == 1
        assert snapshots_of(service, "v") == sorted(
            [snapshot_name("v", T0 + 6 * HOUR + 10), snapshot_name("v", T0 + 7 * HOUR)])


async def test_a_pruning_cut_short_by_a_crash_is_finished_at_the_next_start(
        tmp_path: Path) -> None:
    async with control(tmp_path) as service:
        await service.create_volume("v", 4 << 20)
        rec_id = (await service.add_schedule("1h", 2, volume="v"))["id"]
        runner = ScheduleRunner(service)
        await runner.tick(T0)
        await runner.tick(T0 + HOUR)
        # What a run at T0 + 2h has written when a crash comes before its pruning: the run's
        # time, the snapshot, and its record (the steps of ScheduleRunner.tick up to _prune).
        now = T0 + 2 * HOUR
        name = snapshot_name("v", now)
        service.state.set_schedule_run(rec_id, now)
        uuid = (await service.create_snapshot("v", name))["uuid"]
        origin = service.volume_uuid("p", "v")
        assert origin is not None
        service.state.add_scheduled_snapshot(ScheduledSnapshot(rec_id, "p", name, uuid, origin,
                                                               now))
        assert snapshots_of(service, "v") == names("v", [0, 1, 2])
    async with control(tmp_path) as service:  # the restart
        runner = ScheduleRunner(service)
        assert await runner.tick(now + TICK) == 0  # not due: this hour's is taken
        assert snapshots_of(service, "v") == names("v", [1, 2])
        assert sorted(service.list_schedules()[0]["snapshots"]) == names("v", [1, 2])


async def test_removed_schedules_keep_their_snapshots_and_gone_volumes_end_theirs(
        tmp_path: Path) -> None:
    async with control(tmp_path) as service:
        await service.create_volume("v", 4 << 20)
        await service.create_volume("w", 4 << 20)
        sv = await service.add_schedule("1h", 1, volume="v")
        await service.add_schedule("1h", 1, volume="w")
        runner = ScheduleRunner(service)
        await runner.tick(T0)
        await service.remove_schedule(sv["id"])
        await runner.tick(T0 + HOUR)
        assert snapshots_of(service, "v") == names("v", [0])  # no longer pruned
        # A scheduled snapshot deleted by hand is forgotten; a volume deleted ends its schedule.
        await service.delete_volume(snapshot_name("w", T0 + HOUR), kind="snapshot")
        await service.delete_volume("w")
        await runner.tick(T0 + 2 * HOUR)
        assert service.list_schedules() == []
        with pytest.raises(ControlError, match="no snapshot schedule"):
            await service.remove_schedule(sv["id"])
        for bad in ({"every": "1x", "keep": 1, "volume": "v"}, {"every": "1h", "keep": 0, "volume": "v"},
                    {"every": "10s", "keep": 1, "volume": "v"}, {"every": "1h", "keep": 1},
                    {"every": "1h", "keep": 1, "volume": "v", "tenant": "default"},
                    {"every": "1h", "keep": 1, "volume": names("v", [0])[0]},
                    {"every": "1h", "keep": 1, "tenant": "nobody"}):
            with pytest.raises(ControlError):
                await service.add_schedule(**bad)  # type: ignore[arg-type]


def test_parse_every() -> None:
    assert [parse_every(x) for x in ("1m", "90m", "1h", "1d", "2w")] == [
        60, 5400, 3600, 86400, 14 * 86400]


def test_schedule_cli(daemon: DaemonThread) -> None:
    daemon.ok("volume", "create", "vol", "--size", "4M")
    s = daemon.ok("schedule", "add", "--volume", "vol", "--every", "1h", "--keep", "24",
                  "--json").json
    assert (s["volume"], s["every"], s["keep"]) == ("vol", "1h", 24)
    # The daemon runs it on the wall clock: due now (never ran), it snapshots at once.
    deadline = time.monotonic() + 10
    autos: list[str] = []
    while not autos and time.monotonic() < deadline:
        autos = [x["name"] for x in daemon.ok("snapshot", "list", "--json").json
                 if x["name"].startswith("vol@auto-")]
        time.sleep(0.05)
    assert len(autos) == 1, autos
    daemon.ok("schedule", "add", "--tenant", "default", "--every", "1d", "--keep", "7")
    out = daemon.ok("schedule", "list").out
    assert "vol" in out and "default" in out and "1d" in out
    r = daemon.cli("schedule", "add", "--volume", "vol", "--every", "soon", "--keep", "2")
    assert r.rc == 1 and "interval" in r.err
    r = daemon.cli("schedule", "add", "--every", "1h", "--keep", "2")
    assert r.rc == 2
    daemon.restart()
    listed = daemon.ok("schedule", "list", "--json").json
    assert [x["every"] for x in listed] == ["1h", "1d"]
    daemon.ok("schedule", "remove", str(s["id"]))
    assert [x["every"] for x in daemon.ok("schedule", "list", "--json").json] == ["1d"]
    r = daemon.cli("schedule", "remove", str(s["id"]))
    assert r.rc == 1 and "no snapshot schedule" in r.err
