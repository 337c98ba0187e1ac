"""The state database (one transaction per change, constraints, reopen) and the service's
compensation: when persisting fails, what was applied to the pool or the target is undone.

The failure is real, not mocked: a second SQLite connection holds the write lock, so the
service's write times out ("database is locked")."""
from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from sbstore.config import QosPolicy
from sbstore.control.service import ControlError, ControlService, ErrorCode
from sbstore.control.state import (
    AnaRecord,
    ListenerRecord,
    NamespaceRecord,
    StateError,
    StateStore,
    SubsystemRecord,
    TenantRecord,
    VolumeRecord,
)
from sbstore.store import Busy, Pool
from target.server import TargetServer
from target.subsystem import Target
from tests.control.conftest import HOST_A, NQN_1


def test_a_new_database_has_the_default_tenant_and_reopens(tmp_path: Path) -> None:
    s = StateStore(tmp_path / "state.db")
    assert s.created and s.tenants() == [TenantRecord("default", QosPolicy())]
    s.add_listener(ListenerRecord(3, "api", 4420, address="127.0.0.1"))
    s.add_subsystem(SubsystemRecord(NQN_1, False, "SER", "model", (HOST_A,),
                                    (NamespaceRecord(2, "p", "u-1"),)))
    s.put_tenant(TenantRecord("gold", QosPolicy(iops=10, burst_s=0.25, weight=9)))
    s.put_volume(VolumeRecord("p", "u-1", "gold", QosPolicy(write_bps=1 << 20)))
    dump = s.dump()
    s.close()
    s = StateStore(tmp_path / "state.db")
    try:
        assert not s.created and s.dump() == dump
        assert s.listeners() == [ListenerRecord(3, "api", 4420, address="127.0.0.1")]
        [sub] = s.subsystems()
        assert sub.hosts == (HOST_A,) and sub.namespaces == (NamespaceRecord(2, "p", "u-1"),)
        assert s.tenants()[1] == TenantRecord("gold", QosPolicy(iops=10, burst_s=0.25,
                                                                  weight=9))
        assert s.volumes() == [VolumeRecord("p", "u-1", "gold", QosPolicy(write_bps=1 << 20))]
    finally:
        s.close()


def test_ana_states_cascade_and_an_older_database_gains_the_table(tmp_path: Path) -> None:
    s = StateStore(tmp_path / "state.db")
    try:
        s.add_listener(ListenerRecord(1, "api", 4420, address="127.0.0.1"))
        s.add_subsystem(SubsystemRecord(NQN_1, True, "SER", "model"))
        s.set_ana_state(1, None, "inaccessible")
        s.set_ana_state(1, NQN_1, "change")
        s.set_ana_state(1, None, "non-optimized")  # replaces, NULL export included
        assert s.ana_states() == [AnaRecord(1, None, "non-optimized"),
                                  AnaRecord(1, NQN_1, "change")]
        s.remove_subsystem(NQN_1)
        assert s.ana_states() == [AnaRecord(1, None, "non-optimized")]
        s.remove_listener(1)
        assert s.ana_states() == []
        # A database made before the table existed (same schema version) gets it at open.
        s._db.execute("DROP TABLE ana_states")
    finally:
        s.close()
    s = StateStore(tmp_path / "state.db")
    try:
        s.add_listener(ListenerRecord(1, "api", 4420, address="127.0.0.1"))
        s.set_ana_state(1, None, "inaccessible")
        assert s.ana_states() == [AnaRecord(1, None, "inaccessible")]
    finally:
        s.close()


def test_constraints_and_atomic_transactions(tmp_path: Path) -> None:
    s = StateStore(tmp_path / "state.db")
    try:
        s.put_tenant(TenantRecord("gold", QosPolicy()))
        s.put_volume(VolumeRecord("p", "u-1", "gold"))
        before = s.dump()
        with pytest.raises(sqlite3.IntegrityError):
            s.remove_tenant("gold")  # it still has a volume
        with pytest.raises(sqlite3.IntegrityError):
            s.put_volume(VolumeRecord("p", "u-2", "nobody"))
        with pytest.raises(sqlite3.IntegrityError):
            s.add_namespace("nqn.none", NamespaceRecord(1, "p", "u-1"))
        with pytest.raises(RuntimeError), s.transaction():
            s.put_tenant(TenantRecord("silver", QosPolicy()))
            s.add_subsystem(SubsystemRecord(NQN_1, True, "S", "M"))
            raise RuntimeError("abandon the block")
        assert s.dump() == before
        # Changing a tenant that has volumes keeps them (an upsert, not delete + insert).
        s.put_tenant(TenantRecord("gold", QosPolicy(iops=5)))
        assert s.volumes() == [VolumeRecord("p", "u-1", "gold")]
        # Deleting a subsystem takes its hosts and namespaces with it.
        s.add_subsystem(SubsystemRecord(NQN_1, False, "S", "M", (HOST_A,),
                                        (NamespaceRecord(1, "p", "u-1"),)))
        s.remove_subsystem(NQN_1)
        assert s.dump()["hosts"] == [] and s.dump()["namespaces"] == []
    finally:
        s.close()


