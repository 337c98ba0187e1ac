"""``sbstore schedule add|list|remove``: snapshot schedules with retention (``--every 1h
--keep 24``), for a volume or for every volume of a tenant; the daemon runs them."""
from __future__ import annotations

import argparse
from typing import Any

from sbstore.commands._common import Subparsers, add_json, add_pool, call, emit, table
from sbstore.control.client import path


def register(subparsers: Subparsers) -> None:
    sch = subparsers.add_parser("schedule", help="snapshot schedules with retention",
                                description="Snapshot a volume, or every volume of a tenant, "
                                "every interval, keeping the newest snapshots.")
    sub = sch.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("add", help="snapshot a volume or a tenant's volumes every interval")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--volume", help="the volume")
    target.add_argument("--tenant", help="every volume of this tenant")
    p.add_argument("--every", required=True, metavar="INTERVAL",
                   help="30m, 1h, 1d, 1w (runs on the interval's UTC boundaries)")
    p.add_argument("--keep", required=True, type=int, metavar="N",
                   help="how many of its snapshots to keep, per volume")
    add_pool(p)
    add_json(p)
    p.set_defaults(func=run_add)

    p = sub.add_parser("list", help="list snapshot schedules")
    add_json(p)
    p.set_defaults(func=run_list)

    p = sub.add_parser("remove", help="remove a schedule (its snapshots stay)")
    p.add_argument("id", type=int)
    add_json(p)
    p.set_defaults(func=run_remove)


def _what(s: dict[str, Any]) -> str:
    return f"volume {s['volume']}" if s["volume"] is not None else f"tenant {s['tenant']}"


def run_add(args: argparse.Namespace) -> int:
    body = {"every": args.every, "keep": args.keep, "volume": args.volume,
            "tenant": args.tenant, "pool": args.pool}
    s = call(args, lambda c: c.post("/v1/schedules", body))
    return emit(args, s, lambda s: f"schedule {s['id']}: snapshot {_what(s)} every "
                                   f"{s['every']}, keep {s['keep']}")


def run_list(args: argparse.Namespace) -> int:
    schedules = call(args, lambda c: c.get("/v1/schedules"))
    rows = [(s["id"], s["volume"] if s["volume"] is not None else f"tenant:{s['tenant']}",
             s["every"], s["keep"], len(s["snapshots"]), s["last_run"]) for s in schedules]
    return emit(args, schedules, lambda _: table(rows, ("ID", "TARGET", "EVERY", "KEEP",
                                                        "SNAPSHOTS", "LAST RUN"),
                                                 right=("ID", "KEEP", "SNAPSHOTS")))


def run_remove(args: argparse.Namespace) -> int:
    call(args, lambda c: c.delete(path("v1", "schedules", str(args.id))))
    return emit(args, {"deleted": {"schedule": args.id}}, f"removed schedule {args.id}")
