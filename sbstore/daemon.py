"""The composition root: builds the target from its parts and runs it until told to stop.

Rules: this is the only module that knows every part. It owns the event loop's lifetime, the
signals (SIGINT/SIGTERM stop it cleanly) and what the operator is told on start.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from target.blockdev import BlockDevice, FileDevice
from target.server import TargetServer
from target.subsystem import Subsystem, Target

log = logging.getLogger("sbstore.daemon")

DEMO_NQN = "nqn.2026-11.io.sbstore:demo"
DEMO_SIZE = 1 << 30
DEFAULT_PORT = 4420


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return Path(base) / "sbstore"


@dataclass(frozen=True)
class DemoConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    state_dir: Path = Path(".")
    ram: bool = False  # serve a RAM device instead of the file (benchmarks: the protocol alone)
    size_bytes: int = DEMO_SIZE


def open_demo_device(config: DemoConfig) -> BlockDevice:
    if config.ram:
        from target.blockdev import RamDevice
        return RamDevice(config.size_bytes, block_size=4096)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    return FileDevice(config.state_dir / "demo.img", block_size=4096,
                      size_bytes=config.size_bytes)


def connect_lines(nqn: str, host: str, port: int) -> list[str]:
    return [f"nvme discover -t tcp -a {host} -s {port}",
            f"nvme connect -t tcp -a {host} -s {port} -n {nqn}"]


async def serve_demo(config: DemoConfig, *, announce: Callable[[str], None] = print,
                     stop: asyncio.Event | None = None) -> None:
    """Serve one demo volume to any host until ``stop`` is set (or SIGINT/SIGTERM)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (tests run the daemon in-process)

    device = open_demo_device(config)
    target = Target()
    subsystem = Subsystem(DEMO_NQN, serial="SBSDEMO0001", model="sbstore demo volume",
                          allow_any_host=True)
    subsystem.add_namespace(device)
    target.add_subsystem(subsystem)
    server = TargetServer(target)
    listener = await server.listen(config.host, config.port)
    port = int(listener.trsvcid)
    what = "RAM" if config.ram else f"file {config.state_dir / 'demo.img'}"
    announce(f"sbstore: serving {DEMO_NQN} ({config.size_bytes >> 20} MiB, {what}) "
             f"on {config.host}:{port}")
    announce("A host attaches it with:")
    for line in connect_lines(DEMO_NQN, config.host, port):
        announce(f"  {line}")
    try:
        await stop.wait()
    finally:
        announce("sbstore: stopping")
        await server.close()
        close = getattr(device, "close", None)
        if close is not None:
            close()
