"""A volume (or snapshot) of a pool: the block I/O path.

Rules of this module:
- A volume's cluster map is one flat ``array('I')`` of physical cluster numbers (0: never
  written, reads as zeroes), so a read costs one index operation whatever the snapshot depth.
  Snapshots and clones share clusters by reference counts (``space``), never by reading through
  a parent.
- Data I/O runs inline on the event loop (``os.preadv``/``os.pwritev`` on the page cache). Each
  I/O does all its map and refcount work between two awaits, so I/Os from many queues never see
  each other half done: two writes allocating the same cluster, or a copy-on-write racing a
  read, are serialized by the loop itself. The only awaits are before the work starts (waiting
  for a commit to free space) and after it (FUA: waiting for the commit).
- Where a write goes: to the cluster in place if this volume alone owns it (count 1, its map
  leaf not shared, and no reference to it was dropped in an uncommitted transaction); otherwise
  to a newly allocated cluster, filled with the old cluster's bytes outside the written range
  (copy-on-write) or with zeroes (first write), then mapped. The new mapping becomes durable at
  the next commit (timer, Flush or FUA); until then a crash leaves the old mapping.
- Deallocate and Write Zeroes unmap every whole cluster in the range (giving it back to the
  pool once no one else shares it) and write zeroes into the partial clusters at the edges.

The I/O methods are the ``target.blockdev.BlockDevice`` interface; errors are ``StoreError``s
(``sbstore.volume_device`` turns them into NVMe status values).
"""
from __future__ import annotations

import asyncio
import errno
import functools
import os
import time
import uuid as uuid_mod
from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import Corrupt, InvalidArgument, NoSpace, NotFound, OutOfRange, ReadOnly
from .layout import LEAF_SHIFT, VOL_SNAPSHOT, VolumeRecord, ceil_div
from .pagetree import PageTree, leaf_slice_bytes, load_entries

if TYPE_CHECKING:
    from .pool import Pool

Buffer = bytes | bytearray | memoryview



