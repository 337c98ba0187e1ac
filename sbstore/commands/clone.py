"""``sbstore clone create|inflate``: writable volumes from snapshots."""
from __future__ import annotations

import argparse

from sbstore.commands._common import Subparsers, add_json, add_pool, call, emit
from sbstore.commands.operation import add_progress, with_progress
from sbstore.control.client import path


def register(subparsers: Subparsers) -> None:
    clone = subparsers.add_parser("clone", help="clone snapshots into writable volumes",
                                  description="Writable volumes that share a snapshot's data.")
    sub = clone.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("create", help="clone SNAPSHOT as NAME")
    p.add_argument("snapshot")
    p.add_argument("name")
    p.add_argument("--tenant", help="its tenant (default: the snapshot's)")
    p.add_argument("--local", action="store_true",
                   help="cluster mode: a plain local volume cloned from this node's copy of a "
                        "replicated volume's snapshot (default: a replicated clone)")
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_create)

    p = sub.add_parser("inflate", help="copy shared data so NAME no longer needs its snapshot")
    p.add_argument("name")
    add_progress(p)
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_inflate)


def run_create(args: argparse.Namespace) -> int:
    body = {"snapshot": args.snapshot, "name": args.name, "pool": args.pool,
            "tenant": args.tenant}
    if args.local:
        body["local"] = True
    v = call(args, lambda c: c.post("/v1/clones", body))
    return emit(args, v, lambda v: f"created clone {v['name']} of {args.snapshot} "
                                   f"(uuid {v['uuid']})")


def run_inflate(args: argparse.Namespace) -> int:
    v = with_progress(args, "inflate", args.name, lambda c: c.post(
        path("v1", "volumes", args.name, "inflate"), pool=args.pool))
    return emit(args, v, lambda v: f"inflated {v['name']}: it no longer depends on a snapshot")
