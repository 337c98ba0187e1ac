"""``sbstore serve --config FILE`` as systemd runs it: a process of its own, READY=1 on
``$NOTIFY_SOCKET`` once it serves, watchdog pings, the API on TCP with a bearer token,
STOPPING=1 and exit 0 on SIGTERM; and the start refusals (bad config, missing pool, a second
daemon on the same state directory) with their messages."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sbstore.control.client import ApiError, Client

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **extra}


def _write_config(tmp: Path, sock_dir: Path, *, create: bool = True, extra: str = "") -> Path:
    (tmp / "token").write_text("s3cret-token\n")
    port = _free_port()
    cfg = tmp / "sbstore.toml"
    cfg.write_text(f"""
state_dir = "state"
[log]
level = "warning"
[api]
socket = "{sock_dir / 'api.sock'}"
listen = "127.0.0.1:0"
token_file = "token"
[metrics]
listen = "127.0.0.1:0"
[[pools]]
name = "main"
path = "main.pool"
{'create_size = "512M"' if create else ''}
[[listeners]]
address = "127.0.0.1"
port = {port}
{extra}
""")
    return cfg


@pytest.fixture
def notify_socket(sock_dir: Path) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(sock_dir / "notify"))
    s.settimeout(TIMEOUT_S)
    try:
        yield s
    finally:
        s.close()


def _messages(sock: socket.socket, until: str) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        got += sock.recv(4096).decode().splitlines()
        if until in got:
            return got
    raise AssertionError(f"no {until} in {got}")


def _read_until(proc: subprocess.Popen[str], pattern: str) -> tuple[list[str], re.Match[str]]:
    lines: list[str] = []
    deadline = time.monotonic() + TIMEOUT_S
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        m = re.search(pattern, line)
        if m:
            return lines, m
    raise AssertionError(f"no line matching {pattern!r}: {lines}")


def test_serve_config_under_systemd_protocol(tmp_path: Path, sock_dir: Path,
                                              notify_socket: socket.socket) -> None:
    cfg = _write_config(tmp_path, sock_dir)
    env = _env(NOTIFY_SOCKET=str(sock_dir / "notify"), WATCHDOG_USEC="200000")
    proc = subprocess.Popen([sys.executable, "-m", "sbstore", "serve", "--config", str(cfg)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        ready = _messages(notify_socket, "READY=1")
        assert any(m.startswith("STATUS=serving") for m in ready)
        assert "WATCHDOG=1" in _messages(notify_socket, "WATCHDOG=1")
        lines, m = _read_until(proc, r"API on http://127\.0\.0\.1:(\d+) ")
        assert any(line.startswith("sbstore: NVMe/TCP on 127.0.0.1:") for line in lines)
        url = f"http://127.0.0.1:{m.group(1)}"
        with Client(url=url, token="wrong") as c, pytest.raises(ApiError) as refused:
            c.get("/v1/status")
        assert refused.value.status == 401
        with Client(url=url, token="s3cret-token") as c:
            c.post("/v1/volumes", {"name": "v", "size_bytes": 1 << 20})
        r = subprocess.run([sys.executable, "-m", "sbstore", "--url", url, "--token-file",
                            str(tmp_path / "token"), "volume", "list", "--json"],
                           cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60,
                           check=False)
        assert r.returncode == 0 and '"name": "v"' in r.stdout, r.stderr
        with Client(sock_dir / "api.sock") as c:  # the unix socket needs no token
            assert c.get("/v1/volumes")[0]["pool"] == "main"
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in _messages(notify_socket, "STOPPING=1")
        assert proc.wait(TIMEOUT_S) == 0
        assert not (sock_dir / "api.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def _serve(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sbstore", "serve", "--config", str(cfg)],
                          cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=60, check=False)


def test_start_refusals(tmp_path: Path, sock_dir: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('state_dir = "s"\n[[pools]]\nname = "p"\npath = "p"\nsize = 1\n')
    r = _serve(bad)
    assert r.returncode == 2 and "pools[0]: unknown key 'size'" in r.stderr, r.stderr

    r = _serve(_write_config(tmp_path, sock_dir, create=False))
    assert r.returncode == 1 and "does not exist" in r.stderr
    assert "sbstore pool create" in r.stderr, r.stderr

    r = subprocess.run([sys.executable, "-m", "sbstore", "serve", "--config", str(bad),
                        "--listen", "127.0.0.1:1"], cwd=REPO, env=_env(), capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 2 and "--listen is for --demo" in r.stderr


def test_one_daemon_per_state_dir(tmp_path: Path, sock_dir: Path) -> None:
    cfg = _write_config(tmp_path, sock_dir)
    first = subprocess.Popen([sys.executable, "-m", "sbstore", "serve", "--config", str(cfg)],
                             cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        _read_until(first, r"Manage it with")
        other = tmp_path / "other.toml"
        other.write_text(cfg.read_text().replace(str(sock_dir / "api.sock"),
                                                 str(sock_dir / "b.sock")))
        r = _serve(other)
        assert r.returncode == 1 and "another sbstore daemon" in r.stderr, r.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        try:
            assert first.wait(TIMEOUT_S) == 0
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(10)
            if first.stdout:
                first.stdout.close()
