"""The narrow interface between a volume's I/O path and the owner of the pool's metadata.

A :class:`~sbstore.store.volume.Volume` moves data; everything that changes what the pool
records (allocation, reference counts, map leaves, the commit) belongs to its owner, the
:class:`~sbstore.store.pool.Pool`. The volume reaches the owner only through
:class:`VolumeOwner`, so the two modules do not import each other, and later data workers (one
process per core, DESIGN.md) can serve reads and in-place writes from shared maps while one
owner allocates and commits, the way SPDK's blobstore splits its metadata thread from its I/O
channels.

What the volume may read directly (fast path, never written by it): ``cluster_refs`` (count of
map leaves naming each physical cluster) and ``leaf_refs`` (volumes sharing each metadata page),
to decide whether a cluster is its own to overwrite in place. Everything else is a call.

A *segment* is ``(ci, co, pos, length)``: ``length`` bytes at offset ``co`` of the volume's
cluster ``ci``, taken from offset ``pos`` of the I/O's data.
"""
from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .engines.base import IoEngine
    from .guard import ReuseGuard
    from .volume import Volume

Segment = tuple[int, int, int, int]


class VolumeOwner(Protocol):
    cluster_size: int
    readonly: bool
    engine: IoEngine
    guard: ReuseGuard

    @property
    def cluster_refs(self) -> array[int]: ...

    @property
    def leaf_refs(self) -> array[int]: ...

    # --- data path ----------------------------------------------------------------------------
    def is_unstable(self, pcn: int) -> bool:
        """True while a reference to ``pcn`` was dropped in a transaction not yet durable
        (then nobody may overwrite it in place: the durable state may still share it)."""

    def note_data(self) -> None:
        """Data was written: a commit (and its device flush) must follow within the timer."""

    async def flush(self) -> None:
        """Every completed write becomes durable (a metadata commit and the device flush)."""

    async def make_room_for(self, vol: Volume, segs: Sequence[Segment], zeroing: bool) -> None:
        """Return, without awaiting after its last check, once the pool has the clusters and
        metadata pages writing (``zeroing``: zeroing) ``segs`` of ``vol`` may take."""

    def reserve_cluster(self) -> int:
        """A free cluster for new data; not referenced until :meth:`set_mapping`."""

    def unreserve_cluster(self, pcn: int) -> None:
        """Give back a cluster from :meth:`reserve_cluster` that was never mapped."""

    def prepare_mapping(self, vol: Volume, ci: int) -> None:
        """Entry ``ci`` of ``vol``'s map will change: make its leaf private and dirty, and plan
        the pages the change needs (called before the data I/O, while the room holds)."""

    def set_mapping(self, vol: Volume, ci: int, pcn: int) -> None:
        """Map ``vol``'s cluster ``ci`` to ``pcn`` (a reserved cluster, or 0 to unmap),
        dropping the reference to what it mapped before."""

    def load_map(self, vol: Volume) -> array[int]:
        """Read ``vol``'s map from its leaves (snapshots load only when first used)."""

    # --- lineage and management (delegated by the volume's convenience methods) ----------------
    def volume_by_id_or_none(self, vid: int) -> Volume | None: ...

    def children_of(self, vid: int) -> list[Volume]: ...

    async def snapshot(self, volume: Volume | str, name: str) -> Volume: ...

    async def resize(self, volume: Volume | str, new_size_bytes: int, *,
                     shrink: bool = False) -> None: ...

    async def rename(self, volume: Volume | str, new_name: str) -> None: ...
