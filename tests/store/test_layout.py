"""On-disk codecs: superblock, pointer pages, volume records, geometry."""
from __future__ import annotations

import dataclasses
import struct
import uuid
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sbstore.store.layout import (
    PAGE_SIZE,
    Superblock,
    SuperblockInvalid,
    VolumeRecord,
    plan_geometry,
    pull_pointers,
    pull_superblock,
    pull_volume_record,
    push_pointers,
    push_superblock,
    push_volume_record,
)


def _sb(**kw: int) -> Superblock:
    n, first, meta = plan_geometry(64 << 20, 64 << 10)
    sb = Superblock(generation=7, pool_uuid=uuid.UUID(int=5), created_ns=123,
                    cluster_size=64 << 10, total_bytes=64 << 20, n_clusters=n,
                    first_data_cluster=first, meta_first_page=2, meta_pages=meta, vt_root=9,
                    vt_root_crc=0xDEAD, rc_root=10, rc_root_crc=0xBEEF, next_volume_id=4,
                    volume_count=3)
    return dataclasses.replace(sb, **kw)


def test_superblock_round_trip() -> None:
    sb = _sb()
    data = push_superblock(sb)
    assert len(data) == PAGE_SIZE
    assert pull_superblock(data) == sb


@pytest.mark.parametrize("offset", [0, 8, 20, 100, 2048, PAGE_SIZE - 1])
def test_superblock_any_flipped_byte_is_caught(offset: int) -> None:
    data = bytearray(push_superblock(_sb()))
    data[offset] ^= 0x40
    with pytest.raises(SuperblockInvalid):
        pull_superblock(data)


def test_superblock_torn_at_a_sector_is_caught() -> None:
    new = push_superblock(_sb(generation=8, vt_root=11))
    old = push_superblock(_sb(generation=7))
    torn = new[:512] + old[512:]
    with pytest.raises(SuperblockInvalid, match="checksum"):
        pull_superblock(torn)


def test_superblock_refuses_unknown_incompatible_features() -> None:
    with pytest.raises(SuperblockInvalid, match="incompatible"):
        pull_superblock(push_superblock(_sb(incompat=1)))


def test_superblock_refuses_bad_geometry() -> None:
    with pytest.raises(SuperblockInvalid, match="cluster size"):
        pull_superblock(push_superblock(_sb(cluster_size=3000)))
    with pytest.raises(SuperblockInvalid, match="overlap"):
        pull_superblock(push_superblock(_sb(first_data_cluster=0)))


def test_zeroed_slot_has_no_magic() -> None:
    with pytest.raises(SuperblockInvalid, match="magic"):
        pull_superblock(bytes(PAGE_SIZE))


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=512))
def test_pointer_page_round_trip(pairs: list[tuple[int, int]]) -> None:
    locs = array("I", [p[0] for p in pairs])
    crcs = array("I", [p[1] for p in pairs])
    data = push_pointers(locs, crcs)
    assert len(data) == PAGE_SIZE
    got_locs, got_crcs = pull_pointers(data)
    assert got_locs[:len(pairs)] == locs and got_crcs[:len(pairs)] == crcs
    assert not any(got_locs[len(pairs):])


def test_volume_record_round_trip_and_empty_slot() -> None:
    rec = VolumeRecord(id=3, flags=1, size_bytes=1 << 30, block_size=4096, parent_id=2,
                       created_ns=99, uuid=uuid.UUID(int=77), root=12, root_crc=34, mapped=5,
                       name="vm-disk.0:ü")
    buf = bytearray(PAGE_SIZE)
    push_volume_record(rec, buf, 256)
    assert pull_volume_record(buf, 256) == rec
    assert pull_volume_record(buf, 0) is None
    struct.pack_into("<H", buf, 256 + 64, 200)  # name length beyond the field
    with pytest.raises(ValueError):
        pull_volume_record(buf, 256)


def test_geometry() -> None:
    n, first, meta = plan_geometry(1 << 30, 256 << 10)
    assert n == 4096 and first * (256 << 10) >= (2 + meta) * PAGE_SIZE
    with pytest.raises(ValueError, match="power of two"):
        plan_geometry(1 << 30, 100_000)
    with pytest.raises(ValueError, match="no room"):
        plan_geometry(1 << 20, 1 << 20)
