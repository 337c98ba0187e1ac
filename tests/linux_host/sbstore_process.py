"""sbstore as a child process on the host, for the guest to connect to: the demo target
(:class:`SbstoreServer`), and the daemon from a config file (:class:`SbstoreDaemon`, driven
through the CLI: :func:`sbstore_cli`).

The demo runs ``python3 -m sbstore serve --demo --listen 127.0.0.1:PORT --state-dir DIR``
from the repository root (so the checkout is what runs), output to a file (a pipe could fill
and stall the server). Ready means: it accepts a TCP connection on PORT. Stopping sends
SIGTERM, waits, then SIGKILL; the process also dies with the test process (PR_SET_PDEATHSIG).
The guest reaches it as 10.0.2.2:PORT through QEMU user networking.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .vm import die_with_parent

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_NQN = "nqn.2026-11.io.sbstore:demo"
DEMO_SIZE = 1 << 30


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _ManagedProcess:
    """What both process wrappers share: stop it (SIGTERM, then SIGKILL), is it alive, and
    what it printed (its log file)."""

    proc: subprocess.Popen[bytes] | None
    returncode: int | None
    stop_seconds: float | None
    log_path: Path
    STOP_TIMEOUT_S = 10.0

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status (idempotent)."""
        proc = self.proc
        if proc is None:
            return self.returncode
        if proc.poll() is None:
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.STOP_TIMEOUT_S if timeout is None else timeout)
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


class SbstoreServer(_ManagedProcess):
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

    def failure_sections(self) -> list[tuple[str, str]]:
        state = "running" if self.alive else f"exited rc={self.proc and self.proc.returncode}"
        return [(f"sbstore server output ({state}: {' '.join(self.argv[1:])})",
                 self.output()[-64000:] or "(no output)")]


# ---------------------------------------------------------------------------------------------
# The daemon from a TOML config (``sbstore serve --config FILE``), driven through its CLI.

def write_config(path: Path, *, state_dir: Path, pool_path: Path, pool_size: str,
                 api_socket: Path, nvme_port: int, pool_name: str = "e2e",
                 metrics_listen: str = "127.0.0.1:0", log_level: str = "info",
                 extra: str = "") -> Path:
    """A config for one pool file (created at first start), one 127.0.0.1 listener, the API
    on a unix socket and the metrics on loopback (port 0: any free one); ``extra``: more
    TOML tables, appended."""
    text = f"""# written by tests/linux_host/sbstore_process.py
state_dir = "{state_dir}"
[log]
level = "{log_level}"
[api]
socket = "{api_socket}"
[metrics]
listen = "{metrics_listen}"
[[pools]]
name = "{pool_name}"
path = "{pool_path}"
create_size = "{pool_size}"
[[listeners]]
address = "127.0.0.1"
port = {nvme_port}
"""
    path.write_text(text + extra)
    return path


@dataclass(frozen=True)
class CliResult:
    """One ``sbstore ... --json`` run: exit status, parsed stdout (None if not JSON), texts."""

    argv: tuple[str, ...]
    rc: int
    data: Any
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (f"$ sbstore {shlex.join(self.argv)}\nrc={self.rc}\n--- stdout ---\n"
                f"{self.stdout}--- stderr ---\n{self.stderr}")

    def ok(self, what: str = "") -> Any:
        """The parsed answer; AssertionError with the whole exchange if rc != 0."""
        assert self.rc == 0, f"{what or 'sbstore CLI'} failed:\n{self.describe()}"
        return self.data


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    for var in ("SBSTORE_SOCKET", "SBSTORE_URL", "SBSTORE_TOKEN_FILE", "SBSTORE_TOKEN"):
        env.pop(var, None)  # the CLI must reach this daemon, by --socket only
    return env


def sbstore_cli(socket_path: Path, *args: str, timeout: float = 60.0) -> CliResult:
    """``python3 -m sbstore --socket S ARGS --json`` from the repository root."""
    argv = ("--socket", str(socket_path), *args, "--json")
    proc = subprocess.run([sys.executable, "-m", "sbstore", *argv], cwd=REPO_ROOT,
                          env=_child_env(), stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout, check=False)
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    try:
        data = json.loads(out) if out.strip() else None
    except json.JSONDecodeError:
        data = None
    return CliResult(argv, proc.returncode, data, out, err)


class SbstoreDaemon(_ManagedProcess):
    """``python3 -m sbstore serve --config FILE`` as a child process; restartable.

    Every start appends to one log file (a header line per start), so a failure report shows
    each run. Ready means: ``sbstore status`` answers through the API socket (the daemon opens
    its listeners before the API) and the NVMe/TCP port accepts. ``stop`` is SIGTERM, then
    SIGKILL after a timeout; the child also dies with the test process (PR_SET_PDEATHSIG).
    """

    STOP_TIMEOUT_S = 15.0  # a pool flush and close may take a moment

    def __init__(self, config: Path, api_socket: Path, nvme_port: int, log_path: Path) -> None:
        self.config = Path(config)
        self.api_socket = Path(api_socket)
        self.port = nvme_port
        self.log_path = Path(log_path)
        self.argv = [sys.executable, "-m", "sbstore", "serve", "--config", str(self.config)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.stop_seconds: float | None = None
        self.start_seconds: float | None = None
        self.starts = 0
        self.transcript: list[str] = []  # every CLI exchange, for failure reports

    def start(self, timeout: float = 60.0) -> SbstoreDaemon:
        if self.alive:
            raise RuntimeError("already running")
        self.starts += 1
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"===== start #{self.starts}: {shlex.join(self.argv[1:])}\n".encode())
            log.flush()
            # preexec_fn only sets PR_SET_PDEATHSIG (async-signal-safe, no locks taken).
            self.proc = subprocess.Popen(
                self.argv, cwd=REPO_ROOT, env=_child_env(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent)  # noqa: PLW1509
        self.returncode = None
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                raise RuntimeError(f"exited with rc={self.proc.returncode} before answering")
            if self.api_socket.exists() and sbstore_cli(self.api_socket, "status",
                                                        timeout=10).rc == 0:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        self.start_seconds = time.monotonic() - t0
                        return self
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API at {self.api_socket} and NVMe/TCP on "
                                   f"127.0.0.1:{self.port} not ready after {timeout}s")
            time.sleep(0.1)

    def cli(self, *args: str, timeout: float = 60.0) -> CliResult:
        result = sbstore_cli(self.api_socket, *args, timeout=timeout)
        self.transcript.append(result.describe())
        return result

    def failure_sections(self) -> list[tuple[str, str]]:
        state = "running" if self.alive else f"exited rc={self.proc and self.proc.returncode}"
        return [
            (f"sbstore daemon output ({state}: {shlex.join(self.argv[1:])})",
             self.output()[-64000:] or "(no output)"),
            ("sbstore CLI transcript (last 20)", "\n".join(self.transcript[-20:]) or "(none)"),
        ]
