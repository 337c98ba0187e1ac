"""``check`` on deliberately broken pools, ``--repair``, and the CLI through ``sbstore.cli.main``."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sbstore.cli import main
from sbstore.store import Corrupt, Pool
from sbstore.store.check import check_pool
from sbstore.store.layout import LEAF_SHIFT, PAGE_SIZE

pytestmark = [pytest.mark.usefixtures("every_engine")]
POOL_ON = ("file", "loop")  # every test that takes a pool runs on a file and a block device

C = 4096


async def make_pool(path: Path) -> Pool:
    pool = Pool.create(path, 16 << 20, cluster_size=C)
    v = await pool.create_volume("v", 1 << 20)
    await v.write(0, os.urandom(64 << 10))
    await v.snapshot("s")
    await v.write(0, os.urandom(8192))
    w = await pool.create_volume("w", 1 << 20)
    await w.write(100, os.urandom(16 << 10))
    await pool.flush()
    return pool


def clean(path: Path) -> None:
    report = check_pool(str(path))
    assert report.clean, report.problems


async def test_healthy_pool_is_clean_with_stats(pool_path: Path) -> None:
    pool = await make_pool(pool_path)
    stats = pool.stats()
    await pool.aclose()
    report = check_pool(str(pool_path))
    assert report.clean and not report.problems
    assert report.stats["allocated_bytes"] == stats.allocated_bytes
    assert report.stats["free_bytes"] == stats.free_bytes
    assert (report.stats["volumes"], report.stats["snapshots"]) == (2, 1)


async def test_leaked_clusters_are_found_and_freed(pool_path: Path) -> None:
    pool = await make_pool(pool_path)
    free_before = pool.stats().free_bytes
    space = pool._space
    leaked = [space.alloc() for _ in range(3)]  # counted, but no map names them
    pool._note_change()
    await pool.aclose()
    report = check_pool(str(pool_path))
    assert not report.clean
    assert sum("leaked space" in p for p in report.problems) == 3
    assert f"cluster {leaked[0]} has count 1 but 0 map leaves name it: leaked space" in \
        report.problems
    repaired = check_pool(str(pool_path), repair=True)
    assert repaired.clean, repaired.problems
    assert repaired.repaired == ["freed 3 leaked cluster(s)"]
    pool = Pool.open(pool_path)
    assert pool.stats().free_bytes == free_before
    await pool.aclose()


async def test_undercounted_shared_cluster_is_dangerous_and_repaired(pool_path: Path) -> None:
    pool = await make_pool(pool_path)
    s = pool.volume("s")
    m = s._load_map()
    shared = m[5]  # v and s still share it: named by s's leaf and v's own (split) leaf
    assert pool._space.rc[shared] == 2
    pool._space.rc[shared] = 1
    pool._space.tree.touch(shared >> LEAF_SHIFT)
    pool._note_change()
    await pool.aclose()
    report = check_pool(str(pool_path))
    assert any(f"cluster {shared} is named by 2 map leaves but its count is 1: a write could "
               f"overwrite shared data" == p for p in report.problems), report.problems
    assert check_pool(str(pool_path), repair=True).clean


async def test_wrong_mapped_total_is_repaired(pool_path: Path) -> None:
    pool = await make_pool(pool_path)
    w = pool.volume("w")
    right = w.mapped
    w.mapped += 5
    pool._record_changed(w)
    await pool.aclose()
    report = check_pool(str(pool_path))
    want = f"record of 'w' says {right + 5} mapped clusters, its map has {right}"
    assert report.problems == [want]
    after = check_pool(str(pool_path), repair=True)
    assert after.clean and "mapped-cluster total" in after.repaired[0]


async def test_map_entry_outside_the_data_area(pool_path: Path) -> None:
    pool = await make_pool(pool_path)
    w = pool.volume("w")
    m = w._load_map()
    pool._touch_map_leaf(w, 0)
    m[0] = 3  # a cluster inside the metadata area
    w.mapped += 1
    await pool.aclose()
    report = check_pool(str(pool_path))
    assert any("names cluster 3, outside the data area" in p for p in report.problems)
    after = check_pool(str(pool_path), repair=True)
    assert not after.clean
    assert "nothing repaired" in after.notes[-1]


async def test_cluster_shared_by_unrelated_volumes(pool_path: Path) -> None:
    pool = await make_pool(pool_path)
    v, w = pool.volume("v"), pool.volume("w")
    mv, mw = v._load_map(), w._load_map()
    pool._touch_map_leaf(w, 0)
    mw[0] = mv[0]  # w now reads v's data
    pool._space.incref(mv[0])
    w.mapped += 1
    await pool.aclose()
    report = check_pool(str(pool_path))
    assert any("mapped by unrelated volumes" in p and "read the other's data" in p
               for p in report.problems), report.problems


async def test_damaged_page_is_reported_in_words(pool_path: Path) -> None:
    pool = await make_pool(pool_path)
    root = pool.volume("w").tree.root
    await pool.flush()
    # One more commit that does not touch w, so w's root is not in the last commit's manifest.
    await pool.volume("v").write(1000, b"x" * 512)
    await pool.aclose()
    fd = os.open(pool_path, os.O_RDWR)
    os.pwrite(fd, b"\xde\xad\xbe\xef", root * PAGE_SIZE + 100)
    os.close(fd)
    report = check_pool(str(pool_path))
    assert not report.clean
    assert any("map of 'w' root (page" in p and "fails its checksum" in p
               for p in report.problems), report.problems
    with pytest.raises(Corrupt, match="checksum"):
        Pool.open(pool_path)


async def test_interrupted_delete_is_a_note_and_open_finishes_it(pool_path: Path) -> None:
    pool = await make_pool(pool_path)
    free = pool.stats().free_bytes
    w = pool.volume("w")
    w_bytes = w.allocated_bytes
    pool._make_dying(w)
    await pool.flush()  # the intent is durable; the crash comes before any space is dropped
    pool._shutdown()
    report = check_pool(str(pool_path))
    assert report.clean
    assert any("'w'" in n and "being deleted" in n for n in report.notes)
    pool = Pool.open(pool_path)
    assert [v.name for v in pool.volumes] == ["v", "s"]
    assert pool.stats().free_bytes == free + w_bytes
    await pool.aclose()
    clean(pool_path)


# --- the command line -----------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_pool_lifecycle(pool_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = str(pool_path)
    rc, out, _ = run(capsys, "pool", "create", "--file", p, "--size", "64M",
                     "--cluster-size", "64K")
    assert rc == 0 and "cluster size 64K" in out
    rc, _, err = run(capsys, "pool", "create", "--file", p, "--size", "64M")
    assert rc == 1 and "--force" in err
    assert run(capsys, "pool", "volume", "create", p, "vm1", "--size", "1G")[0] == 0
    assert run(capsys, "pool", "volume", "snapshot", p, "vm1", "gold")[0] == 0
    assert run(capsys, "pool", "volume", "clone", p, "gold", "vm2")[0] == 0
    rc, out, _ = run(capsys, "pool", "status", p, "--json")
    status = json.loads(out)
    assert rc == 0 and status["pool"]["cluster_size"] == 65536
    assert {v["name"]: v["parent"] for v in status["volumes"]} == \
        {"vm1": "gold", "gold": None, "vm2": "gold"}
    assert run(capsys, "pool", "volume", "inflate", p, "vm2")[0] == 0
    assert run(capsys, "pool", "volume", "delete", p, "gold")[0] == 0  # vm1 keeps its data
    assert run(capsys, "pool", "volume", "resize", p, "vm1", "--size", "2G")[0] == 0
    assert run(capsys, "pool", "volume", "rename", p, "vm1", "web")[0] == 0
    rc, out, _ = run(capsys, "pool", "volume", "list", p, "--json")
    assert {v["name"]: v["size_bytes"] for v in json.loads(out)} == {"web": 2 << 30,
                                                                     "vm2": 1 << 30}
    rc, out, _ = run(capsys, "check", p)
    assert rc == 0 and "clean" in out
    rc, _, err = run(capsys, "pool", "volume", "delete", p, "nope")
    assert rc == 1 and "no volume or snapshot named 'nope'" in err


async def test_cli_check_reports_and_repairs(pool_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    pool = await make_pool(pool_path)
    pool._space.alloc()
    pool._note_change()
    await pool.aclose()
    rc, out, _ = run(capsys, "check", str(pool_path))
    assert rc == 1 and "problem: cluster" in out and "leaked space" in out
    rc, out, _ = run(capsys, "check", str(pool_path), "--json")
    assert rc == 1 and json.loads(out)["clean"] is False
    rc, out, _ = run(capsys, "check", str(pool_path), "--repair")
    assert rc == 0 and "repaired: freed 1 leaked cluster(s)" in out


def test_cli_usage_errors(pool_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "pool", "create", "--file", str(pool_path), "--size", "ten gigs")
    assert rc == 2 and "not a size" in err
    rc, _, err = run(capsys, "pool", "create", "--file", str(pool_path))
    assert rc == 1 and "--size" in err
    rc, _, err = run(capsys, "pool", "create", "--file", str(pool_path), "--size", "64M",
                     "--cluster-size", "3K")
    assert rc == 1 and "power of two" in err
    rc, _, err = run(capsys, "pool", "status", str(pool_path) + ".missing")
    assert rc == 1 and "no such file" in err


def test_check_reports_progress_over_the_volume_maps(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from sbstore.store import Pool
    from sbstore.store.check import check_pool

    async def make() -> None:
        p = Pool.create(tmp_path / "p.img", 16 << 20, cluster_size=64 << 10)
        for i in range(3):
            await p.create_volume(f"v{i}", 1 << 20)
        await p.aclose()
    asyncio.run(make())
    seen: list[tuple[int, int]] = []
    assert check_pool(str(tmp_path / "p.img"), progress=lambda d, t: seen.append((d, t))).clean
    assert seen == [(0, 3), (1, 3), (2, 3)]
