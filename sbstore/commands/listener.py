"""``sbstore listener add|list|set|remove``: where hosts reach the NVMe/TCP target.

By address (``--address 192.0.2.10 --port 4420``) or by interface (``--interface eth0 --port
4420``: every address of the interface, followed as addresses come and go). Listeners added
here are kept in the state and restored at start; the config's are opened at every start.

Each listener is a path for multipath hosts: ``listener set ID --ana-state STATE`` sets the ANA
state hosts see through it, for every export or (``--export NQN``) for one. Taking a path out
of service for maintenance: set it ``inaccessible`` (hosts move their I/O to the other
listeners), then remove it or set it back to ``optimized``.
"""
from __future__ import annotations

import argparse
from typing import Any

from sbstore.commands._common import Subparsers, add_json, call, emit, table
from sbstore.control.client import path


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range 0..65535")
    return port


def register(subparsers: Subparsers) -> None:
    lst = subparsers.add_parser("listener", help="NVMe/TCP listeners (address or interface)",
                                description="Where hosts connect.")
    sub = lst.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("add", help="listen on an address or on an interface's addresses")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--address", help="an IP address (0.0.0.0 or :: for all)")
    where.add_argument("--interface", help="an interface name, e.g. eth0 (followed)")
    p.add_argument("--port", type=_port, default=4420, help="TCP port (default 4420)")
    p.add_argument("--node", help="cluster mode: on this node (asked through etcd)")
    add_json(p)
    p.set_defaults(func=run_add)

    p = sub.add_parser("list", help="list listeners")
    p.add_argument("--all-nodes", action="store_true",
                   help="cluster mode: every live node's listeners")
    add_json(p)
    p.set_defaults(func=run_list)

    p = sub.add_parser("set", help="set the ANA state hosts see through listener ID",
                       description="Set the ANA state of a path. States: optimized, "
                       "non-optimized (served, but hosts prefer optimized paths), inaccessible "
                       "and persistent-loss (I/O fails over to other paths), change (in "
                       "transition: hosts wait up to ANATT, 10 s, then reset the path); "
                       "default removes the setting.")
    p.add_argument("id", type=int)
    p.add_argument("--ana-state", required=True, choices=ANA_STATE_CHOICES,
                   help="the state to show")
    p.add_argument("--export", metavar="NQN",
                   help="only for this export (default: every export without its own state)")
    add_json(p)
    p.set_defaults(func=run_set)

    p = sub.add_parser("remove", help="stop listener ID (its hosts are disconnected)")
    p.add_argument("id", type=int)
    p.add_argument("--node", help="cluster mode: listener ID of this node, added with "
                   "'listener add --node'")
    add_json(p)
    p.set_defaults(func=run_remove)


# target.ana.STATE_NAMES and "default" (the CLI imports neither the target nor the service;
# tests/control/test_ana_control.py checks that the lists agree).
ANA_STATE_CHOICES = ("optimized", "non-optimized", "inaccessible", "persistent-loss", "change",
                     "default")


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _where(x: dict[str, Any]) -> str:
    if x["interface"]:
        return f"interface {x['interface']} port {x['port']}"
    return _hostport(x["address"], x["port"])


def run_add(args: argparse.Namespace) -> int:
    body = {"address": args.address, "interface": args.interface, "port": args.port,
            "node": args.node}
    x = call(args, lambda c: c.post("/v1/listeners", body))
    if args.node:  # cluster mode: bound addresses come as "host:port" from the node's record
        return emit(args, x, f"node {args.node}: listener {x.get('id', '(requested)')}: "
                    f"{_where(x)} ({', '.join(x.get('bound', [])) or x['state']})")
    bound = ", ".join(_hostport(b["address"], b["port"]) for b in x["bound"]) or \
        "no address yet"
    return emit(args, x, f"listener {x['id']}: {_where(x)} ({bound})")


def run_list(args: argparse.Namespace) -> int:
    if args.all_nodes:
        xs = call(args, lambda c: c.get("/v1/listeners", all_nodes=True))
        rows = [(x["node"], x["id"], x["source"] + (" (cluster)" if x["cluster"] else ""),
                 _where(x), x["state"], " ".join(x["bound"]) or None) for x in xs]
        return emit(args, xs, lambda _: table(rows, ("NODE", "ID", "SOURCE", "WHERE", "STATE",
                                                     "BOUND"), right=("ID",)))
    xs = call(args, lambda c: c.get("/v1/listeners"))
    rows = [(x["id"], x["source"], _where(x), x["state"],
             " ".join(_hostport(b["address"], b["port"]) for b in x["bound"]) or None,
             _ana(x)) for x in xs]
    return emit(args, xs, lambda _: table(rows, ("ID", "SOURCE", "WHERE", "STATE", "BOUND",
                                                 "ANA"), right=("ID",)))


def _ana(x: dict[str, Any]) -> str:
    """The listener's ANA state, and each export's own: ``optimized, nqn...:a inaccessible``."""
    own = x.get("ana_exports") or {}
    return ", ".join([x.get("ana_state", "optimized")]
                     + [f"{nqn} {state}" for nqn, state in sorted(own.items())])


def run_set(args: argparse.Namespace) -> int:
    body = {"ana_state": args.ana_state}
    if args.export:
        body["export"] = args.export
    x = call(args, lambda c: c.patch(path("v1", "listeners", args.id), body))
    return emit(args, x, f"listener {x['id']}: ANA {_ana(x)}")


def run_remove(args: argparse.Namespace) -> int:
    query = {"node": args.node} if args.node else {}
    call(args, lambda c: c.delete(path("v1", "listeners", args.id), **query))
    where = f" of node {args.node}" if args.node else ""
    return emit(args, {"deleted": {"listener": args.id, **query}},
                f"removed listener {args.id}{where}")
