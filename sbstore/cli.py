"""The ``sbstore`` command line: one sub-command module per noun, registered here.

Each module in :mod:`sbstore.commands` exposes ``register(subparsers)``, which adds its parsers
and sets ``func`` on them; ``func(args) -> int`` is the exit status. Modules import
what is heavy (the daemon, the store) inside ``func``, so the CLI starts fast.

The admin commands (``volume``, ``snapshot``, ``schedule``, ``clone``, ``export``, ``host``,
``listener``, ``tenant``, ``status``) are clients of the daemon's API: they find it with ``--socket PATH``
(or ``$SBSTORE_SOCKET``), or ``--url http://HOST:PORT --token-file FILE`` for the API on TCP;
by default ``/run/sbstore/api.sock``, else the demo's ``~/.local/state/sbstore/api.sock``.
Every one takes ``--json``: the API's answer on stdout, stable for scripts.

Exit status: 0 success; 1 the operation was refused or failed (the message on stderr; with
``--json``, ``{"error": {"code", "message"}}`` on stderr); 2 bad usage (a missing, malformed
or conflicting argument, caught before anything is sent); 3 no daemon answered.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

# Order is the order of ``sbstore --help``.
COMMAND_MODULES = (
    "sbstore.commands.serve",
    "sbstore.commands.status",
    "sbstore.commands.volume",
    "sbstore.commands.snapshot",
    "sbstore.commands.schedule",
    "sbstore.commands.clone",
    "sbstore.commands.export",
    "sbstore.commands.host",
    "sbstore.commands.listener",
    "sbstore.commands.tenant",
    "sbstore.commands.pool",
    "sbstore.commands.operation",
    "sbstore.commands.cluster",
)


class CommandError(Exception):
    """An operation failed in a way the user can act on; printed without a traceback."""

    def __init__(self, message: str, *, exit_code: int = EXIT_FAILED, code: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.code = code
        self.status = status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbstore", description="Software-defined NVMe/TCP block storage for hypervisors.",
        epilog="Exit status: 0 done, 1 refused or failed, 2 bad usage, 3 no daemon answered.")
    api = parser.add_argument_group("reaching the daemon (admin commands)")
    api.add_argument("--socket", metavar="PATH",
                     help="the API's unix socket (default: $SBSTORE_SOCKET, else "
                          "/run/sbstore/api.sock, else ~/.local/state/sbstore/api.sock)")
    api.add_argument("--url", metavar="URL",
                     help="the API on TCP, http://HOST:PORT (default: $SBSTORE_URL)")
    api.add_argument("--token-file", metavar="FILE",
                     help="bearer token for --url (default: $SBSTORE_TOKEN_FILE)")
    api.add_argument("--timeout", type=float, metavar="SECONDS",
                     help="how long to wait for an answer (default 600)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or bad usage (argparse printed why)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        what = " ".join(x for x in (args.command, getattr(args, "action", None)) if
                        isinstance(x, str))
        if getattr(args, "json", False):
            error: dict[str, Any] = {"code": exc.code or "FAILED", "message": str(exc)}
            if exc.status is not None:
                error["status"] = exc.status
            print(json.dumps({"error": error}), file=sys.stderr)
        else:
            print(f"sbstore {what}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
