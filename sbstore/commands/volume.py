"""``sbstore volume create|list|show|resize|rename|set|delete``: volumes through the daemon."""
from __future__ import annotations

import argparse
from typing import Any

from sbstore.commands._common import (
    Subparsers,
    add_json,
    add_policy_options,
    add_pool,
    call,
    emit,
    fields,
    human,
    policy_from_args,
    policy_text,
    positive_size,
    table,
)
from sbstore.commands.operation import add_progress
from sbstore.commands.transfer import run_export, run_import
from sbstore.control.client import path


def register(subparsers: Subparsers) -> None:
    vol = subparsers.add_parser("volume", help="create, list, resize, delete volumes",
                                description="Thin volumes in the daemon's pools.")
    sub = vol.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("create", help="create a thin volume")
    p.add_argument("name")
    p.add_argument("--size", type=positive_size, required=True, help="e.g. 10G")
    p.add_argument("--block-size", type=int, choices=(512, 4096), default=4096)
    p.add_argument("--tenant", help="its tenant (default: default)")
    p.add_argument("--replicas", type=int, metavar="N",
                   help="cluster mode: a replicated volume, N copies on N distinct nodes")
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_create)

    p = sub.add_parser("list", help="list volumes")
    p.add_argument("--all", action="store_true", help="snapshots too")
    p.add_argument("--tenant", help="only this tenant's")
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_list)

    p = sub.add_parser("show", help="one volume or snapshot in detail")
    p.add_argument("name")
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_show)

    p = sub.add_parser("resize", help="grow (or, with --force, shrink) a volume; connected "
                                      "hosts are told")
    p.add_argument("name")
    p.add_argument("--size", type=positive_size, required=True, help="the new size")
    p.add_argument("--force", action="store_true",
                   help="allow shrinking: the data past the new end is discarded")
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_resize)

    p = sub.add_parser("rename", help="rename a volume")
    p.add_argument("name")
    p.add_argument("new_name")
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_rename)

    p = sub.add_parser("set", help="move a volume to a tenant, set or clear its own limits")
    p.add_argument("name")
    p.add_argument("--tenant")
    p.add_argument("--clear-limits", action="store_true", help="drop the volume's own limits")
    add_policy_options(p)
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_set)

    p = sub.add_parser("export", help="write a snapshot as a stream (a full copy, or with "
                                      "--since an increment)")
    p.add_argument("snapshot")
    p.add_argument("--since", metavar="BASE", help="only what changed since snapshot BASE")
    p.add_argument("--to", required=True, metavar="FILE", help="a file, or - for stdout")
    add_progress(p)
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_export)

    p = sub.add_parser("import", help="read a stream into volume NAME (a full copy creates "
                                      "it; an increment updates it)")
    p.add_argument("file", metavar="FILE", help="a file, or - for stdin")
    p.add_argument("name")
    p.add_argument("--tenant", help="a new volume's tenant (default: default)")
    p.add_argument("--force", action="store_true",
                   help="apply an increment even though the volume is exported")
    add_progress(p)
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_import)

    p = sub.add_parser("delete", help="delete a volume")
    p.add_argument("name")
    p.add_argument("--force", action="store_true",
                   help="even if exported (it is removed from its exports first)")
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_delete)


def volume_text(v: dict[str, Any]) -> str:
    exports = ", ".join(f"{e['nqn']} (nsid {e['nsid']})" for e in v["exports"]) or "none"
    return fields([
        ("name", v["name"]), ("pool", v["pool"]), ("kind", v["kind"]), ("uuid", v["uuid"]),
        ("size", (f"{human(v['size_bytes'])} ({v['size_bytes']} bytes, "
                  f"{v['block_size']}-byte blocks)")),
        ("allocated", human(v["allocated_bytes"])), ("parent", v["parent"]),
        ("children", ", ".join(v["children"]) or None), ("tenant", v["tenant"]),
        ("limits", policy_text(v["limits"]) if v["limits"] else "none (the tenant's apply)"),
        ("exports", exports), ("created", v["created"])])


def volumes_table(vols: list[dict[str, Any]]) -> str:
    rows = [(v["pool"], v["name"], v["kind"], human(v["size_bytes"]),
             human(v["allocated_bytes"]), v["tenant"], v["parent"],
             ",".join(f"{e['nqn']}#{e['nsid']}" for e in v["exports"]) or None)
            for v in vols]
    return table(rows, ("POOL", "NAME", "KIND", "SIZE", "ALLOC", "TENANT", "PARENT",
                        "EXPORTS"), right=("SIZE", "ALLOC"))


def run_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "size_bytes": args.size,
                            "block_size": args.block_size, "pool": args.pool,
                            "tenant": args.tenant, "replicas": args.replicas}
    v = call(args, lambda c: c.post("/v1/volumes", body))
    if args.replicas is not None:
        return emit(args, v, lambda v: f"created replicated volume {v['name']} "
                                       f"({human(v['size_bytes'])}, uuid {v['uuid']}) on "
                                       f"{', '.join(v['replicas'])}")
    return emit(args, v, lambda v: f"created volume {v['name']} in pool {v['pool']} "
                                   f"({human(v['size_bytes'])}, uuid {v['uuid']})")


def run_list(args: argparse.Namespace) -> int:
    vols = call(args, lambda c: c.get("/v1/volumes", pool=args.pool, tenant=args.tenant,
                                      kind=None if args.all else "volume"))
    return emit(args, vols, volumes_table)


def run_show(args: argparse.Namespace) -> int:
    v = call(args, lambda c: c.get(path("v1", "volumes", args.name), pool=args.pool))
    return emit(args, v, volume_text)


def run_resize(args: argparse.Namespace) -> int:
    v = call(args, lambda c: c.post(path("v1", "volumes", args.name, "resize"),
                                    {"size_bytes": args.size, "force": args.force},
                                    pool=args.pool))
    return emit(args, v, lambda v: f"resized {v['name']} to {human(v['size_bytes'])}")


def run_rename(args: argparse.Namespace) -> int:
    v = call(args, lambda c: c.post(path("v1", "volumes", args.name, "rename"),
                                    {"new_name": args.new_name}, pool=args.pool))
    return emit(args, v, lambda v: f"renamed {args.name} to {v['name']}")


def run_set(args: argparse.Namespace) -> int:
    body: dict[str, Any] = policy_from_args(args)
    if args.tenant is not None:
        body["tenant"] = args.tenant
    if args.clear_limits:
        body["clear_limits"] = True
    v = call(args, lambda c: c.patch(path("v1", "volumes", args.name), body, pool=args.pool))
    return emit(args, v, lambda v: f"{v['name']}: tenant {v['tenant']}, limits "
                                   f"{policy_text(v['limits']) if v['limits'] else 'none'}")


def run_delete(args: argparse.Namespace) -> int:
    call(args, lambda c: c.delete(path("v1", "volumes", args.name), pool=args.pool,
                                  force=args.force or None))
    return emit(args, {"deleted": {"volume": args.name, "pool": args.pool}},
                f"deleted volume {args.name}")
