"""A real daemon for the control tests: ``run_daemon`` in a thread of its own (its own uvloop),
real sockets on 127.0.0.1 (port 0) and a unix socket in a short temporary directory.

The daemon runs in another thread so a test can call the blocking CLI (``sbstore.cli.main``)
and, from its own event loop, drive hosts (``target.host.Controller``) against the target.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop

from sbstore import cli
from sbstore.config import ApiConfig, Config, ListenerConfig, MetricsConfig, PoolConfig
from sbstore.control.client import Client
from sbstore.control.state import StateStore
from sbstore.daemon import Running, run_daemon

HOST_A = "nqn.2014-08.org.nvmexpress:uuid:0c5ee07d-0000-4000-8000-00000000000a"
HOST_B = "nqn.2014-08.org.nvmexpress:uuid:0c5ee07d-0000-4000-8000-00000000000b"
NQN_1 = "nqn.2026-11.io.sbstore.test:one"
NQN_2 = "nqn.2026-11.io.sbstore.test:two"
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 30


@dataclass
class CliResult:
    rc: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def error(self) -> dict[str, Any]:
        return json.loads(self.err)["error"]


@dataclass
class DaemonThread:
    """``start()`` runs the daemon until ``stop()``; ``cli(...)`` and ``client`` reach it."""

    config: Config
    lines: list[str] = field(default_factory=list)
    running: Running | None = None
    error: BaseException | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    @property
    def socket(self) -> str:
        assert self.config.api.socket is not None
        return str(self.config.api.socket)

    def start(self) -> DaemonThread:
        self.lines.clear()
        self.running = None
        self.error = None
        self._ready.clear()

        def ready(running: Running) -> None:
            self.running = running
            self._ready.set()

        def main() -> None:
            try:
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    runner.run(run_daemon(self.config, announce=self.lines.append,
                                          ready=ready))
            except BaseException as exc:  # noqa: BLE001 (reported to the test)
                self.error = exc
            finally:
                self._ready.set()

        self._thread = threading.Thread(target=main, name="sbstore-daemon", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise TimeoutError("the daemon did not start in time")
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self.running is not None and self._thread.is_alive():
            self.running.loop.call_soon_threadsafe(self.running.stop.set)
        self._thread.join(STOP_TIMEOUT_S)
        assert not self._thread.is_alive(), "the daemon did not stop in time"
        self._thread = None
        if self.error is not None:
            raise self.error

    def restart(self) -> DaemonThread:
        self.stop()
        return self.start()

    @property
    def port(self) -> int:
        """The NVMe/TCP port of the first listener."""
        return int(self.listeners()[0]["bound"][0]["port"])

    def listeners(self) -> list[dict[str, Any]]:
        with Client(self.socket) as c:
            return c.get("/v1/listeners")  # type: ignore[no-any-return]

    @property
    def client(self) -> Client:
        return Client(self.socket)

    @property
    def metrics_url(self) -> str:
        assert self.running is not None and self.running.metrics is not None
        return str(self.running.metrics.url)

    def cli(self, *args: str, socket: bool = True) -> CliResult:
        argv: Sequence[str] = (["--socket", self.socket] if socket else []) + list(args)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(argv)
        return CliResult(rc, out.getvalue(), err.getvalue())

    def ok(self, *args: str) -> CliResult:
        """Run a CLI command that must succeed; ``--json`` answers are parsed by the caller."""
        r = self.cli(*args)
        assert r.rc == 0, f"sbstore {' '.join(args)} -> {r.rc}: {r.err}"
        return r

    def state_dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of the state database, read with a connection of our own."""
        store = StateStore(self.config.state_db)
        try:
            return store.dump()
        finally:
            store.close()


def make_config(tmp: Path, sock_dir: Path, pools: Sequence[str] = ("p1",), *,
                listeners: Sequence[ListenerConfig] = (ListenerConfig(0, "127.0.0.1"),),
                pool_size: int = 1 << 30, per_volume: str = "counters") -> Config:
    return Config(
        state_dir=tmp / "state",
        api=ApiConfig(socket=sock_dir / "api.sock"),
        metrics=MetricsConfig(listen=("127.0.0.1", 0), per_volume=per_volume),
        pools=tuple(PoolConfig(name, tmp / f"{name}.pool", create_size=pool_size)
                    for name in pools),
        listeners=tuple(listeners),
        source="test")


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for unix sockets (tmp_path can be too long for one)."""
    d = Path(tempfile.mkdtemp(prefix="sbs-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon(tmp_path: Path, sock_dir: Path) -> Iterator[DaemonThread]:
    d = DaemonThread(make_config(tmp_path, sock_dir)).start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def daemon2(tmp_path: Path, sock_dir: Path) -> Iterator[DaemonThread]:
    """A daemon with two pools, p1 and p2."""
    d = DaemonThread(make_config(tmp_path, sock_dir, ("p1", "p2"))).start()
    try:
        yield d
    finally:
        d.stop()


async def in_thread(fn: Any, *args: Any) -> Any:
    """Run a blocking call (the CLI) without stalling the test's loop (hosts' keep-alive)."""
    return await asyncio.to_thread(fn, *args)
