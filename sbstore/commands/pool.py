"""``sbstore pool`` and ``sbstore check``: offline commands on a pool file or device.

They open the pool themselves, so they refuse to run while a daemon holds it (the pool takes an
exclusive lock). ``sbstore pool volume ...`` manages volumes offline (tools, recovery, tests);
with a daemon running, ``sbstore volume ...`` goes through its API instead. Sizes take binary
suffixes: 512K, 1M, 10G, 2T.

Exit status: 0 success (``check``: the pool is clean), 1 failure (``check``: problems found),
2 bad usage.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sbstore.cli import CommandError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_size(text: str) -> int:
    """``10G`` -> 10737418240; suffixes K, M, G, T, P (powers of 1024), optional ``iB``/``B``."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGTP]?)(?:I?B)?\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 4096, 512K, 10G)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pool = subparsers.add_parser("pool", help="create or inspect a storage pool",
                                 description="Create or inspect a pool on a file or device.")
    pool_sub = pool.add_subparsers(dest="pool_command", metavar="ACTION")
    pool_sub.required = True

    p = pool_sub.add_parser("create", help="format a pool on a file or block device")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--file", metavar="PATH", help="a pool file (created or resized)")
    where.add_argument("--device", metavar="DEV", help="a block device, e.g. /dev/nvme0n1")
    p.add_argument("--size", type=parse_size, help="pool size (required with --file)")
    p.add_argument("--cluster-size", type=parse_size, default=None,
                   help="allocation and copy-on-write unit (default 256K)")
    p.add_argument("--metadata-size", type=parse_size, default=None,
                   help="size of the metadata area (default: from the pool and cluster size)")
    p.add_argument("--force", action="store_true", help="overwrite an existing pool")
    p.add_argument("--json", action="store_true", help="print the new pool's status as JSON")
    p.set_defaults(func=run_create)

    p = pool_sub.add_parser("status", help="capacity, allocation and volumes of a pool")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_status)

    p = subparsers.add_parser("check", help="verify a pool offline (and repair leaks)",
                              description="Verify superblock, metadata pages, maps, reference "
                              "counts and free space. Exit 0 when clean, 1 with each problem "
                              "in words when not.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--repair", action="store_true",
                   help="fix reference counts (frees leaked clusters)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--progress", action="store_true", default=None,
                   help="print a progress line on stderr (default: when it is a terminal)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run_check)

    vol = pool_sub.add_parser("volume", help="offline volume operations (no daemon running)",
                              description="Offline volume operations on a pool file or device "
                              "(the pool must not be served meanwhile).")
    vsub = vol.add_subparsers(dest="volume_command", metavar="ACTION")
    vsub.required = True
    p = vsub.add_parser("create", help="create a thin volume")
    p.add_argument("pool"), p.add_argument("name")
    p.add_argument("--size", type=parse_size, required=True)
    p.add_argument("--block-size", type=int, choices=[512, 4096], default=512)
    p.set_defaults(func=run_volume, op=_create)
    p = vsub.add_parser("list", help="list volumes and snapshots")
    p.add_argument("pool")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_list)
    for name, helptext, fn in (("snapshot", "snapshot VOLUME as NEW", _snapshot),
                               ("clone", "clone SNAPSHOT as NEW", _clone),
                               ("rename", "rename VOLUME to NEW", _rename)):
        p = vsub.add_parser(name, help=helptext)
        p.add_argument("pool"), p.add_argument("source"), p.add_argument("new")
        p.set_defaults(func=run_volume, op=fn)
    p = vsub.add_parser("revert", help="revert VOLUME to SNAPSHOT")
    p.add_argument("pool"), p.add_argument("source"), p.add_argument("new", metavar="snapshot")
    p.set_defaults(func=run_volume, op=_revert)
    for name, helptext, fn in (("delete", "delete a volume or snapshot", _delete),
                               ("inflate", "make a clone independent of its snapshot",
                                _inflate)):
        p = vsub.add_parser(name, help=helptext)
        p.add_argument("pool"), p.add_argument("source")
        p.set_defaults(func=run_volume, op=fn)
    p = vsub.add_parser("resize", help="grow a volume")
    p.add_argument("pool"), p.add_argument("source")
    p.add_argument("--size", type=parse_size, required=True)
    p.set_defaults(func=run_volume, op=_resize)


def _store_error(exc: Exception) -> CommandError:
    return CommandError(str(exc))


def run_create(args: argparse.Namespace) -> int:
    from sbstore.store import DEFAULT_CLUSTER_SIZE, Pool, StoreError
    path = args.file or args.device
    if args.file and args.size is None:
        raise CommandError("--file needs --size (e.g. --size 10G)")
    try:
        pool = Pool.create(path, args.size, cluster_size=args.cluster_size or DEFAULT_CLUSTER_SIZE,
                           metadata_bytes=args.metadata_size, force=args.force)
    except StoreError as exc:
        raise _store_error(exc) from None
    try:
        _print_status(pool, args.json)
    finally:
        pool.close()
    return 0


