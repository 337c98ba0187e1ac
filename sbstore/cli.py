"""The ``sbstore`` command line: one sub-command module per noun, registered here.

Each module in :mod:`sbstore.commands` exposes ``register(subparsers)``, which adds its parsers
and sets ``func`` on them; ``func(args) -> int`` is the exit status. A module is imported only
when the CLI starts, so a command that needs nothing heavy stays fast.

Exit status: 0 success, 1 the operation failed (message on stderr), 2 bad usage (argparse).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Order is the order of ``sbstore --help``.
COMMAND_MODULES = (
    "sbstore.commands.serve",
    "sbstore.commands.pool",
)


class CommandError(Exception):
    """An operation failed in a way the user can act on; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbstore", description="Software-defined NVMe/TCP block storage for hypervisors.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a command module not written yet
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"sbstore {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
