"""``sbstore host add|remove|list``: which host NQNs may connect to an export."""
from __future__ import annotations

import argparse

from sbstore.commands._common import Subparsers, add_json, call, emit
from sbstore.control.client import path


def register(subparsers: Subparsers) -> None:
    host = subparsers.add_parser("host", help="allow or disallow hosts on an export",
                                 description="Host NQNs allowed to connect to an export. "
                                 "Removing one disconnects it at once.")
    sub = host.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    for name, helptext, fn in (("add", "allow HOSTNQN to connect to NQN", run_add),
                               ("remove", "disallow HOSTNQN (disconnects it)", run_remove)):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("nqn", help="the export (subsystem NQN)")
        p.add_argument("host_nqn", metavar="hostnqn", help="the host's NQN (/etc/nvme/hostnqn)")
        add_json(p)
        p.set_defaults(func=fn)
    p = sub.add_parser("list", help="the hosts allowed on NQN")
    p.add_argument("nqn")
    add_json(p)
    p.set_defaults(func=run_list)


def run_add(args: argparse.Namespace) -> int:
    e = call(args, lambda c: c.post(path("v1", "subsystems", args.nqn, "hosts"),
                                    {"host_nqn": args.host_nqn}))
    return emit(args, e, f"{args.host_nqn} may connect to {args.nqn}")


def run_remove(args: argparse.Namespace) -> int:
    e = call(args, lambda c: c.delete(path("v1", "subsystems", args.nqn, "hosts",
                                           args.host_nqn)))
    return emit(args, e, f"{args.host_nqn} may no longer connect to {args.nqn}")


def run_list(args: argparse.Namespace) -> int:
    hosts = call(args, lambda c: c.get(path("v1", "subsystems", args.nqn, "hosts")))
    return emit(args, hosts, lambda h: "\n".join(h) or "(none)")