def run_status(args: argparse.Namespace) -> int:
    from sbstore.store import Pool, StoreError
    try:
        pool = Pool.open(args.path, readonly=True)
    except StoreError as exc:
        raise _store_error(exc) from None
    try:
        _print_status(pool, args.json)
    finally:
        pool.close()
    return 0


def _print_status(pool: Any, as_json: bool) -> None:
    stats = pool.stats()
    vols = [v.info() for v in pool.volumes]
    if as_json:
        print(json.dumps({"pool": stats.as_dict(), "volumes": vols}, indent=2))
        return
    print(f"pool {stats.path} (uuid {stats.uuid})")
    print(f"  cluster size {_human(stats.cluster_size)}, capacity {_human(stats.capacity_bytes)}, "
          f"allocated {_human(stats.allocated_bytes)}, free {_human(stats.free_bytes)}")
    print(f"  data I/O: {stats.io_engine} ({stats.io_reason})")
    print(f"  metadata {_human(stats.metadata_used_bytes)} used of "
          f"{_human(stats.metadata_bytes)}; {stats.volumes} volume(s), {stats.snapshots} "
          f"snapshot(s)")
    _print_volumes(vols)


def _print_volumes(vols: list[dict[str, Any]]) -> None:
    if not vols:
        return
    print(f"  {'NAME':24} {'KIND':9} {'SIZE':>9} {'ALLOC':>9} PARENT")
    for v in vols:
        print(f"  {v['name']:24} {v['kind']:9} {_human(v['size_bytes']):>9} "
              f"{_human(v['allocated_bytes']):>9} {v['parent'] or '-'}")


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "K", "M", "G", "T", "P"):
        if value < 1024 or unit == "P":
            return f"{int(value)}{unit}" if value == int(value) else f"{value:.1f}{unit}"
        value /= 1024
    return str(n)


def run_check(args: argparse.Namespace) -> int:
    from sbstore.store.check import check_pool, format_report
    show = sys.stderr.isatty() if args.progress is None else args.progress
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if show and (now - last[0] >= 0.2 or done == 0):
            last[0] = now
            sys.stderr.write(f"\rcheck {args.path}: volume maps {done}/{total} "
                             f"({100 * done // max(total, 1)}%)".ljust(70))
            sys.stderr.flush()
    try:
        report = check_pool(args.path, repair=args.repair, progress=progress)
    finally:
        if show and last[0]:
            sys.stderr.write("\n")
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(format_report(report))
    return 0 if report.clean else 1


def run_list(args: argparse.Namespace) -> int:
    from sbstore.store import Pool, StoreError
    try:
        pool = Pool.open(args.pool, readonly=True)
    except StoreError as exc:
        raise _store_error(exc) from None
    try:
        vols = [v.info() for v in pool.volumes]
    finally:
        pool.close()
    if args.json:
        print(json.dumps(vols, indent=2))
    else:
        _print_volumes(vols)
    return 0


def run_volume(args: argparse.Namespace) -> int:
    from sbstore.store import Pool, StoreError
    op: Callable[[Any, argparse.Namespace], Awaitable[str]] = args.op

    async def go() -> str:
        pool = Pool.open(args.pool)
        try:
            return await op(pool, args)
        finally:
            await pool.aclose()

    try:
        message = asyncio.run(go())
    except StoreError as exc:
        raise _store_error(exc) from None
    print(message)
    return 0


async def _create(pool: Any, args: argparse.Namespace) -> str:
    vol = await pool.create_volume(args.name, args.size, block_size=args.block_size)
    return f"created volume {vol.name} ({vol.size_bytes} bytes, uuid {vol.uuid})"


async def _snapshot(pool: Any, args: argparse.Namespace) -> str:
    snap = await pool.snapshot(args.source, args.new)
    return f"created snapshot {snap.name} of {args.source} (uuid {snap.uuid})"


async def _clone(pool: Any, args: argparse.Namespace) -> str:
    vol = await pool.clone(args.source, args.new)
    return f"created clone {vol.name} of {args.source} (uuid {vol.uuid})"


async def _rename(pool: Any, args: argparse.Namespace) -> str:
    await pool.rename(args.source, args.new)
    return f"renamed {args.source} to {args.new}"


async def _revert(pool: Any, args: argparse.Namespace) -> str:
    await pool.revert(args.source, args.new)
    return f"reverted {args.source} to {args.new}"


async def _delete(pool: Any, args: argparse.Namespace) -> str:
    await pool.delete(args.source)
    return f"deleted {args.source}"


async def _inflate(pool: Any, args: argparse.Namespace) -> str:
    await pool.inflate(args.source)
    return f"inflated {args.source}: it no longer depends on any snapshot"


async def _resize(pool: Any, args: argparse.Namespace) -> str:
    await pool.resize(args.source, args.size)
    return f"resized {args.source} to {args.size} bytes"
