"""Snapshots out of a pool and into another: diff, export stream, import.

Theory of operation:
- **Diff from the maps, without reading data.** Two snapshots read the same bytes wherever
  their maps name the same physical cluster: snapshots never change, and a cluster two maps
  share is copy-on-write, so nobody writes it in place while both name it. Within a family,
  a snapshot and its successor therefore differ exactly where their map entries differ; for
  unrelated snapshots no cluster is shared and the diff is every mapped extent (plus zero
  extents where the base has data the snapshot does not). The same comparison covers both.
- **Export** writes a :mod:`~sbstore.store.stream` stream: the header (with the counts the
  diff gives), then each extent (data read from the snapshot in pieces of at most
  :data:`PIECE_BYTES`), then the trailer. An async generator: the caller sends each piece
  before the next one is read, so memory stays bounded whatever the volume's size.
- **Import** parses the stream as it arrives and writes each extent into a hidden volume
  (:meth:`Pool.begin_import`, committed as an intent that opening the pool removes); only once
  the trailer verifies does :meth:`Pool.finish_import` make it visible, in one commit. A
  truncated or corrupted stream, a cancel or a crash leaves no volume behind. An increment
  applies to a volume whose history holds the base snapshot (found by uuid: an imported
  snapshot keeps its source's uuid), and leaves the volume reading the new snapshot.
"""
from __future__ import annotations

import asyncio
from array import array
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from zlib import crc32

from .errors import InvalidArgument, NotFound
from .pool import Pool
from .stream import (
    BadStream,
    Extent,
    StreamEnd,
    StreamHeader,
    StreamParser,
    encode_end,
    encode_extent_head,
    encode_header,
)
from .volume import Volume

PIECE_BYTES = 1 << 20  # the largest data extent an export writes (what it holds in memory)
_DIFF_SLICE = 1 << 16  # clusters compared between two yields to the event loop

Progress = Callable[[int, int], None]  # (done, total) in bytes


@dataclass(frozen=True)
class DiffExtent:
    """``length`` bytes at ``offset`` that differ: ``zero`` if the newer snapshot reads zeroes
    there (unmapped), else data."""

    offset: int
    length: int
    zero: bool

    def as_dict(self) -> dict[str, object]:
        return {"offset": self.offset, "length": self.length,
                "kind": "zero" if self.zero else "data"}


async def diff(pool: Pool, snapshot: Volume | str, base: Volume | str | None = None
               ) -> list[DiffExtent]:
    """Where ``snapshot`` differs from ``base`` (None: from an empty volume), from the maps
    alone; runs of clusters merged, offsets and lengths in bytes, clipped to its size."""
    snap = _snapshot(pool, snapshot)
    old = None if base is None else _snapshot(pool, base)
    new_map = snap.cluster_map()
    old_map = old.cluster_map() if old is not None else array("I")
    csize = pool.cluster_size
    size = snap.size_bytes
    out: list[DiffExtent] = []
    run_start, run_zero = -1, False
    n = len(new_map)
    n_old = len(old_map)
    for ci in range(n):
        if ci % _DIFF_SLICE == _DIFF_SLICE - 1:
            await asyncio.sleep(0)
        p = new_map[ci]
        q = old_map[ci] if ci < n_old else 0
        if p == q:
            kind = None  # same cluster, or both unmapped: the same bytes
        else:
            kind = p == 0
        if run_start >= 0 and kind is not run_zero:
            out.append(_clip(run_start, ci, run_zero, csize, size))
            run_start = -1
        if kind is not None and run_start < 0:
            run_start, run_zero = ci, kind
    if run_start >= 0:
        out.append(_clip(run_start, n, run_zero, csize, size))
    return out


def _clip(first: int, end: int, zero: bool, csize: int, size: int) -> DiffExtent:
    offset = first * csize
    return DiffExtent(offset, min(end * csize, size) - offset, zero)


def _snapshot(pool: Pool, x: Volume | str) -> Volume:
    vol = pool.volume(x) if isinstance(x, str) else x
    if not vol.is_snapshot:
        raise InvalidArgument(f"{vol.name!r} is a volume, not a snapshot: snapshot it and "
                              f"export the snapshot")
    return vol


