"""Replication cost: 4 KiB random writes on a MirroredDevice against the local device alone.

    python3 perf/replication_bench.py [--seconds 3] [--qd 1,32] [--size-mib 64]
                                      [--json perf/results/replication.json]

Same run, same machine: for each queue depth, ``--seconds`` of 4 KiB random writes
(``await dev.write`` from QD coroutines, one latency sample per write) on

- ``single``: the local RamDevice alone (one copy: the yardstick), and
- ``mirrored``: a MirroredDevice over a local RamDevice and one peer, a ReplicaServer with its
  own RamDevice in a separate process over loopback, each process pinned to its own CPU
  (``taskset``), as two nodes would be; and
- ``mirrored_busy_poll``: the same with busy-polling on both sides (``--busy-poll-us``; off by
  default in the daemon: it spends a CPU to save the wake-ups).

It prints IOPS, mean and p99 latency of both and their ratios, the CPU each side spent per
write, and writes everything to ``--json``. A RamDevice write costs about a microsecond, so
the ratio is the whole price of replication in this Python data path (a round trip over
loopback, two event-loop wakeups, framing), not a disk's; on a real volume the local write
hides part of it. A third yardstick, ``loopback_rtt``, is the floor under the mirrored QD1
latency: a bare uvloop exchange of the same sizes (4 KiB + 32 bytes out, 24 back) between the
same two pinned processes, with no framing and no device (in a VM, waking the other CPU's
sleeping loop is most of it: see target/busypoll.py).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, cast

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import uvloop

from perf.percentiles import percentiles_us, value_us
from sbstore.cluster.mirror import MirroredDevice
from sbstore.cluster.replica_client import ReplicaClient
from sbstore.cluster.replica_server import ReplicaServer
from target.blockdev import BlockDevice, RamDevice

IO_BYTES = 4096
WARMUP_S = 0.3


class AlwaysValid:
    """The lease clock of a node that never loses etcd (the benchmark measures the data path)."""

    epoch = 1

    def may_acknowledge(self) -> bool:
        return True


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (utime and stime are fields 14, 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(dev: BlockDevice, qd: int, seconds: float) -> dict[str, Any]:
    """``qd`` coroutines writing 4 KiB at random aligned offsets of ``dev`` until the deadline."""
    per_io = IO_BYTES // dev.block_size
    return await timed_writes(dev.write, qd, seconds, dev.num_blocks // per_io, per_io)


async def timed_writes(write: Callable[[int, bytes], Awaitable[Any]], qd: int, seconds: float,
                       slots: int, per_io: int = 1) -> dict[str, Any]:
    """``qd`` coroutines calling ``write(lba, 4 KiB)`` at random LBAs ``slot * per_io`` until
    the deadline: IOPS, latency (mean, percentiles) and this process's CPU per write."""
    latencies: list[int] = []
    deadline = time.perf_counter() + seconds

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        data = os.urandom(IO_BYTES)
        clock = time.perf_counter_ns
        while time.perf_counter() < deadline:
            lba = rng.randrange(slots) * per_io
            t0 = clock()
            await write(lba, data)
            latencies.append(clock() - t0)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(qd)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    latencies.sort()
    n = len(latencies)
    pct = percentiles_us(latencies)
    return {"ios": n, "seconds": round(elapsed, 3), "iops": round(n / elapsed),
            "mean_us": round(sum(latencies) / n / 1000, 2) if n else 0.0,
            "p50_us": value_us(pct, 50), "p99_us": value_us(pct, 99),
            "percentiles_us": pct, "cpu_us_per_io": round(cpu / n * 1e6, 2) if n else 0.0}


# --- the replica: a child process ------------------------------------------------------------
REQUEST_BYTES = 32 + IO_BYTES
ANSWER = bytes(24)


class _Echo(asyncio.Protocol):
    """The floor: answers 24 bytes per 4128 received, nothing else."""

    def __init__(self) -> None:
        self.pending = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.pending += len(data)
        while self.pending >= REQUEST_BYTES:  # bounded by the bytes just received
            self.pending -= REQUEST_BYTES
            self.transport.write(ANSWER)


class _EchoClient(asyncio.Protocol):
    def __init__(self) -> None:
        self.waiter: asyncio.Future[None] | None = None
        self.got = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= len(ANSWER) and self.waiter is not None and not self.waiter.done():
            self.got -= len(ANSWER)
            self.waiter.set_result(None)


