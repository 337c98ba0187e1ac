"""A volume (or snapshot) of a pool: the block I/O path.

Rules of this module:
- A volume's cluster map is one flat ``array('I')`` of physical cluster numbers (0: never
  written, reads as zeroes), so a read costs one index operation whatever the snapshot depth.
  Snapshots and clones share clusters by reference counts (``space``), never by reading through
  a parent.
- Data moves through the pool's I/O engine (``engines``: io_uring, threads or buffered), whose
  I/Os complete asynchronously while the loop serves other commands. What the pool records
  (allocation, counts, map leaves, the commit) is changed only through the owner
  (:class:`~sbstore.store.owner.VolumeOwner`), never by this module.
- Where a write goes: in place, if this volume alone owns the cluster (count 1, its map leaf
  not shared, no reference to it dropped in an uncommitted transaction); otherwise to a newly
  reserved cluster, filled with the old cluster's bytes around the written range (copy-on-write)
  or with zeroes (first write), and mapped only once that data is written. The new mapping
  becomes durable at the next commit (timer, Flush or FUA); until then a crash leaves the old.
- Concurrency, now that I/O is asynchronous:
  * An allocating write works in three steps: (1) without awaiting, reserve the cluster and
    prepare the map leaf and counts (while the room ``make_room_for`` checked still holds);
    (2) the data I/O; (3) without awaiting, map the cluster. Between (1) and (3) the cluster
    index is *pending*: another write, write-zeroes or deallocate of it waits for (3), so the
    copy-on-write never copies bytes a concurrent command is changing. Reads do not wait: they
    read the old mapping, the write not having completed.
  * Step (2) and (3) run in a task of their own: a command whose connection goes away stops
    waiting, but its I/O and the mapping finish, so a cluster is never mapped before its data
    is written nor given back while a write to it is in flight.
  * Every data I/O holds a ticket of the pool's :class:`~sbstore.store.guard.ReuseGuard` until
    the device completes it: a cluster unmapped meanwhile is not handed out again before that.
  * Writes in flight are counted; a snapshot or revert of the volume closes its *gate* (new
    writes wait) and waits for the count to reach zero, so no write lands in a cluster after
    it became shared.
- Deallocate and Write Zeroes unmap every whole cluster in the range (giving it back to the
  pool once no one else shares it) and write zeroes into the partial clusters at the edges.

The I/O methods are the ``target.blockdev.BlockDevice`` interface; errors are ``StoreError``s
(``sbstore.volume_device`` turns them into NVMe status values).
"""
from __future__ import annotations

import asyncio
import errno
import functools
import logging
import time
import uuid as uuid_mod
from array import array
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from .engines.base import ShortIO
from .errors import (
    Corrupt,
    DeviceError,
    InvalidArgument,
    NoSpace,
    NotFound,
    OutOfRange,
    ReadOnly,
)
from .layout import LEAF_SHIFT, VOL_SNAPSHOT, VolumeRecord, ceil_div
from .pagetree import PageTree, leaf_slice_bytes

if TYPE_CHECKING:
    from .engines.base import IoResult
    from .owner import Segment, VolumeOwner

Buffer = bytes | bytearray | memoryview

log = logging.getLogger(__name__)

_MAX_SETTLE_ROUNDS = 10_000  # waits for pending allocations and room before giving up


@functools.lru_cache(maxsize=8)
def zeroes(nbytes: int) -> memoryview:
    """A shared read-only run of zero bytes (sliced by the callers)."""
    return memoryview(bytes(nbytes))


