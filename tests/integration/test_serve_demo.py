"""`sbstore serve --demo` as a user runs it: a separate process, real TCP, SIGTERM to stop."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from sbstore.store import Pool
from target.host import Controller, discover

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def demo(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "sbstore", "serve", "--demo", "--listen",
                             "127.0.0.1:0", "--state-dir", str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    port = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and port is None:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        m = re.search(r" on 127\.0\.0\.1:(\d+)$", line.strip())
        if m:
            port = int(m.group(1))
    for _ in range(5):
        lines.append(proc.stdout.readline().rstrip())
    try:
        assert port, f"the demo did not start: {lines}"
        yield proc, port, lines, tmp_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


async def test_demo_serves_and_stops_cleanly(demo):
    proc, port, lines, state_dir = demo
    text = "\n".join(lines)
    assert f"nvme discover -t tcp -a 127.0.0.1 -s {port}" in text
    assert f"nvme connect -t tcp -a 127.0.0.1 -s {port} -n nqn.2026-11.io.sbstore:demo" in text
    assert f"sbstore --socket {state_dir / 'api.sock'} volume list" in text
    entries = await discover("127.0.0.1", port)
    assert "nqn.2026-11.io.sbstore:demo" in {e.subnqn for e in entries}
    async with await Controller.connect("127.0.0.1", port, "nqn.2026-11.io.sbstore:demo",
                                        nr_io_queues=2) as ctrl:
        ns = ctrl.namespaces[1]
        assert ns.nsze * ns.block_size == 1 << 30
        await ctrl.write(1, 5, b"\xc3" * ns.block_size)
        await ctrl.flush(1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    # The flushed block is in the demo volume of the demo pool (opened once the daemon let go).
    with Pool.open(state_dir / "demo.pool", readonly=True) as pool:
        vol = pool.volume("demo")
        assert vol.size_bytes == 1 << 30 and vol.block_size == ns.block_size
        assert bytes(await vol.read(5, 1)) == b"\xc3" * ns.block_size
        assert bytes(await vol.read(6, 1)) == bytes(ns.block_size)


async def test_demo_with_busy_poll_says_so_and_serves(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "sbstore", "serve", "--demo", "--ram",
                             "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path),
                             "--busy-poll", "100"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("Busy-polling" in x for x in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
        text = "\n".join(lines)
        assert "Busy-polling: the loop polls for 100 us after each receive" in text, text
        port = int(re.search(r" on 127\.0\.0\.1:(\d+)$", text, re.M).group(1))
        async with await Controller.connect("127.0.0.1", port,
                                            "nqn.2026-11.io.sbstore:demo") as ctrl:
            await ctrl.write(1, 3, b"\x5a" * 4096)
            assert bytes(await ctrl.read(1, 3, 1)) == b"\x5a" * 4096
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_busy_poll_value_is_checked():
    proc = subprocess.run([sys.executable, "-m", "sbstore", "serve", "--demo", "--ram",
                           "--busy-poll", "-5"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "out of range" in proc.stderr
