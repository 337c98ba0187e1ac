"""Space maps: data-cluster reference counts, and the metadata-page allocator.

Rules of this module (dm-thin's, adopted whole):
- **Space freed in a transaction is never recycled within that transaction.** A cluster whose
  count drops to zero, or a metadata page that stops being referenced, goes to ``pending`` and
  becomes allocatable only after the commit that records the release is durable
  (:meth:`ClusterSpace.release_committed`). Until then the last durable commit may still map it.
- Data refcount ``rc[pcn]`` = the number of map *leaves* (4 KiB pages of 1024 entries) that
  name the cluster: a leaf shared by several volumes (after a snapshot or clone) counts once.
  ``MetaSpace.refs[page]`` counts the volumes sharing a leaf page. Sharing a leaf costs one
  increment; splitting it (first write after a snapshot) adds one to each of its clusters.
- Pure: no I/O. The refcount table's own pages are kept by a :class:`~.pagetree.PageTree`
  (``ClusterSpace.tree``), marked dirty here whenever a count changes.
"""
from __future__ import annotations

from array import array

from .errors import NoSpace
from .layout import LEAF_SHIFT
from .pagetree import PageTree


class MetaSpace:
    """Pages of the metadata area: who uses them and which are free."""

    def __init__(self, first_page: int, n_pages: int) -> None:
        self.first = first_page
        self.end = first_page + n_pages
        # Indexed by absolute page number (the first ``first_page`` entries are unused).
        self.refs = array("I", bytes(4 * self.end))
        self.free = bytearray(self.end)  # 1: allocatable now
        self.pending: list[int] = []  # released in the open transaction
        self.n_free = 0
        self.planned = 0  # pages the next commit may allocate (an upper bound, see PageTree)
        self._cursor = first_page

    def rebuild_free(self) -> None:
        """After loading: every page with no reference is free."""
        free = self.free
        refs = self.refs
        for p in range(self.first, self.end):
            free[p] = 0 if refs[p] else 1
        self.n_free = free.count(1)

    def alloc(self) -> int:
        p = self.free.find(1, self._cursor)
        if p < 0:
            p = self.free.find(1, self.first)
            if p < 0:
                raise NoSpace("the pool's metadata area is full: delete snapshots or volumes, "
                              "or recreate the pool with a larger --metadata-size")
        self.free[p] = 0
        self.n_free -= 1
        self.refs[p] = 1
        self._cursor = p + 1
        return p

    def ref(self, page: int) -> None:
        self.refs[page] += 1

    def unref(self, page: int) -> bool:
        """Drop one reference; True when that was the last (the page is then pending)."""
        n = self.refs[page] - 1
        self.refs[page] = n
        if n == 0:
            self.pending.append(page)
            return True
        return False

    def take_pending(self) -> list[int]:
        pending, self.pending = self.pending, []
        return pending

    def release_committed(self, pages: list[int]) -> None:
        free = self.free
        for p in pages:
            free[p] = 1
        self.n_free += len(pages)
        if pages:
            self._cursor = min(self._cursor, min(pages))  # reuse low pages first

    @property
    def used(self) -> int:
        return (self.end - self.first) - self.n_free - len(self.pending)


class ClusterSpace:
    """Reference counts of the data clusters, and their allocator."""

    def __init__(self, n_clusters: int, first_data: int, rc: array[int], tree: PageTree) -> None:
        self.n_clusters = n_clusters
        self.first_data = first_data
        self.rc = rc
        self.tree = tree
        self.free = bytearray(n_clusters)  # 1: allocatable now
        self.pending: list[int] = []
        self.n_free = 0
        self.n_used = 0  # clusters with rc > 0
        self._cursor = first_data

    def rebuild_free(self) -> None:
        """After loading the counts: clusters with count 0 are free. C-speed on large pools."""
        rc = self.rc
        n, first = self.n_clusters, self.first_data
        raw = rc.tobytes()
        # A cluster is free iff its four count bytes are all zero: OR the four byte lanes.
        to_bit = bytes([0] + [1] * 255)
        lanes = [int.from_bytes(raw[k::4].translate(to_bit), "little") for k in range(4)]
        used = (lanes[0] | lanes[1] | lanes[2] | lanes[3]).to_bytes(n, "little")
        self.free = bytearray(used.translate(bytes([1, 0]) + bytes(254)))
        self.free[:first] = bytes(first)
        self.n_free = self.free.count(1)
        self.n_used = (n - first) - self.n_free

    def reserve(self) -> int:
        """Take a free cluster out of the free set without referencing it (its count stays 0).

        The data path reserves a cluster before it writes the cluster's data and
        claims it (:meth:`claim`) only once the data is written and the cluster is mapped: a commit
        between the two records the cluster as free, so a crash leaves nothing leaked. The
        refcount leaf that :meth:`claim` will change is made dirty now, while the caller still
        holds the room it checked for (``_make_room``)."""
        p = self.free.find(1, self._cursor)
        if p < 0:
            p = self.free.find(1, self.first_data)
            if p < 0:
                raise NoSpace("the pool is full: no free data cluster")
        self.free[p] = 0
        self.n_free -= 1
        self._cursor = p + 1
        self.prepare_change(p)
        return p

    def claim(self, pcn: int) -> None:
        """The first reference to a cluster from :meth:`reserve`."""
        self.rc[pcn] = 1
        self.n_used += 1
        self.prepare_change(pcn)

    def unreserve(self, pcn: int) -> None:
        """Give back a cluster from :meth:`reserve` that was never claimed (a failed write)."""
        self.free[pcn] = 1
        self.n_free += 1

    def alloc(self) -> int:
        """A free cluster with count 1 (:meth:`reserve` and :meth:`claim` at once)."""
        p = self.reserve()
        self.claim(p)
        return p

    def prepare_change(self, pcn: int) -> None:
        """The count of ``pcn`` will change soon: plan its refcount leaf's page now."""
        j = pcn >> LEAF_SHIFT
        if j not in self.tree.dirty:
            self.tree.touch(j)

    def incref(self, pcn: int) -> None:
        self.rc[pcn] += 1
        j = pcn >> LEAF_SHIFT
        if j not in self.tree.dirty:
            self.tree.touch(j)

    def decref(self, pcn: int) -> bool:
        """Drop one reference; True when the cluster is now unreferenced (pending free)."""
        n = self.rc[pcn] - 1
        self.rc[pcn] = n
        j = pcn >> LEAF_SHIFT
        if j not in self.tree.dirty:
            self.tree.touch(j)
        if n == 0:
            self.pending.append(pcn)
            self.n_used -= 1
            return True
        return False

    def take_pending(self) -> list[int]:
        pending, self.pending = self.pending, []
        return pending

    def release_committed(self, clusters: list[int]) -> None:
        free = self.free
        for p in clusters:
            free[p] = 1
        self.n_free += len(clusters)
        if clusters:
            # Next fit from the lowest released cluster: space comes back into use soon after
            # the commit that freed it (keeps a pool file compact), never before.
            self._cursor = min(self._cursor, min(clusters))
