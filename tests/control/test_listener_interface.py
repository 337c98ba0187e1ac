"""Listeners by interface follow the interface's addresses: the daemon runs in a private network
namespace (``ip netns exec``, as tests/edges/test_netif.py does) with a veth pair; addresses
added to and removed from it are bound and unbound, seen through the API's unix socket (a file,
reachable from the root namespace). The root namespace is never changed."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sbstore.control.client import Client

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 15


def ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    assert r.returncode == 0, f"ip {' '.join(args)}: {r.stderr.strip()}"


@pytest.fixture
def netns() -> Iterator[str]:
    if shutil.which("ip") is None:
        pytest.fail("this test needs iproute2's `ip` (apt-get install iproute2)")
    name = f"sbs-ctl-{uuid.uuid4().hex[:6]}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True,
                       timeout=10, check=False)
    if r.returncode:
        pytest.fail(f"cannot create network namespace {name} ({r.stderr.strip()}): needs root")
    try:
        ip("-n", name, "link", "set", "lo", "up")
        ip("-n", name, "link", "add", "sbs0", "type", "veth", "peer", "name", "sbs1")
        ip("-n", name, "link", "set", "sbs0", "up")
        ip("-n", name, "link", "set", "sbs1", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10,
                       check=False)


def wait_for(what: str, probe: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + WAIT_S
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def bound(c: Client, listener_id: int) -> set[tuple[str, int]]:
    x = next(x for x in c.get("/v1/listeners") if x["id"] == listener_id)
    return {(b["address"], b["port"]) for b in x["bound"]}


def test_interface_listeners_follow_addresses(netns: str, tmp_path: Path,
                                              sock_dir: Path) -> None:
    sock = sock_dir / "api.sock"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
state_dir = "state"
[api]
socket = "{sock}"
[metrics]
enabled = false
[[pools]]
name = "p"
path = "p.pool"
create_size = "256M"
[[listeners]]
interface = "sbs0"
port = 4420
""")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "sbstore",
                             "serve", "--config", str(cfg)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for("the API socket", sock.exists)
        with Client(sock) as c:
            [x] = c.get("/v1/listeners")
            assert (x["interface"], x["state"], x["bound"]) == ("sbs0", "waiting for an address",
                                                                [])
            ip("-n", netns, "addr", "add", "10.99.0.1/24", "dev", "sbs0")
            wait_for("10.99.0.1 bound", lambda: bound(c, 1) == {("10.99.0.1", 4420)})
            ip("-n", netns, "addr", "add", "10.99.1.1/24", "dev", "sbs0")
            wait_for("10.99.1.1 bound", lambda: bound(c, 1) == {("10.99.0.1", 4420),
                                                                ("10.99.1.1", 4420)})
            # A host in the namespace reaches the target on the new address.
            r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c",
                                ("import socket; socket.create_connection(('10.99.1.1', "
                                 "4420), timeout=5).close()")], capture_output=True, text=True,
                               timeout=30, check=False)
            assert r.returncode == 0, r.stderr
            ip("-n", netns, "addr", "del", "10.99.0.1/24", "dev", "sbs0")
            wait_for("10.99.0.1 unbound", lambda: bound(c, 1) == {("10.99.1.1", 4420)})

            # One added through the API follows its interface the same way.
            x = c.post("/v1/listeners", {"interface": "sbs1", "port": 4421})
            assert x["state"] == "waiting for an address" and x["source"] == "api"
            ip("-n", netns, "addr", "add", "10.99.2.1/24", "dev", "sbs1")
            wait_for("10.99.2.1 bound", lambda: bound(c, x["id"]) == {("10.99.2.1", 4421)})
            c.delete(f"/v1/listeners/{x['id']}")
            assert [y["id"] for y in c.get("/v1/listeners")] == [1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        assert proc.stderr is not None
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        assert "Traceback" not in err, err
