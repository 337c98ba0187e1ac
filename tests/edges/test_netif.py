"""sbstore.control.netif: addresses by interface name, followed as they change.

The changing part runs in a network namespace this test creates (``sbs-test-XXXXXX``) with a
veth pair in it (``sbs0``/``sbs1``; veth rather than dummy: some kernels lack the dummy module),
the watcher in a child process under ``ip netns exec``; addresses are changed with ``ip -n``.
The root namespace is only read (``lo``), never changed. The namespace is deleted in teardown.
Creating namespaces needs root (we are, here and in CI): where it is impossible the test fails
and says so.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sbstore.control.netif import InterfaceNotFound, InterfaceWatcher, resolve_interface

REPO = Path(__file__).resolve().parents[2]
IF = "sbs0"
PEER = "sbs1"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], check=False, capture_output=True, text=True,
                         timeout=10)
    if check and res.returncode:
        raise AssertionError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res


@pytest.fixture
def netns() -> Iterator[str]:
    if shutil.which("ip") is None:
        pytest.fail("the netns test needs iproute2's `ip` (apt-get install iproute2)")
    name = f"sbs-test-{uuid.uuid4().hex[:6]}"
    res = ip("netns", "add", name, check=False)
    if res.returncode:
        pytest.fail(f"cannot create network namespace {name} ({res.stderr.strip()}): this test "
                    f"needs root (CAP_SYS_ADMIN) and a kernel with network namespaces; it does "
                    f"not skip, so that CI cannot pass without running it")
    try:
        ip("-n", name, "link", "set", "lo", "up")
        add_interface(name)
        yield name
    finally:
        ip("netns", "del", name, check=False)


def add_interface(ns: str) -> None:
    ip("-n", ns, "link", "add", IF, "type", "veth", "peer", "name", PEER)
    # Fast duplicate address detection, so the tentative phase is short (per-namespace sysctl).
    for dev in (IF, PEER):
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                        f"net.ipv6.conf.{dev}.retrans_time_ms=100"], check=False, timeout=10)
        ip("-n", ns, "link", "set", dev, "up")


class Probe:
    """tests/edges/netif_probe.py running in the namespace; its JSON lines in a queue."""

    def __init__(self, ns: str, ifname: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.edges.netif_probe", ifname],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.decode())
        self.lines.put(None)

    def next(self, timeout: float = 10.0) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no report from the watcher within {timeout} s") from None
        if line is None:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise AssertionError(f"the probe exited ({self.proc.wait(5)}): {err}")
        return json.loads(line)

    def finish(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        report = self.next()
        assert self.proc.wait(10) == 0
        return report

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def test_watcher_follows_addresses_in_a_namespace(netns: str) -> None:
    ip("-n", netns, "addr", "add", "10.77.0.1/24", "dev", IF)
    probe = Probe(netns, IF)
    try:
        first = probe.next(timeout=30)
        assert first["initial"] == ["10.77.0.1"]

        ip("-n", netns, "addr", "add", "10.77.0.2/24", "dev", IF)
        assert probe.next() == {"added": ["10.77.0.2"], "removed": []}

        ip("-n", netns, "addr", "add", "fd77::1/64", "dev", IF, "nodad")
        assert probe.next() == {"added": ["fd77::1"], "removed": []}

        # Not reported: link-local IPv6, and addresses of another interface. The next report
        # must be the change that follows them.
        ip("-n", netns, "addr", "add", "fe80::77/64", "dev", IF, "nodad")
        ip("-n", netns, "addr", "add", "10.77.1.1/24", "dev", PEER)
        ip("-n", netns, "addr", "add", "fd77:1::1/64", "dev", PEER, "nodad")
        ip("-n", netns, "addr", "del", "10.77.0.2/24", "dev", IF)
        assert probe.next() == {"added": [], "removed": ["10.77.0.2"]}

        # An IPv6 address is offered only once duplicate address detection is over (a
        # tentative address cannot be bound).
        ip("-n", netns, "addr", "add", "fd77::2/64", "dev", IF)
        assert probe.next() == {"added": ["fd77::2"], "removed": []}
        shown = ip("-n", netns, "-6", "addr", "show", "dev", IF).stdout
        line = next(x for x in shown.splitlines() if "fd77::2/64" in x)
        assert "tentative" not in line, shown

        # Followed by name: deleted, everything goes; re-created (new index), it comes back.
        ip("-n", netns, "link", "del", IF)
        assert probe.next() == {"added": [],
                                "removed": sorted(["10.77.0.1", "fd77::1", "fd77::2"])}
        add_interface(netns)
        ip("-n", netns, "addr", "add", "10.77.0.9/24", "dev", IF)
        assert probe.next() == {"added": ["10.77.0.9"], "removed": []}

        closed = probe.finish()
        assert closed == {"closed": True, "reader_fd_closed": True, "tasks_left": 0}
    finally:
        probe.kill()


async def test_resolve_in_the_root_namespace_reads_only() -> None:
    addrs = await resolve_interface("lo")
    assert "127.0.0.1" in addrs
    assert not any(a.startswith("fe80") for a in addrs)
    v4only = await resolve_interface("lo", ipv6=False)
    assert v4only == {a for a in addrs if ":" not in a}
    with pytest.raises(InterfaceNotFound):
        await resolve_interface("sbs-no-such0")


async def test_watcher_start_close_clean() -> None:
    changes: list[tuple[set[str], set[str]]] = []
    watcher = InterfaceWatcher("lo", lambda a, r: changes.append((a, r)))
    initial = await watcher.start()
    assert "127.0.0.1" in initial and watcher.addresses == initial
    sock = watcher._sock
    assert sock is not None and sock.fileno() >= 0
    await watcher.close()
    await watcher.close()  # idempotent
    assert sock.fileno() == -1
    assert changes == []
    with pytest.raises(RuntimeError):
        await watcher.start()


async def test_missing_interface_starts_empty() -> None:
    async with InterfaceWatcher("sbs-no-such0", lambda a, r: None) as watcher:
        assert watcher.addresses == frozenset()
        assert watcher.ifindex is None
