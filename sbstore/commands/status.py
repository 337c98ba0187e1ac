"""``sbstore status``: the daemon's version, uptime, pools and counts."""
from __future__ import annotations

import argparse
from typing import Any

from sbstore.commands._common import (
    Subparsers,
    add_json,
    call,
    emit,
    fields,
    human,
    table,
)


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("status", help="the daemon: version, pools, counts",
                              description="Ask the running daemon how it is.")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    status, pools = call(args, lambda c: (c.get("/v1/status"), c.get("/v1/pools")))

    def text(v: dict[str, Any]) -> str:
        s = v["status"]
        head = fields([("version", s["version"]), ("uptime", f"{s['uptime_s']:.0f} s"),
                       ("volumes", f"{s['volumes']} ({s['snapshots']} snapshots)"),
                       ("exports", f"{s['exports']} ({s['namespaces']} namespaces)"),
                       ("listeners", s["listeners"]), ("tenants", s["tenants"]),
                       ("connections", f"{s['connections']} ({s['controllers']} controllers)")])
        rows = [(p["name"], p["path"], p["io_engine"], human(p["capacity_bytes"]),
                 human(p["allocated_bytes"]), human(p["free_bytes"]), p["volumes"],
                 p["snapshots"]) for p in v["pools"]]
        why = "".join(f"\n{p['name']}: {p['io_engine']} ({p['io_reason']})" for p in v["pools"])
        return head + "\n\n" + table(rows, ("POOL", "PATH", "IO", "CAPACITY", "ALLOCATED",
                                            "FREE", "VOLUMES", "SNAPSHOTS"),
                                     right=("CAPACITY", "ALLOCATED", "FREE")) + why

    return emit(args, {"status": status, "pools": pools}, text)
