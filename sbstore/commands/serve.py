"""``sbstore serve``: run the daemon, from a config file or as the self-contained demo."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sbstore.cli import CommandError
from sbstore.config import IO_MODES


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``HOST`` (port 4420)."""
    from sbstore.config import DEFAULT_NVME_PORT, parse_host_port
    try:
        return parse_host_port(text, DEFAULT_NVME_PORT)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _busy_poll_us(text: str) -> int:
    from sbstore.config import TargetConfig
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of microseconds") from None
    if not 0 <= value <= TargetConfig.MAX_BUSY_POLL_US:
        raise argparse.ArgumentTypeError(f"{value} is out of range "
                                         f"0..{TargetConfig.MAX_BUSY_POLL_US}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "serve", help="run the NVMe/TCP target daemon",
        description="Run the sbstore daemon: from a TOML config (--config, see "
                    "systemd/sbstore.toml), or the demo (--demo: a pool file in the state "
                    "directory with one 1 GiB volume exported to any host, nothing else "
                    "needed).")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--config", type=Path, metavar="FILE", help="the daemon's TOML config")
    mode.add_argument("--demo", action="store_true",
                      help="serve the embedded demo volume (nqn.2026-11.io.sbstore:demo)")
    demo = p.add_argument_group("--demo only")
    demo.add_argument("--listen", type=parse_listen, default=None, metavar="HOST:PORT",
                      help="address to listen on (default 127.0.0.1:4420)")
    demo.add_argument("--state-dir", type=Path, default=None,
                      help="where the demo keeps its pool, state and API socket (default "
                           "~/.local/state/sbstore)")
    demo.add_argument("--io", choices=IO_MODES,
                      default="auto",
                      help="the demo pool's data I/O engine (default auto: io_uring with "
                           "O_DIRECT where it works; see [[pools]] io in the config)")
    demo.add_argument("--ram", action="store_true",
                      help="serve a RAM device instead of the pool volume (measures the "
                           "protocol alone; nothing is kept)")
    p.add_argument("--busy-poll", type=_busy_poll_us, default=None, metavar="US",
                   help="after each receive, keep the event loop polling for US microseconds "
                        "instead of sleeping: lower latency at low queue depth for a core "
                        "spent spinning while hosts send (default: the config's [target] "
                        "busy_poll_us, 0 = off, for the demo off)")
    p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                   help="default: the config's [log] level, info for the demo")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import uvloop

    from sbstore.config import ConfigError, default_state_dir, load_config
    from sbstore.daemon import (
        DEFAULT_PORT,
        DaemonError,
        DemoConfig,
        run_daemon,
        serve_demo,
    )
    from sbstore.heap import keep_freed_memory

    if args.config is not None:
        for flag in ("listen", "state_dir"):
            if getattr(args, flag) is not None:
                raise CommandError(f"--{flag.replace('_', '-')} is for --demo; with --config "
                                   f"set it in the config file", exit_code=2)
        if args.ram:
            raise CommandError("--ram is for --demo", exit_code=2)
        if args.io != "auto":
            raise CommandError("--io is for --demo; with --config set io in [[pools]]",
                               exit_code=2)
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            raise CommandError(str(exc), exit_code=2) from None
        level = args.log_level or config.log.level
        if args.busy_poll is not None:
            config = dataclasses.replace(
                config, target=dataclasses.replace(config.target, busy_poll_us=args.busy_poll))
    else:
        level = args.log_level or "info"
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    def announce(line: str) -> None:
        print(line, flush=True)
    keep_freed_memory()  # large buffers freed between bursts of I/O stay for the next burst
    try:
        if args.config is not None:
            uvloop.run(run_daemon(config, announce=announce))
        else:
            host, port = args.listen or ("127.0.0.1", DEFAULT_PORT)
            demo = DemoConfig(host=host, port=port,
                              state_dir=args.state_dir or default_state_dir(), ram=args.ram,
                              busy_poll_us=args.busy_poll or 0, io=args.io)
            uvloop.run(serve_demo(demo, announce=announce))
    except DaemonError as exc:
        raise CommandError(str(exc)) from None
    return 0
