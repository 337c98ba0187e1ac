"""``sbstore export create|list|show|set|add-volume|remove-volume|delete``: NVMe subsystems.

An export is a subsystem (its NQN), its namespaces (volumes) and the host NQNs allowed to
connect. Adding or removing a volume changes it live: connected hosts get an asynchronous
event and see the namespace appear or go without reconnecting.
"""
from __future__ import annotations

import argparse
from typing import Any

from sbstore.commands._common import (
    Subparsers,
    add_json,
    add_pool,
    call,
    emit,
    fields,
    human,
    table,
)
from sbstore.control.client import path


def register(subparsers: Subparsers) -> None:
    exp = subparsers.add_parser("export", help="export volumes to hosts (NVMe subsystems)",
                                description="Subsystems: NQN, namespaces, allowed hosts.")
    sub = exp.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("create", help="create a subsystem NQN")
    p.add_argument("nqn", help="e.g. nqn.2026-11.io.example:vol1")
    p.add_argument("--volume", action="append", default=[], metavar="VOLUME",
                   help="a volume to export (repeat: namespaces 1, 2, ...)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--host", action="append", default=[], metavar="HOSTNQN",
                     help="a host NQN allowed to connect (repeat)")
    who.add_argument("--allow-any-host", action="store_true", help="admit every host")
    p.add_argument("--model", help="model number hosts see (default sbstore)")
    p.add_argument("--serial", help="serial number hosts see (default: from the NQN)")
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_create)

    p = sub.add_parser("list", help="list exports with namespaces and hosts")
    add_json(p)
    p.set_defaults(func=run_list)

    p = sub.add_parser("show", help="one export in detail")
    p.add_argument("nqn")
    add_json(p)
    p.set_defaults(func=run_show)

    p = sub.add_parser("set", help="allow any host, or only the listed ones")
    p.add_argument("nqn")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--allow-any-host", dest="allow_any_host", action="store_true",
                   default=None)
    g.add_argument("--no-allow-any-host", dest="allow_any_host", action="store_false")
    add_json(p)
    p.set_defaults(func=run_set)

    p = sub.add_parser("add-volume", help="export one more volume (live)")
    p.add_argument("nqn")
    p.add_argument("volume")
    p.add_argument("--nsid", type=int, help="the namespace id (default: the lowest free)")
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_add_volume)

    p = sub.add_parser("remove-volume", help="stop exporting a volume (live)")
    p.add_argument("nqn")
    p.add_argument("volume", nargs="?", help="the volume (or give --nsid)")
    p.add_argument("--nsid", type=int, help="the namespace id")
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_remove_volume)

    p = sub.add_parser("delete", help="delete an export (its hosts are disconnected)")
    p.add_argument("nqn")
    p.add_argument("--force", action="store_true", help="even if it still has namespaces")
    add_json(p)
    p.set_defaults(func=run_delete)


def export_text(e: dict[str, Any]) -> str:
    hosts = "any host" if e["allow_any_host"] else (", ".join(e["hosts"]) or
                                                     "none (nobody may connect yet)")
    head = fields([("nqn", e["nqn"]), ("hosts", hosts), ("serial", e["serial"]),
                   ("model", e["model"]), ("controllers", e["controllers"])])
    rows = [(n["nsid"], n["pool"], n["volume"], human(n["size_bytes"]),
             "ro" if n["read_only"] else "rw" if n["read_only"] is not None else None,
             n["state"]) for n in e["namespaces"]]
    return head + "\n" + table(rows, ("NSID", "POOL", "VOLUME", "SIZE", "MODE", "STATE"),
                               right=("NSID", "SIZE"))


def run_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"nqn": args.nqn, "volumes": args.volume, "hosts": args.host,
                            "allow_any_host": args.allow_any_host, "pool": args.pool,
                            "model": args.model, "serial": args.serial}
    e = call(args, lambda c: c.post("/v1/subsystems", body))
    return emit(args, e, lambda e: f"created export {e['nqn']} with "
                                   f"{len(e['namespaces'])} namespace(s)")


def run_list(args: argparse.Namespace) -> int:
    exports = call(args, lambda c: c.get("/v1/subsystems"))
    rows = [(e["nqn"],
             " ".join(f"{n['nsid']}:{n['volume'] or '?' + n['uuid'][:8]}"
                      for n in e["namespaces"]) or None,
             "*" if e["allow_any_host"] else " ".join(e["hosts"]) or None,
             e["controllers"]) for e in exports]
    return emit(args, exports, lambda _: table(rows, ("NQN", "NAMESPACES", "HOSTS",
                                                      "CONTROLLERS"), right=("CONTROLLERS",)))


def run_show(args: argparse.Namespace) -> int:
    return emit(args, call(args, lambda c: c.get(path("v1", "subsystems", args.nqn))),
                export_text)


def run_set(args: argparse.Namespace) -> int:
    e = call(args, lambda c: c.patch(path("v1", "subsystems", args.nqn),
                                     {"allow_any_host": args.allow_any_host}))
    return emit(args, e, lambda e: f"{e['nqn']}: "
                                   f"{'any host' if e['allow_any_host'] else 'listed hosts only'}")


def run_add_volume(args: argparse.Namespace) -> int:
    body = {"volume": args.volume, "pool": args.pool, "nsid": args.nsid}
    e = call(args, lambda c: c.post(path("v1", "subsystems", args.nqn, "namespaces"), body))
    nsid = next((n["nsid"] for n in e["namespaces"] if n["volume"] == args.volume), "?")
    return emit(args, e, f"{args.nqn}: namespace {nsid} is {args.volume}")


def run_remove_volume(args: argparse.Namespace) -> int:
    from sbstore.cli import EXIT_USAGE, CommandError
    if (args.volume is None) == (args.nsid is None):
        raise CommandError("name the namespace by VOLUME or by --nsid N (one of them)",
                           exit_code=EXIT_USAGE, code="INVALID_ARGUMENT")
    if args.nsid is not None:
        e = call(args, lambda c: c.delete(path("v1", "subsystems", args.nqn, "namespaces",
                                               args.nsid)))
        what = f"namespace {args.nsid}"
    else:
        e = call(args, lambda c: c.delete(path("v1", "subsystems", args.nqn, "namespaces"),
                                          volume=args.volume, pool=args.pool))
        what = args.volume
    return emit(args, e, f"{args.nqn}: removed {what}")


def run_delete(args: argparse.Namespace) -> int:
    call(args, lambda c: c.delete(path("v1", "subsystems", args.nqn), force=args.force or None))
    return emit(args, {"deleted": {"export": args.nqn}}, f"deleted export {args.nqn}")
