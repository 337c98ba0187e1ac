"""Controller-id slots: nodes of one cluster hand out disjoint controller ids (a host refuses
two paths of one subsystem with the same id)."""
from __future__ import annotations

import asyncio
from pathlib import Path

from sbstore.cluster import cntlid
from sbstore.cluster.etcd import EtcdClient
from target.subsystem import Subsystem


def test_slot_ranges_are_disjoint_and_valid() -> None:
    seen: set[int] = set()
    for slot in range(cntlid.SLOTS):
        lo, hi = cntlid.cntlid_range(slot)
        assert 1 <= lo <= hi <= cntlid.CNTLID_MAX
        ids = set(range(lo, hi + 1))
        assert not ids & seen
        seen |= ids


async def test_nodes_claim_different_slots_and_keep_them(etcd_client: EtcdClient) -> None:
    names = [f"n{i}" for i in range(6)]
    slots = await asyncio.gather(*(cntlid.claim_slot(etcd_client, "/t", n) for n in names))
    assert sorted(slots) == list(range(6))
    again = await asyncio.gather(*(cntlid.claim_slot(etcd_client, "/t", n) for n in names))
    assert again == slots
    assert await cntlid.claim_slot(etcd_client, "/other", "n5") == 0  # per prefix


async def test_no_free_slot(etcd_client: EtcdClient) -> None:
    for i in range(cntlid.SLOTS):
        await cntlid.claim_slot(etcd_client, "/t", f"n{i}")
    try:
        await cntlid.claim_slot(etcd_client, "/t", "late")
    except cntlid.NoFreeSlot as exc:
        assert "16" in str(exc)
    else:
        raise AssertionError("a 17th node got a slot")


def test_cached_slot_is_this_nodes_only(tmp_path: Path) -> None:
    path = tmp_path / "slot.json"
    assert cntlid.read_cached(path, "a") is None
    cntlid.write_cached(path, "a", 3)
    assert cntlid.read_cached(path, "a") == 3
    assert cntlid.read_cached(path, "b") is None
    path.write_text("not json")
    assert cntlid.read_cached(path, "a") is None


def test_a_subsystem_allocates_within_its_range() -> None:
    sub = Subsystem("nqn.2026-12.io.sbstore:t", "S1", "m", allow_any_host=True)
    assert sub.allocate_cntlid(None) == 1
    lo, hi = cntlid.cntlid_range(2)
    sub.set_cntlid_range(lo, hi)
    assert [sub.allocate_cntlid(None) for _ in range(3)] == [lo, lo + 1, lo + 2]
    assert sub.allocate_cntlid(lo + 100) == lo + 100  # a host's static request is honoured
