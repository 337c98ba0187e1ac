"""What the API-driven commands share: reaching the daemon, sizes, tables, ``--json``.

Rules: a command talks to the daemon only through :mod:`sbstore.control.client`. With
``--json`` it prints the API's answer as JSON on stdout (a deletion prints
``{"deleted": ...}``); without, a table or one line for a person. Failures raise
:class:`sbstore.cli.CommandError` with the exit status the CLI documents (1: the daemon refused
or failed the operation, 3: no daemon answered).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from sbstore.cli import EXIT_FAILED, EXIT_UNREACHABLE, CommandError
from sbstore.config import QosPolicy
from sbstore.config import parse_size as _parse_size
from sbstore.control.client import ApiError, Client, Unreachable

# A string: argparse._SubParsersAction is generic only to type checkers.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def parse_size(text: str) -> int:
    """argparse type for sizes: ``4096``, ``512K``, ``10G``."""
    try:
        return _parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_size(text: str) -> int:
    size = parse_size(text)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be positive")
    return size


def nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the API's answer as JSON")


def add_pool(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool", metavar="POOL",
                   help="the pool (needed only when several pools have such a name)")


def add_policy_options(p: argparse.ArgumentParser) -> None:
    """``--iops N --read-iops N ... --weight N``: QosPolicy fields (0 = no limit)."""
    g = p.add_argument_group("QoS policy (enforced live: takes effect without hosts reconnecting)")
    for name in QosPolicy.field_names():
        flag = "--" + name.replace("_", "-")
        if name == "burst_s":
            g.add_argument(flag, dest=name, type=nonneg_float, metavar="SECONDS",
                           help="burst allowance, in seconds of each limit's rate")
        elif name == "weight":
            g.add_argument(flag, dest=name, type=nonneg_int, metavar="N",
                           help="share when tenants compete, 1..1000 (default 100)")
        elif name.endswith("bps"):
            what = name[:-3].replace("_", " ") + "bytes" if name != "bps" else "bytes"
            g.add_argument(flag, dest=name, type=parse_size, metavar="BYTES",
                           help=f"{what} per second, e.g. 200M (0: no limit)")
        else:
            what = name[:-4].replace("_", " ") + "I/Os" if name != "iops" else "I/Os"
            g.add_argument(flag, dest=name, type=nonneg_int, metavar="N",
                           help=f"{what} per second (0: no limit)")


def policy_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in QosPolicy.field_names()
            if getattr(args, name, None) is not None}


def client(args: argparse.Namespace) -> Client:
    token = None
    if getattr(args, "token_file", None):
        from sbstore.control.client import read_token
        try:
            token = read_token(args.token_file)
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read the token: {exc}", exit_code=EXIT_FAILED) from None
    try:
        return Client(getattr(args, "socket", None), url=getattr(args, "url", None),
                      token=token, timeout_s=getattr(args, "timeout", None) or 600.0)
    except ValueError as exc:
        raise CommandError(str(exc), exit_code=2) from None


def call(args: argparse.Namespace, fn: Callable[[Client], Any]) -> Any:
    """Run ``fn(client)``, turning API failures into CommandErrors."""
    c = client(args)
    try:
        return fn(c)
    except ApiError as exc:
        raise CommandError(exc.message, exit_code=EXIT_FAILED, code=exc.code,
                           status=exc.status) from None
    except Unreachable as exc:
        raise CommandError(str(exc), exit_code=EXIT_UNREACHABLE, code="UNREACHABLE") from None
    finally:
        c.close()


def emit(args: argparse.Namespace, value: Any, text: Callable[[Any], str] | str) -> int:
    """Print ``value`` as JSON (``--json``) or ``text(value)`` for a person; exit status 0."""
    if getattr(args, "json", False):
        print(json.dumps(value, indent=2))
    else:
        out = text if isinstance(text, str) else text(value)
        if out:
            print(out)
    return 0


def human(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T", "P"):
        if value < 1024 or unit == "P":
            if value == int(value):
                return f"{int(value)}{unit}"
            return f"{value:.1f}{unit}"
        value /= 1024
    return str(n)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], *,
          right: Sequence[str] = ()) -> str:
    """A plain text table: columns as wide as their widest cell, ``right`` ones aligned right;
    an empty listing prints ``(none)``."""
    if not rows:
        return "(none)"
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r]
                                           for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [c.rjust(w) if h in right else c.ljust(w)
                 for c, w, h in zip(r, widths, headers, strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """``key: value`` lines, keys aligned."""
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k + ':':{width + 1}} {'-' if v is None else v}" for k, v in pairs)


def policy_text(policy: dict[str, Any] | None) -> str:
    if not policy:
        return "none"
    parts = []
    for name in QosPolicy.LIMIT_FIELDS:
        v = policy.get(name, 0)
        if v:
            parts.append(f"{name}={human(v) + '/s' if name.endswith('bps') else v}")
    parts.append(f"burst_s={policy.get('burst_s', 1.0):g}")
    parts.append(f"weight={policy.get('weight', 100)}")
    return " ".join(parts)
