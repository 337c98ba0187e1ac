"""What unauthenticated clients cost a running daemon (issue 8): idle connections and garbage.

Starts ``python3 -m sbstore serve`` (the RAM demo, or a pool-less config when ``--limits`` is
given), then:
  1. opens ``--idle`` TCP connections that never send an ICReq and reports the daemon's RSS
     growth per connection (VmRSS from /proc, after a settle);
  2. with ``--wait-s``, waits that long and counts how many of them the daemon closed;
  3. opens ``--garbage`` connections (at most ``--concurrency`` at once) that each send 128
     bytes of junk, and counts the WARNING lines the daemon wrote while they ran.
The daemon is stopped (SIGTERM, then SIGKILL after 10 s) whatever happens.

    python3 perf/idle_connections.py --idle 500 --garbage 3000
    python3 perf/idle_connections.py --idle 500 --wait-s 4 \
        --limits 'icreq_timeout_s = 2'
"""
from __future__ import annotations

import argparse
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SETTLE_S = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Daemon:
    """The daemon as a child process; its stderr is collected by a thread."""

    def __init__(self, tmp: Path, port: int, limits: str | None) -> None:
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        if limits is None:
            argv = ["--demo", "--ram", "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp)]
        else:
            cfg = tmp / "sbstore.toml"
            cfg.write_text(f'state_dir = "{tmp}"\n[api]\nsocket = "{tmp}/api.sock"\n'
                           f'[metrics]\nenabled = false\n[[listeners]]\naddress = "127.0.0.1"\n'
                           f"port = {port}\n[limits]\n{limits}\n")
            argv = ["--config", str(cfg)]
        self.proc = subprocess.Popen([sys.executable, "-m", "sbstore", "serve", *argv],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                     text=True)
        self.lines: list[str] = []
        self._stderr = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr.start()
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # bounded: the daemon prints a few lines, then waits
            if line.startswith("sbstore: ") or time.monotonic() > deadline:
                break
        else:
            raise RuntimeError("daemon exited: " + "".join(self.lines[-20:]))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def warnings(self) -> int:
        return sum(" WARNING " in line for line in list(self.lines))

    def join_stderr(self) -> None:
        self._stderr.join(10)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def open_idle(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setblocking(False)
        socks.append(s)
    return socks


def count_closed(socks: list[socket.socket], wait_s: float) -> int:
    """How many of ``socks`` the peer closed (EOF or reset) within ``wait_s``."""
    closed = set()
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + wait_s
        while len(closed) < len(socks) and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if not data:
                    closed.add(s)
                    sel.unregister(s)
    return len(closed)


def garbage(port: int, n: int, concurrency: int) -> int:
    """``n`` connections that each send 128 bytes of junk; how many the daemon closed."""
    junk = bytes(range(0x30, 0xB0))  # a PDU type 0x30: no such PDU
    closed = 0
    for first in range(0, n, concurrency):
        batch = []
        for _ in range(min(concurrency, n - first)):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                continue
            s.sendall(junk)
            s.setblocking(False)
            batch.append(s)
        closed += count_closed(batch, 10.0)
        for s in batch:
            s.close()
    return closed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--idle", type=int, default=500)
    ap.add_argument("--wait-s", type=float, default=0.0)
    ap.add_argument("--garbage", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--limits", default=None, help="the [limits] section's body (config mode)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sbstore-idle-") as tmp:
        port = free_port()
        daemon = Daemon(Path(tmp), port, args.limits)
        try:
            time.sleep(SETTLE_S)
            before = rss_kib(daemon.proc.pid)
            socks = open_idle(port, args.idle)
            time.sleep(SETTLE_S)
            after = rss_kib(daemon.proc.pid)
            per = (after - before) / max(1, args.idle)
            print(f"idle connections: {args.idle}; daemon RSS {before} KiB -> {after} KiB: "
                  f"+{after - before} KiB, {per:.1f} KiB per connection")
            if args.wait_s:
                closed = count_closed(socks, args.wait_s)
                print(f"closed by the daemon within {args.wait_s:g} s: {closed} of {len(socks)}")
            for s in socks:
                s.close()
            if args.garbage:
                time.sleep(SETTLE_S)
                warned = daemon.warnings()
                closed = garbage(port, args.garbage, args.concurrency)
                time.sleep(SETTLE_S)
                print(f"garbage connections: {args.garbage}, closed by the daemon: {closed}; "
                      f"WARNING lines: {daemon.warnings() - warned}")
        finally:
            daemon.stop()
        # The summary of what the rate limit dropped: at the end of its window, or at stop.
        daemon.join_stderr()
        for line in [x for x in daemon.lines if "suppressed" in x][-3:]:
            print("  " + line.rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
