"""The index of one paged array of u32 entries: root page -> directory pages -> leaf pages.

A volume's cluster map and the pool's refcount table are both such arrays. The entries live in
memory as one flat ``array('I')`` owned by the caller (so a lookup is one index operation, at any
snapshot depth); this class keeps only where each 4 KiB leaf of that array is on disk, which
leaves changed since the last commit, and how to write them out.

Rules of this module:
- Shadow paging: a page the last commit wrote is never written again. A leaf that changes gets
  a new page at the next commit; its old page is released to the open transaction (and becomes
  reusable only after that transaction's commit is durable, see ``space``).
- A checksum travels with every pointer: directory entries are (leaf page, leaf crc), root
  entries are (directory page, directory crc), and the owner of the tree stores the root's
  (page, crc). Page 0 means "all zero": an all-zero leaf or directory is never written.
- ``dirty`` leaves have no page (``leaf_loc == 0``) until the commit gives them one.
- Leaf pages of volume maps may be shared by several trees (snapshots); the sharing decisions
  belong to the pool. Directory and root pages always belong to exactly one tree.
"""
from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Protocol

from .errors import Corrupt
from .layout import (
    LEAF_ENTRIES,
    LEAF_SHIFT,
    PAGE_SIZE,
    PTR_SHIFT,
    PTRS_PER_PAGE,
    ZERO_PAGE,
    page_crc,
    pull_pointers,
    push_pointers,
    tree_shape,
)


class PageAllocator(Protocol):
    planned: int

    def alloc(self) -> int: ...

    def unref(self, page: int) -> bool: ...


class PageTree:
    """Where the leaves of one u32 array live, and which of them changed."""

    __slots__ = (
        "dir_crc",
        "dir_loc",
        "dirs_dirty",
        "dirty",
        "leaf_crc",
        "leaf_loc",
        "meta",
        "n_entries",
        "root",
        "root_crc",
        "root_dirty",
    )

    def __init__(self, n_entries: int, meta: PageAllocator) -> None:
        leaves, dirs = tree_shape(n_entries)
        self.n_entries = n_entries
        self.leaf_loc = array("I", bytes(4 * leaves))
        self.leaf_crc = array("I", bytes(4 * leaves))
        self.dir_loc = array("I", bytes(4 * dirs))
        self.dir_crc = array("I", bytes(4 * dirs))
        self.root = 0
        self.root_crc = 0
        self.dirty: set[int] = set()
        self.dirs_dirty: set[int] = set()
        self.root_dirty = False
        self.meta = meta

    @property
    def n_leaves(self) -> int:
        return len(self.leaf_loc)

    @property
    def is_dirty(self) -> bool:
        return self.root_dirty

    def grow(self, n_entries: int) -> None:
        """Make room for more entries; the new ones are zero and need no page."""
        leaves, dirs = tree_shape(n_entries)
        self.leaf_loc.frombytes(bytes(4 * (leaves - len(self.leaf_loc))))
        self.leaf_crc.frombytes(bytes(4 * (leaves - len(self.leaf_crc))))
        self.dir_loc.frombytes(bytes(4 * (dirs - len(self.dir_loc))))
        self.dir_crc.frombytes(bytes(4 * (dirs - len(self.dir_crc))))
        self.n_entries = n_entries

    def shrink(self, n_entries: int) -> None:
        """Keep only the first ``n_entries`` entries. The caller has already dropped every
        leaf past them (:meth:`drop_leaf`, their page references dealt with); the directory
        pages past them are released here, and the root is rewritten at the next commit."""
        leaves, dirs = tree_shape(n_entries)
        assert all(j < leaves for j in self.dirty), "dirty leaves past the new end"
        del self.leaf_loc[leaves:]
        del self.leaf_crc[leaves:]
        for d in range(dirs, len(self.dir_loc)):
            if self.dir_loc[d]:
                self.meta.unref(self.dir_loc[d])
        del self.dir_loc[dirs:]
        del self.dir_crc[dirs:]
        self.dirs_dirty = {d for d in self.dirs_dirty if d < dirs}
        self.n_entries = n_entries
        if not self.root_dirty:
            self.root_dirty = True
            self.meta.planned += 1

    def mark_dir(self, d: int) -> None:
        """Directory ``d`` (and so the root) must be rewritten at the next commit."""
        if d not in self.dirs_dirty:
            self.dirs_dirty.add(d)
            self.meta.planned += 1
            if not self.root_dirty:
                self.root_dirty = True
                self.meta.planned += 1

    def make_dirty(self, j: int) -> None:
        """Leaf ``j`` now differs from any page: it gets a page at the next commit. The caller
        has already dealt with its old page (released or unshared)."""
        self.leaf_loc[j] = 0
        self.leaf_crc[j] = 0
        self.dirty.add(j)
        self.meta.planned += 1
        self.mark_dir(j >> PTR_SHIFT)

    def touch(self, j: int) -> None:
        """Leaf ``j`` of a tree whose leaves are never shared is about to change."""
        if j in self.dirty:
            return
        loc = self.leaf_loc[j]
        if loc:
            self.meta.unref(loc)
        self.make_dirty(j)

    def drop_leaf(self, j: int) -> None:
        """Forget leaf ``j`` (its page reference has been dealt with); it reads as zeroes."""
        self.dirty.discard(j)
        if self.leaf_loc[j]:
            self.leaf_loc[j] = 0
            self.leaf_crc[j] = 0
        self.mark_dir(j >> PTR_SHIFT)

    def release_pointer_pages(self) -> None:
        """Release the root and directory pages (the tree is being removed)."""
        for d, loc in enumerate(self.dir_loc):
            if loc:
                self.meta.unref(loc)
                self.dir_loc[d] = 0
        if self.root:
            self.meta.unref(self.root)
            self.root = 0
        self.dirty.clear()
        self.dirs_dirty.clear()
        self.root_dirty = False

    def pages_needed(self) -> int:
        """Exactly how many pages :meth:`commit` may allocate."""
        if not self.root_dirty:
            return 0
        return len(self.dirty) + len(self.dirs_dirty) + 1

    def commit(self, leaf_bytes: Callable[[int], bytes], out: list[tuple[int, bytes]]) -> bool:
        """Give every dirty leaf, directory and the root a new page; append (page, data) to
        ``out``. Returns True if the root changed (the owner must record root/root_crc)."""
        if not self.root_dirty:
            return False
        meta = self.meta
        leaf_loc, leaf_crc = self.leaf_loc, self.leaf_crc
        for j in sorted(self.dirty):
            data = leaf_bytes(j)
            if data == ZERO_PAGE:
                leaf_loc[j] = leaf_crc[j] = 0
            else:
                loc = meta.alloc()
                leaf_loc[j] = loc
                leaf_crc[j] = page_crc(data)
                out.append((loc, data))
        self.dirty.clear()
        for d in sorted(self.dirs_dirty):
            old = self.dir_loc[d]
            if old:
                meta.unref(old)
            a, b = d << PTR_SHIFT, (d + 1) << PTR_SHIFT
            locs = leaf_loc[a:b]
            if locs.count(0) == len(locs):
                self.dir_loc[d] = self.dir_crc[d] = 0
                continue
            data = push_pointers(locs, leaf_crc[a:b])
            loc = meta.alloc()
            self.dir_loc[d] = loc
            self.dir_crc[d] = page_crc(data)
            out.append((loc, data))
        self.dirs_dirty.clear()
        if self.root:
            meta.unref(self.root)
        if self.dir_loc.count(0) == len(self.dir_loc):
            self.root = self.root_crc = 0
        else:
            data = push_pointers(self.dir_loc, self.dir_crc)
            self.root = meta.alloc()
            self.root_crc = page_crc(data)
            out.append((self.root, data))
        self.root_dirty = False
        return True


