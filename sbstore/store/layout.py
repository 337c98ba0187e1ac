"""On-disk layout of a pool: constants and the codecs of every structure (see FORMAT.md).

Rules of this module:
- Pure: no file or device I/O, no clock, no asyncio. Bytes in, values out (``pull_x``), values
  in, bytes out (``push_x``).
- Every structure lives in a 4 KiB metadata page or in one of the two superblock slots. A page
  carries no header: its checksum (CRC-32, ``zlib.crc32``) is stored by whatever points to it,
  next to the pointer (as ZFS block pointers do), so a stale, torn or misdirected page is caught
  by the reader that follows the pointer. Only the superblock checks itself.
- All integers are little-endian. Page numbers are absolute (page ``p`` lives at byte
  ``p * PAGE_SIZE``); physical cluster numbers (``pcn``) are absolute too (cluster ``c`` lives at
  byte ``c * cluster_size``), so 0 can mean "nothing": page 0 and cluster 0 hold superblock slot A.
"""
from __future__ import annotations

import struct
import uuid as uuid_mod
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass

PAGE_SIZE = 4096
SB_SLOT_PAGES = (0, 1)  # superblock slots A and B: pages 0 and 1
META_FIRST_PAGE = 2

LEAF_ENTRIES = 1024  # u32 entries in a leaf page (map: pcn; refcount table: count)
LEAF_SHIFT = 10
PTRS_PER_PAGE = 512  # (page u32, crc u32) pairs in a pointer page (root, dir, volume-table root)
PTR_SHIFT = 9
MAX_TREE_ENTRIES = PTRS_PER_PAGE * PTRS_PER_PAGE * LEAF_ENTRIES  # 2**28 clusters per tree

MIN_CLUSTER_SIZE = 4096
MAX_CLUSTER_SIZE = 64 << 20
DEFAULT_CLUSTER_SIZE = 256 << 10  # chosen by perf/store_bench.py (see FORMAT.md)

MAGIC = b"SBSTPOOL"
FORMAT_VERSION = 1
INCOMPAT_SUPPORTED = 0  # no incompatible features defined yet: any bit set refuses to open
RO_COMPAT_SUPPORTED = 0

VOLREC_SIZE = 256
VOLRECS_PER_PAGE = PAGE_SIZE // VOLREC_SIZE  # 16
MAX_VOLUME_RECORDS = PTRS_PER_PAGE * VOLRECS_PER_PAGE  # 8192
NAME_MAX_BYTES = 128
GROUP_NAME_MAX_BYTES = 48  # a snapshot group's name, kept in each member's record

# Volume record flags.
VOL_SNAPSHOT = 0x1  # read-only; its data never changes
VOL_DYING = 0x2  # intent: being deleted; invisible; opening the pool finishes the deletion
VOL_FLAGS_KNOWN = VOL_SNAPSHOT | VOL_DYING

ZERO_PAGE = bytes(PAGE_SIZE)
assert array("I").itemsize == 4, "the maps need a 4-byte array type"