async def loopback_rtt(port: int, seconds: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_connection(_EchoClient, "127.0.0.1", port)
    request = bytes(REQUEST_BYTES)
    latencies: list[int] = []
    deadline = time.perf_counter() + seconds
    cpu0 = time.process_time()
    while time.perf_counter() < deadline:
        client.waiter = loop.create_future()
        t0 = time.perf_counter_ns()
        transport.write(request)
        await client.waiter
        latencies.append(time.perf_counter_ns() - t0)
    cpu = time.process_time() - cpu0
    transport.close()
    latencies.sort()
    pct = percentiles_us(latencies)
    n = len(latencies)
    return {"ios": n, "mean_us": round(sum(latencies) / n / 1000, 2), "p50_us": value_us(pct, 50),
            "p99_us": value_us(pct, 99), "cpu_us_per_io": round(cpu / n * 1e6, 2)}


class Ports(NamedTuple):
    replica: int  # a ReplicaServer
    replica_busy: int  # the same volume behind a ReplicaServer that busy-polls
    echo: int  # the bare exchange


def run_replica(size: int, volume: str, busy_poll_s: float) -> None:
    """Serve one RAM volume (twice: plain and busy-polling) and an echo port; print the ports,
    run until stdin closes."""
    async def main() -> None:
        dev = RamDevice(size, 4096, uuid=uuid.UUID(volume))
        servers = [ReplicaServer(lambda u: dev if u == dev.uuid else None, node="replica",
                                 busy_poll_s=poll) for poll in (0.0, busy_poll_s)]
        ports = [(await server.start("127.0.0.1", 0))[1] for server in servers]
        loop = asyncio.get_running_loop()
        echo = await loop.create_server(_Echo, "127.0.0.1", 0)
        print(*ports, echo.sockets[0].getsockname()[1], flush=True)
        await loop.run_in_executor(None, sys.stdin.read)  # the parent closes stdin to stop us
        for server in servers:
            await server.close()

    uvloop.run(main())


def start_replica(size: int, volume: uuid.UUID, cpu: int | None,
                  busy_poll_s: float) -> tuple[subprocess.Popen[str], Ports]:
    cmd = [sys.executable, os.path.abspath(__file__), "--replica-child", str(size), str(volume),
           str(busy_poll_s)]
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    ports = line.split()
    if len(ports) != 3 or not all(p.isdigit() for p in ports):
        proc.kill()
        raise RuntimeError(f"replica did not start: {line!r}")
    return proc, Ports(*(int(p) for p in ports))


def stop_replica(proc: subprocess.Popen[str]) -> int:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


# --- the comparison ----------------------------------------------------------------------------
async def mirrored_device(size: int, volume: uuid.UUID, port: int,
                          busy_poll_s: float) -> MirroredDevice:
    client = ReplicaClient(("127.0.0.1", port), volume, 4096, busy_poll_s=busy_poll_s)
    await client.connect()

    async def lost(name: str) -> None:
        raise RuntimeError(f"benchmark peer {name} lost")

    def deposed() -> None:
        raise RuntimeError("benchmark primary deposed")

    return MirroredDevice(RamDevice(size, 4096, uuid=volume), fence=AlwaysValid(),
                          peers={"replica": client}, in_sync={"replica"},
                          on_peer_lost=lost, on_deposed=deposed)


def compare(single: dict[str, Any], mirror: dict[str, Any]) -> dict[str, float]:
    return {"iops_ratio": round(mirror["iops"] / single["iops"], 4),
            "mean_latency_ratio": round(mirror["mean_us"] / single["mean_us"], 2),
            "p99_latency_ratio": round(mirror["p99_us"] / max(single["p99_us"], 0.01), 2)}


MODES = ("single", "mirrored", "mirrored_busy_poll")


async def one_round(size: int, qds: list[int], seconds: float, replica_pid: int, ports: Ports,
                    volume: uuid.UUID, busy_poll_s: float) -> dict[str, Any]:
    devices: dict[str, BlockDevice] = {
        "single": RamDevice(size, 4096, uuid=volume),
        "mirrored": await mirrored_device(size, volume, ports.replica, 0.0),
        "mirrored_busy_poll": await mirrored_device(size, volume, ports.replica_busy,
                                                    busy_poll_s),
    }
    await loopback_rtt(ports.echo, WARMUP_S)
    out: dict[str, Any] = {"loopback_rtt": await loopback_rtt(ports.echo, seconds)}
    for qd in qds:
        row: dict[str, Any] = {}
        for mode in MODES:
            await drive(devices[mode], qd, WARMUP_S)
            replica_cpu0 = cpu_seconds(replica_pid)
            row[mode] = await drive(devices[mode], qd, seconds)
            if mode != "single":
                row[mode]["replica_cpu_us_per_io"] = round(
                    (cpu_seconds(replica_pid) - replica_cpu0) / max(row[mode]["ios"], 1) * 1e6, 2)
                row[f"{mode}/single"] = compare(row["single"], row[mode])
        out[f"qd{qd}"] = row
    for mode in MODES[1:]:
        device = devices[mode]
        assert isinstance(device, MirroredDevice)
        assert device.in_sync == {"replica"}, "the peer was lost during the benchmark"
        device.peers["replica"].close()
    return out


def print_round(result: dict[str, Any]) -> None:
    print(f"{'job':<36}{'IOPS':>9}{'mean us':>9}{'p99 us':>9}{'CPU us/io':>10}{'replica':>9}")
    rtt = result["loopback_rtt"]
    print(f"{'bare loopback round trip':<36}{'':>9}{rtt['mean_us']:>9}{rtt['p99_us']:>9}"
          f"{rtt['cpu_us_per_io']:>10}")
    for qd, row in result.items():
        if qd == "loopback_rtt":
            continue
        for mode in MODES:
            r = row[mode]
            print(f"4k-randwrite-{qd} {mode}".ljust(36)
                  + f"{r['iops']:>9}{r['mean_us']:>9}{r['p99_us']:>9}{r['cpu_us_per_io']:>10}"
                  + f"{r.get('replica_cpu_us_per_io', ''):>9}")
        for mode in MODES[1:]:
            c = row[f"{mode}/single"]
            print(f"  {mode}/single: IOPS x{c['iops_ratio']}, mean latency "
                  f"x{c['mean_latency_ratio']}, p99 x{c['p99_latency_ratio']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--qd", default="1,32")
    p.add_argument("--size-mib", type=int, default=64)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--primary-cpu", type=int, default=0)
    p.add_argument("--replica-cpu", type=int, default=1)
    p.add_argument("--busy-poll-us", type=float, default=200.0,
                   help="window of the busy-polling runs, on both sides (a QD1 round trip)")
    p.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results", "replication.json"))
    p.add_argument("--replica-child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.replica_child:
        run_replica(int(args.replica_child[0]), args.replica_child[1],
                    float(args.replica_child[2]))
        return 0

    size = args.size_mib << 20
    qds = [int(q) for q in args.qd.split(",")]
    cpus = os.sched_getaffinity(0)
    pin = args.primary_cpu in cpus and args.replica_cpu in cpus and len(cpus) > 1
    if pin:
        os.sched_setaffinity(0, {args.primary_cpu})
    volume = uuid.uuid4()
    load_before = os.getloadavg()
    busy_poll_s = args.busy_poll_us / 1e6
    proc, ports = start_replica(size, volume, args.replica_cpu if pin else None, busy_poll_s)
    rounds = []
    try:
        for _ in range(args.rounds):
            result = uvloop.run(one_round(size, qds, args.seconds, proc.pid, ports, volume,
                                          busy_poll_s))
            print_round(result)
            rounds.append(result)
    finally:
        replica_exit = stop_replica(proc)
    report = {"machine": platform.node(), "cpus": os.cpu_count(), "kernel": platform.release(),
              "python": platform.python_version(), "pinned": pin,
              "primary_cpu": args.primary_cpu if pin else None,
              "replica_cpu": args.replica_cpu if pin else None,
              "load_before": [round(x, 2) for x in load_before],
              "load_after": [round(x, 2) for x in os.getloadavg()],
              "seconds": args.seconds, "io_bytes": IO_BYTES, "size_bytes": size,
              "busy_poll_us": args.busy_poll_us,
              "replica_exit": replica_exit, "rounds": rounds}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
