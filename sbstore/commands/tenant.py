"""``sbstore tenant create|set|list|show|delete``: tenants and their QoS policies.

A policy is limits (``--iops``, ``--read-iops``, ``--write-iops``, ``--bps``, ``--read-bps``,
``--write-bps``; 0 = none), a burst allowance (``--burst-s``) and a share (``--weight``
1..1000). They are stored and shown now; the QoS scheduler enforces them.
"""
from __future__ import annotations

import argparse
from typing import Any

from sbstore.commands._common import (
    Subparsers,
    add_json,
    add_policy_options,
    call,
    emit,
    fields,
    policy_from_args,
    policy_text,
    table,
)
from sbstore.control.client import path


def register(subparsers: Subparsers) -> None:
    ten = subparsers.add_parser("tenant", help="tenants and their QoS policies",
                                description="Every volume belongs to a tenant ('default' "
                                "unless said otherwise).")
    sub = ten.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("create", help="create a tenant")
    p.add_argument("name")
    add_policy_options(p)
    add_json(p)
    p.set_defaults(func=run_create)

    p = sub.add_parser("set", help="change a tenant's policy (only the fields given)")
    p.add_argument("name")
    add_policy_options(p)
    add_json(p)
    p.set_defaults(func=run_set)

    p = sub.add_parser("list", help="list tenants")
    add_json(p)
    p.set_defaults(func=run_list)

    p = sub.add_parser("show", help="one tenant and its volumes")
    p.add_argument("name")
    add_json(p)
    p.set_defaults(func=run_show)

    p = sub.add_parser("delete", help="delete a tenant without volumes")
    p.add_argument("name")
    add_json(p)
    p.set_defaults(func=run_delete)


def run_create(args: argparse.Namespace) -> int:
    t = call(args, lambda c: c.post("/v1/tenants", {"name": args.name,
                                                    **policy_from_args(args)}))
    return emit(args, t, lambda t: f"created tenant {t['name']}: {policy_text(t['policy'])}")


def run_set(args: argparse.Namespace) -> int:
    from sbstore.cli import EXIT_USAGE, CommandError
    policy = policy_from_args(args)
    if not policy:
        raise CommandError("nothing to change: give at least one of --iops, --read-iops, "
                           "--write-iops, --bps, --read-bps, --write-bps, --burst-s, --weight",
                           exit_code=EXIT_USAGE, code="INVALID_ARGUMENT")
    t = call(args, lambda c: c.patch(path("v1", "tenants", args.name), policy))
    return emit(args, t, lambda t: f"tenant {t['name']}: {policy_text(t['policy'])}")


def run_list(args: argparse.Namespace) -> int:
    ts = call(args, lambda c: c.get("/v1/tenants"))
    rows = [(t["name"], policy_text(t["policy"]), len(t["volumes"])) for t in ts]
    return emit(args, ts, lambda _: table(rows, ("NAME", "POLICY", "VOLUMES"),
                                          right=("VOLUMES",)))


def run_show(args: argparse.Namespace) -> int:
    t = call(args, lambda c: c.get(path("v1", "tenants", args.name)))

    def text(t: dict[str, Any]) -> str:
        rows = [("name", t["name"]), ("policy", policy_text(t["policy"])),
                ("volumes", ", ".join(t["volumes"]) or "none")]
        if "here" in t:  # cluster mode: what this node has applied of etcd's record
            rows.append(("applied here", policy_text(t["here"]["policy"]) if t["here"]
                         else "not yet"))
        return fields(rows)
    return emit(args, t, text)


def run_delete(args: argparse.Namespace) -> int:
    call(args, lambda c: c.delete(path("v1", "tenants", args.name)))
    return emit(args, {"deleted": {"tenant": args.name}}, f"deleted tenant {args.name}")
