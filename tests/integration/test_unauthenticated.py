"""Issue 8: clients that never identify themselves cannot exhaust the target.

Each test runs a real target on loopback with small limits, attacks it with raw sockets, and
keeps a host connected through the Python initiator doing I/O the whole time: it must never
notice. Sources other than 127.0.0.1 are other loopback addresses (127.0.0.0/8 is all local on
Linux), so the per-source cap can be told from the per-listener one.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from target.blockdev import RamDevice
from target.connlimits import ConnectionLimits
from target.host import Controller, QueueClient
from target.host.queue_client import CommandFailed
from target.server import TargetServer
from target.subsystem import Subsystem, Target

NQN = "nqn.2026-11.io.sbstore:limits"
JUNK = bytes(range(0x30, 0xB0))  # PDU type 0x30: no such PDU, a protocol error at once


@contextlib.asynccontextmanager
async def serving(limits: ConnectionLimits, **server_kw: object
                  ) -> AsyncIterator[tuple[TargetServer, int]]:
    target = Target()
    sub = Subsystem(NQN, serial="SBSLIMITS01", model="sbstore limits", allow_any_host=True)
    sub.add_namespace(RamDevice(8 << 20, block_size=512, uuid=uuid.UUID(int=8)))
    target.add_subsystem(sub)
    server = TargetServer(target, connection_limits=limits, **server_kw)  # type: ignore[arg-type]
    listener = await server.listen("127.0.0.1", 0)
    try:
        yield server, int(listener.trsvcid)
    finally:
        await server.close()


async def raw_socket(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A connected TCP socket that has sent nothing (non-blocking)."""
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def closed_by_peer(sock: socket.socket, timeout_s: float) -> bool:
    """True if the peer closes (EOF or reset) ``sock`` within ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), left)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        if not data:
            return True
    return False


class Busy:
    """A connected host doing writes and reads until stopped; fails the test on any error."""

    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        self.ios = 0
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        for i in range(1_000_000):  # bounded; stopped long before
            if self._stop.is_set():
                return
            block = bytes([i % 251]) * 512
            await self.ctrl.write(1, i % 64, block)
            assert bytes(await self.ctrl.read(1, i % 64, 1)) == block
            self.ios += 1
            await asyncio.sleep(0.005)

    async def stop(self) -> int:
        self._stop.set()
        await asyncio.wait_for(self._task, 10)
        return self.ios


async def test_idle_connections_are_closed_at_the_icreq_deadline() -> None:
    limits = ConnectionLimits(icreq_timeout_s=0.5, connect_timeout_s=0.5)
    async with serving(limits) as (server, port):
        ctrl = await Controller.connect("127.0.0.1", port, NQN, kato_ms=5000)
        busy = Busy(ctrl)
        socks: list[socket.socket] = []
        try:
            socks += [await raw_socket(port) for _ in range(50)]
            assert server.connection_count == 50 + 2  # the host's admin and I/O queues
            started = time.monotonic()
            closed = await asyncio.gather(*(closed_by_peer(s, 5) for s in socks))
            assert all(closed)
            assert 0.4 < time.monotonic() - started < 3
            assert server.gate.timed_out == {"icreq": 50}
            assert server.connection_count == 2
            # Connected queues outlive both deadlines: the host still works after them.
            assert await busy.stop() > 0
            await ctrl.write(1, 3, b"\x33" * 512)
            assert bytes(await ctrl.read(1, 3, 1)) == b"\x33" * 512
        finally:
            for s in socks:
                s.close()
            await ctrl.close()


async def test_icreq_without_connect_is_closed_at_the_connect_deadline() -> None:
    limits = ConnectionLimits(icreq_timeout_s=5, connect_timeout_s=0.5)
    async with serving(limits) as (server, port):
        queue = await QueueClient.open("127.0.0.1", port)  # ICReq/ICResp, then nothing
        try:
            started = time.monotonic()
            assert await queue.wait_closed(timeout_s=5)
            assert 0.4 < time.monotonic() - started < 3
            assert server.gate.timed_out == {"connect": 1}
        finally:
            queue.close()


async def test_caps_refuse_extra_connections_and_spare_the_others() -> None:
    limits = ConnectionLimits(icreq_timeout_s=30, max_per_listener=6, max_per_source=4)
    async with serving(limits) as (server, port):
        ctrl = await Controller.connect("127.0.0.1", port, NQN)  # 2 connections from .1
        busy = Busy(ctrl)
        socks: list[socket.socket] = []
        try:
            socks += [await raw_socket(port) for _ in range(2)]  # .1 now holds its 4
            extra = await raw_socket(port)
            assert await closed_by_peer(extra, 2), "over the per-source cap"
            extra.close()
            socks += [await raw_socket(port, "127.0.0.2") for _ in range(2)]  # listener: 6
            extra = await raw_socket(port, "127.0.0.3")
            assert await closed_by_peer(extra, 2), "over the per-listener cap"
            extra.close()
            assert server.gate.refused == {"source_cap": 1, "listener_cap": 1}
            assert not any([await closed_by_peer(s, 0.05) for s in socks])
            assert server.connection_count == 6
            # Room again once one goes: the cap counts what is open, not what was.
            socks.pop().close()
            for _ in range(100):  # bounded wait for the target to see the close
                if server.connection_count == 5:
                    break
                await asyncio.sleep(0.01)
            again = await raw_socket(port, "127.0.0.3")
            socks.append(again)
            assert not await closed_by_peer(again, 0.2)
            assert await busy.stop() > 0
        finally:
            for s in socks:
                s.close()
            await ctrl.close()


async def test_garbage_connections_log_a_bounded_number_of_lines(caplog) -> None:
    limits = ConnectionLimits()
    async with serving(limits, log_burst=5, log_interval_s=0.5) as (server, port):
        ctrl = await Controller.connect("127.0.0.1", port, NQN)
        busy = Busy(ctrl)
        caplog.set_level(logging.INFO, logger="sbstore.target")
        try:
            async def junk() -> bool:
                sock = await raw_socket(port)
                try:
                    await asyncio.get_running_loop().sock_sendall(sock, JUNK)
                    return await closed_by_peer(sock, 5)
                finally:
                    sock.close()

            n = 0
            for _ in range(10):  # 10 rounds of 50 at once
                results = await asyncio.gather(*(junk() for _ in range(50)))
                assert all(results)
                n += len(results)
            await asyncio.sleep(0.6)  # the window ends: its summary is written
            assert await busy.stop() > 0
        finally:
            await ctrl.close()
    lines = [r.getMessage() for r in caplog.records
             if r.name == "sbstore.target" and r.levelno == logging.WARNING]
    errors = [x for x in lines if "protocol error" in x]
    summaries = [x for x in lines if "similar messages suppressed (protocol_error)" in x]
    suppressed = server.log_suppressed()["protocol_error"]
    assert len(errors) + suppressed == n
    assert suppressed >= n - 5 * 10, "at most 5 lines per 0.5 s window"
    assert summaries and sum(int(x.split()[0]) for x in summaries) == suppressed
    assert len(lines) < 60


async def test_refused_connects_are_rate_limited_too(caplog) -> None:
    # A Connect to a subsystem that does not exist is a line a stranger can provoke per
    # connection, like a protocol error: the same limit applies.
    async with serving(ConnectionLimits(), log_burst=3, log_interval_s=30) as (server, port):
        caplog.set_level(logging.INFO, logger="sbstore.target")
        for _ in range(20):
            with pytest.raises(CommandFailed):
                await Controller.connect("127.0.0.1", port, "nqn.2026-11.io.sbstore:nope")
        async with await Controller.connect("127.0.0.1", port, NQN) as ctrl:
            await ctrl.write(1, 0, b"\x44" * 512)
    refused = [r for r in caplog.records if "Connect refused" in r.getMessage()]
    assert len(refused) == 3
    assert server.log_suppressed()["connect_refused"] == 17
    assert any("17 similar messages suppressed (connect_refused)" in r.getMessage()
               for r in caplog.records)  # written when the server stopped