def test_not_a_state_database(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match="not a usable sbstore state database"):
        StateStore(tmp_path / "junk.db")
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE t (x)")
    other.commit()
    other.close()
    with pytest.raises(StateError, match="not an sbstore state database"):
        StateStore(tmp_path / "other.db")


# --- compensation ---------------------------------------------------------------------------

@dataclass
class Parts:
    service: ControlService
    pool: Pool
    target: Target
    db: Path

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Another connection holds the database's write lock."""
        other = sqlite3.connect(self.db, isolation_level=None, timeout=0.1)
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    pool = Pool.create(tmp_path / "p.pool", 256 << 20)
    state = StateStore(tmp_path / "state.db", busy_timeout_s=0.1)
    target = Target()
    server = TargetServer(target)
    service = ControlService(state, {"p": pool}, target, server)
    await service.restore()
    try:
        yield Parts(service, pool, target, tmp_path / "state.db")
    finally:
        await service.close()
        await server.close()
        await pool.aclose()
        state.close()


async def test_create_volume_is_undone_when_it_cannot_be_persisted(parts: Parts) -> None:
    with parts.locked(), pytest.raises(sqlite3.OperationalError, match="locked"):
        await parts.service.create_volume("v", 4 << 20)
    assert [v.name for v in parts.pool.volumes] == []
    assert parts.service.list_volumes() == []


async def test_export_changes_are_undone_when_they_cannot_be_persisted(parts: Parts) -> None:
    svc = parts.service
    await svc.create_volume("v", 4 << 20)
    await svc.create_volume("w", 4 << 20)
    with parts.locked(), pytest.raises(sqlite3.OperationalError):
        await svc.create_export(NQN_1, volumes=["v"], allow_any_host=True)
    assert NQN_1 not in parts.target.subsystems and svc.list_exports() == []

    await svc.create_export(NQN_1, volumes=["v"], allow_any_host=True)
    before = svc.show_export(NQN_1)
    with parts.locked():
        with pytest.raises(sqlite3.OperationalError):
            await svc.add_namespace(NQN_1, "w")
        with pytest.raises(sqlite3.OperationalError):
            await svc.remove_namespace(NQN_1, nsid=1)
        with pytest.raises(sqlite3.OperationalError):
            await svc.delete_volume("v", force=True)
        with pytest.raises(sqlite3.OperationalError):
            await svc.delete_export(NQN_1, force=True)
    assert svc.show_export(NQN_1) == before
    assert sorted(parts.target.subsystems[NQN_1].namespaces) == [1]
    assert sorted(v.name for v in parts.pool.volumes) == ["v", "w"]


async def test_a_failed_pool_delete_puts_the_namespaces_back(
        parts: Parts, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool refuses a delete after the force removed the volume's namespace (here an
    injected refusal, as an inflate in progress would give): the namespace is exported again,
    under the same NSID."""
    svc = parts.service
    await svc.create_volume("v", 4 << 20)
    await svc.create_snapshot("v", "s")
    await svc.create_clone("s", "c")
    await svc.create_export(NQN_1, volumes=["v", "s"], allow_any_host=True)
    before = svc.show_export(NQN_1)

    async def refuse(volume: object) -> None:
        raise Busy("'s' is busy (injected); try again when it is done")

    monkeypatch.setattr(parts.pool, "delete", refuse)
    with pytest.raises(ControlError) as refused:
        await svc.delete_volume("s", force=True, kind="snapshot")
    assert refused.value.code is ErrorCode.BUSY
    assert "injected" in refused.value.message
    assert svc.show_export(NQN_1) == before
    assert sorted(parts.target.subsystems[NQN_1].namespaces) == [1, 2]


async def test_policy_observer_sees_every_change(parts: Parts) -> None:
    """The hook QoS attaches to: tenants' policies, volumes' tenancy and limits, deletions."""
    from sbstore.control.service import PolicyChange

    seen: list[PolicyChange] = []
    svc = parts.service
    svc.add_policy_observer(seen.append)
    svc.add_policy_observer(lambda change: 1 / 0)  # a failing observer changes nothing
    await svc.create_tenant("gold", {"iops": 100})
    v = await svc.create_volume("v", 4 << 20, tenant="gold")
    await svc.set_volume("v", limits={"write_bps": 1 << 20})
    await svc.set_tenant("gold", {"weight": 5})
    await svc.set_volume("v", tenant="default", clear_limits=True)
    await svc.delete_volume("v")
    await svc.delete_tenant("gold")
    uuid = v["uuid"]
    assert [(c.kind, c.tenant, c.policy, c.volume_uuid, c.deleted) for c in seen] == [
        ("tenant", "gold", QosPolicy(iops=100), None, False),
        ("volume", "gold", None, uuid, False),
        ("volume", "gold", QosPolicy(write_bps=1 << 20), uuid, False),
        ("tenant", "gold", QosPolicy(iops=100, weight=5), None, False),
        ("volume", "default", None, uuid, False),
        ("volume", "default", None, uuid, True),
        ("tenant", "gold", None, None, True),
    ]
    tenants, volumes = svc.policies()
    assert set(tenants) == {"default"} and volumes == {}