def leaf_slice_bytes(entries: array[int], j: int) -> bytes:
    """Leaf ``j`` of a flat u32 array as a 4 KiB page (the last leaf padded with zeroes)."""
    data = entries[j << LEAF_SHIFT:(j + 1) << LEAF_SHIFT].tobytes()
    if len(data) < PAGE_SIZE:
        data += bytes(PAGE_SIZE - len(data))
    return data


ReadPage = Callable[[int], bytes]


def check_page_number(page: int, first: int, end: int, what: str) -> None:
    if not first <= page < end:
        raise Corrupt(f"{what} points to page {page}, outside the metadata area "
                      f"(pages {first}..{end - 1})")


def read_checked(read_page: ReadPage, page: int, crc: int, what: str) -> bytes:
    data = read_page(page)
    if page_crc(data) != crc:
        raise Corrupt(f"{what} (page {page}) fails its checksum: damaged or torn write")
    return data


def load_tree(tree: PageTree, root: int, root_crc: int, read_page: ReadPage, first: int,
              end: int, what: str, on_page: Callable[[int, str], None]) -> None:
    """Fill ``tree``'s index from disk (root and directories; leaves are not read).

    ``on_page(page, kind)`` is told about every page the tree references, kind in
    ("root", "dir", "leaf"), so the caller can count references. Raises Corrupt.
    """
    tree.root, tree.root_crc = root, root_crc
    if not root:
        return
    check_page_number(root, first, end, f"{what} root")
    on_page(root, "root")
    dir_locs, dir_crcs = pull_pointers(read_checked(read_page, root, root_crc, f"{what} root"))
    n_leaves, n_dirs = len(tree.leaf_loc), len(tree.dir_loc)
    for d in range(PTRS_PER_PAGE):
        dloc = dir_locs[d]
        if not dloc:
            continue
        if d >= n_dirs:
            raise Corrupt(f"{what} root has directory {d} beyond the size ({n_dirs} dirs)")
        check_page_number(dloc, first, end, f"{what} directory {d}")
        on_page(dloc, "dir")
        tree.dir_loc[d], tree.dir_crc[d] = dloc, dir_crcs[d]
        leaf_locs, leaf_crcs = pull_pointers(
            read_checked(read_page, dloc, dir_crcs[d], f"{what} directory {d}"))
        for k in range(PTRS_PER_PAGE):
            lloc = leaf_locs[k]
            if not lloc:
                continue
            j = (d << PTR_SHIFT) + k
            if j >= n_leaves:
                raise Corrupt(f"{what} has leaf {j} beyond its size ({n_leaves} leaves)")
            check_page_number(lloc, first, end, f"{what} leaf {j}")
            on_page(lloc, "leaf")
            tree.leaf_loc[j], tree.leaf_crc[j] = lloc, leaf_crcs[k]


def load_entries(tree: PageTree, read_page: ReadPage, what: str) -> array[int]:
    """Read every leaf of ``tree`` into one flat array of ``tree.n_entries`` entries."""
    n_leaves = len(tree.leaf_loc)
    entries = array("I", bytes(4 * n_leaves * LEAF_ENTRIES))
    for j in range(n_leaves):
        loc = tree.leaf_loc[j]
        if loc:
            data = read_checked(read_page, loc, tree.leaf_crc[j], f"{what} leaf {j}")
            leaf = array("I")
            leaf.frombytes(data)
            entries[j << LEAF_SHIFT:(j + 1) << LEAF_SHIFT] = leaf
    del entries[tree.n_entries:]
    return entries