def page_crc(data: bytes | bytearray | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


# --- superblock -------------------------------------------------------------------------------

_SB = struct.Struct(
    "<8s"   # magic
    "I"     # version
    "III"   # incompat, ro_compat, compat feature flags
    "Q"     # generation (transaction id): the valid slot with the higher one is current
    "16s"   # pool uuid
    "Q"     # created, ns since the epoch (informational)
    "I"     # page size (bytes)
    "I"     # cluster size (bytes)
    "Q"     # total bytes of the pool (device or file size used)
    "Q"     # n_clusters: total clusters, counting the ones the metadata area covers
    "Q"     # first_data_cluster
    "Q"     # meta_first_page
    "Q"     # meta_pages
    "II"    # volume table root: page, crc
    "II"    # refcount table root: page, crc
    "I"     # next volume id
    "I"     # volume records in use (including dying ones)
    "III"   # manifest of this commit's pages: first manifest page, its crc, entries
)
SB_CRC_OFFSET = PAGE_SIZE - 4


@dataclass
class Superblock:
    generation: int
    pool_uuid: uuid_mod.UUID
    created_ns: int
    cluster_size: int
    total_bytes: int
    n_clusters: int
    first_data_cluster: int
    meta_first_page: int
    meta_pages: int
    vt_root: int = 0
    vt_root_crc: int = 0
    rc_root: int = 0
    rc_root_crc: int = 0
    next_volume_id: int = 1
    volume_count: int = 0
    manifest: int = 0
    manifest_crc: int = 0
    manifest_entries: int = 0
    version: int = FORMAT_VERSION
    incompat: int = 0
    ro_compat: int = 0
    compat: int = 0
    page_size: int = PAGE_SIZE

    @property
    def meta_end_page(self) -> int:
        return self.meta_first_page + self.meta_pages

    @property
    def data_clusters(self) -> int:
        return self.n_clusters - self.first_data_cluster


def push_superblock(sb: Superblock) -> bytes:
    buf = bytearray(PAGE_SIZE)
    _SB.pack_into(buf, 0, MAGIC, sb.version, sb.incompat, sb.ro_compat, sb.compat,
                  sb.generation, sb.pool_uuid.bytes, sb.created_ns, sb.page_size,
                  sb.cluster_size, sb.total_bytes, sb.n_clusters, sb.first_data_cluster,
                  sb.meta_first_page, sb.meta_pages, sb.vt_root, sb.vt_root_crc, sb.rc_root,
                  sb.rc_root_crc, sb.next_volume_id, sb.volume_count, sb.manifest,
                  sb.manifest_crc, sb.manifest_entries)
    struct.pack_into("<I", buf, SB_CRC_OFFSET, page_crc(buf))
    return bytes(buf)


class SuperblockInvalid(ValueError):
    """This slot does not hold a valid superblock (the message says why)."""


def pull_superblock(data: bytes | bytearray | memoryview) -> Superblock:
    """Decode and verify one slot; raise :class:`SuperblockInvalid` saying what is wrong."""
    if len(data) < PAGE_SIZE:
        raise SuperblockInvalid(f"slot is {len(data)} bytes, expected {PAGE_SIZE}")
    data = bytes(data[:PAGE_SIZE])
    (magic, version, incompat, ro_compat, compat, generation, uuid_b, created_ns, page_size,
     cluster_size, total_bytes, n_clusters, first_data, meta_first, meta_pages, vt_root, vt_crc,
     rc_root, rc_crc, next_id, vcount, manifest, manifest_crc,
     manifest_entries) = _SB.unpack_from(data, 0)
    if magic != MAGIC:
        raise SuperblockInvalid("no sbstore pool magic")
    (stored_crc,) = struct.unpack_from("<I", data, SB_CRC_OFFSET)
    if page_crc(data[:SB_CRC_OFFSET] + b"\0\0\0\0") != stored_crc:
        raise SuperblockInvalid("checksum mismatch (torn or damaged write)")
    if version != FORMAT_VERSION:
        raise SuperblockInvalid(f"format version {version}; this sbstore reads version "
                                f"{FORMAT_VERSION}")
    if incompat & ~INCOMPAT_SUPPORTED:
        raise SuperblockInvalid(f"unknown incompatible features {incompat:#x}")
    sb = Superblock(generation=generation, pool_uuid=uuid_mod.UUID(bytes=uuid_b),
                    created_ns=created_ns, cluster_size=cluster_size, total_bytes=total_bytes,
                    n_clusters=n_clusters, first_data_cluster=first_data,
                    meta_first_page=meta_first, meta_pages=meta_pages, vt_root=vt_root,
                    vt_root_crc=vt_crc, rc_root=rc_root, rc_root_crc=rc_crc,
                    next_volume_id=next_id, volume_count=vcount, manifest=manifest,
                    manifest_crc=manifest_crc, manifest_entries=manifest_entries,
                    version=version,
                    incompat=incompat, ro_compat=ro_compat, compat=compat, page_size=page_size)
    problem = geometry_problem(sb)
    if problem:
        raise SuperblockInvalid(problem)
    return sb


def geometry_problem(sb: Superblock) -> str | None:
    """Why the superblock's geometry cannot be right, or None."""
    c = sb.cluster_size
    if sb.page_size != PAGE_SIZE:
        return f"page size {sb.page_size}, expected {PAGE_SIZE}"
    if c < MIN_CLUSTER_SIZE or c > MAX_CLUSTER_SIZE or c & (c - 1):
        return f"cluster size {c} is not a power of two in {MIN_CLUSTER_SIZE}..{MAX_CLUSTER_SIZE}"
    if sb.n_clusters != sb.total_bytes // c:
        return f"{sb.n_clusters} clusters do not match {sb.total_bytes} bytes"
    if sb.n_clusters > MAX_TREE_ENTRIES:
        return f"{sb.n_clusters} clusters exceed the refcount table's {MAX_TREE_ENTRIES}"
    if sb.meta_first_page != META_FIRST_PAGE or sb.meta_pages < 8:
        return "metadata area out of place"
    if sb.first_data_cluster * c < sb.meta_end_page * PAGE_SIZE:
        return "data clusters overlap the metadata area"
    if sb.first_data_cluster >= sb.n_clusters:
        return "no data clusters"
    if sb.volume_count > MAX_VOLUME_RECORDS:
        return f"{sb.volume_count} volume records exceed {MAX_VOLUME_RECORDS}"
    return None


# --- pointer pages (tree roots, tree directories, volume-table root) -------------------------

def push_pointers(locs: array[int], crcs: array[int]) -> bytes:
    """A pointer page: up to 512 (page, crc) pairs; page 0 means "no child"."""
    n = len(locs)
    assert n <= PTRS_PER_PAGE and len(crcs) == n
    page = array("I", bytes(PAGE_SIZE))
    page[0:2 * n:2] = locs
    page[1:2 * n:2] = crcs
    return page.tobytes()


def pull_pointers(data: bytes | bytearray | memoryview) -> tuple[array[int], array[int]]:
    page = array("I")
    page.frombytes(bytes(data))
    return page[0::2], page[1::2]


MANIFEST_ENTRIES_PER_PAGE = PTRS_PER_PAGE - 1  # entry 0 points to the next manifest page


def push_manifest(entries: list[tuple[int, int]], alloc: Callable[[], int]
                  ) -> list[tuple[int, bytes]]:
    """The manifest of one commit: every (page, crc) it wrote, in a chain of pointer pages
    (entry 0 of each: the next page and its crc). Returns the manifest pages, first first."""
    chunks = [entries[i:i + MANIFEST_ENTRIES_PER_PAGE]
              for i in range(0, len(entries), MANIFEST_ENTRIES_PER_PAGE)]
    pages = [alloc() for _ in chunks]
    out: list[tuple[int, bytes]] = []
    nxt, nxt_crc = 0, 0
    for page, chunk in zip(reversed(pages), reversed(chunks)):
        locs = array("I", [nxt] + [p for p, _ in chunk])
        crcs = array("I", [nxt_crc] + [c for _, c in chunk])
        data = push_pointers(locs, crcs)
        out.append((page, data))
        nxt, nxt_crc = page, page_crc(data)
    out.reverse()
    return out


def pull_u32_page(data: bytes | bytearray | memoryview) -> array[int]:
    page = array("I")
    page.frombytes(bytes(data))
    return page


# --- volume records -------------------------------------------------------------------------

_VOLREC = struct.Struct(
    "<I"    # id (0: empty slot)
    "I"     # flags (VOL_*)
    "Q"     # size in bytes
    "I"     # logical block size
    "I"     # parent id (the snapshot this volume's data came from; 0: none)
    "Q"     # created, ns since the epoch
    "16s"   # uuid
    "II"    # map tree root: page, crc
    "Q"     # mapped clusters (informational; recomputed by check)
    "H"     # name length
    f"{NAME_MAX_BYTES}s"
    "Q"     # family: id of the first volume of its lineage (0: not recorded, pre-family pools)
    "I"     # snapshot group id: the id of the group's first member (0: in no group)
    "B"     # snapshot group name length
    f"{GROUP_NAME_MAX_BYTES}s"
)
assert _VOLREC.size <= VOLREC_SIZE


@dataclass
class VolumeRecord:
    id: int
    flags: int
    size_bytes: int
    block_size: int
    parent_id: int
    created_ns: int
    uuid: uuid_mod.UUID
    root: int = 0
    root_crc: int = 0
    mapped: int = 0
    name: str = ""
    # The id of the volume its lineage started from (a new volume: itself; snapshots and clones
    # inherit it). Volumes of one family may share clusters; no others may. It outlives the
    # lineage's snapshots, so two clones stay related when the snapshot between them is gone.
    family: int = 0
    # Snapshot groups (taken at one instant, in one commit): every member records the group's
    # id (its first member's id, so never reused) and name. 0 / "": in no group.
    group_id: int = 0
    group: str = ""


def push_volume_record(rec: VolumeRecord, buf: bytearray, offset: int) -> None:
    name_b = rec.name.encode()
    if len(name_b) > NAME_MAX_BYTES:
        raise ValueError("volume name too long")
    group_b = rec.group.encode()
    if len(group_b) > GROUP_NAME_MAX_BYTES:
        raise ValueError("snapshot group name too long")
    buf[offset:offset + VOLREC_SIZE] = bytes(VOLREC_SIZE)
    _VOLREC.pack_into(buf, offset, rec.id, rec.flags, rec.size_bytes, rec.block_size,
                      rec.parent_id, rec.created_ns, rec.uuid.bytes, rec.root, rec.root_crc,
                      rec.mapped, len(name_b), name_b, rec.family, rec.group_id, len(group_b),
                      group_b)


def pull_volume_record(data: bytes | bytearray | memoryview, offset: int) -> VolumeRecord | None:
    """The record at ``offset``, or None for an empty slot. Raises ValueError if malformed."""
    (vid, flags, size, bs, parent, created, uuid_b, root, root_crc, mapped, name_len,
     name_b, family, group_id, group_len, group_b) = _VOLREC.unpack_from(data, offset)
    if vid == 0:
        return None
    if name_len > NAME_MAX_BYTES:
        raise ValueError(f"volume record {vid}: name length {name_len}")
    if group_len > GROUP_NAME_MAX_BYTES:
        raise ValueError(f"volume record {vid}: group name length {group_len}")
    return VolumeRecord(id=vid, flags=flags, size_bytes=size, block_size=bs, parent_id=parent,
                        created_ns=created, uuid=uuid_mod.UUID(bytes=uuid_b), root=root,
                        root_crc=root_crc, mapped=mapped,
                        name=name_b[:name_len].decode("utf-8", "replace"), family=family,
                        group_id=group_id,
                        group=group_b[:group_len].decode("utf-8", "replace"))


# --- geometry helpers -------------------------------------------------------------------------

def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def tree_shape(n_entries: int) -> tuple[int, int]:
    """(leaves, directory pages) of a tree holding ``n_entries`` u32 entries."""
    leaves = ceil_div(n_entries, LEAF_ENTRIES)
    return leaves, ceil_div(leaves, PTRS_PER_PAGE)


def default_meta_pages(total_bytes: int, cluster_size: int) -> int:
    """A metadata area big enough for the refcount table twice over (shadow copies), eight
    leaf pages per 1024 data clusters (volume maps, their snapshots' diverged copies), and a
    fixed reserve for roots, directories and the volume table."""
    n = total_bytes // cluster_size
    rc_leaves, rc_dirs = tree_shape(n)
    pages = 2 * (rc_leaves + rc_dirs + 1) + 8 * rc_leaves + 256
    return max(256, min(pages, total_bytes // PAGE_SIZE // 4))


def plan_geometry(total_bytes: int, cluster_size: int, meta_pages: int | None = None
                  ) -> tuple[int, int, int]:
    """(n_clusters, first_data_cluster, meta_pages) for a pool; ValueError if it cannot fit."""
    c = cluster_size
    if c < MIN_CLUSTER_SIZE or c > MAX_CLUSTER_SIZE or c & (c - 1):
        raise ValueError(f"cluster size must be a power of two from {MIN_CLUSTER_SIZE} to "
                         f"{MAX_CLUSTER_SIZE} bytes, not {c}")
    if meta_pages is None:
        meta_pages = default_meta_pages(total_bytes, c)
    if meta_pages < 8:
        raise ValueError("the metadata area needs at least 8 pages")
    n_clusters = total_bytes // c
    if n_clusters > MAX_TREE_ENTRIES:
        raise ValueError(f"{n_clusters} clusters exceed {MAX_TREE_ENTRIES}: use a larger "
                         f"cluster size")
    first_data = ceil_div((META_FIRST_PAGE + meta_pages) * PAGE_SIZE, c)
    if first_data >= n_clusters:
        raise ValueError(f"{total_bytes} bytes leave no room for data after the metadata area "
                         f"({meta_pages} pages) with {c}-byte clusters")
    return n_clusters, first_data, meta_pages
