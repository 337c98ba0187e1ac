"""The floor under the target's CPU per I/O on this machine: a bare event-loop server.

The server answers every 72-byte request (a command capsule's size) with the bytes a 4 KiB read
returns (a C2HData header, 4096 bytes of data, a CapsuleResp) and does nothing else: no
parsing, no device, no admission, no statistics. Its CPU time per round trip is what uvloop,
the system calls and loopback TCP cost on this machine before a target does any work of its
own. ``perf/run.py`` drives it like the target, job by job (same queue depth, same placement,
the same kind of load engine: polling or event-loop), and reports the target's CPU per I/O
as a multiple of it. A goal below the floor cannot be met by any uvloop server here.

    python3 perf/echo_floor.py serve
        # prints its port, answers until killed
    python3 perf/echo_floor.py drive --port P --qd 32 --seconds 3 [--poll]
        # prints one JSON line: round trips, per second, latency (us), errors

The driver checks each answer's two PDU types (the trailer's when it arrives whole), so a
server that answered wrongly, or a lost byte, shows up as errors rather than as speed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from array import array
from collections import deque
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from perf.percentiles import percentiles_us, value_us  # noqa: E402

REQUEST_BYTES = 72  # a command capsule: common header (8) and SQE (64)
DATA_HEADER = b"\x07" + bytes(23)  # C2HData PDU header (24 bytes)
RESPONSE = b"\x05" + bytes(23)  # CapsuleResp PDU (24 bytes)
ANSWER = DATA_HEADER + bytes(4096) + RESPONSE


class EchoProtocol(asyncio.Protocol):
    """Answers each complete request with :data:`ANSWER`, all answers of a read in one write."""

    def __init__(self) -> None:
        self.pending = 0  # request bytes received but not yet answered
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.pending += len(data)
        n, self.pending = divmod(self.pending, REQUEST_BYTES)
        if n:
            self.transport.writelines([ANSWER] * n)


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()  # until killed


class _Tally:
    """Answers counted off a byte stream: checks the first and last header byte of each."""

    def __init__(self) -> None:
        self.sent_at: deque[int] = deque()  # send times of the requests not yet answered
        self.lat_ns = array("q")
        self.errors = 0
        self.offset = 0  # position within the current answer

    def take(self, chunk: memoryview, now_ns: int) -> int:
        """Consume received bytes; returns how many answers they completed."""
        done = 0
        pos, end = 0, len(chunk)
        size = len(ANSWER)
        while pos < end:
            if self.offset == 0 and chunk[pos] != 0x07:
                self.errors += 1
            step = min(size - self.offset, end - pos)
            self.offset += step
            pos += step
            if self.offset == size:
                if pos >= len(RESPONSE) and chunk[pos - len(RESPONSE)] != 0x05:
                    self.errors += 1  # (a trailer split across receives goes unchecked)
                self.offset = 0
                done += 1
                self.lat_ns.append(now_ns - self.sent_at.popleft())
        return done


def _drive_polled(port: int, qd: int, seconds: float) -> _Tally:
    """Spin on a non-blocking socket with MSG_DONTWAIT, as perf/fastload.py's poll engine does."""
    tally = _Tally()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    request = bytes(REQUEST_BYTES)
    clock = time.perf_counter_ns
    stop_at = clock() + int(seconds * 1e9)
    deadline = stop_at + 30_000_000_000
    try:
        for _ in range(qd):
            tally.sent_at.append(clock())
        sock.sendall(request * qd)
        outstanding = qd
        while outstanding:
            try:
                n = sock.recv_into(buf, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if clock() > deadline:
                    raise TimeoutError("the echo server stopped answering") from None
                continue
            if n == 0:
                raise ConnectionError("the echo server closed the connection")
            now = clock()
            done = tally.take(view[:n], now)
            outstanding -= done
            if done and now < stop_at:
                for _ in range(done):
                    tally.sent_at.append(now)
                sock.sendall(request * done)
                outstanding += done
    finally:
        sock.close()
    return tally


class _DriverProtocol(asyncio.Protocol):
    """The event-loop driver: sleeps in epoll between answers, as perf/fastload.py's fast
    engine does."""

    def __init__(self, tally: _Tally, stop_at: int, done: asyncio.Future[None]) -> None:
        self.tally, self.stop_at, self.done = tally, stop_at, done
        self.outstanding = 0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, n: int) -> None:
        now = time.perf_counter_ns()
        for _ in range(n):
            self.tally.sent_at.append(now)
        self.outstanding += n
        self.transport.write(bytes(REQUEST_BYTES) * n)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        done = self.tally.take(memoryview(data), now)
        self.outstanding -= done
        if done and now < self.stop_at:
            self.send(done)
        elif not self.outstanding and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"the echo server went away: {exc}"))


async def _drive_event_loop(port: int, qd: int, seconds: float) -> _Tally:
    loop = asyncio.get_running_loop()
    tally = _Tally()
    done: asyncio.Future[None] = loop.create_future()
    stop_at = time.perf_counter_ns() + int(seconds * 1e9)
    transport, proto = await loop.create_connection(
        lambda: _DriverProtocol(tally, stop_at, done), "127.0.0.1", port)
    try:
        proto.send(qd)
        await asyncio.wait_for(done, seconds + 30)
    finally:
        transport.close()
    return tally


def report(tally: _Tally, qd: int, elapsed: float, poll: bool) -> dict[str, Any]:
    lat = sorted(tally.lat_ns)
    n = len(lat)
    pct = percentiles_us(lat)  # nearest rank, as fio computes them
    return {"qd": qd, "engine": "poll" if poll else "fast", "round_trips": n,
            "per_s": round(n / elapsed, 1) if elapsed > 0 else 0.0, "errors": tally.errors,
            "lat_us": {"mean": round(sum(lat) / n / 1e3, 1) if n else 0.0,
                       "p50": value_us(pct, 50), "p99": value_us(pct, 99)}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("serve", help="answer on a free loopback port (printed) until killed")
    d = sub.add_parser("drive", help="keep --qd requests in flight for --seconds; JSON out")
    d.add_argument("--port", type=int, required=True)
    d.add_argument("--qd", type=int, default=1)
    d.add_argument("--seconds", type=float, default=3.0)
    d.add_argument("--poll", action="store_true",
                   help="busy-poll the socket (as the poll load engine) instead of sleeping")
    args = p.parse_args(argv)
    import uvloop
    if args.cmd == "serve":
        uvloop.run(_serve())
        return 0
    if args.qd < 1 or args.seconds <= 0:
        p.error("--qd must be at least 1 and --seconds positive")
    t0 = time.perf_counter()
    if args.poll:
        tally = _drive_polled(args.port, args.qd, args.seconds)
    else:
        tally = uvloop.run(_drive_event_loop(args.port, args.qd, args.seconds))
    print(json.dumps(report(tally, args.qd, time.perf_counter() - t0, args.poll)))
    return 1 if tally.errors else 0


if __name__ == "__main__":
    sys.exit(main())
