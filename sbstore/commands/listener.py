"""``sbstore listener add|list|remove``: where hosts reach the NVMe/TCP target.

By address (``--address 192.0.2.10 --port 4420``) or by interface (``--interface eth0 --port
4420``: every address of the interface, followed as addresses come and go). Listeners added
here are kept in the state and restored at start; the config's are opened at every start.
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
    add_json(p)
    p.set_defaults(func=run_add)

    p = sub.add_parser("list", help="list listeners")
    add_json(p)
    p.set_defaults(func=run_list)

    p = sub.add_parser("remove", help="stop listener ID (its hosts are disconnected)")
    p.add_argument("id", type=int)
    add_json(p)
    p.set_defaults(func=run_remove)


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _where(x: dict[str, Any]) -> str:
    if x["interface"]:
        return f"interface {x['interface']} port {x['port']}"
    return _hostport(x["address"], x["port"])


def run_add(args: argparse.Namespace) -> int:
    body = {"address": args.address, "interface": args.interface, "port": args.port}
    x = call(args, lambda c: c.post("/v1/listeners", body))
    bound = ", ".join(_hostport(b["address"], b["port"]) for b in x["bound"]) or \
        "no address yet"
    return emit(args, x, f"listener {x['id']}: {_where(x)} ({bound})")


def run_list(args: argparse.Namespace) -> int:
    xs = call(args, lambda c: c.get("/v1/listeners"))
    rows = [(x["id"], x["source"], _where(x), x["state"],
             " ".join(_hostport(b["address"], b["port"]) for b in x["bound"]) or None)
            for x in xs]
    return emit(args, xs, lambda _: table(rows, ("ID", "SOURCE", "WHERE", "STATE", "BOUND"),
                                          right=("ID",)))


def run_remove(args: argparse.Namespace) -> int:
    call(args, lambda c: c.delete(path("v1", "listeners", args.id)))
    return emit(args, {"deleted": {"listener": args.id}}, f"removed listener {args.id}")
