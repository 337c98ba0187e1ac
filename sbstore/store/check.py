"""``sbstore check``: verify a pool offline, say what is wrong in words, repair what is safe.

What is verified, from the newest usable superblock:
- both superblock slots (checksum, geometry); a torn newest slot is a note, not a problem;
- every metadata page reachable from it: inside the metadata area, its checksum as recorded
  by its parent, and used by one owner (only map leaves may be shared, by snapshots);
- every volume record (flags, sizes, unique ids and names, parent exists and is a snapshot, no
  cycle in the lineage; snapshot groups: only snapshots, one name per group and one group per
  name);
- every map entry: a data cluster of this pool, named at most once per volume, and shared only
  between volumes of one family (the lineage a volume was created in: snapshots and clones
  inherit it), so no volume can read an unrelated volume's data;
- every reference count equals the number of map leaves naming the cluster (a count too low
  would let a write overwrite shared data; a count too high is leaked space), metadata-area
  clusters have count 0; free space is what the counts say.

``repair=True`` rewrites wrong reference counts (freeing leaked clusters) and the mapped-cluster
totals of the volume records, in one commit. Damaged pages are reported, never "repaired".
"""
from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .backing import Backing
from .errors import Corrupt, StoreError
from .layout import (
    LEAF_SHIFT,
    PTRS_PER_PAGE,
    VOL_DYING,
    VOL_SNAPSHOT,
    VOLREC_SIZE,
    VOLRECS_PER_PAGE,
    Superblock,
    ceil_div,
    pull_pointers,
    pull_u32_page,
    pull_volume_record,
)
from .pagetree import PageTree, load_entries, load_tree, read_checked
from .pool import Pool, read_superblocks, record_problem, verify_manifest
from .space import MetaSpace

_MAX_LISTED = 20  # per kind of problem, list this many and then count the rest


@dataclass
class CheckReport:
    path: str
    generation: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    # Repairable findings (pcn -> right count; volume id -> right mapped total).
    rc_fixes: dict[int, int] = field(default_factory=dict)
    mapped_fixes: dict[int, int] = field(default_factory=dict)
    unrepairable: int = 0

    @property
    def clean(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "clean": self.clean, "generation": self.generation,
                "problems": self.problems, "notes": self.notes, "repaired": self.repaired,
                "stats": self.stats}


class _Limited:
    """Collects problems of one kind, listing the first few and counting the rest."""

    def __init__(self, report: CheckReport, kind: str) -> None:
        self.report, self.kind, self.count = report, kind, 0

    def add(self, message: str) -> None:
        self.count += 1
        if self.count <= _MAX_LISTED:
            self.report.problems.append(message)

    def close(self) -> None:
        if self.count > _MAX_LISTED:
            self.report.problems.append(f"... and {self.count - _MAX_LISTED} more {self.kind}")


def check_pool(path: str, *, repair: bool = False, lock: bool = True,
               progress: Callable[[int, int], None] | None = None) -> CheckReport:
    """Check the pool at ``path`` (not open elsewhere); with ``repair``, fix counts.
    ``progress(done, total)`` hears how many volume maps have been walked (the long part of
    checking a large pool); interrupting a check changes nothing.

    ``lock=False`` checks a pool this process has open (what its last commit wrote): the caller
    makes sure no commit runs meanwhile. It cannot be combined with ``repair``.
    """
    if repair and not lock:
        raise ValueError("repair needs the pool to itself")
    report = _check(path, lock, progress)
    if not repair or report.clean:
        return report
    if report.unrepairable:
        report.notes.append("nothing repaired: the pool has damage a repair cannot fix safely")
        return report
    if not (report.rc_fixes or report.mapped_fixes):
        return report
    # Fix the counts before finishing any interrupted deletion: the deletion drops references
    # from the counts, which must be right first.
    pool = Pool.open(path, finish_deletions=False)
    try:
        pool._repair_counts(report.rc_fixes, report.mapped_fixes)
        pool.commit_sync()
        pool._finish_dying_sync()
    finally:
        pool.close()
    after = _check(path, True)
    after.repaired = _describe_repairs(report)
    return after


def _describe_repairs(report: CheckReport) -> list[str]:
    out = []
    freed = sum(1 for want in report.rc_fixes.values() if want == 0)
    if freed:
        out.append(f"freed {freed} leaked cluster(s)")
    fixed = len(report.rc_fixes) - freed
    if fixed:
        out.append(f"corrected the reference count of {fixed} cluster(s)")
    if report.mapped_fixes:
        out.append(f"corrected the mapped-cluster total of {len(report.mapped_fixes)} "
                   f"volume record(s)")
    return out


