"""sbstore.sdnotify against a unix datagram socket the test binds (as systemd would)."""
from __future__ import annotations

import asyncio
import itertools
import os
import socket
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sbstore import sdnotify


class Receiver:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def messages(self, timeout: float = 0.0) -> list[tuple[float, dict[str, str]]]:
        """Every datagram received so far (waiting up to ``timeout`` for the first)."""
        out = []
        self.sock.settimeout(timeout)
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                return out
            self.sock.settimeout(0)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            out.append((time.monotonic(), fields))


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield Receiver(sock)
    finally:
        sock.close()


def test_ready_status_stopping(receiver: Receiver) -> None:
    assert sdnotify.ready("serving 2 volumes")
    assert sdnotify.status("pool p1 opened\nlisteners up")
    assert sdnotify.stopping()
    assert sdnotify.notify(RELOADING=1, MONOTONIC_USEC=42)
    got = [fields for _, fields in receiver.messages(timeout=2)]
    assert got == [
        {"READY": "1", "STATUS": "serving 2 volumes"},
        {"STATUS": "pool p1 opened listeners up"},  # a newline would forge a field
        {"STOPPING": "1"},
        {"RELOADING": "1", "MONOTONIC_USEC": "42"},
    ]


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"sbs-test-notify-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        sock.settimeout(2)
        assert sock.recv(100) == b"READY=1\n"


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.watchdog_ping() is False
    # A socket that went away is logged, not raised.
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert sdnotify.ready() is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert sdnotify.watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "soon", ""):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert sdnotify.watchdog_interval_s() is None


async def test_watchdog_pings_at_half_the_timeout(receiver: Receiver,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: a ping every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    # Timestamp each ping as it arrives (the loop reads the socket while the pings run).
    arrivals: list[float] = []
    loop = asyncio.get_running_loop()
    receiver.sock.setblocking(False)

    def on_ping() -> None:
        assert receiver.sock.recv(100) == b"WATCHDOG=1\n"
        arrivals.append(time.monotonic())

    loop.add_reader(receiver.sock.fileno(), on_ping)
    try:
        task = asyncio.create_task(sdnotify.watchdog_loop())
        await asyncio.sleep(0.65)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
    finally:
        loop.remove_reader(receiver.sock.fileno())
    assert 4 <= len(arrivals) <= 8, arrivals  # 7 expected; loose for a busy machine
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert 0.07 <= statistics.median(gaps) <= 0.2, gaps
    await asyncio.sleep(0.25)
    assert receiver.messages() == []  # cancelled: no more pings


async def test_watchdog_loop_returns_when_not_asked(receiver: Receiver) -> None:
    await asyncio.wait_for(sdnotify.watchdog_loop(), 1)
    assert receiver.messages() == []
