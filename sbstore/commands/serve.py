"""``sbstore serve``: run the target daemon."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sbstore.cli import CommandError


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``HOST`` (port 4420)."""
    from sbstore.daemon import DEFAULT_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":") or str(DEFAULT_PORT)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, str(DEFAULT_PORT)
    if not host:
        raise argparse.ArgumentTypeError(f"{text!r}: no address")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: port {number} is out of range")
    return host, number


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the NVMe/TCP target daemon",
                              description="Run the sbstore daemon. With --demo: a file-backed "
                              "1 GiB volume exported to any host, nothing else needed.")
    p.add_argument("--demo", action="store_true", required=True,
                   help="serve the embedded demo volume (nqn.2026-11.io.sbstore:demo)")
    p.add_argument("--listen", type=parse_listen, default=None, metavar="HOST:PORT",
                   help="address to listen on (default 127.0.0.1:4420)")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="where the demo keeps its data (default ~/.local/state/sbstore)")
    p.add_argument("--ram", action="store_true",
                   help="serve a RAM device instead of the file (measures the protocol alone)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvloop

    from sbstore.daemon import DEFAULT_PORT, DemoConfig, default_state_dir, serve_demo

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = args.listen or ("127.0.0.1", DEFAULT_PORT)
    config = DemoConfig(host=host, port=port, state_dir=args.state_dir or default_state_dir(),
                        ram=args.ram)
    try:
        uvloop.run(serve_demo(config, announce=lambda line: print(line, flush=True)))
    except OSError as exc:
        raise CommandError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from exc
    return 0