def _write_error(exc: OSError, where: str) -> Exception:
    """A full file system under a pool file is the pool being full (Capacity Exceeded)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"the file system holding the pool is full ({exc.strerror})")
    return DeviceError(f"write to {where} failed: {exc.strerror or exc}", writing=True)


def _read_error(exc: OSError, where: str) -> Exception:
    """A short read means the device is smaller than the pool says (damage); anything else is
    the device failing the read."""
    if isinstance(exc, ShortIO):
        return Corrupt(f"read from {where} failed: {exc.strerror or exc}")
    return DeviceError(f"read from {where} failed: {exc.strerror or exc}", writing=False)


class Volume:
    """A thin volume or a snapshot. Get one from :class:`~sbstore.store.pool.Pool`."""

    def __init__(self, owner: VolumeOwner, rec: VolumeRecord, tree: PageTree, slot: int) -> None:
        self._owner = owner
        self.id = rec.id
        self._uuid = rec.uuid
        self._name = rec.name
        self.flags = rec.flags
        self._bs = rec.block_size
        self._size = rec.size_bytes
        self.parent_id = rec.parent_id
        self.family = rec.family  # the lineage it belongs to (layout.VolumeRecord.family)
        self.group_id = rec.group_id  # its snapshot group (0: none), and the group's name
        self.group = rec.group
        self.created_ns = rec.created_ns
        self.mapped = rec.mapped
        self.tree = tree
        self.slot = slot
        self._map: array[int] | None = None
        self._dead = False
        self._drain_pos = 0  # leaves already dropped, while DYING
        self._engine = owner.engine
        # The engine's read_with (engines.base.Completion), if it has one: read_direct's way.
        self._read_with = getattr(owner.engine, "read_with", None)
        self._write_with = getattr(owner.engine, "write_with", None)
        self._guard = owner.guard
        self._csize = owner.cluster_size
        self._cshift = owner.cluster_size.bit_length() - 1
        self._cmask = owner.cluster_size - 1
        self._rc = owner.cluster_refs
        self._mrefs = owner.leaf_refs
        self._ro = bool(rec.flags & VOL_SNAPSHOT) or owner.readonly
        self._nblocks = self._size // self._bs
        self._pending: dict[int, asyncio.Future[None]] = {}  # cluster index -> its allocation
        self._writes = 0  # writes, write-zeroes and deallocates in flight
        self._gate: asyncio.Future[None] | None = None  # closed while a snapshot quiesces us
        self._drained: asyncio.Future[None] | None = None  # set when _writes drops to 0

    # --- identity and accounting --------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def uuid(self) -> uuid_mod.UUID:
        return self._uuid

    @property
    def block_size(self) -> int:
        return self._bs

    @property
    def num_blocks(self) -> int:
        return self._nblocks

    @property
    def size_bytes(self) -> int:
        return self._size

    @property
    def is_snapshot(self) -> bool:
        return bool(self.flags & VOL_SNAPSHOT)

    @property
    def read_only(self) -> bool:
        return self._ro

    @property
    def n_clusters(self) -> int:
        return ceil_div(self._size, self._csize)

    @property
    def allocated_bytes(self) -> int:
        """Bytes of clusters this volume maps (shared ones included)."""
        return self.mapped * self._csize

    @property
    def parent(self) -> Volume | None:
        """The snapshot this volume's data came from (None for an independent volume)."""
        return self._owner.volume_by_id_or_none(self.parent_id) if self.parent_id else None

    @property
    def children(self) -> list[Volume]:
        """Volumes whose parent is this snapshot (the next snapshot in a chain, clones)."""
        return self._owner.children_of(self.id)

    @property
    def created(self) -> float:
        return self.created_ns / 1e9

    def info(self) -> dict[str, object]:
        """A JSON-ready description (for listings)."""
        parent = self.parent
        return {
            "name": self._name, "id": self.id, "uuid": str(self._uuid),
            "kind": "snapshot" if self.is_snapshot else "volume",
            "size_bytes": self._size, "block_size": self._bs,
            "allocated_bytes": self.allocated_bytes,
            "parent": parent.name if parent else None,
            "children": [c.name for c in self.children],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
        }

    def __repr__(self) -> str:
        kind = "Snapshot" if self.is_snapshot else "Volume"
        return f"<{kind} {self._name!r} id={self.id} size={self._size}>"

    # --- management (delegated to the pool, which serializes them) ----------------------------

    async def snapshot(self, name: str) -> Volume:
        """A read-only, instant snapshot of this volume's current data."""
        return await self._owner.snapshot(self, name)

    async def resize(self, new_size_bytes: int, *, shrink: bool = False) -> None:
        """Grow the volume; shrink it only with ``shrink`` (the data past the end goes)."""
        await self._owner.resize(self, new_size_bytes, shrink=shrink)

    async def rename(self, new_name: str) -> None:
        await self._owner.rename(self, new_name)

    def record(self) -> VolumeRecord:
        return VolumeRecord(id=self.id, flags=self.flags, size_bytes=self._size,
                            block_size=self._bs, parent_id=self.parent_id,
                            created_ns=self.created_ns, uuid=self._uuid, root=self.tree.root,
                            root_crc=self.tree.root_crc, mapped=self.mapped, name=self._name,
                            family=self.family, group_id=self.group_id, group=self.group)

    # --- map ----------------------------------------------------------------------------------

    def _load_map(self) -> array[int]:
        """The map, read from its leaves when first used (snapshots load lazily)."""
        if self._dead:
            raise NotFound(f"volume {self._name!r} was deleted")
        if self._map is None:
            self._map = self._owner.load_map(self)
        return self._map

    def cluster_map(self) -> array[int]:
        """The map itself (cluster index -> physical cluster, 0: reads as zeroes), loaded if
        need be. Read it, never change it; a snapshot's never changes."""
        return self._load_map()

    def leaf_bytes(self, j: int) -> bytes:
        m = self._map
        assert m is not None, "a dirty leaf implies a loaded map"
        return leaf_slice_bytes(m, j)

    def _set_size(self, size: int) -> None:
        self._size = size
        self._nblocks = size // self._bs

    def _kill(self) -> None:
        """The volume is deleted (or being deleted): every I/O now fails with NotFound."""
        self._dead = True
        self._nblocks = 0
        self._ro = True

    def _io_error(self, lba: int, nbytes: int, writing: bool) -> Exception:
        if self._dead:
            return NotFound(f"volume {self._name!r} was deleted")
        if writing and self._ro:
            if self._owner.readonly:
                return ReadOnly(f"the pool is open read-only; {self._name!r} cannot be written")
            return ReadOnly(f"{self._name!r} is a snapshot and cannot be written")
        if nbytes % self._bs:
            return InvalidArgument(f"{nbytes} bytes is not a whole number of "
                                   f"{self._bs}-byte blocks")
        nblocks = nbytes // self._bs
        return OutOfRange(f"blocks {lba}..{lba + nblocks - 1} outside {self._name!r}'s "
                          f"{self._nblocks} blocks")

    def _owns(self, ci: int, p: int) -> bool:
        """May cluster ``p`` (mapped at ``ci``) be overwritten in place?"""
        if self._rc[p] != 1 or ci in self._pending:
            return False
        loc = self.tree.leaf_loc[ci >> LEAF_SHIFT]
        return (not loc or self._mrefs[loc] == 1) and not self._owner.is_unstable(p)

    # --- quiescing (for snapshots) ------------------------------------------------------------

    async def quiesce(self) -> None:
        """Close the gate (new writes wait) and wait until no write of ours is in flight.
        The caller must call :meth:`reopen` (without awaiting in between if it wants the
        volume still; the pool does its sharing between the two)."""
        loop = asyncio.get_running_loop()
        while self._gate is not None:  # another quiescer: queue behind it
            await asyncio.shield(self._gate)
        self._gate = loop.create_future()
        try:
            while self._writes:
                self._drained = loop.create_future()
                await asyncio.shield(self._drained)
        except BaseException:
            self.reopen()
            raise

    def reopen(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None and not gate.done():
            gate.set_result(None)

    async def _pass_gate(self) -> None:
        while self._gate is not None:
            await asyncio.shield(self._gate)

    def _write_done(self) -> None:
        n = self._writes - 1
        self._writes = n
        if not n and self._drained is not None:
            drained, self._drained = self._drained, None
            if not drained.done():
                drained.set_result(None)

    # --- block device interface ---------------------------------------------------------------

    async def read(self, lba: int, nblocks: int) -> Buffer:
        """``nblocks`` blocks from ``lba``; unwritten ranges read as zeroes."""
        if lba < 0 or nblocks < 0 or lba + nblocks > self._nblocks:
            raise self._io_error(lba, nblocks * self._bs, False)
        m = self._map
        if m is None:
            m = self._load_map()
        bs = self._bs
        off, n = lba * bs, nblocks * bs
        co = off & self._cmask
        if co + n > self._csize:
            return await self._read_span(m, off, n)
        p = m[off >> self._cshift]
        if not p:
            return bytearray(n)
        engine = self._engine
        buf = engine.buffer(n)
        guard = self._guard
        ticket = guard.begin()
        try:
            fut = engine.read_into((p << self._cshift) + co, buf)
        except BaseException:
            guard.end(ticket)
            raise
        try:
            await fut
        except OSError as exc:
            raise _read_error(exc, f"cluster {p}") from exc
        finally:
            _end_when_done(fut, guard, ticket)
        return buf

    def read_direct(self, lba: int, nblocks: int,
                    done: Callable[[Any, Buffer | None, BaseException | None], None],
                    tag: Any) -> bool:
        """Start a read of ``nblocks`` blocks from ``lba`` that calls ``done(tag, data, None)``
        or ``done(tag, None, error)`` when it completes, never before returning; False, with
        nothing started, where :meth:`read` must serve it instead. Only the plain case goes
        this way: one cluster, mapped, its map loaded, an engine with ``read_with``. Why: no
        coroutine, no future and no loop callback per read (see engines.base.Completion).
        ``done`` is called from the engine's completion processing: it must not raise."""
        read_with = self._read_with
        m = self._map
        if read_with is None or m is None or lba < 0 or nblocks <= 0 \
                or lba + nblocks > self._nblocks:
            return False
        bs = self._bs
        off, n = lba * bs, nblocks * bs
        co = off & self._cmask
        if co + n > self._csize:
            return False
        p = m[off >> self._cshift]
        if not p:
            return False
        buf = self._engine.buffer(n)
        guard = self._guard
        ticket = guard.begin()
        if read_with((p << self._cshift) + co, buf,
                     _new(_DirectRead, (done, tag, guard, ticket, p))):
            return True
        guard.end(ticket)
        return False

    def write_direct(self, lba: int, data: Buffer, fua: bool,
                     done: Callable[[Any, Buffer | None, BaseException | None], None],
                     tag: Any) -> bool:
        """Start a write that calls ``done(tag, None, None)`` or ``done(tag, None, error)``
        when it completes, never before returning; False, with nothing started, where
        :meth:`write` must serve it instead. Only the plain case goes this way: no FUA, within
        one cluster this volume alone owns (an overwrite in place), no snapshot quiescing us,
        data the engine's ``write_with`` takes as it is. As :meth:`read_direct`, ``done`` must
        not raise."""
        write_with = self._write_with
        m = self._map
        n = len(data)
        bs = self._bs
        if write_with is None or m is None or fua or self._gate is not None or self._ro \
                or lba < 0 or not n or n % bs or lba + n // bs > self._nblocks:
            return False
        off = lba * bs
        co = off & self._cmask
        if co + n > self._csize:
            return False
        ci = off >> self._cshift
        p = m[ci]
        if not p or not self._owns(ci, p):
            return False
        guard = self._guard
        ticket = guard.begin()
        self._writes += 1
        if write_with((p << self._cshift) + co, data,
                      _new(_DirectWrite, (self, done, tag, ticket, p))):
            return True
        guard.end(ticket)
        self._write_done()
        return False

    async def _read_span(self, m: array[int], off: int, n: int) -> Buffer:
        engine = self._engine
        buf = engine.buffer(n)
        csize, shift = self._csize, self._cshift
        futs: list[IoResult[None]] = []
        pos = 0
        while pos < n:
            ci, co = divmod(off + pos, csize)
            length = min(csize - co, n - pos)
            p = m[ci]
            if p:
                futs.append(engine.read_into((p << shift) + co, buf[pos:pos + length]))
            else:
                buf[pos:pos + length] = zeroes(csize)[:length]
            pos += length
        if futs:
            await self._wait_all(futs, _read_error, "the pool")
        return buf

    async def _wait_all(self, futs: Sequence[IoResult[Any]],
                        error: Any, where: str) -> list[Any]:
        """Wait for I/Os issued together (under one guard ticket); raise the first failure
        only once all are done. Cancelled meanwhile: the ticket is kept until they are."""
        guard = self._guard
        ticket = guard.begin()
        results: list[Any] = []
        first: OSError | None = None
        try:
            for f in futs:
                try:
                    results.append(await f)
                except OSError as exc:
                    first = first or exc
                    results.append(None)
        finally:
            _end_when_all_done(futs, guard, ticket)
        if first is not None:
            raise error(first, where) from first
        return results

    async def write(self, lba: int, data: Buffer, fua: bool = False) -> None:
        """Write ``len(data)`` bytes at ``lba``; with ``fua`` return only once durable."""
        n = len(data)
        bs = self._bs
        if lba < 0 or n % bs or lba + n // bs > self._nblocks or self._ro:
            raise self._io_error(lba, n, True)
        if self._map is None:
            self._load_map()
        if self._gate is not None:
            await self._pass_gate()
            if self._dead:
                raise NotFound(f"volume {self._name!r} was deleted")
            if lba + n // bs > self._nblocks:  # shrunk (or reverted) while we waited
                raise self._io_error(lba, n, True)
        off = lba * bs
        co = off & self._cmask
        self._writes += 1
        in_place = False
        try:
            if co + n <= self._csize:
                ci = off >> self._cshift
                m = self._map
                assert m is not None
                p = m[ci]
                if p and self._owns(ci, p):
                    in_place = True
                    await self._write_in_place(p, co, data)
            if not in_place:
                await self._write_span(off, memoryview(data).cast("B"), n, False)
        finally:
            if not in_place:
                self._write_done()
        if fua:
            await self._owner.flush()

    async def _write_in_place(self, p: int, co: int, data: Buffer) -> None:
        """Overwrite part of a cluster this volume alone owns. Accounting (_writes, the guard
        ticket) ends when the device completes the write, even if we stop waiting first."""
        guard = self._guard
        ticket = guard.begin()
        try:
            fut = self._engine.write((p << self._cshift) + co, data)
        except BaseException:
            guard.end(ticket)
            self._write_done()
            raise
        try:
            await fut
        except OSError as exc:
            raise _write_error(exc, f"cluster {p}") from exc
        finally:
            if fut.done():
                guard.end(ticket)
                self._write_done()
            else:  # in flight, hence a Future
                cast(asyncio.Future[None], fut).add_done_callback(
                    functools.partial(self._late_done, ticket))
        self._owner.note_data()

    def _late_done(self, ticket: int, _fut: object) -> None:
        self._guard.end(ticket)
        self._write_done()

    def _segments(self, off: int, n: int) -> list[Segment]:
        csize = self._csize
        segs: list[Segment] = []
        pos = 0
        while pos < n:
            ci, co = divmod(off + pos, csize)
            length = min(csize - co, n - pos)
            segs.append((ci, co, pos, length))
            pos += length
        return segs

    async def _settle(self, segs: Sequence[Segment], zeroing: bool) -> None:
        """Wait until no segment's cluster has an allocation pending and the pool has room;
        returns without awaiting after the last check."""
        owner = self._owner
        for _ in range(_MAX_SETTLE_ROUNDS):
            pending = self._pending
            if pending:
                busy = [pending[s[0]] for s in segs if s[0] in pending]
                if busy:
                    for fut in busy:
                        await asyncio.shield(fut)
                    continue
            await owner.make_room_for(self, segs, zeroing)
            pending = self._pending
            if not pending or not any(s[0] in pending for s in segs):
                return
        raise NoSpace(f"could not reserve room for a write to {self._name!r}")

    async def _write_span(self, off: int, view: memoryview | None, n: int,
                          zeroing: bool) -> None:
        """Write ``view`` (None: zeroes) over ``[off, off+n)``; with ``zeroing``, whole
        clusters are unmapped instead and unmapped partial ones left alone."""
        segs = self._segments(off, n)
        await self._settle(segs, zeroing)
        m = self._after_wait(off + n)
        owner = self._owner
        csize = self._csize
        loop = asyncio.get_running_loop()
        # Step 1 (no await): decide each segment; reserve and prepare what allocates.
        in_place: list[tuple[int, int, int, int]] = []  # (p, co, pos, length)
        allocs: list[tuple[int, int, int, int, int, int]] = []  # (ci, co, pos, length, old, new)
        for ci, co, pos, length in segs:
            p = m[ci]
            if zeroing:
                if not p:
                    continue  # reads as zeroes already
                if length == csize:
                    owner.prepare_mapping(self, ci)
                    owner.set_mapping(self, ci, 0)
                    continue
            if p and self._owns(ci, p):
                in_place.append((p, co, pos, length))
                continue
            new = owner.reserve_cluster()
            owner.prepare_mapping(self, ci)
            self._pending[ci] = loop.create_future()
            allocs.append((ci, co, pos, length, p, new))
        if zeroing and not in_place and not allocs:
            owner.note_data()
            return
        # Steps 2 and 3 in a task: they finish even if this command stops waiting.
        self._writes += 1  # held by the task until its I/O is done and the clusters mapped
        await _detached(loop.create_task(self._fill_and_map(in_place, allocs, view)))

    async def _fill_and_map(self, in_place: list[tuple[int, int, int, int]],
                            allocs: list[tuple[int, int, int, int, int, int]],
                            view: memoryview | None) -> None:
        engine = self._engine
        shift = self._cshift
        guard = self._guard
        ticket = guard.begin()
        ok = [False] * len(allocs)
        first: BaseException | None = None
        try:
            jobs: list[Awaitable[Any]] = []
            for p, co, pos, length in in_place:
                data = view[pos:pos + length] if view is not None else zeroes(length)
                jobs.append(engine.write((p << shift) + co, data))
            for ci, co, pos, length, old, new in allocs:
                data = view[pos:pos + length] if view is not None else zeroes(length)
                jobs.append(self._fill(old, new, co, data))
            if len(jobs) == 1:
                results: list[Any] = [None]
                try:
                    await jobs[0]
                except Exception as exc:  # noqa: BLE001 - reported below, after cleanup
                    results[0] = exc
            else:
                results = await asyncio.gather(*jobs, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and first is None:
                    first = r
            base = len(in_place)
            for k in range(len(allocs)):
                ok[k] = not isinstance(results[base + k], BaseException)
        finally:
            # Step 3 (no await): map what was written, give back what was not.
            owner = self._owner
            for k, (ci, _co, _pos, _length, _old, new) in enumerate(allocs):
                if ok[k] and not self._dead:
                    owner.set_mapping(self, ci, new)
                else:
                    owner.unreserve_cluster(new)
                fut = self._pending.pop(ci, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            guard.end(ticket)
            self._write_done()
        if first is not None:
            if isinstance(first, OSError):
                raise _write_error(first, "the pool") from first
            raise first
        if self._dead and allocs:
            raise NotFound(f"volume {self._name!r} was deleted")
        self._owner.note_data()

    async def _fill(self, old: int, new: int, co: int, data: Buffer) -> None:
        """Write ``data`` at ``co`` of the new cluster ``new`` and make the rest of it what
        the old cluster ``old`` held (copy-on-write), or zeroes (``old`` 0)."""
        engine = self._engine
        csize, shift = self._csize, self._cshift
        n = len(data)
        if n == csize:
            await engine.write(new << shift, data)
            return
        if old:
            buf = engine.buffer(csize)
            await engine.read_into(old << shift, buf)
            buf[co:co + n] = data
            await engine.write(new << shift, buf)
            return
        if await engine.zero_range(new << shift, csize):
            await engine.write((new << shift) + co, data)
            return
        buf = engine.buffer(csize)
        z = zeroes(csize)
        buf[:co] = z[:co]
        buf[co:co + n] = data
        buf[co + n:] = z[co + n:]
        await engine.write(new << shift, buf)

    def shares_cluster(self, ci: int) -> bool:
        """Does cluster ``ci`` map data another volume references too (its map leaf is shared,
        or the cluster is)? Those are what an inflate copies. The map must be loaded."""
        m = self._map
        assert m is not None
        p = m[ci]
        if not p:
            return False
        loc = self.tree.leaf_loc[ci >> LEAF_SHIFT]
        return bool(loc and self._mrefs[loc] > 1) or self._rc[p] > 1

    async def copy_out(self, ci: int) -> None:
        """Give cluster ``ci`` a private copy of what it maps, if it shares it (inflate): a
        copy-on-write that writes no new data."""
        if self._gate is not None:
            await self._pass_gate()
        self._writes += 1
        try:
            seg = [(ci, 0, 0, 0)]
            await self._settle(seg, False)
            m = self._after_wait(0)
            if not self.shares_cluster(ci):
                return  # a write gave it its own cluster meanwhile
            p = m[ci]
            owner = self._owner
            loop = asyncio.get_running_loop()
            new = owner.reserve_cluster()
            owner.prepare_mapping(self, ci)
            self._pending[ci] = loop.create_future()
            self._writes += 1
            await _detached(loop.create_task(self._fill_and_map([], [(ci, 0, 0, 0, p, new)],
                                                                None)))
        finally:
            self._write_done()

    async def flush(self) -> None:
        """Every completed write (of any volume in the pool) becomes durable."""
        await self._owner.flush()

    async def write_zeroes(self, lba: int, nblocks: int) -> None:
        """Make the range read as zeroes; whole clusters are unmapped (given back)."""
        if lba < 0 or nblocks < 0 or lba + nblocks > self._nblocks or self._ro:
            raise self._io_error(lba, nblocks * self._bs, True)
        await self._zero_range(lba * self._bs, nblocks * self._bs)

    async def deallocate(self, ranges: Sequence[tuple[int, int]]) -> None:
        """TRIM: the ranges are unmapped (whole clusters) or zeroed, and read as zeroes."""
        for lba, nblocks in ranges:
            if lba < 0 or nblocks < 0 or lba + nblocks > self._nblocks or self._ro:
                raise self._io_error(lba, nblocks * self._bs, True)
        for lba, nblocks in ranges:
            await self._zero_range(lba * self._bs, nblocks * self._bs)

    async def _zero_range(self, off: int, n: int) -> None:
        if n == 0:
            return
        if self._map is None:
            self._load_map()
        if self._gate is not None:
            await self._pass_gate()
            if off + n > self._size:  # shrunk (or reverted) while we waited
                raise self._io_error(off // self._bs, n, True)
        csize = self._csize
        end = off + n
        # Work one slice of leaves at a time so a huge range does not stall the event loop.
        slice_bytes = csize << (LEAF_SHIFT + 4)
        pos = off
        self._writes += 1
        try:
            while pos < end:
                stop = min(end, (pos // slice_bytes + 1) * slice_bytes)
                if self._slice_mapped(pos, stop):
                    await self._write_span(pos, None, stop - pos, True)
                pos = stop
                if pos < end:
                    await asyncio.sleep(0)
                    self._after_wait(end)
        finally:
            self._write_done()

    def _slice_mapped(self, start: int, stop: int) -> bool:
        """Does anything in ``[start, stop)`` map a cluster (skipping unwritten leaves)?"""
        m = self._map
        assert m is not None
        loc_of, dirty = self.tree.leaf_loc, self.tree.dirty
        first, last = start >> self._cshift, (stop - 1) >> self._cshift
        for j in range(first >> LEAF_SHIFT, (last >> LEAF_SHIFT) + 1):
            if not loc_of[j] and j not in dirty:
                continue
            lo = max(first, j << LEAF_SHIFT)
            hi = min(last + 1, (j + 1) << LEAF_SHIFT)
            if m[lo:hi].count(0) != hi - lo:
                return True
        return False

    def _after_wait(self, end: int) -> array[int]:
        """After an await inside an I/O: the volume may have been deleted, reverted or grown
        meanwhile; go on only if the range still lies inside it. Returns the current map."""
        if self._dead:
            raise NotFound(f"volume {self._name!r} was deleted")
        if end > self._size:
            raise OutOfRange(f"{self._name!r} shrank to {self._size} bytes (reverted) during "
                             f"the I/O")
        m = self._map
        if m is None:
            m = self._load_map()
        return m


async def _detached(task: asyncio.Task[None]) -> None:
    """Wait for ``task``, which goes on if we stop waiting; its error then belongs to a
    command that is gone, so it is dropped rather than reported as never retrieved."""
    task.add_done_callback(_retrieve)
    await asyncio.shield(task)


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


# The completions of read_direct and write_direct (engines.base.Completion). Tuples made with
# tuple.__new__: no __init__ frame per I/O.
_new = tuple.__new__


class _DirectRead(tuple[Any, ...]):
    """(done_cb, tag, guard, ticket, cluster): ends the read's guard ticket, then tells the
    caller, its error as the store's (what :meth:`Volume.read` raises)."""

    __slots__ = ()

    # The engine asks before it reports; a completion is reported once, and then forgotten,
    # so never done. bool() is False without a Python frame (this runs once per I/O).
    done = staticmethod(bool)

    def set_result(self, value: Any) -> None:
        done_cb, tag, guard, ticket, _cluster = self
        guard.end(ticket)
        try:
            done_cb(tag, value, None)
        except Exception:  # the engine is processing completions: never break that off
            log.exception("a direct read's completion failed")

    def set_exception(self, exc: BaseException) -> None:
        done_cb, tag, guard, ticket, cluster = self
        guard.end(ticket)
        err = _read_error(exc, f"cluster {cluster}") if isinstance(exc, OSError) else exc
        try:
            done_cb(tag, None, err)
        except Exception:
            log.exception("a direct read's completion failed")


class _DirectWrite(tuple[Any, ...]):
    """(volume, done_cb, tag, ticket, cluster): what :meth:`Volume._write_in_place` does once
    the device is done (the guard ticket, the writes in flight, the commit timer), then the
    caller."""

    __slots__ = ()
    done = staticmethod(bool)  # as _DirectRead's

    def set_result(self, _value: Any) -> None:
        vol, done_cb, tag, ticket, _cluster = self
        vol._guard.end(ticket)
        vol._write_done()
        vol._owner.note_data()
        try:
            done_cb(tag, None, None)
        except Exception:
            log.exception("a direct write's completion failed")

    def set_exception(self, exc: BaseException) -> None:
        vol, done_cb, tag, ticket, cluster = self
        vol._guard.end(ticket)
        vol._write_done()
        err = _write_error(exc, f"cluster {cluster}") if isinstance(exc, OSError) else exc
        try:
            done_cb(tag, None, err)
        except Exception:
            log.exception("a direct write's completion failed")


def _end_when_done(fut: IoResult[Any], guard: Any, ticket: int) -> None:
    """End a guard ticket now if the I/O is done, else when it completes (a result not done
    yet is an asyncio.Future)."""
    if fut.done():
        guard.end(ticket)
    else:
        cast(asyncio.Future[Any], fut).add_done_callback(lambda _f: guard.end(ticket))


def _end_when_all_done(futs: Sequence[IoResult[Any]], guard: Any, ticket: int) -> None:
    left = [cast(asyncio.Future[Any], f) for f in futs if not f.done()]
    if not left:
        guard.end(ticket)
        return
    count = [len(left)]

    def one_done(_f: object) -> None:
        count[0] -= 1
        if not count[0]:
            guard.end(ticket)
    for f in left:
        f.add_done_callback(one_done)
