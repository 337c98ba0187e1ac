"""``sbstore volume export|import`` and ``sbstore snapshot diff``: moving snapshots between
daemons as export streams (docs/stream-format.md), a full copy and then increments.

The stream passes through the CLI in pieces of :data:`PIECE_BYTES` (a file or a pipe on one
side, the API's streamed body on the other): nothing holds a whole volume.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

from sbstore.cli import EXIT_FAILED, CommandError
from sbstore.commands._common import call, emit, human, table
from sbstore.commands.operation import with_progress
from sbstore.control.client import path

PIECE_BYTES = 1 << 20


def run_diff(args: argparse.Namespace) -> int:
    d = call(args, lambda c: c.get(path("v1", "snapshots", args.snapshot, "diff"),
                                   base=args.base, pool=args.pool))
    rows = [(e["offset"], e["length"], e["kind"]) for e in d["extents"]]

    def text(d: dict[str, Any]) -> str:
        head = (f"{d['snapshot']} differs from {d['base'] or 'an empty volume'} in "
                f"{len(rows)} extent(s): {human(d['data_bytes'])} of data, "
                f"{human(d['zero_bytes'])} now zero")
        return head + "\n" + table(rows, ("OFFSET", "LENGTH", "KIND"),
                                   right=("OFFSET", "LENGTH"))
    return emit(args, d, text)


def run_export(args: argparse.Namespace) -> int:
    to_stdout = args.to == "-"
    if to_stdout and sys.stdout.isatty():
        raise CommandError("refusing to write a binary stream to a terminal: give --to FILE "
                           "or redirect stdout", exit_code=2)
    out: BinaryIO = sys.stdout.buffer if to_stdout else open(args.to, "wb")  # noqa: SIM115
    written = [0]

    def sink(data: bytes) -> None:
        out.write(data)
        written[0] += len(data)
    try:
        headers = with_progress(args, "export", args.snapshot, lambda c: c.download(
            path("v1", "snapshots", args.snapshot, "export"), sink, since=args.since,
            pool=args.pool))
        out.flush()
        if not to_stdout:
            os.fsync(out.fileno())
    except BaseException:
        if not to_stdout:
            out.close()
            os.unlink(args.to)  # a partial stream is of no use to anyone
        raise
    finally:
        if not to_stdout and not out.closed:
            out.close()
    result = {"snapshot": args.snapshot, "since": args.since, "bytes": written[0],
              "operation": int(headers.get("x-sbstore-operation", "0") or 0),
              "to": args.to}
    if args.json and to_stdout:
        print(f"exported {written[0]} bytes", file=sys.stderr)
        return 0
    if to_stdout:
        return 0
    what = f"increment {args.since}..{args.snapshot}" if args.since else args.snapshot
    return emit(args, result, f"exported {what} to {args.to} ({human(written[0])})")


def run_import(args: argparse.Namespace) -> int:
    if args.file == "-":
        src: BinaryIO = sys.stdin.buffer
        length = None
    else:
        try:
            src = open(args.file, "rb")  # noqa: SIM115
        except OSError as exc:
            raise CommandError(f"cannot read {args.file}: {exc.strerror}",
                               exit_code=EXIT_FAILED) from None
        length = os.fstat(src.fileno()).st_size
    try:
        v = with_progress(args, "import", args.name, lambda c: c.upload(
            "/v1/volumes/import", _pieces(src), length=length, name=args.name,
            pool=args.pool, tenant=args.tenant, force=args.force or None))
    finally:
        if src is not sys.stdin.buffer:
            src.close()
    return emit(args, v, lambda v: f"imported {v['name']} in pool {v['pool']} (snapshot "
                                   f"{v['parent']}, {human(v['size_bytes'])})")


def _pieces(src: BinaryIO) -> Iterator[bytes]:
    while True:
        data = src.read(PIECE_BYTES)
        if not data:
            return
        yield data