def _check(path: str, lock: bool,
           progress: Callable[[int, int], None] | None = None) -> CheckReport:
    report = CheckReport(path=path)
    try:
        backing = Backing(path, readonly=True, lock=lock)
    except StoreError as exc:
        report.problems.append(str(exc))
        report.unrepairable += 1
        return report
    try:
        _check_backing(backing, report, progress)
    finally:
        backing.close()
    return report


def _check_backing(backing: Backing, report: CheckReport,
                   progress: Callable[[int, int], None] | None = None) -> None:
    candidates, reasons = read_superblocks(backing)
    if not candidates:
        report.problems.append("no valid superblock: " + "; ".join(reasons))
        report.unrepairable += 1
        return
    for r in reasons:
        report.notes.append(f"superblock {r}: the pool uses the other slot (a torn last commit "
                            f"does this; the next commit rewrites it)")
    errors: list[str] = []
    for i, sb in enumerate(candidates):
        sub = CheckReport(path=report.path, generation=sb.generation)
        if sb.total_bytes > backing.size:
            errors.append(f"generation {sb.generation} needs {sb.total_bytes} bytes, the device "
                          f"has {backing.size}")
            continue
        if not _check_generation(backing, sb, sub, progress):
            errors.append(f"generation {sb.generation}: {sub.problems[0]}")
            continue
        if i > 0:
            sub.problems.insert(0, "the newest superblock points to damaged metadata ("
                                + "; ".join(errors) + f"): the pool opens at generation "
                                f"{sb.generation}, losing the last commit")
        sub.notes[:0] = report.notes
        report.__dict__.update(sub.__dict__)
        return
    report.problems.append("no usable generation: " + "; ".join(errors))
    report.unrepairable += 1


