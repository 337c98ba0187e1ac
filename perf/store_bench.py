"""Store benchmarks: every figure against a yardstick measured in the same run.

    python3 perf/store_bench.py [--dir /var/tmp] [--ops 50000] [--json perf/results/store.json]

Prints, in one run:
- 4 KiB random read and write IOPS through a volume (one coroutine, ``await vol.read/write``)
  against plain ``os.preadv``/``os.pwritev`` at the same file offsets (ratio);
- first-write (allocation) cost of a 4 KiB write to a never-written cluster, and the
  copy-on-write cost of a 4 KiB write to a cluster a snapshot shares, both against a plain
  4 KiB ``pwritev``;
- random 4 KiB read IOPS of a volume at snapshot-chain depth 64 against depth 1 (ratio);
- the cluster-size table: 4 KiB COW and first-write cost, and metadata bytes per TiB, for
  64 KiB .. 4 MiB clusters (what the default cluster size was chosen from);
- the memory of the maps of a fully written 1 TiB volume (computed from the structure sizes and
  checked against a measured smaller volume);
- inline I/O against a hop to a thread (why data I/O runs on the event loop), and the cost of a
  commit (Flush) on this file system.

Data I/O runs against the page cache of pool files in ``--dir`` (tmpfs by default: on this
VM's ext4, writes into file holes get 10x slower for minutes after large files are deleted, which
measures the file system, not the store); the commit cost is measured in ``--sync-dir``
(disk-backed). The files are deleted at the end. Each cost is the best of a few runs.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sbstore.store import DEFAULT_CLUSTER_SIZE, Pool, Volume
from sbstore.store.layout import LEAF_ENTRIES, PTRS_PER_PAGE

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
BLOCK = 4096


async def settle(pool: Pool) -> None:
    """Commit and write back what earlier steps dirtied, so it does not cost the next one."""
    await pool.flush()
    os.sync()


def per_op_us(seconds: float, n: int) -> float:
    return seconds / n * 1e6


async def fill(vol: Volume, chunk: int = 1 << 20) -> None:
    data = os.urandom(chunk)
    bs = vol.block_size
    for off in range(0, vol.size_bytes, chunk):
        n = min(chunk, vol.size_bytes - off)
        await vol.write(off // bs, data[:n])


async def store_reads(vol: Volume, lbas: list[int]) -> float:
    read = vol.read
    t = time.perf_counter()
    for lba in lbas:
        await read(lba, 8)
    return time.perf_counter() - t


async def store_writes(vol: Volume, lbas: list[int], data: bytes) -> float:
    write = vol.write
    t = time.perf_counter()
    for lba in lbas:
        await write(lba, data)
    return time.perf_counter() - t


def plain_reads(fd: int, offsets: list[int]) -> float:
    buf = bytearray(BLOCK)
    preadv = os.preadv
    t = time.perf_counter()
    for off in offsets:
        preadv(fd, [buf], off)
    return time.perf_counter() - t


def plain_writes(fd: int, offsets: list[int], data: bytes) -> float:
    pwritev = os.pwritev
    t = time.perf_counter()
    for off in offsets:
        pwritev(fd, [data], off)
    return time.perf_counter() - t


def physical(vol: Volume, lbas: list[int]) -> list[int]:
    m = vol._map
    assert m is not None
    c = vol._csize
    out = []
    for lba in lbas:
        off = lba * vol.block_size
        out.append(m[off // c] * c + off % c)
    return out


def best(fn: Any, repeat: int = 3) -> float:
    return min(fn() for _ in range(repeat))


async def abest(fn: Any, repeat: int = 3) -> float:
    return min([await fn() for _ in range(repeat)])


async def bench_steady(workdir: str, ops: int, out: dict[str, Any]) -> Pool:
    path = os.path.join(workdir, "store-bench.pool")
    pool = Pool.create(path, 3 * GiB, force=True)
    pool.commit_interval = 3600
    vol = await pool.create_volume("steady", 1 * GiB)
    await fill(vol)
    await pool.flush()
    rng = random.Random(1)
    lbas = [rng.randrange(0, vol.size_bytes // BLOCK) * (BLOCK // 512) for _ in range(ops)]
    offs = physical(vol, lbas)
    fd = pool._backing.fd
    data = os.urandom(BLOCK)
    await settle(pool)
    plain_r = best(lambda: plain_reads(fd, offs))
    store_r = await abest(lambda: store_reads(vol, lbas))
    plain_w = best(lambda: plain_writes(fd, offs, data))
    store_w = await abest(lambda: store_writes(vol, lbas, data))
    await settle(pool)
    out["random_4k"] = {
        "ops": ops,
        "read_iops_store": ops / store_r, "read_iops_preadv": ops / plain_r,
        "read_ratio": plain_r / store_r,
        "write_iops_store": ops / store_w, "write_iops_pwritev": ops / plain_w,
        "write_ratio": plain_w / store_w,
        "read_us_store": per_op_us(store_r, ops), "read_us_preadv": per_op_us(plain_r, ops),
        "write_us_store": per_op_us(store_w, ops), "write_us_pwritev": per_op_us(plain_w, ops),
    }
    return pool


async def cow_and_first_write(pool: Pool, n: int, tag: str) -> dict[str, float]:
    """Per-op cost of 4 KiB writes to n never-written clusters, then to n shared ones."""
    c = pool.cluster_size
    vol = await pool.create_volume(f"cw-{tag}", n * c)
    per = c // 512
    order = list(range(n))
    random.Random(2).shuffle(order)
    data = os.urandom(BLOCK)
    # Offset 8 KiB into each cluster: the first write zero-fills around it, the COW copies
    # the parts before and after it.
    lbas = [i * per + 16 for i in order]
    await settle(pool)
    t_first = await store_writes(vol, lbas, data)
    await vol.write(0, os.urandom(BLOCK))  # keep the volume's own leaf dirty-free
    await pool.flush()
    await vol.snapshot(f"cw-{tag}-snap")
    await settle(pool)
    t_cow = await store_writes(vol, lbas, data)
    await pool.flush()
    fd = pool._backing.fd
    offs = physical(vol, lbas)
    t_plain = best(lambda: plain_writes(fd, offs, data))
    return {"first_write_us": per_op_us(t_first, n), "cow_write_us": per_op_us(t_cow, n),
            "pwritev_4k_us": per_op_us(t_plain, n)}


async def fresh_cow_and_first_write(workdir: str, cs: int, n: int, repeat: int = 2
                                    ) -> dict[str, float]:
    """First-write and COW costs on a fresh pool with ``cs``-byte clusters (best of runs)."""
    runs = []
    for i in range(repeat):
        path = os.path.join(workdir, f"store-bench-{cs}-{i}.pool")
        pool = Pool.create(path, 2 * n * cs + 64 * MiB, cluster_size=cs, force=True)
        pool.commit_interval = 3600
        try:
            runs.append(await cow_and_first_write(pool, n, str(cs)))
        finally:
            await pool.aclose()
            os.unlink(path)
    return {k: min(r[k] for r in runs) for k in runs[0]}


async def bench_alloc_cow(workdir: str, cs: int, n: int, out: dict[str, Any]) -> None:
    r = await fresh_cow_and_first_write(workdir, cs, n, repeat=3)
    out["first_write"] = {"clusters": n, "cluster_size": cs,
                          "us_per_write": r["first_write_us"],
                          "pwritev_4k_us": r["pwritev_4k_us"],
                          "ratio_to_pwritev": r["first_write_us"] / r["pwritev_4k_us"]}
    out["cow_write"] = {"clusters": n, "cluster_size": cs,
                        "us_per_write": r["cow_write_us"], "pwritev_4k_us": r["pwritev_4k_us"],
                        "ratio_to_pwritev": r["cow_write_us"] / r["pwritev_4k_us"]}


async def bench_depth(pool: Pool, ops: int, out: dict[str, Any]) -> None:
    size = 256 * MiB
    shallow = await pool.create_volume("depth1", size)
    await fill(shallow)
    await shallow.snapshot("depth1-s1")
    deep = await pool.create_volume("depth64", size)
    await fill(deep)
    rng = random.Random(3)
    c = pool.cluster_size
    t_snap = 0.0
    for i in range(64):
        for _ in range(4):  # a few changes between snapshots, as a real chain would have
            await deep.write(rng.randrange(0, size // c) * (c // 512), os.urandom(BLOCK))
        t = time.perf_counter()
        await deep.snapshot(f"depth64-s{i + 1}")
        t_snap += time.perf_counter() - t
    await settle(pool)
    depth = 0
    p = deep.parent
    while p is not None:
        depth += 1
        p = p.parent
    lbas = [rng.randrange(0, size // BLOCK) * (BLOCK // 512) for _ in range(ops)]
    t1s, t64s = [], []
    for _ in range(3):  # alternate, so drift hits both alike
        t1s.append(await store_reads(shallow, lbas))
        t64s.append(await store_reads(deep, lbas))
    t1, t64 = min(t1s), min(t64s)
    out["chain_depth"] = {"depth_shallow": 1, "depth_deep": depth, "ops": ops,
                          "snapshot_ms": t_snap / 64 * 1e3, "volume_bytes": size,
                          "read_iops_depth1": ops / t1, "read_iops_depth64": ops / t64,
                          "ratio_64_to_1": t1 / t64}


async def bench_cluster_sizes(workdir: str, n: int, out: dict[str, Any]) -> None:
    rows = []
    for cs in (64 * KiB, 128 * KiB, 256 * KiB, 512 * KiB, 1 * MiB, 2 * MiB, 4 * MiB):
        k = max(32, min(n, (256 * MiB) // cs))
        r = await fresh_cow_and_first_write(workdir, cs, k)
        clusters_per_tib = TiB // cs
        # Per cluster: a 4-byte map entry in each volume's map leaf and a 4-byte refcount.
        meta = clusters_per_tib * 8 + (clusters_per_tib // LEAF_ENTRIES) * 8
        rows.append({"cluster_size": cs, "writes": k, "cow_4k_us": r["cow_write_us"],
                     "first_write_4k_us": r["first_write_us"],
                     "pwritev_4k_us": r["pwritev_4k_us"],
                     "metadata_bytes_per_tib": meta,
                     "map_memory_per_tib_volume": clusters_per_tib * 4})
    out["cluster_sizes"] = rows


def bench_memory(pool: Pool, out: dict[str, Any]) -> None:
    vol = pool.volume("steady")
    m = vol._map
    assert m is not None
    t = vol.tree
    measured = (sys.getsizeof(m) + sys.getsizeof(t.leaf_loc) + sys.getsizeof(t.leaf_crc)
                + sys.getsizeof(t.dir_loc) + sys.getsizeof(t.dir_crc))
    c = pool.cluster_size

    def computed(volume_bytes: int) -> int:
        clusters = volume_bytes // c
        leaves = -(-clusters // LEAF_ENTRIES)
        dirs = -(-leaves // PTRS_PER_PAGE)
        return clusters * 4 + leaves * 8 + dirs * 8

    scale = TiB // vol.size_bytes
    out["memory"] = {
        "cluster_size": c,
        "measured_volume_bytes": vol.size_bytes, "measured_map_bytes": measured,
        "computed_map_bytes_same_volume": computed(vol.size_bytes),
        "computed_map_bytes_1tib": computed(TiB),
        "measured_scaled_to_1tib": measured * scale,
        "pool_refcounts_per_tib_of_pool": (TiB // c) * 4, "pool_free_map_per_tib": TiB // c,
    }


async def bench_inline_vs_thread(pool: Pool, ops: int, out: dict[str, Any]) -> None:
    vol = pool.volume("steady")
    rng = random.Random(4)
    lbas = [rng.randrange(0, vol.size_bytes // BLOCK) * 8 for _ in range(ops)]
    offs = physical(vol, lbas)
    fd = pool._backing.fd
    loop = asyncio.get_running_loop()
    buf = bytearray(BLOCK)
    t = time.perf_counter()
    for off in offs:
        await loop.run_in_executor(None, os.preadv, fd, [buf], off)
    t_thread = time.perf_counter() - t
    t_inline = await store_reads(vol, lbas)
    out["inline_vs_thread"] = {"ops": ops, "inline_store_read_us": per_op_us(t_inline, ops),
                               "thread_hop_preadv_us": per_op_us(t_thread, ops)}


async def bench_commit(workdir: str, n: int, out: dict[str, Any]) -> None:
    path = os.path.join(workdir, "store-bench-commit.pool")
    pool = Pool.create(path, 256 * MiB, force=True)
    try:
        await _bench_commit(pool, n, out)
    finally:
        await pool.aclose()
        os.unlink(path)
    out["commit"]["dir"] = workdir


async def _bench_commit(pool: Pool, n: int, out: dict[str, Any]) -> None:
    vol = await pool.create_volume("commit", n * pool.cluster_size)
    per = pool.cluster_size // 512
    data = os.urandom(BLOCK)
    t = time.perf_counter()
    for i in range(n):
        await vol.write(i * per, data)  # a new mapping each time: a real metadata commit
        await vol.flush()
    t_commit = time.perf_counter() - t
    fd = pool._backing.fd
    t = time.perf_counter()
    for _ in range(n):
        os.pwrite(fd, data, 0)
        os.fdatasync(fd)
    t_sync = time.perf_counter() - t
    out["commit"] = {"writes": n, "write_plus_flush_ms": t_commit / n * 1e3,
                     "pwrite_plus_fdatasync_ms": t_sync / n * 1e3}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(),
                           "dir": args.dir, "default_cluster_size": DEFAULT_CLUSTER_SIZE,
                           "loop": type(asyncio.get_running_loop()).__module__}
    gc.disable()
    pool = await bench_steady(args.dir, args.ops, out)
    try:
        await bench_depth(pool, args.ops, out)
        bench_memory(pool, out)
        await bench_inline_vs_thread(pool, min(args.ops, 20000), out)
    finally:
        path = pool.path
        await pool.aclose()
        os.unlink(path)
    await bench_alloc_cow(args.dir, DEFAULT_CLUSTER_SIZE, args.clusters, out)
    await bench_cluster_sizes(args.dir, args.clusters, out)
    await bench_commit(args.sync_dir, 20, out)
    gc.enable()
    return out


def report(r: dict[str, Any]) -> None:
    def mb(n: float) -> str:
        return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n / KiB:.1f} KiB"

    print(f"store benchmark ({r['dir']}, Python {r['python']}, {r['loop']} loop, "
          f"default cluster {r['default_cluster_size'] // KiB} KiB)")
    s = r["random_4k"]
    print(f"  4K random read : {s['read_iops_store']:9.0f} IOPS store vs "
          f"{s['read_iops_preadv']:9.0f} preadv   ratio {s['read_ratio']:.2f} "
          f"({s['read_us_store']:.2f} vs {s['read_us_preadv']:.2f} us)")
    print(f"  4K random write: {s['write_iops_store']:9.0f} IOPS store vs "
          f"{s['write_iops_pwritev']:9.0f} pwritev  ratio {s['write_ratio']:.2f} "
          f"({s['write_us_store']:.2f} vs {s['write_us_pwritev']:.2f} us)")
    f, c = r["first_write"], r["cow_write"]
    print(f"  first write (allocate + zero-fill {f['cluster_size'] // KiB} KiB): "
          f"{f['us_per_write']:.1f} us = {f['ratio_to_pwritev']:.1f}x a 4K pwritev "
          f"({f['pwritev_4k_us']:.1f} us)")
    print(f"  COW write after a snapshot ({c['cluster_size'] // KiB} KiB cluster): "
          f"{c['us_per_write']:.1f} us = {c['ratio_to_pwritev']:.1f}x a 4K pwritev")
    d = r["chain_depth"]
    print(f"  read at chain depth {d['depth_deep']}: {d['read_iops_depth64']:.0f} IOPS vs "
          f"{d['read_iops_depth1']:.0f} at depth 1: ratio {d['ratio_64_to_1']:.3f} "
          f"(target >= 0.90); a snapshot of the {d['volume_bytes'] // MiB} MiB volume took "
          f"{d['snapshot_ms']:.2f} ms (commit included)")
    print("  cluster size: COW 4K | first write 4K | metadata per TiB | map RAM per TiB volume")
    for row in r["cluster_sizes"]:
        print(f"    {row['cluster_size'] // KiB:5d} KiB: {row['cow_4k_us']:8.1f} us | "
              f"{row['first_write_4k_us']:8.1f} us | {mb(row['metadata_bytes_per_tib']):>10} | "
              f"{mb(row['map_memory_per_tib_volume']):>10}")
    m = r["memory"]
    print(f"  maps of a fully written 1 TiB volume ({m['cluster_size'] // KiB} KiB clusters): "
          f"{mb(m['computed_map_bytes_1tib'])} computed; measured "
          f"{mb(m['measured_map_bytes'])} for {m['measured_volume_bytes'] // GiB} GiB "
          f"-> {mb(m['measured_scaled_to_1tib'])} scaled; pool refcounts "
          f"{mb(m['pool_refcounts_per_tib_of_pool'])} + free map "
          f"{mb(m['pool_free_map_per_tib'])} per TiB of pool")
    t = r["inline_vs_thread"]
    print(f"  inline store read {t['inline_store_read_us']:.2f} us vs preadv through a thread "
          f"{t['thread_hop_preadv_us']:.2f} us")
    k = r["commit"]
    print(f"  write + flush (metadata commit) {k['write_plus_flush_ms']:.2f} ms vs "
          f"pwrite + fdatasync {k['pwrite_plus_fdatasync_ms']:.2f} ms (in {k['dir']})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else "/var/tmp"
    ap.add_argument("--dir", default=shm, help=f"where the pool files go (default {shm})")
    ap.add_argument("--sync-dir", default="/var/tmp",
                    help="a disk-backed directory for the commit cost (default /var/tmp)")
    ap.add_argument("--ops", type=int, default=50000, help="random I/Os per measurement")
    ap.add_argument("--clusters", type=int, default=512,
                    help="clusters written for first-write and COW costs")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args()
    if args.no_uvloop:
        result = asyncio.run(run(args))
    else:
        import uvloop
        result = uvloop.run(run(args))
    report(result)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
