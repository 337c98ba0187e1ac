"""The sbstore demo target as a child process on the host, for the guest to connect to.

Runs ``python3 -m sbstore serve --demo --listen 127.0.0.1:PORT --state-dir DIR`` from the
repository root (so the checkout is what runs), output to a file (a pipe could fill and stall
the server). Ready means: it accepts a TCP connection on PORT. Stopping sends SIGTERM, waits,
then SIGKILL; the process also dies with the test process (PR_SET_PDEATHSIG). The guest reaches
it as 10.0.2.2:PORT through QEMU user networking.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .vm import die_with_parent

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_NQN = "nqn.2026-11.io.sbstore:demo"
DEMO_SIZE = 1 << 30


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SbstoreServer:
    def __init__(self, state_dir: Path, port: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.state_dir = Path(state_dir)
        self.port = port or free_port()
        self.argv = [sys.executable, "-m", "sbstore", "serve", "--demo",
                     "--listen", f"127.0.0.1:{self.port}", "--state-dir", str(self.state_dir),
                     *extra_args]
        self.log_path = self.state_dir.parent / f"{self.state_dir.name}-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.stop_seconds: float | None = None

    def start(self, timeout: float = 60.0) -> SbstoreServer:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=REPO_ROOT, env=env,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with rc={self.proc.returncode} before listening")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"not accepting on 127.0.0.1:{self.port} after {timeout}s")
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status (idempotent)."""
        proc = self.proc
        if proc is None:
            return self.returncode
        if proc.poll() is None:
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            self.stop_seconds = time.monotonic() - t0
        self.returncode = proc.returncode
        return self.returncode

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def failure_sections(self) -> list[tuple[str, str]]:
        state = "running" if self.alive else f"exited rc={self.proc and self.proc.returncode}"
        return [(f"sbstore server output ({state}: {' '.join(self.argv[1:])})",
                 self.output()[-64000:] or "(no output)")]