def _check_generation(backing: Backing, sb: Superblock, report: CheckReport,
                      progress: Callable[[int, int], None] | None = None) -> bool:
    """Fill ``report``; False if the structures cannot even be walked (damaged page)."""
    read_page = backing.read_page
    first, end = sb.meta_first_page, sb.meta_end_page
    meta = MetaSpace(first, sb.meta_pages)
    kinds = bytearray(end)
    page_problems = _Limited(report, "metadata page problems")

    def claim(page: int, kind: str) -> None:
        if kind == "leaf" and kinds[page] != 1:
            kinds[page] = 2
            return
        if kinds[page]:
            page_problems.add(f"metadata page {page} is used by two structures")
            report.unrepairable += 1
        kinds[page] = 1

    def claim_own(page: int, kind: str) -> None:
        claim(page, "own")

    # The last commit is whole.
    try:
        for page in verify_manifest(read_page, sb):
            claim(page, "own")
    except Corrupt as exc:
        report.problems.append(str(exc))
        report.unrepairable += 1
        return False

    # The refcount table.
    rc_tree = PageTree(sb.n_clusters, meta)
    try:
        load_tree(rc_tree, sb.rc_root, sb.rc_root_crc, read_page, first, end, "refcount table",
                  claim_own)
        stored_rc = load_entries(rc_tree, read_page, "refcount table")
    except Corrupt as exc:
        report.problems.append(str(exc))
        report.unrepairable += 1
        return False

    # The volume table.
    records = []
    try:
        vt_loc = array("I", bytes(4 * PTRS_PER_PAGE))
        vt_crc = array("I", bytes(4 * PTRS_PER_PAGE))
        if sb.vt_root:
            if not first <= sb.vt_root < end:
                raise Corrupt(f"volume table root page {sb.vt_root} is outside the metadata area")
            claim(sb.vt_root, "own")
            vt_loc, vt_crc = pull_pointers(read_checked(read_page, sb.vt_root, sb.vt_root_crc,
                                                        "volume table root"))
        for k in range(PTRS_PER_PAGE):
            if not vt_loc[k]:
                continue
            if not first <= vt_loc[k] < end:
                raise Corrupt(f"volume table page {k} is outside the metadata area")
            claim(vt_loc[k], "own")
            data = read_checked(read_page, vt_loc[k], vt_crc[k], f"volume table page {k}")
            for i in range(VOLRECS_PER_PAGE):
                try:
                    rec = pull_volume_record(data, i * VOLREC_SIZE)
                except ValueError as exc:
                    raise Corrupt(str(exc)) from None
                if rec is not None:
                    records.append(rec)
    except Corrupt as exc:
        report.problems.append(str(exc))
        report.unrepairable += 1
        return False
    if len(records) != sb.volume_count:
        report.problems.append(f"the superblock counts {sb.volume_count} volume records, the "
                               f"table holds {len(records)}")
        report.unrepairable += 1

    by_id: dict[int, Any] = {}
    names: dict[str, int] = {}
    for rec in records:
        problem = record_problem(rec, sb.cluster_size)
        if problem:
            report.problems.append(problem)
            report.unrepairable += 1
            continue
        if rec.id in by_id:
            report.problems.append(f"volume id {rec.id} is used by two records")
            report.unrepairable += 1
            continue
        by_id[rec.id] = rec
        if rec.flags & VOL_DYING:
            report.notes.append(f"{rec.name!r} (id {rec.id}) was being deleted when the pool "
                                f"was last closed; opening the pool read-write finishes that")
            continue
        if rec.name in names:
            report.problems.append(f"two volumes are named {rec.name!r} (ids {names[rec.name]} "
                                   f"and {rec.id})")
            report.unrepairable += 1
        names[rec.name] = rec.id
        if rec.id >= sb.next_volume_id:
            report.problems.append(f"volume id {rec.id} is not below the next id "
                                   f"{sb.next_volume_id}: a new volume could reuse it")
            report.unrepairable += 1
    # Lineage: parents exist, are snapshots, no cycles. The sharing check's components are the
    # families (a record's family, or its lineage's root in a pool that predates families).
    component: dict[int, int] = {}
    for rec in by_id.values():
        if rec.flags & VOL_DYING:
            continue
        seen = {rec.id}
        cur = rec
        while cur.parent_id:
            parent = by_id.get(cur.parent_id)
            if parent is None or parent.flags & VOL_DYING:
                report.problems.append(f"{cur.name!r} names parent id {cur.parent_id}, which "
                                       f"does not exist")
                report.unrepairable += 1
                break
            if not parent.flags & VOL_SNAPSHOT:
                report.problems.append(f"{cur.name!r} has parent {parent.name!r}, which is not "
                                       f"a snapshot")
                report.unrepairable += 1
            if parent.id in seen:
                report.problems.append(f"the lineage of {rec.name!r} has a cycle")
                report.unrepairable += 1
                break
            seen.add(parent.id)
            cur = parent
        component[rec.id] = rec.family or cur.id

    # Snapshot groups: one name per group id and one group id per name (the members of one
    # group snapshot were taken together; record_problem has checked each member alone).
    group_names: dict[int, str] = {}
    group_ids: dict[str, int] = {}
    for rec in by_id.values():
        if rec.flags & VOL_DYING or not rec.group_id:
            continue
        if group_names.setdefault(rec.group_id, rec.group) != rec.group:
            report.problems.append(f"snapshot group {rec.group_id} is named both "
                                   f"{group_names[rec.group_id]!r} and {rec.group!r}")
            report.unrepairable += 1
        if group_ids.setdefault(rec.group, rec.group_id) != rec.group_id:
            report.problems.append(f"two snapshot groups are named {rec.group!r} (ids "
                                   f"{group_ids[rec.group]} and {rec.group_id})")
            report.unrepairable += 1

    # Maps: walk every volume, count each distinct leaf page once.
    n = sb.n_clusters
    computed = array("I", bytes(4 * n))
    owner = array("I", bytes(4 * n))  # volume that last named the cluster (+1 per volume pass)
    comp_of = array("I", bytes(4 * n))  # lineage component that first named it
    counted_leaves: set[int] = set()
    map_problems = _Limited(report, "map problems")
    share_problems = _Limited(report, "sharing problems")
    total_mapped = 0
    for walked, rec in enumerate(sorted(by_id.values(), key=lambda r: r.id)):
        if progress is not None:
            progress(walked, len(by_id))
        nclusters = ceil_div(rec.size_bytes, sb.cluster_size)
        tree = PageTree(nclusters, meta)
        try:
            load_tree(tree, rec.root, rec.root_crc, read_page, first, end,
                      f"map of {rec.name!r}", claim)
        except Corrupt as exc:
            report.problems.append(str(exc))
            report.unrepairable += 1
            continue
        dying = bool(rec.flags & VOL_DYING)
        comp = component.get(rec.id, 0)
        mapped = 0
        for j, loc in enumerate(tree.leaf_loc):
            if not loc:
                continue
            try:
                leaf = pull_u32_page(read_checked(read_page, loc, tree.leaf_crc[j],
                                                  f"map of {rec.name!r} leaf {j}"))
            except Corrupt as exc:
                report.problems.append(str(exc))
                report.unrepairable += 1
                continue
            count_it = loc not in counted_leaves
            counted_leaves.add(loc)
            base = j << LEAF_SHIFT
            for k, e in enumerate(leaf):
                if not e:
                    continue
                if base + k >= nclusters:
                    map_problems.add(f"map of {rec.name!r} names cluster {e} beyond the "
                                     f"volume's end")
                    report.unrepairable += 1
                    continue
                if not sb.first_data_cluster <= e < n:
                    map_problems.add(f"map of {rec.name!r} names cluster {e}, outside the "
                                     f"data area ({sb.first_data_cluster}..{n - 1})")
                    report.unrepairable += 1
                    continue
                mapped += 1
                if owner[e] == rec.id:
                    map_problems.add(f"cluster {e} is mapped twice within {rec.name!r}")
                    report.unrepairable += 1
                owner[e] = rec.id
                if count_it:
                    computed[e] += 1
                if not dying and comp:
                    if comp_of[e] == 0:
                        comp_of[e] = comp
                    elif comp_of[e] != comp:
                        share_problems.add(f"cluster {e} is mapped by unrelated volumes "
                                           f"(lineages of ids {comp_of[e]} and {comp}): one "
                                           f"could read the other's data")
                        report.unrepairable += 1
        total_mapped += mapped
        if mapped != rec.mapped and not dying:
            report.problems.append(f"record of {rec.name!r} says {rec.mapped} mapped clusters, "
                                   f"its map has {mapped}")
            report.mapped_fixes[rec.id] = mapped
    for lim in (page_problems, map_problems, share_problems):
        lim.close()

    # Reference counts against the maps.
    rc_problems = _Limited(report, "reference count problems")
    leaked = low = 0
    for p in range(sb.first_data_cluster):
        if stored_rc[p]:
            rc_problems.add(f"cluster {p} lies in the metadata area but has count {stored_rc[p]}")
            report.rc_fixes[p] = 0
    if stored_rc != computed:
        for p in range(sb.first_data_cluster, n):
            s, c = stored_rc[p], computed[p]
            if s == c:
                continue
            report.rc_fixes[p] = c
            if s > c:
                leaked += 1
                rc_problems.add(f"cluster {p} has count {s} but {c} map leaves name it"
                                + (": leaked space" if c == 0 else ""))
            else:
                low += 1
                rc_problems.add(f"cluster {p} is named by {c} map leaves but its count is {s}: "
                                f"a write could overwrite shared data")
    rc_problems.close()
    used = sum(1 for p in range(sb.first_data_cluster, n) if computed[p])
    data_clusters = n - sb.first_data_cluster
    meta_used = sum(1 for p in range(first, end) if kinds[p])
    c = sb.cluster_size
    report.stats = {
        "generation": sb.generation, "cluster_size": c,
        "capacity_bytes": data_clusters * c, "allocated_bytes": used * c,
        "free_bytes": (data_clusters - used) * c,
        "metadata_bytes": sb.meta_pages * 4096, "metadata_used_bytes": meta_used * 4096,
        "volumes": sum(1 for r in by_id.values() if not r.flags & (VOL_SNAPSHOT | VOL_DYING)),
        "snapshots": sum(1 for r in by_id.values()
                         if r.flags & VOL_SNAPSHOT and not r.flags & VOL_DYING),
        "snapshot_groups": len(group_names),
        "mapped_clusters": total_mapped, "leaked_clusters": leaked,
        "undercounted_clusters": low,
    }
    return True


def format_report(report: CheckReport) -> str:
    """The report as lines a person reads."""
    lines = []
    verdict = "clean" if report.clean else f"{len(report.problems)} problem(s)"
    lines.append(f"{report.path}: {verdict} (generation {report.generation})")
    for p in report.problems:
        lines.append(f"  problem: {p}")
    for r in report.repaired:
        lines.append(f"  repaired: {r}")
    for note in report.notes:
        lines.append(f"  note: {note}")
    s = report.stats
    if s:
        lines.append(f"  capacity {s['capacity_bytes']} bytes, allocated {s['allocated_bytes']}, "
                     f"free {s['free_bytes']}; {s['volumes']} volume(s), {s['snapshots']} "
                     f"snapshot(s)")
    return "\n".join(lines)
