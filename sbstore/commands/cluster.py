"""``sbstore cluster status|add-replica|remove-replica|replace|move``: the cluster as any node
sees it, and where replicated volumes' copies live (cluster mode, docs/cluster.md)."""
from __future__ import annotations

import argparse
import time
from typing import Any

from sbstore.cli import CommandError
from sbstore.commands._common import Subparsers, add_json, call, emit, human, table
from sbstore.control.client import path


def register(subparsers: Subparsers) -> None:
    cl = subparsers.add_parser("cluster", help="cluster mode: nodes and replicated volumes",
                               description="The cluster's nodes and replicated volumes, as "
                                           "the node asked sees them.")
    sub = cl.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("status", help="nodes (live, lease, peer address) and replicated "
                                      "volumes (primary, epoch, in sync, state)")
    add_json(p)
    p.set_defaults(func=run_status)
    register_replicas(sub)


def status_text(s: dict[str, Any]) -> str:
    nodes = [(n["name"] + (" *" if n["self"] else ""), "live" if n["live"] else "DOWN",
              n["peer_address"], " ".join(n["listeners"]) or None,
              human(n["free_bytes"]) if n["free_bytes"] is not None else None,
              f"{n['lease_left_s']:.1f} s" if n["lease_left_s"] is not None else None)
             for n in s["nodes"]]
    vols = []
    for v in s["volumes"]:
        dirty = v.get("dirty_bytes") or {}
        vols.append((v["name"], human(v["size_bytes"]), v["state"], v["primary"], v["epoch"],
                     ",".join(v["replicas"]), ",".join(v["in_sync"]) or None,
                     " ".join(f"{k}:{human(b)}" for k, b in dirty.items()) or None,
                     " ".join(f"{k}:{human(b)}" for k, b in v["last_resync_bytes"].items())
                     or None))
    return (f"node {s['node']} (etcd revision {s['revision']})\n\n"
            + table(nodes, ("NODE", "STATE", "PEER", "LISTENERS", "FREE", "LEASE"),
                    right=("FREE",))
            + "\n\n"
            + table(vols, ("VOLUME", "SIZE", "STATE", "PRIMARY", "EPOCH", "REPLICAS",
                           "IN SYNC", "DIRTY", "LAST RESYNC"), right=("SIZE",)))


def run_status(args: argparse.Namespace) -> int:
    s = call(args, lambda c: c.get("/v1/cluster"))
    return emit(args, s, status_text)


def register_replicas(sub: Any) -> None:
    p = sub.add_parser("add-replica", help="a new replica of VOLUME on live node NODE (it "
                                           "gets a full copy, then counts as in sync)")
    p.add_argument("volume")
    p.add_argument("node")
    add_json(p)
    p.set_defaults(func=lambda a: _replicas(a, add=a.node))
    p = sub.add_parser("remove-replica", help="take VOLUME's replica off NODE (its copy is "
                                              "deleted there)")
    p.add_argument("volume")
    p.add_argument("node")
    add_json(p)
    p.set_defaults(func=lambda a: _replicas(a, remove=a.node))
    p = sub.add_parser("replace", help="NODE is gone: its replica of VOLUME moves to NEW, "
                                       "which gets a full copy")
    p.add_argument("volume")
    p.add_argument("node")
    p.add_argument("new")
    add_json(p)
    p.set_defaults(func=lambda a: _replicas(a, add=a.new, remove=a.node))
    p = sub.add_parser("move", help="move VOLUME's replica from NODE to NEW online: add a "
                                    "replica on NEW, wait until it is in sync, remove NODE's")
    p.add_argument("volume")
    p.add_argument("node")
    p.add_argument("new")
    p.add_argument("--wait", type=float, default=600.0, metavar="SECONDS",
                   help="how long to wait for the new replica to catch up (default 600)")
    add_json(p)
    p.set_defaults(func=run_move)


def _replicas(args: argparse.Namespace, *, add: str | None = None,
              remove: str | None = None) -> int:
    body = {"add": add, "remove": remove}
    v = call(args, lambda c: c.post(path("v1", "cluster", "volumes", args.volume, "replicas"),
                                    body))
    return emit(args, v, lambda v: f"{v['name']}: replicas {', '.join(v['replicas'])}")


def run_move(args: argparse.Namespace) -> int:
    call(args, lambda c: c.post(path("v1", "cluster", "volumes", args.volume, "replicas"),
                                {"add": args.new}))
    deadline = time.monotonic() + args.wait
    while True:  # bounded by --wait
        status = call(args, lambda c: c.get("/v1/cluster"))
        v = next((v for v in status["volumes"] if v["name"] == args.volume), None)
        if v is None:
            raise CommandError(f"volume {args.volume!r} is gone")
        if args.new in v["in_sync"]:
            break
        if time.monotonic() > deadline:
            raise CommandError(f"{args.new} is not in sync after {args.wait:g} s; the "
                               f"replica on {args.node} is kept (run 'sbstore cluster "
                               f"remove-replica {args.volume} {args.node}' once it is)")
        time.sleep(0.5)
    v = call(args, lambda c: c.post(path("v1", "cluster", "volumes", args.volume, "replicas"),
                                    {"remove": args.node}))
    return emit(args, v, lambda v: f"moved {v['name']} from {args.node} to {args.new}: "
                                   f"replicas {', '.join(v['replicas'])}")