@dataclass
class Export:
    """An export ready to stream: ``header`` says what it holds, ``chunks()`` the bytes."""

    pool: Pool
    snapshot: Volume
    header: StreamHeader
    extents: list[DiffExtent]

    @property
    def total_bytes(self) -> int:
        return self.header.data_bytes

    async def chunks(self, progress: Progress | None = None) -> AsyncIterator[bytes]:
        """The stream, in pieces of at most a record plus :data:`PIECE_BYTES`. The snapshot
        vanishing meanwhile raises NotFound: the stream then has no trailer, and no import
        accepts it."""
        snap, bs = self.snapshot, self.header.block_size
        crc = 0
        head = encode_header(self.header)
        crc = crc32(head, crc)
        yield head
        count = done = 0
        for ext in _pieces(self.extents):
            if ext.zero:
                rec = encode_extent_head(ext.offset, ext.length, None)
                crc = crc32(rec, crc)
                count += 1
                yield rec
                continue
            data = bytes(await snap.read(ext.offset // bs, ext.length // bs))
            rec = encode_extent_head(ext.offset, ext.length, crc32(data))
            crc = crc32(data, crc32(rec, crc))
            count += 1
            done += ext.length
            yield rec
            yield data
            if progress is not None:
                progress(done, self.header.data_bytes)
        yield encode_end(count, done, crc)


def _pieces(extents: list[DiffExtent]) -> list[DiffExtent]:
    out: list[DiffExtent] = []
    for ext in extents:
        if ext.zero:
            out.append(ext)
            continue
        for off in range(ext.offset, ext.offset + ext.length, PIECE_BYTES):
            out.append(DiffExtent(off, min(PIECE_BYTES, ext.offset + ext.length - off), False))
    return out


async def prepare_export(pool: Pool, snapshot: Volume | str,
                         since: Volume | str | None = None) -> Export:
    """Plan the export of ``snapshot`` (whole, or what changed since snapshot ``since``)."""
    snap = _snapshot(pool, snapshot)
    base = None if since is None else _snapshot(pool, since)
    if base is not None and base is snap:
        raise InvalidArgument("an increment needs two different snapshots")
    extents = await diff(pool, snap, base)
    pieces = _pieces(extents)
    header = StreamHeader(
        size_bytes=snap.size_bytes, block_size=snap.block_size, uuid=snap.uuid,
        name=snap.name, created_ns=snap.created_ns,
        base_uuid=base.uuid if base is not None else None,
        base_name=base.name if base is not None else "",
        data_bytes=sum(e.length for e in pieces if not e.zero), extents=len(pieces))
    return Export(pool, snap, header, extents)


@dataclass(frozen=True)
class Imported:
    volume: Volume
    snapshot: Volume
    header: StreamHeader


async def import_stream(pool: Pool, name: str, source: AsyncIterable[bytes], *,
                        progress: Progress | None = None,
                        on_header: Callable[[StreamHeader], None] | None = None) -> Imported:
    """Read a stream from ``source`` into volume ``name`` (new for a full stream; existing,
    with the base snapshot in its history, for an increment). Refused (BadStream, or the
    pool's error) with nothing left behind unless the stream is whole and intact.
    ``on_header`` sees the header once it is verified, before any data is written."""
    parser = StreamParser()
    hidden: Volume | None = None
    base: Volume | None = None
    header: StreamHeader | None = None
    done = 0
    try:
        async for chunk in source:
            for event in parser.feed(chunk):
                if isinstance(event, StreamHeader):
                    header = event
                    if on_header is not None:
                        on_header(header)
                    base = _base_of(pool, header)
                    hidden = await pool.begin_import(
                        name, header.size_bytes, header.block_size, snapshot_name=header.name,
                        snapshot_uuid=header.uuid, base=base)
                elif isinstance(event, Extent):
                    assert hidden is not None and header is not None
                    bs = header.block_size
                    if event.data is None:
                        await hidden.write_zeroes(event.offset // bs, event.length // bs)
                    else:
                        await hidden.write(event.offset // bs, event.data)
                        done += event.length
                        if progress is not None:
                            progress(done, header.data_bytes)
                else:
                    assert isinstance(event, StreamEnd)
        parser.close()
        assert hidden is not None and header is not None
        finishing = asyncio.ensure_future(pool.finish_import(
            hidden, name, snapshot_name=header.name, snapshot_uuid=header.uuid, base=base))
        try:
            vol, snap = await asyncio.shield(finishing)
        except asyncio.CancelledError:
            # Too late to cancel: the stream is whole and its commit under way. Wait for it;
            # if it fails, the import is abandoned below as any failed one is.
            vol, snap = await finishing
        hidden = None  # visible now: nothing to abandon
        return Imported(vol, snap, header)
    except BaseException:
        if hidden is not None:
            await asyncio.shield(pool.abandon_import(hidden))
        raise


def _base_of(pool: Pool, header: StreamHeader) -> Volume | None:
    if header.base_uuid is None:
        return None
    try:
        base = pool.volume_by_uuid(header.base_uuid)
    except NotFound:
        raise InvalidArgument(f"the increment applies to snapshot {header.base_name!r} "
                              f"({header.base_uuid}), which this pool does not hold: import "
                              f"that snapshot first") from None
    if not base.is_snapshot:
        raise BadStream(f"the increment's base {header.base_uuid} is a volume here")
    return base


async def file_chunks(f: object, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """Read a binary file object in pieces, off the event loop (tools and tests)."""
    loop = asyncio.get_running_loop()
    read = getattr(f, "read")
    while True:
        data = await loop.run_in_executor(None, read, size)
        if not data:
            return
        yield data