def _write_error(exc: OSError) -> Exception:
    """A full file system under a pool file is the pool being full (Capacity Exceeded)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"the file system holding the pool is full ({exc.strerror})")
    return exc


class Volume:
    """A thin volume or a snapshot. Get one from :class:`~sbstore.store.pool.Pool`."""

    def __init__(self, pool: Pool, rec: VolumeRecord, tree: PageTree, slot: int) -> None:
        self._pool = pool
        self.id = rec.id
        self._uuid = rec.uuid
        self._name = rec.name
        self.flags = rec.flags
        self._bs = rec.block_size
        self._size = rec.size_bytes
        self.parent_id = rec.parent_id
        self.created_ns = rec.created_ns
        self.mapped = rec.mapped
        self.tree = tree
        self.slot = slot
        self._map: array[int] | None = None
        self._dead = False
        self._drain_pos = 0  # leaves already dropped, while DYING
        self._fd = pool._backing.fd
        self._csize = pool.cluster_size
        self._cshift = pool.cluster_size.bit_length() - 1
        self._cmask = pool.cluster_size - 1
        self._rc = pool._space.rc
        self._mrefs = pool._meta.refs
        self._ro = bool(rec.flags & VOL_SNAPSHOT) or pool.readonly
        self._nblocks = self._size // self._bs

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
        return self._pool._by_id.get(self.parent_id) if self.parent_id else None

    @property
    def children(self) -> list[Volume]:
        """Volumes whose parent is this snapshot (the next snapshot in a chain, clones)."""
        return self._pool._children_of(self.id)

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
        return await self._pool.snapshot(self, name)

    async def resize(self, new_size_bytes: int) -> None:
        """Grow the volume (shrinking is refused)."""
        await self._pool.resize(self, new_size_bytes)

    async def rename(self, new_name: str) -> None:
        await self._pool.rename(self, new_name)

    def record(self) -> VolumeRecord:
        return VolumeRecord(id=self.id, flags=self.flags, size_bytes=self._size,
                            block_size=self._bs, parent_id=self.parent_id,
                            created_ns=self.created_ns, uuid=self._uuid, root=self.tree.root,
                            root_crc=self.tree.root_crc, mapped=self.mapped, name=self._name)

    # --- map ----------------------------------------------------------------------------------

    def _load_map(self) -> array[int]:
        """Read the map from its leaves (snapshots are loaded only when first used)."""
        if self._dead:
            raise NotFound(f"volume {self._name!r} was deleted")
        if self._map is None:
            self._map = load_entries(self.tree, self._pool._read_meta, f"map of {self._name!r}")
        return self._map

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
            if self._pool.readonly:
                return ReadOnly(f"the pool is open read-only; {self._name!r} cannot be written")
            return ReadOnly(f"{self._name!r} is a snapshot and cannot be written")
        if nbytes % self._bs:
            return InvalidArgument(f"{nbytes} bytes is not a whole number of "
                                   f"{self._bs}-byte blocks")
        nblocks = nbytes // self._bs
        return OutOfRange(f"blocks {lba}..{lba + nblocks - 1} outside {self._name!r}'s "
                          f"{self._nblocks} blocks")

    # --- block device interface ---------------------------------------------------------------

    async def read(self, lba: int, nblocks: int) -> bytearray:
        """``nblocks`` blocks from ``lba``; unwritten ranges read as zeroes."""
        if lba < 0 or nblocks < 0 or lba + nblocks > self._nblocks:
            raise self._io_error(lba, nblocks * self._bs, False)
        m = self._map
        if m is None:
            m = self._load_map()
        bs = self._bs
        off, n = lba * bs, nblocks * bs
        co = off & self._cmask
        if co + n <= self._csize:
            p = m[off >> self._cshift]
            buf = bytearray(n)
            if p and os.preadv(self._fd, [buf], (p << self._cshift) + co) != n:
                raise Corrupt(f"short read from cluster {p}")
            return buf
        return self._read_span(m, off, n)

    def _read_span(self, m: array[int], off: int, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        csize, shift = self._csize, self._cshift
        pos = 0
        while pos < n:
            ci, co = divmod(off + pos, csize)
            length = min(csize - co, n - pos)
            p = m[ci]
            if p and os.preadv(self._fd, [view[pos:pos + length]], (p << shift) + co) != length:
                raise Corrupt(f"short read from cluster {p}")
            pos += length
        return buf

    async def write(self, lba: int, data: Buffer, fua: bool = False) -> None:
        """Write ``len(data)`` bytes at ``lba``; with ``fua`` return only once durable."""
        n = len(data)
        bs = self._bs
        if lba < 0 or n % bs or lba + n // bs > self._nblocks or self._ro:
            raise self._io_error(lba, n, True)
        m = self._map
        if m is None:
            m = self._load_map()
        pool = self._pool
        off = lba * bs
        co = off & self._cmask
        if co + n <= self._csize:
            # Fast path: overwrite in place a cluster this volume alone owns.
            ci = off >> self._cshift
            p = m[ci]
            if p and self._rc[p] == 1:
                loc = self.tree.leaf_loc[ci >> LEAF_SHIFT]
                if (not loc or self._mrefs[loc] == 1) and not pool._is_unstable(p):
                    try:
                        done = os.pwritev(self._fd, [data], (p << self._cshift) + co)
                    except OSError as exc:
                        raise _write_error(exc) from exc
                    if done != n:
                        raise OSError(f"short write to cluster {p}")
                    if not pool._dirty:
                        pool._note_data()
                    if fua:
                        await pool.flush()
                    return
        await self._write_span(m, off, data)
        if fua:
            await pool.flush()

    async def _write_span(self, m: array[int], off: int, data: Buffer) -> None:
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        n = len(view)
        csize = self._csize
        segs: list[tuple[int, int, int, int]] = []
        pos = 0
        while pos < n:
            ci, co = divmod(off + pos, csize)
            length = min(csize - co, n - pos)
            segs.append((ci, co, pos, length))
            pos += length
        pool = self._pool
        await pool._make_room(functools.partial(self._needs, segs, False))
        m2 = self._after_wait(off + n)
        for ci, co, pos, length in segs:
            self._write_cluster(m2, ci, co, view[pos:pos + length])
        pool._note_data()

    def _needs(self, segs: Sequence[tuple[int, int, int, int]], zeroing: bool
               ) -> tuple[int, int]:
        """(clusters, metadata pages) the segments may take, counted pessimistically."""
        m = self._map
        assert m is not None
        rc, mrefs, loc_of = self._rc, self._mrefs, self.tree.leaf_loc
        pool = self._pool
        clusters = 0
        pages = 0
        shared_leaves: set[int] = set()
        for ci, co, _pos, length in segs:
            p = m[ci]
            j = ci >> LEAF_SHIFT
            loc = loc_of[j]
            leaf_shared = bool(loc) and mrefs[loc] > 1
            if leaf_shared:
                shared_leaves.add(j)
            if zeroing and (p == 0 or length == self._csize):
                pages += 2 if p else 0
                continue
            if not p or leaf_shared or rc[p] != 1 or pool._is_unstable(p):
                clusters += 1
                pages += 3
        for j in shared_leaves:
            pages += 1 + pool._unshare_cost(self, j)
        return clusters, pages

    def _write_cluster(self, m: array[int], ci: int, co: int, seg: memoryview) -> None:
        """Write ``seg`` at offset ``co`` of the volume's cluster ``ci`` (sync; room checked)."""
        pool = self._pool
        p = m[ci]
        j = ci >> LEAF_SHIFT
        loc = self.tree.leaf_loc[j]
        shift = self._cshift
        n = len(seg)
        if p and self._rc[p] == 1 and (not loc or self._mrefs[loc] == 1) \
                and not pool._is_unstable(p):
            try:
                done = os.pwritev(self._fd, [seg], (p << shift) + co)
            except OSError as exc:
                raise _write_error(exc) from exc
            if done != n:
                raise OSError(f"short write to cluster {p}")
            return
        space = pool._space
        csize = self._csize
        new = space.alloc()
        at, expect = new << shift, csize  # where the vector below goes, and its length
        try:
            tail = csize - co - n
            if p:
                # Copy-on-write: only the parts of the old cluster the write does not cover.
                iov: list[Buffer] = []
                if co:
                    head_buf = bytearray(co)
                    if os.preadv(self._fd, [head_buf], p << shift) != co:
                        raise Corrupt(f"short read from cluster {p}")
                    iov.append(head_buf)
                iov.append(seg)
                if tail:
                    tail_buf = bytearray(tail)
                    if os.preadv(self._fd, [tail_buf], (p << shift) + co + n) != tail:
                        raise Corrupt(f"short read from cluster {p}")
                    iov.append(tail_buf)
            elif pool._backing.zero_range(new << shift, csize):
                # First write: the file system zeroes the cluster; only the data is written.
                iov = [seg]
                at, expect = (new << shift) + co, n
            else:
                zeros = pool._zeros
                iov = [seg]
                if co:
                    iov.insert(0, zeros[:co])
                if tail:
                    iov.append(zeros[:tail])
            try:
                done = os.pwritev(self._fd, iov, at)
            except OSError as exc:
                raise _write_error(exc) from exc
            if done != expect:
                raise OSError(f"short write to cluster {new}")
        except BaseException:
            space.unalloc(new)
            raise
        pool._touch_map_leaf(self, j)
        p = m[ci]
        m[ci] = new
        if p:
            pool._drop_ref(p)
        else:
            self.mapped += 1

    async def flush(self) -> None:
        """Every completed write (of any volume in the pool) becomes durable."""
        await self._pool.flush()

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
        m = self._map
        if m is None:
            m = self._load_map()
        csize = self._csize
        end = off + n
        pool = self._pool
        # Work one slice of leaves at a time so a huge range does not stall the event loop.
        slice_bytes = csize << (LEAF_SHIFT + 4)
        pos = off
        while pos < end:
            stop = min(end, (pos // slice_bytes + 1) * slice_bytes)
            segs = []
            p = pos
            while p < stop:
                ci, co = divmod(p, csize)
                length = min(csize - co, stop - p)
                segs.append((ci, co, p - off, length))
                p += length
            segs = self._mapped_segments(segs)
            if segs:
                await pool._make_room(functools.partial(self._needs, segs, True))
                m = self._after_wait(stop)
                zeros = pool._zeros
                for ci, co, _pos, length in segs:
                    if length == csize:
                        self._unmap(m, ci)
                    elif m[ci]:
                        self._write_cluster(m, ci, co, zeros[:length])
                pool._note_data()
            pos = stop
            if pos < end:
                await asyncio.sleep(0)
                self._after_wait(end)

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

    def _mapped_segments(self, segs: list[tuple[int, int, int, int]]
                         ) -> list[tuple[int, int, int, int]]:
        """The segments whose cluster is mapped (skipping never-written leaves cheaply)."""
        m = self._map
        assert m is not None
        loc_of, dirty = self.tree.leaf_loc, self.tree.dirty
        out = []
        for seg in segs:
            ci = seg[0]
            j = ci >> LEAF_SHIFT
            if not loc_of[j] and j not in dirty:
                continue
            if m[ci]:
                out.append(seg)
        return out

    def _unmap(self, m: array[int], ci: int) -> None:
        p = m[ci]
        if not p:
            return
        self._pool._touch_map_leaf(self, ci >> LEAF_SHIFT)
        m[ci] = 0
        self.mapped -= 1
        self._pool._drop_ref(p)
