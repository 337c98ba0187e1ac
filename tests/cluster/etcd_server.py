"""A real single-member etcd for the cluster tests, on free loopback ports in a given directory.

Every wait here is bounded; :meth:`EtcdServer.stop` ends the process whatever state it is in
(a paused one too), so a test that fails half-way leaves nothing running."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdServer:
    def __init__(self, directory: Path, name: str = "t") -> None:
        self.directory = Path(directory)
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        assert self.proc is None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = open(self.directory / "etcd.log", "ab")
        try:
            self.proc = subprocess.Popen(
                [ETCD, "--name", self.name, "--data-dir", str(self.directory / "data"),
                 "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"{self.name}={peer}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()  # the child holds its own copy
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as reply:
                    if json.loads(reply.read()).get("health") == "true":
                        return
            except (OSError, ValueError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd not healthy within {START_TIMEOUT_S}s: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return (self.directory / "etcd.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S."""
        if self.proc is None:
            return
        if self._paused:
            self.resume()  # a stopped process cannot act on SIGTERM
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.proc = None

    def kill(self) -> None:
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.proc = None
        self._paused = False

    def restart(self) -> None:
        """Stopped or not, start again on the same data directory and ports."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the process holds its sockets but answers nothing, as if cut off."""
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self._paused = True
        # The signal is delivered asynchronously: return only once the process is stopped,
        # or a request sent at once may still be answered.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _proc_state(self.proc.pid) not in ("T", "t") and time.monotonic() < deadline:
            time.sleep(0.005)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self._paused = False


def _proc_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (R, S, T for stopped, ...); "" if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
