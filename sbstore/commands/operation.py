"""``sbstore operation list|show|cancel``, and the progress line long commands print.

A long command (inflate, export, import) is one API request that lasts as long as the work.
While it runs in a thread of its own, :func:`with_progress` polls ``GET /v1/operations`` on a
second connection and redraws one line on stderr (when stderr is a terminal, or with
``--progress``); Ctrl-C cancels the operation in the daemon (``DELETE /v1/operations/{id}``)
and waits for the request to end.
"""
from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sbstore.commands._common import (
    Subparsers,
    add_json,
    call,
    client,
    emit,
    fields,
    human,
    table,
)
from sbstore.control.client import ApiError, Client, Unreachable, path

T = TypeVar("T")
POLL_S = 0.5


def register(subparsers: Subparsers) -> None:
    op = subparsers.add_parser("operation", help="long operations: progress, cancel",
                               description="Inflates, exports and imports in progress (and "
                                           "the last ones finished).")
    sub = op.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("list", help="list operations")
    add_json(p)
    p.set_defaults(func=run_list)
    p = sub.add_parser("show", help="one operation")
    p.add_argument("id", type=int)
    add_json(p)
    p.set_defaults(func=run_show)
    p = sub.add_parser("cancel", help="cancel a running operation")
    p.add_argument("id", type=int)
    add_json(p)
    p.set_defaults(func=run_cancel)


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", action="store_true", default=None,
                   help="print a progress line on stderr (default: when it is a terminal)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def progress_text(op: dict[str, Any]) -> str:
    def amount(n: int) -> str:
        return human(n) if op["unit"] == "bytes" else f"{n} clusters"
    total = f" of {amount(op['total'])}" if op.get("total") is not None else ""
    pct = f"{op['percent']:5.1f}% " if op.get("percent") is not None else ""
    return (f"{op['kind']} {op['target']}: {pct}({amount(op['done'])}{total}) "
            f"{op['state']}, {op['elapsed_s']:.0f}s")


def run_list(args: argparse.Namespace) -> int:
    ops = call(args, lambda c: c.get("/v1/operations"))
    rows = [(o["id"], o["kind"], o["pool"], o["target"], o["state"],
             "-" if o["percent"] is None else f"{o['percent']:.1f}%",
             human(o["done"]) if o["unit"] == "bytes" else o["done"], o["started"])
            for o in ops]
    return emit(args, ops, lambda _: table(rows, ("ID", "KIND", "POOL", "TARGET", "STATE",
                                                  "DONE%", "DONE", "STARTED"),
                                           right=("ID", "DONE%", "DONE")))


def _op_text(o: dict[str, Any]) -> str:
    return fields([("id", o["id"]), ("kind", o["kind"]), ("pool", o["pool"]),
                   ("target", o["target"]), ("state", o["state"]),
                   ("progress", progress_text(o)), ("started", o["started"]),
                   ("finished", o["finished"]), ("error", o["error"])])


def run_show(args: argparse.Namespace) -> int:
    o = call(args, lambda c: c.get(path("v1", "operations", args.id)))
    return emit(args, o, _op_text)


def run_cancel(args: argparse.Namespace) -> int:
    o = call(args, lambda c: c.delete(path("v1", "operations", args.id)))
    return emit(args, o, lambda o: f"cancelling operation {o['id']} ({o['kind']} of "
                                   f"{o['target']})" if o["state"] == "running" else
                f"operation {o['id']} already {o['state']}")


def with_progress(args: argparse.Namespace, kind: str, target: str,
                  fn: Callable[[Client], T]) -> T:
    """``call(args, fn)`` in a thread; meanwhile a progress line, and Ctrl-C cancels."""
    wanted = getattr(args, "progress", None)
    show = sys.stderr.isatty() if wanted is None else bool(wanted)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = call(args, fn)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=work, name="sbstore-request", daemon=True)
    thread.start()
    poller = client(args)
    op_id: int | None = None
    drawn = False
    try:
        while thread.is_alive():
            try:
                thread.join(POLL_S)
                if not thread.is_alive():
                    break
                op_id, line = _poll(poller, kind, target, op_id)
                if show and line:
                    sys.stderr.write("\r" + line.ljust(70))
                    sys.stderr.flush()
                    drawn = True
            except KeyboardInterrupt:
                if op_id is None:
                    op_id, _ = _poll(poller, kind, target, op_id)
                if op_id is not None:
                    try:
                        poller.delete(path("v1", "operations", op_id))
                    except (ApiError, Unreachable):
                        pass
                thread.join()
                break
    finally:
        poller.close()
        if drawn:
            sys.stderr.write("\n")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def _poll(c: Client, kind: str, target: str, op_id: int | None) -> tuple[int | None, str]:
    try:
        if op_id is not None:
            op = c.get(path("v1", "operations", op_id))
            return op_id, progress_text(op)
        ops = [o for o in c.get("/v1/operations") if o["kind"] == kind
               and o["target"] == target and o["state"] == "running"]
    except (ApiError, Unreachable):
        return op_id, ""
    if not ops:
        return None, ""
    op = max(ops, key=lambda o: o["id"])
    return op["id"], progress_text(op)
