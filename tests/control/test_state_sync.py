"""Deferred syncs of the state database: on the event loop a commit only writes the WAL, and the
service makes it durable in a worker thread before an operation returns. What a test can see:
the mode, that every operation (done, refused or failed) leaves nothing unsynced, that the
sync ran off the loop's thread, that synced changes survive a SIGKILL and that large WALs are
checkpointed into the database file by sync()."""
from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sbstore.config import QosPolicy
from sbstore.control import state as state_mod
from sbstore.control.service import ControlError, ControlService
from sbstore.control.state import StateStore, TenantRecord, VolumeRecord
from sbstore.store import Pool
from target.server import TargetServer
from target.subsystem import Target
from tests.control.conftest import NQN_1

ROOT = Path(__file__).resolve().parents[2]


def synchronous(s: StateStore) -> int:
    return int(s._db.execute("PRAGMA synchronous").fetchone()[0])


def test_commits_sync_until_deferred_then_need_a_sync(tmp_path: Path) -> None:
    s = StateStore(tmp_path / "state.db")
    try:
        s.put_tenant(TenantRecord("gold", QosPolicy()))
        assert synchronous(s) == 2 and not s.needs_sync  # FULL: the commit fsynced
        assert s.defer_sync()
        assert synchronous(s) == 1  # NORMAL: WAL writes only
        s.put_tenant(TenantRecord("silver", QosPolicy()))
        assert s.needs_sync
        s.sync()
        assert not s.needs_sync
        with pytest.raises(sqlite3.IntegrityError):
            s.put_volume(VolumeRecord("p", "u", "nobody"))
        assert not s.needs_sync  # nothing was committed
    finally:
        s.close()


def test_sync_checkpoints_a_large_wal_into_the_database(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_mod, "CHECKPOINT_WAL_BYTES", 64 << 10)
    s = StateStore(tmp_path / "state.db")
    try:
        s.defer_sync()
        for i in range(200):
            s.put_tenant(TenantRecord(f"t{i}", QosPolicy(iops=i)))
        assert s.wal_path.stat().st_size > 64 << 10
        s.sync()
        # The database file alone (no WAL) holds every tenant: the WAL was checkpointed.
        alone = tmp_path / "copy"
        alone.mkdir()
        shutil.copy(tmp_path / "state.db", alone / "state.db")
        db = sqlite3.connect(alone / "state.db")
        try:
            assert db.execute("SELECT COUNT(*) FROM tenants").fetchone()[0] == 201
        finally:
            db.close()
    finally:
        s.close()


def test_synced_changes_survive_a_sigkill(tmp_path: Path) -> None:
    child = textwrap.dedent(f"""
        import os, signal
        from sbstore.config import QosPolicy
        from sbstore.control.state import StateStore, TenantRecord
        s = StateStore({str(tmp_path / "state.db")!r})
        s.defer_sync()
        for i in range(20):
            s.put_tenant(TenantRecord(f"t{{i}}", QosPolicy(iops=i + 1)))
        s.sync()
        print("synced", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL and proc.stdout == "synced\n", proc.stderr
    s = StateStore(tmp_path / "state.db")
    try:
        assert {t.name: t.policy.iops for t in s.tenants()} == \
            {"default": 0, **{f"t{i}": i + 1 for i in range(20)}}
    finally:
        s.close()


class WatchedState(StateStore):
    """Records where sync() runs (the service's only way to the disk's flush)."""

    sync_threads: list[int]

    def sync(self) -> None:
        self.sync_threads.append(threading.get_ident())
        super().sync()


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[tuple[ControlService, WatchedState]]:
    pool = Pool.create(tmp_path / "p.pool", 128 << 20)
    state = WatchedState(tmp_path / "state.db")
    state.sync_threads = []
    target = Target()
    server = TargetServer(target)
    service = ControlService(state, {"p": pool}, target, server)
    await service.restore()
    try:
        yield service, state
    finally:
        await service.close()
        await server.close()
        await pool.aclose()
        state.close()


async def test_every_operation_returns_synced_and_syncs_off_the_loop(
        svc: tuple[ControlService, WatchedState]) -> None:
    service, state = svc
    assert synchronous(state) == 1
    ops = [
        lambda: service.create_tenant("gold", {"iops": 10}),
        lambda: service.create_volume("v", 4 << 20, tenant="gold"),
        lambda: service.create_volume("v", 4 << 20),  # refused: exists
        lambda: service.create_snapshot("v", "s"),
        lambda: service.set_volume("v", limits={"iops": 5}),
        lambda: service.create_export(NQN_1, volumes=["v"], allow_any_host=True),
        lambda: service.create_export(NQN_1, volumes=["v"]),  # refused: exists
        lambda: service.remove_namespace(NQN_1, nsid=1),
        lambda: service.add_namespace(NQN_1, "s"),
        lambda: service.delete_volume("s", kind="snapshot", force=True),
        lambda: service.delete_export(NQN_1, force=True),
        lambda: service.set_tenant("gold", {"weight": 7}),
        lambda: service.delete_volume("v"),
        lambda: service.delete_tenant("gold"),
    ]
    for op in ops:
        try:
            await op()
        except ControlError:
            pass
        assert not state.needs_sync
    loop_thread = threading.get_ident()
    assert len(state.sync_threads) >= 10 and loop_thread not in state.sync_threads
    reopened = StateStore(state.path)
    try:
        assert reopened.dump() == state.dump()
    finally:
        reopened.close()
