"""The pool: volumes, snapshots and clones on one file or device, and its commit protocol.

Theory of operation (FORMAT.md has the bytes):

- **State.** Everything the pool knows lives in memory: per volume a flat cluster map (loaded
  lazily), per pool the data refcounts and the metadata-page usage. The disk holds the last
  committed copy: superblock -> volume table -> each volume's map tree, and superblock ->
  refcount table. Metadata-page usage and leaf sharing are not stored; opening the pool derives
  them from the trees (only their root and directory pages are read).
- **Transactions and commit (shadow paging, dm-thin's two phases).** Changes accumulate in the
  open transaction. A commit (1) on the event loop, without awaiting: gives every dirty page a
  page that no durable state uses, serializes them, builds the next superblock and closes the
  transaction; (2) in a worker thread: writes the pages, ``fdatasync``, writes the superblock
  into the slot the previous commit did not use, ``fdatasync``; (3) back on the loop: the pages
  and clusters the transaction released become allocatable. A crash before the superblock
  lands leaves the previous superblock and everything it points to intact; a torn superblock
  fails its checksum and the other slot wins.
- **When.** On every Flush and FUA write (they complete only after a commit that started after
  them: the volatile-write-cache contract), on a timer (``commit_interval``, 1 s) once anything
  changed, and at the end of every management operation.
- **Multi-step operations carry an intent.** Deleting a volume (or folding a snapshot, or the old
  data of a reverted volume) first commits its record flagged DYING (the intent: from then on the
  data is nobody's), then drops its references in slices while I/O goes on, committing as it
  goes, and finally removes the record. Opening a pool finishes every DYING record.
- **What no crash can break.** A cluster is never handed out while the last durable commit
  may still map it (released space waits for the commit that records the release). A write
  never overwrites a cluster that any durable state shares: it goes in place only if this volume
  alone owns the cluster and no other reference to it was dropped in an uncommitted transaction
  (``_unstable``). Snapshots are never written. So after any crash each volume reads only data
  it wrote, and snapshots read what they read when taken.

Public API (management operations are coroutines because they commit, and a commit's fsync must
not block the event loop; create/open/close are plain calls for startup, shutdown and tools)::

    pool = Pool.create(path, size_bytes=None, *, cluster_size=DEFAULT_CLUSTER_SIZE,
                       metadata_bytes=None, force=False)      # size None: the device's size
    pool = Pool.open(path, *, readonly=False)
    await pool.aclose()  /  pool.close()
    pool.volumes -> list[Volume]; pool.volume(name); pool.volume_by_id(id);
    pool.volume_by_uuid(uuid); pool.stats() -> PoolStats
    vol = await pool.create_volume(name, size_bytes, block_size=512)
    snap = await vol.snapshot(name)            # or await pool.snapshot(vol, name)
    snaps = await pool.snapshot_group(group, [vol, ...])  # one instant: "<vol>@<group>" each
    pool.groups() -> {group: [snapshots]};  await pool.delete_group(group)
    clone = await pool.clone(snap, name, uuid=None)  # uuid: as create_volume's
    await pool.delete(name_or_volume)          # a snapshot's dependents keep their data
    await pool.inflate(name_or_volume, progress=None)  # independent of its snapshots
    hidden = await pool.begin_import(name, size, bs, snapshot_name=, snapshot_uuid=, base=)
    vol, snap = await pool.finish_import(hidden, name, snapshot_name=, snapshot_uuid=, base=)
    await pool.abandon_import(hidden)          # (sbstore.store.transfer drives these three)
    await pool.revert(volume, snapshot)        # snapshot must be in the volume's history
    await vol.resize(new_size_bytes, shrink=False); await vol.rename(new_name)
    await pool.flush()                         # commit now
    vol.parent, vol.children, vol.allocated_bytes, vol.uuid, vol.info()

Volumes implement ``target.blockdev.BlockDevice`` (read/write/flush/write_zeroes/deallocate,
block_size/num_blocks/uuid) with ``StoreError``s; ``sbstore.volume_device`` adapts the errors.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
import os
import time
import uuid as uuid_mod
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Self

from .backing import Backing
from .engines import open_engine
from .engines.base import EngineUnavailable, IoEngine
from .engines.kernel import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, fallocate
from .errors import (
    AlreadyExists,
    Busy,
    Corrupt,
    InvalidArgument,
    NoSpace,
    NotFound,
    PoolFailed,
    ReadOnly,
    StoreError,
)
from .guard import ReuseGuard
from .layout import (
    DEFAULT_CLUSTER_SIZE,
    GROUP_NAME_MAX_BYTES,
    LEAF_ENTRIES,
    LEAF_SHIFT,
    MANIFEST_ENTRIES_PER_PAGE,
    MAX_TREE_ENTRIES,
    MAX_VOLUME_RECORDS,
    META_FIRST_PAGE,
    NAME_MAX_BYTES,
    PAGE_SIZE,
    PTR_SHIFT,
    PTRS_PER_PAGE,
    SB_SLOT_PAGES,
    VOL_DYING,
    VOL_FLAGS_KNOWN,
    VOL_SNAPSHOT,
    VOLREC_SIZE,
    VOLRECS_PER_PAGE,
    Superblock,
    SuperblockInvalid,
    VolumeRecord,
    ceil_div,
    page_crc,
    plan_geometry,
    pull_pointers,
    pull_superblock,
    pull_volume_record,
    push_manifest,
    push_pointers,
    push_superblock,
    push_volume_record,
)
from .owner import Segment
from .pagetree import (
    PageTree,
    check_page_number,
    leaf_slice_bytes,
    load_entries,
    load_tree,
    read_checked,
)
from .space import ClusterSpace, MetaSpace
from .volume import Volume

log = logging.getLogger(__name__)

_META_RESERVE = 16  # pages kept back for management operations (deleting must stay possible)
_DRAIN_LEAVES = 64  # leaves a deletion drops before yielding to the event loop
_INFLATE_BATCH = 16  # clusters an inflate copies before yielding
_PUNCH_BATCH = 64  # hole punches (discards) in flight at once while giving space back
_ROOM_ROUNDS = 200  # tries of _make_room (a commit, or 1 ms for in-flight I/O to drain)


@dataclass(frozen=True)
class PoolStats:
    """Space accounting. Bytes count whole clusters; free = capacity - allocated."""

    path: str
    uuid: str
    cluster_size: int
    capacity_bytes: int  # data clusters
    allocated_bytes: int  # clusters referenced by at least one volume
    free_bytes: int
    metadata_bytes: int
    metadata_used_bytes: int
    volumes: int
    snapshots: int
    generation: int
    io_engine: str  # the data I/O engine: io_uring, threads or buffered
    io_reason: str  # why that engine (one line)
    io_direct: bool  # O_DIRECT: the page cache holds none of the data

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Plan:
    """One closed transaction on its way to disk."""

    txn: int
    writes: list[tuple[int, bytes]]
    sb: Superblock | None
    release_meta: list[int]
    release_data: list[int]
    epoch: int  # the guard epoch this commit closed: its freed clusters wait for its I/O


class Pool:
    """Thin volumes, snapshots and clones on one file or block device."""

    commit_interval = 1.0  # seconds between a first change and its timer commit
    default_io = "auto"  # the engine create/open pick when not told (tests run every engine)

    def __init__(self, backing: Backing, sb: Superblock, readonly: bool,
                 engine: IoEngine) -> None:
        """Use :meth:`create` or :meth:`open`."""
        self._backing = backing
        self._sb = sb
        self.readonly = readonly
        self.cluster_size = sb.cluster_size
        self.engine = engine
        self.guard = ReuseGuard()
        self._meta = MetaSpace(sb.meta_first_page, sb.meta_pages)
        rc_tree = PageTree(sb.n_clusters, self._meta)
        self._space = ClusterSpace(sb.n_clusters, sb.first_data_cluster,
                                   array("I", bytes(4 * sb.n_clusters)), rc_tree)
        self._slots: list[Volume | None] = []
        self._vt_loc = array("I", bytes(4 * PTRS_PER_PAGE))
        self._vt_crc = array("I", bytes(4 * PTRS_PER_PAGE))
        self._vt_dirty: set[int] = set()
        self._vt_root_ptr = (sb.vt_root, sb.vt_root_crc)
        self._manifest_pages: list[int] = []  # the newest commit's manifest
        self._sb_dirty = False  # write a superblock at the next commit even if nothing changed
        self._by_id: dict[int, Volume] = {}
        self._by_name: dict[str, Volume] = {}
        self._dying: list[Volume] = []
        self._next_id = sb.next_volume_id
        self._unstable: set[int] = set()
        self._unstable_inflight: set[int] = set()
        self._dirty = False
        self._open_txn = 1
        self._durable_txn = 0
        self._commit_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._inflight_pages: dict[int, bytes] = {}
        self._failed: BaseException | None = None
        self._mgmt_lock = asyncio.Lock()
        self._busy: dict[int, str] = {}
        self._drains: set[asyncio.Task[None]] = set()
        # Freed clusters being given back to the file system (hole punch) or the device
        # (discard) before they return to the free set: see _give_back.
        self._punches: set[asyncio.Task[None]] = set()
        self.punched_bytes = 0  # given back so far (a statistic)
        self._closed = False
        self.fallback_used = False  # opened from the older superblock slot

    # --- creating and opening -----------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], size_bytes: int | None = None, *,
               cluster_size: int = DEFAULT_CLUSTER_SIZE, metadata_bytes: int | None = None,
               force: bool = False, io: str | None = None) -> Pool:
        """Format a pool on ``path`` (a file, created or resized to ``size_bytes``, or a block
        device, whose size is used when ``size_bytes`` is None). ``io`` picks the data I/O
        engine (``engines.open_engine``: "auto", "io_uring", "threads" or "buffered")."""
        path = os.fspath(path)
        is_blk = _is_block_device(path)
        if size_bytes is None and not is_blk:
            raise InvalidArgument("a pool file needs a size")
        if size_bytes is not None and size_bytes <= 0:
            raise InvalidArgument(f"pool size must be positive, not {size_bytes}")
        if os.path.exists(path) and not force:
            existing = _probe_pool(path)
            if existing:
                raise AlreadyExists(f"{path} already holds an sbstore pool ({existing}); "
                                    f"use --force to overwrite it")
        backing = Backing(path, create_size=None if is_blk else size_bytes)
        engine: IoEngine | None = None
        try:
            total = backing.size if size_bytes is None else size_bytes
            if total > backing.size:
                raise InvalidArgument(f"{path} has {backing.size} bytes, fewer than the "
                                      f"{total} asked for")
            meta_pages = None if metadata_bytes is None else ceil_div(metadata_bytes, PAGE_SIZE)
            try:
                n_clusters, first_data, meta_pages = plan_geometry(total, cluster_size,
                                                                   meta_pages)
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from None
            sb = Superblock(generation=0, pool_uuid=uuid_mod.uuid4(), created_ns=time.time_ns(),
                            cluster_size=cluster_size, total_bytes=n_clusters * cluster_size,
                            n_clusters=n_clusters, first_data_cluster=first_data,
                            meta_first_page=META_FIRST_PAGE, meta_pages=meta_pages)
            # Wipe both slots first: an old pool's superblock must never win over ours.
            for slot in SB_SLOT_PAGES:
                backing.write_superblock(slot, bytes(PAGE_SIZE))
            backing.sync()
            sb = dataclasses.replace(sb, generation=1)
            backing.write_superblock(SB_SLOT_PAGES[1], push_superblock(sb))
            backing.sync()
            engine = _open_engine(path, io or cls.default_io, readonly=False)
            pool = cls(backing, sb, readonly=False, engine=engine)
            pool._meta.rebuild_free()
            pool._space.rebuild_free()
            return pool
        except BaseException:
            if engine is not None:
                engine.close()
            backing.close()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, readonly: bool = False,
             finish_deletions: bool = True, io: str | None = None,
             backing: Backing | None = None,
             engine: IoEngine | None = None) -> Pool:
        """Open an existing pool; finishes any interrupted deletion unless ``readonly``
        (``finish_deletions=False`` is for ``check --repair`` only). ``io`` picks the data
        I/O engine; tests may hand in their own ``backing`` and ``engine`` instead (both are
        closed with the pool)."""
        if backing is None:
            backing = Backing(path, readonly=readonly)
        try:
            if engine is None:
                engine = _open_engine(backing.path, io or cls.default_io, readonly=readonly)
            candidates, reasons = read_superblocks(backing)
            if not candidates:
                raise Corrupt(f"{backing.path}: no valid superblock (" + "; ".join(reasons) + ")")
            errors: list[str] = []
            for i, sb in enumerate(candidates):
                if sb.total_bytes > backing.size:
                    errors.append(f"generation {sb.generation}: the pool has {sb.total_bytes} "
                                  f"bytes but {backing.path} only {backing.size}")
                    continue
                pool = cls(backing, sb, readonly, engine)
                try:
                    pool._load()
                except Corrupt as exc:
                    errors.append(f"generation {sb.generation}: {exc}")
                    continue
                pool.fallback_used = i > 0
                if i > 0:
                    log.warning("%s: newest superblock unusable (%s); opened generation %d",
                                backing.path, "; ".join(errors), sb.generation)
                if not readonly and i > 0:
                    # Overwrite the unusable newest slot now, with the state we opened.
                    pool._sb_dirty = pool._dirty = True
                    pool.commit_sync()
                if pool._fill_families() and not readonly:
                    pool.commit_sync()  # recorded before any lineage can lose its root
                if not readonly and not backing.is_block_device:
                    pool._punch_free_space()
                if not readonly and finish_deletions and pool._dying:
                    pool._finish_dying_sync()
                return pool
            raise Corrupt(f"{backing.path}: " + "; ".join(errors))
        except BaseException:
            if engine is not None:
                engine.close()
            backing.close()
            raise

    def _load(self) -> None:
        sb = self._sb
        read_page = self._backing.read_page
        first, end = sb.meta_first_page, sb.meta_end_page
        meta = self._meta
        kinds = bytearray(end)  # 1: page of one owner, 2: shared map leaf
        # The last commit must be whole (every page it wrote matches the checksum it recorded),
        # else the caller falls back to the other superblock slot.
        self._manifest_pages = verify_manifest(read_page, sb)
        for page in self._manifest_pages:
            kinds[page] = 1
            meta.refs[page] = 1

        def claim(page: int, kind: str) -> None:
            if kind == "leaf" and kinds[page] != 1:
                kinds[page] = 2
                meta.refs[page] += 1
                return
            if kinds[page]:
                raise Corrupt(f"metadata page {page} is used twice")
            kinds[page] = 1
            meta.refs[page] = 1

        def claim_own(page: int, kind: str) -> None:
            claim(page, "own")

        rc_tree = self._space.tree
        load_tree(rc_tree, sb.rc_root, sb.rc_root_crc, read_page, first, end, "refcount table",
                  claim_own)
        self._space.rc = load_entries(rc_tree, read_page, "refcount table")
        if sb.vt_root:
            check_page_number(sb.vt_root, first, end, "volume table root")
            claim(sb.vt_root, "own")
            locs, crcs = pull_pointers(read_checked(read_page, sb.vt_root, sb.vt_root_crc,
                                                    "volume table root"))
            self._vt_loc, self._vt_crc = locs, crcs
        count = 0
        for k in range(PTRS_PER_PAGE):
            loc = self._vt_loc[k]
            if not loc:
                continue
            check_page_number(loc, first, end, f"volume table page {k}")
            claim(loc, "own")
            data = read_checked(read_page, loc, self._vt_crc[k], f"volume table page {k}")
            for i in range(VOLRECS_PER_PAGE):
                try:
                    rec = pull_volume_record(data, i * VOLREC_SIZE)
                except ValueError as exc:
                    raise Corrupt(str(exc)) from None
                if rec is None:
                    continue
                problem = record_problem(rec, sb.cluster_size)
                if problem:
                    raise Corrupt(problem)
                if rec.id in self._by_id or any(v.id == rec.id for v in self._dying):
                    raise Corrupt(f"volume id {rec.id} appears twice")
                tree = PageTree(ceil_div(rec.size_bytes, sb.cluster_size), meta)
                load_tree(tree, rec.root, rec.root_crc, read_page, first, end,
                          f"map of {rec.name!r}", claim)
                self._place(Volume(self, rec, tree, k * VOLRECS_PER_PAGE + i))
                count += 1
        if count != sb.volume_count:
            raise Corrupt(f"superblock counts {sb.volume_count} volumes, the table holds {count}")
        meta.rebuild_free()
        self._space.rebuild_free()

    def _fill_families(self) -> bool:
        """Records written before families were recorded (family 0) get the id of their
        lineage's root, which is their family while no root snapshot with several children has
        been deleted (older versions refused that). True if any was filled (and marked for the
        next commit)."""
        filled = False
        for vol in self._all_volumes():
            if vol.family:
                continue
            root, seen = vol, {vol.id}
            while root.parent_id and root.parent_id not in seen:
                parent = self._by_id.get(root.parent_id)
                if parent is None:
                    break
                seen.add(parent.id)
                root = parent
            vol.family = root.id
            self._vt_dirty.add(vol.slot // VOLRECS_PER_PAGE)
            self._dirty = filled = True
        return filled

    def _place(self, vol: Volume) -> None:
        while len(self._slots) <= vol.slot:
            self._slots.append(None)
        self._slots[vol.slot] = vol
        if vol.flags & VOL_DYING:
            vol._kill()
            self._dying.append(vol)
        else:
            self._by_id[vol.id] = vol
            self._by_name[vol.name] = vol

    # --- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Commit and close (outside a running commit: in async code use :meth:`aclose`)."""
        if self._closed:
            return
        if self._commit_task is not None:
            raise Busy("a commit is in flight: use 'await pool.aclose()'")
        try:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not self.readonly and self._failed is None:
                for task in list(self._drains):
                    task.cancel()
                self._finish_dying_sync()
                self.commit_sync()
        finally:
            self._shutdown()

    async def aclose(self) -> None:
        """Wait for deletions in progress, commit, and close."""
        if self._closed:
            return
        try:
            # Writes in flight finish first (their clusters get mapped or given back).
            for vol in self._all_volumes():
                if vol._writes:
                    await vol.quiesce()
            if self._drains:
                await asyncio.gather(*list(self._drains), return_exceptions=True)
            if not self.readonly and self._failed is None:
                await self.flush()
            while self._commit_task is not None:
                await asyncio.shield(self._commit_task)
            await self.punches_done()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        finally:
            self.close()

    def _shutdown(self) -> None:
        self._closed = True
        for vol in self._all_volumes():
            vol._kill()
            vol.reopen()  # writes waiting at a gate now fail with NotFound
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self.engine.close()
        self._backing.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- lookups ------------------------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._backing.path

    @property
    def uuid(self) -> uuid_mod.UUID:
        return self._sb.pool_uuid

    @property
    def generation(self) -> int:
        """The generation of the last durable commit."""
        return self._sb.generation

    @property
    def volumes(self) -> list[Volume]:
        """Every volume and snapshot, in creation order."""
        return sorted(self._by_id.values(), key=lambda v: v.id)

    def volume(self, name: str) -> Volume:
        try:
            return self._by_name[name]
        except KeyError:
            raise NotFound(f"no volume or snapshot named {name!r}") from None

    def volume_by_id(self, vid: int) -> Volume:
        try:
            return self._by_id[vid]
        except KeyError:
            raise NotFound(f"no volume or snapshot with id {vid}") from None

    def volume_by_uuid(self, uuid: uuid_mod.UUID | str) -> Volume:
        want = uuid if isinstance(uuid, uuid_mod.UUID) else uuid_mod.UUID(str(uuid))
        for vol in self._by_id.values():
            if vol.uuid == want:
                return vol
        raise NotFound(f"no volume or snapshot with uuid {want}")

    def _resolve(self, x: Volume | str) -> Volume:
        if isinstance(x, Volume):
            if x._dead or self._by_id.get(x.id) is not x:
                raise NotFound(f"volume {x.name!r} was deleted")
            return x
        return self.volume(x)

    def _children_of(self, vid: int) -> list[Volume]:
        return sorted((v for v in self._by_id.values() if v.parent_id == vid),
                      key=lambda v: v.id)

    def _all_volumes(self) -> Iterable[Volume]:
        return [v for v in self._slots if v is not None]

    def stats(self) -> PoolStats:
        c = self.cluster_size
        sb = self._sb
        capacity = sb.data_clusters * c
        allocated = self._space.n_used * c
        vols = list(self._by_id.values())
        snaps = sum(1 for v in vols if v.is_snapshot)
        return PoolStats(path=self.path, uuid=str(sb.pool_uuid), cluster_size=c,
                         capacity_bytes=capacity, allocated_bytes=allocated,
                         free_bytes=capacity - allocated,
                         metadata_bytes=sb.meta_pages * PAGE_SIZE,
                         metadata_used_bytes=self._meta.used * PAGE_SIZE,
                         volumes=len(vols) - snaps, snapshots=snaps,
                         generation=sb.generation, io_engine=self.engine.name,
                         io_reason=self.engine.reason, io_direct=self.engine.direct)

    # --- management operations ----------------------------------------------------------------

    def _writable(self) -> None:
        if self.readonly:
            raise ReadOnly("the pool is open read-only")
        if self._closed:
            raise InvalidArgument("the pool is closed")
        if self._failed is not None:
            raise PoolFailed(f"the pool failed ({self._failed}); reopen it")

    def _check_new_name(self, name: str) -> None:
        check_name(name)
        if name in self._by_name:
            raise AlreadyExists(f"a volume or snapshot named {name!r} already exists")

    def _new_slot(self) -> int:
        for i, v in enumerate(self._slots):
            if v is None:
                return i
        if len(self._slots) >= MAX_VOLUME_RECORDS:
            raise NoSpace(f"the pool holds its maximum of {MAX_VOLUME_RECORDS} volumes and "
                          f"snapshots")
        self._slots.append(None)
        return len(self._slots) - 1

    def _add_volume(self, name: str, flags: int, size: int, block_size: int,
                    parent_id: int, family: int = 0, uuid: uuid_mod.UUID | None = None,
                    hidden: bool = False) -> Volume:
        """A new record; ``family`` 0 starts a lineage of its own. ``hidden``: known to no
        lookup (an import in progress: see :meth:`begin_import`)."""
        rec = VolumeRecord(id=self._next_id, flags=flags, size_bytes=size, block_size=block_size,
                           parent_id=parent_id, created_ns=time.time_ns(),
                           uuid=uuid or uuid_mod.uuid4(), name=name,
                           family=family or self._next_id)
        slot = self._new_slot()
        self._next_id += 1
        vol = Volume(self, rec, PageTree(ceil_div(size, self.cluster_size), self._meta), slot)
        if hidden:
            while len(self._slots) <= slot:
                self._slots.append(None)
            self._slots[slot] = vol
        else:
            self._place(vol)
        self._record_changed(vol)
        return vol

    def _record_changed(self, vol: Volume) -> None:
        self._vt_dirty.add(vol.slot // VOLRECS_PER_PAGE)
        self._note_change()

    def _check_not_busy(self, vol: Volume) -> None:
        what = self._busy.get(vol.id)
        if what:
            raise Busy(f"{vol.name!r} is busy ({what}); try again when it is done")

    async def create_volume(self, name: str, size_bytes: int, block_size: int = 512, *,
                            uuid: uuid_mod.UUID | None = None) -> Volume:
        """A new, empty thin volume (no space is taken until it is written). ``uuid``: the
        identity it must have (a replica of a cluster volume shares its uuid, and so the
        namespace identity hosts see); None: a new one."""
        self._writable()
        if block_size not in (512, 4096) or block_size > self.cluster_size:
            raise InvalidArgument(f"block size must be 512 or 4096 (and at most the cluster "
                                  f"size), not {block_size}")
        self._check_size(size_bytes, block_size)
        async with self._mgmt_lock:
            self._check_new_name(name)
            if uuid is not None and any(v.uuid == uuid for v in self._by_id.values()):
                raise AlreadyExists(f"the pool already holds a volume with uuid {uuid} "
                                    f"({self.volume_by_uuid(uuid).name!r})")
            await self._make_room(lambda: (0, 2))
            vol = self._add_volume(name, 0, size_bytes, block_size, 0, uuid=uuid)
            await self.flush()
            return vol

    def _check_size(self, size: int, block_size: int) -> None:
        if not isinstance(size, int) or size <= 0 or size % block_size:
            raise InvalidArgument(f"volume size must be a positive multiple of {block_size} "
                                  f"bytes, not {size}")
        limit = MAX_TREE_ENTRIES * self.cluster_size
        if size > limit:
            raise InvalidArgument(f"volume size {size} exceeds the {limit} bytes a volume can "
                                  f"have with {self.cluster_size}-byte clusters")

    async def snapshot(self, volume: Volume | str, name: str) -> Volume:
        """An instant, read-only snapshot; ``volume``'s parent becomes the snapshot (a chain)."""
        self._writable()
        async with self._mgmt_lock:
            vol = self._resolve(volume)
            if vol.is_snapshot:
                raise InvalidArgument(f"{vol.name!r} is a snapshot; clone it to get a volume "
                                      f"you can snapshot")
            self._check_not_busy(vol)  # an inflate would leave the new snapshot sharing data
            self._check_new_name(name)
            # No write may be in flight to a cluster that becomes shared (it would change the
            # snapshot after the fact): close the volume's gate and let its writes finish.
            await vol.quiesce()
            try:
                await self._make_room(lambda: (0, self._share_cost(vol)))
                vol = self._resolve(vol)
                self._check_new_name(name)
                snap = self._add_volume(name, VOL_SNAPSHOT, vol.size_bytes, vol.block_size,
                                        vol.parent_id, vol.family)
                self._share_tree(vol, snap)
                vol.parent_id = snap.id
                self._record_changed(vol)
            finally:
                vol.reopen()
            await self.flush()
            return snap

    async def snapshot_group(self, group: str, volumes: Sequence[Volume | str]) -> list[Volume]:
        """Snapshot several volumes at one instant, as the group ``group``: volume V gets the
        snapshot ``V@group`` (the snapshots in the order of ``volumes``).

        Every member's gate closes and its writes in flight finish before any snapshot is
        taken, and all of them are taken in one transaction and one commit. So a write issued
        after another write completed is in the group only if that one is too, whichever
        volumes they hit; and a crash leaves all of the snapshots or none. Each member's record
        names the group (id and name), so the pool alone knows its groups (``check`` verifies
        them; no other state is needed to list or delete a group)."""
        self._writable()
        check_group_name(group)
        async with self._mgmt_lock:
            vols = [self._resolve(v) for v in volumes]
            if not vols:
                raise InvalidArgument("a snapshot group needs at least one volume")
            if len({v.id for v in vols}) != len(vols):
                raise InvalidArgument("a volume is named twice in the snapshot group")
            for v in vols:
                if v.is_snapshot:
                    raise InvalidArgument(f"{v.name!r} is a snapshot; clone it to get a volume "
                                          f"you can snapshot")
                self._check_not_busy(v)
            if group in self.groups():
                raise AlreadyExists(f"a snapshot group named {group!r} already exists")
            names = [f"{v.name}@{group}" for v in vols]
            for name in names:
                self._check_new_name(name)
            free_slots = self._slots.count(None) + MAX_VOLUME_RECORDS - len(self._slots)
            if free_slots < len(vols):
                raise NoSpace(f"the pool holds at most {MAX_VOLUME_RECORDS} volumes and "
                              f"snapshots; {free_slots} more fit")
            quiesced: list[Volume] = []
            try:
                # Close every gate first, then wait for each volume's writes in flight: once
                # all are drained, nothing any member acknowledges can be missing.
                for v in vols:
                    await v.quiesce()
                    quiesced.append(v)
                await self._make_room(
                    lambda: (0, sum(self._share_cost(v) + 2 for v in vols)))
                vols = [self._resolve(v) for v in vols]
                for name in names:
                    self._check_new_name(name)
                # From here to the commit, nothing awaits: one transaction.
                group_id = self._next_id
                snaps = []
                for v, name in zip(vols, names):
                    snap = self._add_volume(name, VOL_SNAPSHOT, v.size_bytes, v.block_size,
                                            v.parent_id, v.family)
                    snap.group_id, snap.group = group_id, group
                    self._share_tree(v, snap)
                    v.parent_id = snap.id
                    self._record_changed(v)
                    snaps.append(snap)
            finally:
                for v in quiesced:
                    v.reopen()
            await self.flush()
            return snaps

    def groups(self) -> dict[str, list[Volume]]:
        """Snapshot groups by name, each with its snapshots (in id order). A member deleted
        on its own leaves the others in the group."""
        out: dict[str, list[Volume]] = {}
        for v in self.volumes:
            if v.group_id:
                out.setdefault(v.group, []).append(v)
        return out

    async def delete_group(self, group: str) -> list[str]:
        """Delete every snapshot of the group (each as :meth:`delete` would: whatever depends
        on it keeps its data). All are flagged DYING in one commit, so a crash leaves the whole
        group or none of it. Returns the names of the snapshots deleted."""
        self._writable()
        async with self._mgmt_lock:
            members = self.groups().get(group)
            if not members:
                raise NotFound(f"no snapshot group named {group!r}")
            for m in members:
                self._check_not_busy(m)
            await self._make_room(lambda: (0, 2), reserve=False)
            members = [self._resolve(m) for m in members]
            for m in members:
                for child in self._children_of(m.id):
                    child.parent_id = m.parent_id
                    self._record_changed(child)
                self._make_dying(m)
            await self.flush()  # the intent is durable for all of them
        for m in members:
            await self._drain(m)
        return [m.name for m in members]

    async def clone(self, snapshot: Volume | str, name: str, *,
                    uuid: uuid_mod.UUID | None = None) -> Volume:
        """A writable volume sharing ``snapshot``'s data. ``uuid``: the identity it must have
        (a replica of a cluster clone shares its uuid, as :meth:`create_volume`'s); None: a
        new one."""
        self._writable()
        async with self._mgmt_lock:
            snap = self._resolve(snapshot)
            if not snap.is_snapshot:
                raise InvalidArgument(f"{snap.name!r} is not a snapshot: snapshot it first, "
                                      f"then clone the snapshot")
            self._check_new_name(name)
            if uuid is not None and any(v.uuid == uuid for v in self._by_id.values()):
                raise AlreadyExists(f"the pool already holds a volume with uuid {uuid} "
                                    f"({self.volume_by_uuid(uuid).name!r})")
            await self._make_room(lambda: (0, self._share_cost(snap)))
            snap = self._resolve(snap)
            vol = self._add_volume(name, 0, snap.size_bytes, snap.block_size, snap.id,
                                   snap.family, uuid=uuid)
            self._share_tree(snap, vol)
            await self.flush()
            return vol

    async def delete(self, volume: Volume | str) -> None:
        """Delete a volume or snapshot and give back the space no one else shares.

        Whatever depends on a snapshot keeps every byte: each volume has its own map, holding
        its own references, so the snapshot's references simply go. Its children (later
        snapshots of its origin, clones made from it) take its parent; they stay one family
        (``Volume.family``), which is what lets them keep sharing clusters.
        """
        self._writable()
        async with self._mgmt_lock:
            vol = self._resolve(volume)
            self._check_not_busy(vol)
            # (The margin _make_room keeps covers the volume table pages the children dirty.)
            await self._make_room(lambda: (0, 2), reserve=False)
            vol = self._resolve(vol)
            for child in self._children_of(vol.id):
                child.parent_id = vol.parent_id
                self._record_changed(child)
            self._make_dying(vol)
            await self.flush()  # the intent is durable: the data is nobody's now
        await self._drain(vol)

    async def revert(self, volume: Volume | str, snapshot: Volume | str) -> None:
        """Make ``volume`` read exactly what ``snapshot`` reads (size included).

        The snapshot must be in the volume's history (its parent, its parent's parent, ...).
        """
        self._writable()
        async with self._mgmt_lock:
            vol = self._resolve(volume)
            snap = self._resolve(snapshot)
            if vol.is_snapshot:
                raise InvalidArgument(f"{vol.name!r} is a snapshot; only volumes can revert")
            if not snap.is_snapshot:
                raise InvalidArgument(f"{snap.name!r} is not a snapshot")
            p = vol.parent
            while p is not None and p is not snap:
                p = p.parent
            if p is None:
                raise InvalidArgument(f"snapshot {snap.name!r} is not in the history of "
                                      f"{vol.name!r}")
            self._check_not_busy(vol)
            await vol.quiesce()  # no write in flight may land in the map being replaced
            try:
                await self._make_room(lambda: (0, 4 + self._share_cost(snap)))
                vol, snap = self._resolve(vol), self._resolve(snap)
                # The old data moves to a hidden DYING record; the volume object stays (served).
                old = self._add_volume(f"{vol.name}~before-revert", VOL_DYING, vol.size_bytes,
                                       vol.block_size, 0, vol.family)
                old.tree, old._map, old.mapped = vol.tree, vol._map, vol.mapped
                vol.tree = PageTree(ceil_div(snap.size_bytes, self.cluster_size), self._meta)
                vol._map = None
                vol.mapped = 0
                self._share_tree(snap, vol)
                vol._set_size(snap.size_bytes)
                vol.parent_id = snap.id
                self._record_changed(vol)
            finally:
                vol.reopen()
            await self.flush()
        await self._drain(old)

    async def inflate(self, volume: Volume | str,
                      progress: Callable[[int, int], None] | None = None) -> None:
        """Give the volume its own copy of every cluster it shares: it no longer depends on
        any snapshot (its parent becomes None). I/O to it goes on meanwhile. ``progress(done,
        total)`` hears of it in clusters looked at. Cancelled, it stops between two clusters:
        the clone stays valid, partly inflated (still depending on its snapshot)."""
        self._writable()
        vol = self._resolve(volume)
        if vol.is_snapshot:
            raise InvalidArgument(f"{vol.name!r} is a snapshot; inflate a clone instead")
        self._check_not_busy(vol)
        if not vol.parent_id:
            return
        self._busy[vol.id] = "inflating"
        try:
            ci = 0
            while True:
                m = vol._map if vol._map is not None else vol._load_map()
                if ci >= len(m):
                    break
                copied = 0
                while ci < len(m) and copied < _INFLATE_BATCH:
                    if vol.shares_cluster(ci):
                        await vol.copy_out(ci)
                        copied += 1
                        m = vol._after_wait(0)
                    ci += 1
                if progress is not None:
                    progress(ci, len(m))
                await asyncio.sleep(0)
                if vol._dead:
                    raise NotFound(f"volume {vol.name!r} was deleted")
            async with self._mgmt_lock:
                vol.parent_id = 0
                self._record_changed(vol)
                await self.flush()
        finally:
            self._busy.pop(vol.id, None)

    async def resize(self, volume: Volume | str, new_size_bytes: int, *,
                     shrink: bool = False) -> None:
        """Grow a volume; the new blocks read as zeroes. Shrinking only with ``shrink``: the
        clusters past the new end are released (snapshots keep theirs)."""
        self._writable()
        async with self._mgmt_lock:
            vol = self._resolve(volume)
            if vol.is_snapshot:
                raise ReadOnly(f"{vol.name!r} is a snapshot; snapshots cannot be resized")
            self._check_not_busy(vol)
            self._check_size(new_size_bytes, vol.block_size)
            if new_size_bytes < vol.size_bytes:
                if not shrink:
                    raise InvalidArgument(f"shrinking {vol.name!r} from {vol.size_bytes} to "
                                          f"{new_size_bytes} bytes discards the data past the "
                                          f"new end: ask for it explicitly (--force)")
                await self._shrink(vol, new_size_bytes)
                return
            if new_size_bytes == vol.size_bytes:
                return
            await self._make_room(lambda: (0, 2))
            n = ceil_div(new_size_bytes, self.cluster_size)
            if vol._map is not None:
                vol._map.frombytes(bytes(4 * (n - len(vol._map))))
            vol.tree.grow(n)
            vol._set_size(new_size_bytes)
            self._record_changed(vol)
            await self.flush()

    async def _shrink(self, vol: Volume, size: int) -> None:
        """Cut ``vol`` to ``size`` bytes (the management lock is held). Its gate is closed and
        its writes drained first; the rest of the last cluster past the new end is zeroed (a
        later grow must read zeroes there); then, in one transaction, every map entry past
        the end is dropped, and the size changes. A crash before the commit leaves the old
        size (with that tail zeroed, like any write not yet flushed)."""
        await vol.quiesce()
        try:
            vol._load_map()
            csize = self.cluster_size
            tail_end = min(vol.size_bytes, ceil_div(size, csize) * csize)
            if tail_end > size:
                await vol._write_span(size, None, tail_end - size, True)
            await self._make_room(lambda: (0, self._shrink_cost(vol, size)))
            vol = self._resolve(vol)
            self._cut_map(vol, size)
            self._record_changed(vol)
        finally:
            vol.reopen()
        await self.flush()

    def _shrink_cost(self, vol: Volume, size: int) -> int:
        """Metadata pages cutting ``vol``'s map at ``size`` may take (pessimistic)."""
        m = vol._map
        assert m is not None
        n_new = ceil_div(size, self.cluster_size)
        touched = {e >> LEAF_SHIFT for e in m[n_new:] if e}
        pages = 2 * len(touched - self._space.tree.dirty) + len(vol.tree.dir_loc) + 4
        j = n_new >> LEAF_SHIFT
        if n_new % LEAF_ENTRIES:
            pages += 1 + self._unshare_cost(vol, j)
        return pages

    def _cut_map(self, vol: Volume, size: int) -> None:
        """Drop every map entry of ``vol`` past ``size`` bytes and shrink its tree (no await).

        A private leaf (dirty, or whose page only this map names) drops its clusters'
        references; a leaf page other maps share keeps them (a reference is per leaf), but its
        clusters become *unstable*: the durable state still gives this volume that leaf, so
        until the commit no one may write them in place."""
        m = vol._map
        assert m is not None
        t, meta = vol.tree, self._meta
        n_new = ceil_div(size, self.cluster_size)
        n_old = len(m)
        first_gone = ceil_div(n_new, LEAF_ENTRIES)  # leaves from here on go whole
        if n_new % LEAF_ENTRIES:
            for ci in range(n_new, min(n_old, first_gone << LEAF_SHIFT)):
                if m[ci]:
                    self.set_mapping(vol, ci, 0)
        for j in range(first_gone, t.n_leaves):
            entries = [e for e in m[j << LEAF_SHIFT:(j + 1) << LEAF_SHIFT] if e]
            loc = t.leaf_loc[j]
            if j in t.dirty:
                private = True
            elif loc:
                private = meta.unref(loc)
            else:
                continue  # never written
            if private:
                for e in entries:
                    self._drop_ref(e)
            else:
                self._unstable.update(entries)
            vol.mapped -= len(entries)
            t.drop_leaf(j)
        t.shrink(n_new)
        del m[n_new:]
        vol._set_size(size)
        self._note_change()

    async def rename(self, volume: Volume | str, new_name: str) -> None:
        self._writable()
        async with self._mgmt_lock:
            vol = self._resolve(volume)
            if new_name == vol.name:
                return
            self._check_new_name(new_name)
            await self._make_room(lambda: (0, 2))
            del self._by_name[vol.name]
            vol._name = new_name
            self._by_name[new_name] = vol
            self._record_changed(vol)
            await self.flush()

    # --- imports (sbstore.store.transfer drives them) -------------------------------------------

    async def begin_import(self, name: str, size_bytes: int, block_size: int, *,
                           snapshot_name: str, snapshot_uuid: uuid_mod.UUID,
                           base: Volume | str | None = None) -> Volume:
        """A hidden, writable volume for an import to fill: empty, or (``base``) sharing the
        base snapshot's data. Its record is committed flagged DYING, so whatever happens
        before :meth:`finish_import` (a crash, a close, :meth:`abandon_import`) removes it:
        an import is either whole and visible, or gone."""
        self._writable()
        if block_size not in (512, 4096) or block_size > self.cluster_size:
            raise InvalidArgument(f"block size must be 512 or 4096 (and at most the cluster "
                                  f"size), not {block_size}")
        self._check_size(size_bytes, block_size)
        async with self._mgmt_lock:
            src = self._check_import(name, snapshot_name, snapshot_uuid, base)
            if src is not None and size_bytes < src.size_bytes:
                raise InvalidArgument(f"the stream's volume ({size_bytes} bytes) is smaller "
                                      f"than its base {src.name!r} ({src.size_bytes} bytes): "
                                      f"shrinking is not supported")
            await self._make_room(lambda: (0, 4 + (self._share_cost(src) if src else 0)))
            if src is None:
                hidden = self._add_volume(name, VOL_DYING, size_bytes, block_size, 0,
                                          hidden=True)
            else:
                src = self._resolve(src)
                hidden = self._add_volume(name, VOL_DYING, size_bytes, block_size, src.id,
                                          src.family, hidden=True)
                self._share_tree(src, hidden)
                m = hidden._map
                if m is not None and len(m) < hidden.n_clusters:
                    m.frombytes(bytes(4 * (hidden.n_clusters - len(m))))
            await self.flush()  # the intent is durable before any data goes in
            return hidden

    def _check_import(self, name: str, snapshot_name: str, snapshot_uuid: uuid_mod.UUID,
                      base: Volume | str | None) -> Volume | None:
        """Refuse an import that cannot finish; the base snapshot, if any."""
        self._check_new_name(snapshot_name)
        if any(v.uuid == snapshot_uuid for v in self._by_id.values()):
            held = self.volume_by_uuid(snapshot_uuid)
            raise AlreadyExists(f"the pool already holds snapshot {snapshot_uuid} (as "
                                f"{held.name!r}): it was imported before")
        if base is None:
            self._check_new_name(name)
            return None
        src = self._resolve(base)
        if not src.is_snapshot:
            raise InvalidArgument(f"{src.name!r} is not a snapshot")
        target = self.volume(name)
        if target.is_snapshot:
            raise InvalidArgument(f"{name!r} is a snapshot; an increment applies to a volume")
        p = target.parent
        while p is not None and p is not src:
            p = p.parent
        if p is None:
            raise InvalidArgument(f"the increment's base {src.name!r} is not in the history "
                                  f"of {name!r}")
        self._check_not_busy(target)
        return src

    async def finish_import(self, hidden: Volume, name: str, *, snapshot_name: str,
                            snapshot_uuid: uuid_mod.UUID, base: Volume | str | None = None
                            ) -> tuple[Volume, Volume]:
        """Make a filled import visible, in one commit: a full import becomes volume ``name``
        with snapshot ``snapshot_name`` (uuid ``snapshot_uuid``) as its parent; an increment
        (``base``) becomes that snapshot, child of ``base``, and volume ``name`` is made to
        read it (its own data since the base is dropped, as a revert would). Returns
        (volume, snapshot)."""
        self._writable()
        async with self._mgmt_lock:
            src = self._check_import(name, snapshot_name, snapshot_uuid, base)
            target = None if src is None else self.volume(name)
            await hidden.quiesce()  # (the importer awaited its writes: this only makes sure)
            if target is not None:
                await target.quiesce()  # no write in flight may land in the map replaced
            try:
                await self._make_room(lambda: (0, 6 + self._share_cost(hidden)))
                src = self._check_import(name, snapshot_name, snapshot_uuid, base)
                snap = self._add_volume(snapshot_name, VOL_SNAPSHOT, hidden.size_bytes,
                                        hidden.block_size, hidden.parent_id, hidden.family,
                                        uuid=snapshot_uuid)
                self._share_tree(hidden, snap)
                if target is None:
                    hidden.flags &= ~VOL_DYING
                    hidden.parent_id = snap.id
                    self._place(hidden)
                    self._record_changed(hidden)
                    vol = hidden
                else:
                    # The target takes the imported data; its old data leaves with the
                    # hidden record, which now dies (as a revert's old data does).
                    target = self._resolve(target)
                    hidden.tree, target.tree = target.tree, hidden.tree
                    hidden._map, target._map = target._map, hidden._map
                    hidden.mapped, target.mapped = target.mapped, hidden.mapped
                    old_size = target.size_bytes
                    target._set_size(hidden.size_bytes)
                    hidden._set_size(old_size)
                    target.parent_id = snap.id
                    self._record_changed(target)
                    self._make_dying(hidden)
                    vol = target
            finally:
                hidden.reopen()
                if target is not None:
                    target.reopen()
            await self.flush()
        if target is not None:
            await self._drain(hidden)
        return vol, snap

    async def abandon_import(self, hidden: Volume) -> None:
        """Drop an import that did not finish (a bad stream, a cancel): its space goes back."""
        if hidden in self._dying or self._closed:
            return
        async with self._mgmt_lock:
            await hidden.quiesce()
            hidden.reopen()
            if (self._slots[hidden.slot] is not hidden or hidden in self._dying
                    or not hidden.flags & VOL_DYING or self._by_id.get(hidden.id) is hidden):
                return  # finished (visible) or already dropped
            self._make_dying(hidden)
            await self.flush()
        await self._drain(hidden)

    # --- sharing, copying, dropping -----------------------------------------------------------

    def _share_cost(self, src: Volume) -> int:
        """Metadata pages sharing ``src``'s map with a new volume may take."""
        pages = len(src.tree.dir_loc) + 4
        for j in src.tree.dirty:
            pages += self._unshare_cost(src, j)
        return pages

    def _share_tree(self, src: Volume, dst: Volume) -> None:
        """Make ``dst``'s map equal to ``src``'s by sharing its leaves (O(leaves))."""
        st, dt = src.tree, dst.tree
        meta = self._meta
        for j, loc in enumerate(st.leaf_loc):
            if loc:
                dt.leaf_loc[j] = loc
                dt.leaf_crc[j] = st.leaf_crc[j]
                meta.ref(loc)
                dt.mark_dir(j >> PTR_SHIFT)
        if src._map is not None and (st.dirty or not dst.is_snapshot):
            dst._map = src._map[:]
        if st.dirty:
            # Leaves not yet on disk cannot be shared by page: dst gets its own copy.
            incref = self._space.incref
            m = dst._map
            assert m is not None
            for j in st.dirty:
                for e in m[j << LEAF_SHIFT:(j + 1) << LEAF_SHIFT]:
                    if e:
                        incref(e)
                dt.make_dirty(j)
        dst.mapped = src.mapped
        self._note_change()

    def _unshare_cost(self, vol: Volume, j: int) -> int:
        """rc-table pages that adding a reference to every cluster of leaf ``j`` may dirty."""
        m = vol._map
        if m is None:
            return 1100
        dirty = self._space.tree.dirty
        touched = {e >> LEAF_SHIFT for e in m[j << LEAF_SHIFT:(j + 1) << LEAF_SHIFT] if e}
        return len(touched - dirty) * 3 + 2

    def _touch_map_leaf(self, vol: Volume, j: int) -> None:
        """Leaf ``j`` of ``vol``'s map is about to change: make it private and dirty."""
        t = vol.tree
        if j in t.dirty:
            return
        loc = t.leaf_loc[j]
        if loc:
            meta = self._meta
            if meta.refs[loc] > 1:
                # Shared with other volumes: they keep the page, we take our own copy, and
                # each cluster it names gains the reference our copy holds.
                meta.refs[loc] -= 1
                m = vol._map
                assert m is not None
                incref = self._space.incref
                for e in m[j << LEAF_SHIFT:(j + 1) << LEAF_SHIFT]:
                    if e:
                        incref(e)
            else:
                meta.unref(loc)
        t.make_dirty(j)
        self._note_change()

    def _drop_ref(self, pcn: int) -> None:
        """One map entry stopped naming ``pcn`` in the open transaction."""
        if not self._space.decref(pcn):
            # Someone else still maps it, but the durable state may still give us a
            # reference too: no one may write it in place until that is committed.
            self._unstable.add(pcn)

    def _make_dying(self, vol: Volume) -> None:
        """Record the intent to delete ``vol``: hidden now, its space freed by :meth:`_drain`."""
        vol.flags |= VOL_DYING
        if self._by_id.get(vol.id) is vol:
            del self._by_id[vol.id]
            del self._by_name[vol.name]
        vol._kill()
        vol._drain_pos = 0
        self._dying.append(vol)
        self._record_changed(vol)

    async def _drain(self, vol: Volume) -> None:
        """Drop a DYING volume's references in slices, then remove its record; commit."""
        task = asyncio.get_running_loop().create_task(self._drain_run(vol))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)
        await asyncio.shield(task)

    async def _drain_run(self, vol: Volume) -> None:
        while vol in self._dying and not self._drain_some(vol, _DRAIN_LEAVES):
            await asyncio.sleep(0)
        await self.flush()

    def _finish_dying_sync(self) -> None:
        for vol in list(self._dying):
            while not self._drain_some(vol, 1 << 30):
                pass
        self.commit_sync()

    def _drain_some(self, vol: Volume, budget: int) -> bool:
        """Drop up to ``budget`` leaves of a DYING volume; True once its record is gone."""
        if vol not in self._dying:
            return True
        t = vol.tree
        meta, space = self._meta, self._space
        start = vol._drain_pos
        end = min(t.n_leaves, start + budget)
        decref = space.decref
        for j in range(start, end):
            loc = t.leaf_loc[j]
            entries: Iterable[int] | None = None
            if j in t.dirty:
                assert vol._map is not None
                entries = vol._map[j << LEAF_SHIFT:(j + 1) << LEAF_SHIFT]
            elif loc:
                if meta.unref(loc):
                    if vol._map is not None:
                        entries = vol._map[j << LEAF_SHIFT:(j + 1) << LEAF_SHIFT]
                    else:
                        data = read_checked(self._read_meta, loc, t.leaf_crc[j],
                                            f"map of deleted {vol.name!r} leaf {j}")
                        entries = array("I", data)
            else:
                continue
            if entries is not None:
                for e in entries:
                    if e:
                        decref(e)
            t.drop_leaf(j)
        vol._drain_pos = end
        self._note_change()
        if end < t.n_leaves:
            return False
        t.release_pointer_pages()
        self._dying.remove(vol)
        self._slots[vol.slot] = None
        self._vt_dirty.add(vol.slot // VOLRECS_PER_PAGE)
        vol._map = None
        return True

    def _repair_counts(self, rc_fixes: dict[int, int], mapped_fixes: dict[int, int]) -> None:
        """Set reference counts and mapped totals to what ``check`` computed from the maps."""
        space = self._space
        for p, want in sorted(rc_fixes.items()):
            old = space.rc[p]
            if old == want:
                continue
            space.rc[p] = want
            space.tree.touch(p >> LEAF_SHIFT)
            if p < space.first_data:
                continue
            if old and not want:
                space.pending.append(p)
                space.n_used -= 1
            elif want and not old:
                if space.free[p]:
                    space.free[p] = 0
                    space.n_free -= 1
                space.n_used += 1
        for vid, mapped in mapped_fixes.items():
            for vol in self._all_volumes():
                if vol.id == vid:
                    vol.mapped = mapped
                    self._record_changed(vol)
        self._note_change()

    def _read_meta(self, page: int) -> bytes:
        data = self._inflight_pages.get(page)
        if data is not None:
            return data
        return self._backing.read_page(page)

    # --- the data path's interface (owner.VolumeOwner) ------------------------------------------

    @property
    def cluster_refs(self) -> array[int]:
        return self._space.rc

    @property
    def leaf_refs(self) -> array[int]:
        return self._meta.refs

    def is_unstable(self, pcn: int) -> bool:
        u = self._unstable
        if u and pcn in u:
            return True
        u = self._unstable_inflight
        return bool(u) and pcn in u

    def note_data(self) -> None:
        """Something changed (data or metadata): a commit follows within the timer."""
        self._dirty = True
        if self._timer is None:
            self._arm_timer()

    _note_change = note_data  # (the management operations' name for the same thing)

    async def make_room_for(self, vol: Volume, segs: Sequence[Segment], zeroing: bool) -> None:
        await self._make_room(functools.partial(self._write_needs, vol, segs, zeroing))

    def reserve_cluster(self) -> int:
        return self._space.reserve()

    def unreserve_cluster(self, pcn: int) -> None:
        self._space.unreserve(pcn)

    def prepare_mapping(self, vol: Volume, ci: int) -> None:
        self._touch_map_leaf(vol, ci >> LEAF_SHIFT)
        m = vol._map
        assert m is not None
        if m[ci]:
            self._space.prepare_change(m[ci])

    def set_mapping(self, vol: Volume, ci: int, pcn: int) -> None:
        m = vol._map
        assert m is not None
        self._touch_map_leaf(vol, ci >> LEAF_SHIFT)  # again, if a commit wrote it meanwhile
        old = m[ci]
        m[ci] = pcn
        if pcn:
            self._space.claim(pcn)
            if not old:
                vol.mapped += 1
        elif old:
            vol.mapped -= 1
        if old:
            self._drop_ref(old)
        self.note_data()

    def load_map(self, vol: Volume) -> array[int]:
        return load_entries(vol.tree, self._read_meta, f"map of {vol.name!r}")

    def volume_by_id_or_none(self, vid: int) -> Volume | None:
        return self._by_id.get(vid)

    def children_of(self, vid: int) -> list[Volume]:
        return self._children_of(vid)

    def _write_needs(self, vol: Volume, segs: Sequence[Segment], zeroing: bool
                     ) -> tuple[int, int]:
        """(clusters, metadata pages) writing the segments may take, counted pessimistically."""
        m = vol._map
        assert m is not None
        rc, mrefs, loc_of = self._space.rc, self._meta.refs, vol.tree.leaf_loc
        csize = self.cluster_size
        clusters = 0
        pages = 0
        shared_leaves: set[int] = set()
        # Unmapping a whole cluster dirties its map leaf and its refcount leaf: pages per
        # distinct leaf (each with its directory), not per cluster, or a large deallocate
        # (fstrim of a full file system) would look bigger than any metadata area.
        unmapped_leaves: set[tuple[int, int]] = set()
        for ci, _co, _pos, length in segs:
            p = m[ci]
            j = ci >> LEAF_SHIFT
            loc = loc_of[j]
            leaf_shared = bool(loc) and mrefs[loc] > 1
            if leaf_shared:
                shared_leaves.add(j)
            if zeroing and (p == 0 or length == csize):
                if p:
                    unmapped_leaves.add((0, j))
                    unmapped_leaves.add((1, p >> LEAF_SHIFT))
                continue
            if not p or leaf_shared or rc[p] != 1 or self.is_unstable(p):
                clusters += 1
                pages += 3
        pages += 2 * len(unmapped_leaves)
        for j in shared_leaves:
            pages += 1 + self._unshare_cost(vol, j)
        return clusters, pages

    # --- room -----------------------------------------------------------------------------------

    async def _make_room(self, needs: Callable[[], tuple[int, int]], reserve: bool = True
                         ) -> None:
        """Return (without awaiting after the last check) once ``needs()`` clusters and
        metadata pages are available; commit to recycle released space if that helps."""
        for attempt in range(_ROOM_ROUNDS + 1):
            clusters, pages = needs()
            meta, space = self._meta, self._space
            margin = (_META_RESERVE if reserve else 0) + len(self._slots) // VOLRECS_PER_PAGE + 2
            data_ok = clusters <= space.n_free
            meta_ok = pages + meta.planned + margin <= meta.n_free
            if data_ok and meta_ok:
                return
            if self._failed is not None:
                raise PoolFailed(f"the pool failed ({self._failed}); reopen it")
            if attempt < 2 and (space.pending or meta.pending or meta.planned
                                or self._commit_task is not None):
                await self.flush()
                continue
            if self.guard.deferred and attempt < _ROOM_ROUNDS:
                # Freed clusters wait for data I/O still in flight: it completes shortly.
                await asyncio.sleep(0.001)
                continue
            if self._punches and attempt < _ROOM_ROUNDS:
                await self.punches_done()  # freed clusters on their way back to the free set
                continue
            break
        if not data_ok:
            raise NoSpace(f"the pool is full: {clusters} free clusters needed, "
                          f"{self._space.n_free} available ({self.stats().free_bytes} bytes free)")
        raise NoSpace("the pool's metadata area is full: delete snapshots or volumes, or "
                      "recreate the pool with a larger --metadata-size")

    # --- commit ---------------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        if self._closed or self.readonly:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(self.commit_interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed or self._failed is not None or not self._dirty:
            return
        if self._commit_task is None:
            self._start_commit()

    def _start_commit(self) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._commit_once())
        self._commit_task = task
        task.add_done_callback(_log_commit_error)
        return task

    async def flush(self) -> None:
        """Make every write completed before this call durable (a metadata commit)."""
        if self.readonly:
            return
        want = self._open_txn
        while self._durable_txn < want:
            if self._failed is not None:
                raise PoolFailed(f"the pool failed ({self._failed}); reopen it")
            if self._closed:
                raise InvalidArgument("the pool is closed")
            task = self._commit_task or self._start_commit()
            await asyncio.shield(task)

    async def _commit_once(self) -> None:
        try:
            plan = self._prepare()
            if plan is None:
                return
            loop = asyncio.get_running_loop()
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="sbstore-commit")
            try:
                await loop.run_in_executor(self._executor, self._write_plan, plan)
            except BaseException as exc:
                self._failed = exc
                raise PoolFailed(f"metadata commit failed: {exc!r}; reopen the pool") from exc
            self._finish(plan)
        finally:
            self._commit_task = None

    def commit_sync(self) -> None:
        """Commit from synchronous code (tools, open, close); blocks on the fsyncs."""
        if self.readonly:
            return
        if self._commit_task is not None:
            raise Busy("a commit is in flight")
        plan = self._prepare()
        if plan is None:
            return
        try:
            self._write_plan(plan)
        except BaseException as exc:
            self._failed = exc
            raise PoolFailed(f"metadata commit failed: {exc!r}; reopen the pool") from exc
        self._finish(plan)

    def _prepare(self) -> _Plan | None:
        """Close the open transaction: assign pages, serialize them, build the superblock.
        Runs on the loop without awaiting; raises NoSpace (changing nothing) if the metadata
        area cannot hold the commit."""
        if self._failed is not None:
            raise PoolFailed(f"the pool failed ({self._failed}); reopen it")
        txn = self._open_txn
        if self._timer is not None:
            self._timer.cancel()  # this commit is what the timer was for
            self._timer = None
        if not self._dirty:
            self._open_txn += 1
            self._durable_txn = txn
            return None
        meta, space = self._meta, self._space
        vols = [v for v in self._slots if v is not None and v.tree.root_dirty]
        vt_pages = set(self._vt_dirty)
        vt_pages.update(v.slot // VOLRECS_PER_PAGE for v in vols)
        need = sum(v.tree.pages_needed() for v in vols) + space.tree.pages_needed()
        need += len(vt_pages) + 1
        need += need // MANIFEST_ENTRIES_PER_PAGE + 1  # the manifest of this commit
        if need > meta.n_free:
            raise NoSpace(f"the pool's metadata area is full: the commit needs {need} pages, "
                          f"{meta.n_free} are free; delete snapshots or volumes")
        writes: list[tuple[int, bytes]] = []
        for v in vols:
            v.tree.commit(v.leaf_bytes, writes)
        rc = space.rc
        space.tree.commit(lambda j: leaf_slice_bytes(rc, j), writes)
        if vt_pages:
            self._commit_volume_table(vt_pages, writes)
        old = self._sb
        sb = dataclasses.replace(
            old, generation=old.generation + 1, vt_root=self._vt_root_ptr[0],
            vt_root_crc=self._vt_root_ptr[1], rc_root=space.tree.root,
            rc_root_crc=space.tree.root_crc, next_volume_id=self._next_id,
            volume_count=sum(1 for v in self._slots if v is not None))
        changed = (bool(writes) or self._sb_dirty
                   or dataclasses.replace(sb, generation=old.generation) != old)
        self._sb_dirty = False
        if changed:
            # Every page this commit writes, with its checksum: opening the pool verifies them
            # all before trusting the new superblock. The old manifest is released.
            for page in self._manifest_pages:
                meta.unref(page)
            manifest = push_manifest([(p, page_crc(d)) for p, d in writes], meta.alloc)
            writes.extend(manifest)
            self._manifest_pages = [p for p, _ in manifest]
            first = manifest[0] if manifest else (0, b"")
            sb = dataclasses.replace(sb, manifest=first[0],
                                     manifest_crc=page_crc(first[1]) if manifest else 0,
                                     manifest_entries=len(writes) - len(manifest))
        plan = _Plan(txn=txn, writes=writes, sb=sb if changed else None,
                     release_meta=meta.take_pending(), release_data=space.take_pending(),
                     epoch=self.guard.close_epoch())
        self._vt_dirty.clear()
        self._unstable_inflight, self._unstable = self._unstable, set()
        self._inflight_pages = dict(writes)
        meta.planned = 0
        self._dirty = False
        self._open_txn += 1
        return plan

    def _commit_volume_table(self, pages: set[int], writes: list[tuple[int, bytes]]) -> None:
        meta = self._meta
        for k in sorted(pages):
            old = self._vt_loc[k]
            if old:
                meta.unref(old)
            buf = bytearray(PAGE_SIZE)
            any_rec = False
            for i in range(VOLRECS_PER_PAGE):
                s = k * VOLRECS_PER_PAGE + i
                vol = self._slots[s] if s < len(self._slots) else None
                if vol is not None:
                    push_volume_record(vol.record(), buf, i * VOLREC_SIZE)
                    any_rec = True
            if not any_rec:
                self._vt_loc[k] = self._vt_crc[k] = 0
                continue
            data = bytes(buf)
            loc = meta.alloc()
            self._vt_loc[k], self._vt_crc[k] = loc, page_crc(data)
            writes.append((loc, data))
        root, _crc = self._vt_root_ptr
        if root:
            meta.unref(root)
        if self._vt_loc.count(0) == len(self._vt_loc):
            self._vt_root_ptr = (0, 0)
        else:
            data = push_pointers(self._vt_loc, self._vt_crc)
            loc = meta.alloc()
            self._vt_root_ptr = (loc, page_crc(data))
            writes.append((loc, data))

    # --- space back to the file system or the device ---------------------------------------------

    def _give_back(self, clusters: list[int]) -> None:
        """Clusters no map names any more, committed free, no I/O in flight on them: punch them
        out of the pool file (or discard them on a block device), then make them allocatable.
        Punching before they are free is what makes it safe: nothing can be written there
        meanwhile. On the event loop it runs as a task, off the I/O path; from synchronous code
        (open, close, tools) it is done inline. A device that cannot punch only loses the space
        back, never data: the clusters are freed either way."""
        if self.readonly or self._closed:
            self._space.release_committed(clusters)
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            for offset, nbytes in self._runs(clusters):
                try:  # (the metadata descriptor: any descriptor of the file will do)
                    fallocate(self._backing.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                              offset, nbytes)
                except OSError:
                    break  # best effort: cannot punch here
                self.punched_bytes += nbytes
            self._space.release_committed(clusters)
            return
        task = asyncio.get_running_loop().create_task(self._punch_then_release(clusters))
        self._punches.add(task)
        task.add_done_callback(self._punches.discard)

    def _punch_free_space(self) -> None:
        """At open: punch every free run of a pool file. Space freed just before a crash (or by
        a version that did not punch) is free in the pool but still allocated in the file;
        nothing is in flight yet, so this is safe. Block devices are left alone: a discard of
        all their free space at every open could take long."""
        free, shift = self._space.free, self.cluster_size.bit_length() - 1
        pos, n, t0 = 0, len(free), time.monotonic()
        for _ in range(n):  # bounded: each pass moves past one run
            start = free.find(1, pos)
            if start < 0:
                break
            end = free.find(0, start)
            end = n if end < 0 else end
            try:
                fallocate(self._backing.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                          start << shift, (end - start) << shift)
            except OSError:
                return  # the file system cannot punch: nothing to give back
            pos = end
        log.debug("pool %s: free space punched at open in %.3f s", self.path,
                  time.monotonic() - t0)

    async def _punch_then_release(self, clusters: list[int]) -> None:
        try:
            runs = self._runs(clusters)
            for i in range(0, len(runs), _PUNCH_BATCH):
                batch = [self.engine.punch(off, n) for off, n in runs[i:i + _PUNCH_BATCH]]
                done = await asyncio.gather(*batch, return_exceptions=True)
                for (_, n), ok in zip(runs[i:i + _PUNCH_BATCH], done):
                    if ok is True:
                        self.punched_bytes += n
                if any(ok is False or isinstance(ok, BaseException) for ok in done):
                    break  # the device cannot (or failed): the rest stays allocated on it
        except Exception:  # best effort: the space is free in the pool whatever happens here
            log.exception("pool %s: giving space back to the device failed", self.path)
        finally:
            if not self._closed:
                self._space.release_committed(clusters)

    def _runs(self, clusters: list[int]) -> list[tuple[int, int]]:
        """Byte ranges (offset, length) of ``clusters``, contiguous ones merged."""
        shift = self.cluster_size.bit_length() - 1
        runs: list[tuple[int, int]] = []
        start = prev = -2
        for pcn in sorted(clusters):
            if pcn != prev + 1:
                if start >= 0:
                    runs.append((start << shift, (prev - start + 1) << shift))
                start = pcn
            prev = pcn
        if start >= 0:
            runs.append((start << shift, (prev - start + 1) << shift))
        return runs

    async def punches_done(self) -> None:
        """Wait until freed space given back so far has reached the file system or device."""
        while self._punches:
            await asyncio.gather(*list(self._punches), return_exceptions=True)

    def _write_plan(self, plan: _Plan) -> None:
        """The I/O of a commit (worker thread): pages, barrier, superblock, barrier."""
        b = self._backing
        if plan.writes:
            b.write_pages(plan.writes)
        b.sync()
        if plan.sb is not None:
            b.write_superblock(SB_SLOT_PAGES[plan.sb.generation % 2], push_superblock(plan.sb))
            b.sync()

    def _finish(self, plan: _Plan) -> None:
        if plan.sb is not None:
            self._sb = plan.sb
        self._meta.release_committed(plan.release_meta)
        if plan.release_data:
            # Freed clusters return once no data I/O that may still touch them is in flight
            # (and their space has gone back to the file system or the device).
            self.guard.after(plan.epoch, functools.partial(self._give_back, plan.release_data))
        self._inflight_pages = {}
        self._unstable_inflight = set()
        self._durable_txn = plan.txn


def _open_engine(path: str, io: str, *, readonly: bool) -> IoEngine:
    """The data I/O engine for the pool at ``path``; one log line says which and why."""
    try:
        engine = open_engine(path, io, readonly=readonly)
    except EngineUnavailable as exc:
        raise InvalidArgument(f"{path}: io = {io!r}: {exc}") from None
    except ValueError as exc:
        raise InvalidArgument(f"{path}: {exc}") from None
    if not readonly:
        log.info("pool %s: data I/O through %s (%s)", path, engine.name, engine.reason)
    return engine


def _log_commit_error(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("pool commit failed: %s", task.exception())


def verify_manifest(read_page: Callable[[int], bytes], sb: Superblock) -> list[int]:
    """Check every page the commit of ``sb`` wrote; return the manifest's own pages.

    Raises Corrupt naming the first page that does not match (a torn or lost write)."""
    pages: list[int] = []
    entries = 0
    page, crc = sb.manifest, sb.manifest_crc
    first, end = sb.meta_first_page, sb.meta_end_page
    while page:
        check_page_number(page, first, end, "commit manifest")
        if page in pages or len(pages) > sb.meta_pages:
            raise Corrupt("the commit manifest loops")
        data = read_checked(read_page, page, crc,
                            f"commit manifest of generation {sb.generation}")
        pages.append(page)
        locs, crcs = pull_pointers(data)
        for k in range(1, PTRS_PER_PAGE):
            if not locs[k]:
                continue
            check_page_number(locs[k], first, end, "commit manifest entry")
            read_checked(read_page, locs[k], crcs[k],
                         f"a page written by the last commit (generation {sb.generation})")
            entries += 1
        page, crc = locs[0], crcs[0]
    if entries != sb.manifest_entries:
        raise Corrupt(f"the commit manifest lists {entries} pages, the superblock "
                      f"{sb.manifest_entries}")
    return pages


def _is_block_device(path: str) -> bool:
    import stat
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def read_superblocks(backing: Backing) -> tuple[list[Superblock], list[str]]:
    """Valid superblocks, newest first, and why each invalid slot is invalid."""
    found: list[Superblock] = []
    reasons: list[str] = []
    for name, slot in zip("AB", SB_SLOT_PAGES):
        try:
            data = backing.read_page(slot)
            found.append(pull_superblock(data))
        except (SuperblockInvalid, Corrupt) as exc:
            reasons.append(f"slot {name}: {exc}")
    found.sort(key=lambda sb: sb.generation, reverse=True)
    if len(found) == 2 and found[0].pool_uuid != found[1].pool_uuid:
        found = found[:1]
    return found, reasons


def _probe_pool(path: str) -> str | None:
    """A short description of the pool at ``path``, or None if there is none."""
    try:
        backing = Backing(path, readonly=True)
    except StoreError:
        return "in use" if os.path.exists(path) else None
    try:
        found, _ = read_superblocks(backing)
    finally:
        backing.close()
    if not found:
        return None
    return f"uuid {found[0].pool_uuid}"


def _check_label(name: str, what: str, max_bytes: int, forbidden: str, said: str) -> None:
    """One rule for the names the pool stores: non-empty, at most ``max_bytes`` of UTF-8, no
    space, control character or any of ``forbidden`` (``said`` words them)."""
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"a {what} must be a non-empty string")
    if len(name.encode()) > max_bytes:
        raise InvalidArgument(f"{what} {name[:20]!r}... is longer than {max_bytes} bytes")
    if any(ch.isspace() or ch in forbidden or not ch.isprintable() for ch in name):
        raise InvalidArgument(f"{what} {name!r} may not contain {said} or control characters")


def check_name(name: str) -> None:
    _check_label(name, "volume name", NAME_MAX_BYTES, "/\\", "spaces, slashes")


def check_group_name(name: str) -> None:
    # '@' joins a volume's name to its group's in the members' names (<vol>@<group>).
    _check_label(name, "snapshot group name", GROUP_NAME_MAX_BYTES, "/\\@",
                 "spaces, slashes, '@'")


def record_problem(rec: VolumeRecord, cluster_size: int) -> str | None:
    """Why a volume record cannot be right, or None."""
    what = f"volume record {rec.id} ({rec.name!r})"
    if rec.flags & ~VOL_FLAGS_KNOWN:
        return f"{what} has unknown flags {rec.flags:#x}"
    if rec.block_size not in (512, 4096):
        return f"{what} has block size {rec.block_size}"
    if rec.size_bytes <= 0 or rec.size_bytes % rec.block_size:
        return f"{what} has size {rec.size_bytes}"
    if ceil_div(rec.size_bytes, cluster_size) > MAX_TREE_ENTRIES:
        return f"{what} is larger than a map can be"
    if bool(rec.group_id) != bool(rec.group):
        return f"{what} has group id {rec.group_id} and group name {rec.group!r}"
    if rec.group_id and not rec.flags & VOL_SNAPSHOT:
        return f"{what} is in snapshot group {rec.group!r} but is not a snapshot"
    return None
