"""``sbstore snapshot create|list|groups|show|delete|revert``: read-only, instant snapshots,
alone or in groups (``create --group NAME VOL...``: several volumes at one instant)."""
from __future__ import annotations

import argparse

from sbstore.cli import EXIT_USAGE, CommandError
from sbstore.commands._common import (
    Subparsers,
    add_json,
    add_pool,
    call,
    emit,
    human,
    table,
)
from sbstore.commands.transfer import run_diff
from sbstore.commands.volume import volume_text
from sbstore.control.client import path


def register(subparsers: Subparsers) -> None:
    snap = subparsers.add_parser("snapshot", help="snapshot volumes, revert to snapshots",
                                 description="Read-only, instant snapshots of volumes.")
    sub = snap.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("create", help="snapshot VOLUME as NAME, or (--group) several volumes "
                                      "at one instant",
                       usage="%(prog)s VOLUME NAME | --group GROUP VOLUME [VOLUME ...]")
    p.add_argument("names", nargs="+", metavar="VOLUME",
                   help="VOLUME NAME; with --group, the volumes (each gets VOLUME@GROUP)")
    p.add_argument("--group", metavar="GROUP",
                   help="freeze all the volumes at one instant as snapshot group GROUP")
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_create)

    p = sub.add_parser("list", help="list snapshots")
    p.add_argument("--volume", help="only those in this volume's history (newest first)")
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_list)

    p = sub.add_parser("groups", help="list snapshot groups")
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_groups)

    p = sub.add_parser("show", help="one snapshot in detail")
    p.add_argument("name")
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_show)

    p = sub.add_parser("delete", help="delete a snapshot, or (--group) a snapshot group")
    p.add_argument("name", nargs="?")
    p.add_argument("--group", metavar="GROUP", help="delete every snapshot of GROUP")
    p.add_argument("--force", action="store_true", help="even if exported")
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_delete)

    p = sub.add_parser("diff", help="extents where SNAPSHOT differs from BASE (from the maps, "
                                    "no data read)")
    p.add_argument("base", metavar="BASE", help="the older snapshot")
    p.add_argument("snapshot", metavar="SNAPSHOT")
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_diff)

    p = sub.add_parser("revert", help="make VOLUME read what SNAPSHOT reads")
    p.add_argument("volume")
    p.add_argument("snapshot")
    p.add_argument("--force", action="store_true",
                   help="even if the volume is exported (its hosts see the data change)")
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_revert)


def run_create(args: argparse.Namespace) -> int:
    if args.group is not None:
        body = {"name": args.group, "volumes": args.names, "pool": args.pool}
        g = call(args, lambda c: c.post("/v1/snapshot-groups", body))
        return emit(args, g, lambda g: f"created snapshot group {g['name']}: " + ", ".join(
            s["name"] for s in g["snapshots"]))
    if len(args.names) != 2:
        raise CommandError("give VOLUME NAME (the volume and the snapshot's name), or --group "
                           "GROUP VOLUME...", exit_code=EXIT_USAGE)
    volume, name = args.names
    v = call(args, lambda c: c.post("/v1/snapshots", {"volume": volume, "name": name,
                                                      "pool": args.pool}))
    if "state" in v:  # a replicated volume's: taken on every in-sync copy
        return emit(args, v, lambda v: f"snapshot {v['name']} of replicated volume {volume}: "
                                       f"{v['state']} on {', '.join(v['nodes'])}")
    return emit(args, v, lambda v: f"created snapshot {v['name']} of {volume} "
                                   f"(uuid {v['uuid']})")


def run_groups(args: argparse.Namespace) -> int:
    groups = call(args, lambda c: c.get("/v1/snapshot-groups", pool=args.pool))
    rows = [(g["pool"], g["name"], g["created"], ",".join(s["name"] for s in g["snapshots"]))
            for g in groups]
    return emit(args, groups, lambda _: table(rows, ("POOL", "GROUP", "CREATED", "SNAPSHOTS")))


def run_list(args: argparse.Namespace) -> int:
    snaps = call(args, lambda c: c.get("/v1/snapshots", pool=args.pool, volume=args.volume))
    rows = [(s["pool"], s["name"], human(s["size_bytes"]), human(s["allocated_bytes"]),
             s["parent"], ",".join(s["children"]) or None, s["created"]) for s in snaps]
    return emit(args, snaps, lambda _: table(rows, ("POOL", "NAME", "SIZE", "ALLOC", "PARENT",
                                                    "CHILDREN", "CREATED"),
                                             right=("SIZE", "ALLOC")))


def run_show(args: argparse.Namespace) -> int:
    v = call(args, lambda c: c.get(path("v1", "snapshots", args.name), pool=args.pool))
    return emit(args, v, volume_text)


def run_delete(args: argparse.Namespace) -> int:
    if (args.name is None) == (args.group is None):
        raise CommandError("give a snapshot NAME or --group GROUP (one of them)",
                           exit_code=EXIT_USAGE)
    if args.group is not None:
        call(args, lambda c: c.delete(path("v1", "snapshot-groups", args.group),
                                      pool=args.pool, force=args.force or None))
        return emit(args, {"deleted": {"group": args.group, "pool": args.pool}},
                    f"deleted snapshot group {args.group}")
    call(args, lambda c: c.delete(path("v1", "snapshots", args.name), pool=args.pool,
                                  force=args.force or None))
    return emit(args, {"deleted": {"snapshot": args.name, "pool": args.pool}},
                f"deleted snapshot {args.name}")


def run_revert(args: argparse.Namespace) -> int:
    body = {"snapshot": args.snapshot, "force": args.force}
    v = call(args, lambda c: c.post(path("v1", "volumes", args.volume, "revert"), body,
                                    pool=args.pool))
    return emit(args, v, lambda v: f"reverted {v['name']} to {args.snapshot}")
