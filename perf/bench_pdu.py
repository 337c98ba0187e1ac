"""Micro-benchmark of the sans-I/O NVMe/TCP target queue: CPU time per command, and CRC32C speed.

    python3 perf/bench_pdu.py [--commands 200000] [--json perf/results/bench_pdu.json]

What one "command" costs here is the transport's share of the per-I/O budget (DESIGN.md: ~8 us
of target CPU per 4k I/O in all): the capsule's bytes go into the queue's receive buffer through
``get_buffer``/``buffer_updated`` (as uvloop would), the ``CommandReceived`` event comes out,
the response goes in (``send_read_data`` with 4 KiB for a read, ``send_completion`` for a
write) and its segments come out of ``data_to_send``. No controller, no socket: the byte copy
into the buffer stands in for ``recv_into``. Commands arrive one per receive (QD1) or 32 per
receive (a busy queue at QD32).

Also measured: CRC32C throughput of every importable implementation (``crc32c``, hardware when
the CPU has SSE4.2; ``crcmod``, table-driven C) on 4 KiB and 128 KiB buffers, and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from target.nvme.structs import Cqe, Sqe, push_cqe, push_sqe  # noqa: E402
from target.tcp import digest  # noqa: E402
from target.tcp.events import CommandReceived  # noqa: E402
from target.tcp.host import HostQueue  # noqa: E402
from target.tcp.queue import TargetQueue  # noqa: E402

BLOCK = 4096


def _connected(hdgst: bool, ddgst: bool) -> tuple[HostQueue, TargetQueue]:
    host, target = HostQueue(hdgst=hdgst, ddgst=ddgst), TargetQueue()
    host.initiate()
    for seg in host.data_to_send():
        target.receive_data(seg)
    for seg in target.data_to_send():
        host.receive_data(seg)
    while target.next_event() is not None:
        pass
    while host.next_event() is not None:
        pass
    return host, target


def _capsules(host: HostQueue, kind: str, batch: int) -> bytes:
    """The bytes of ``batch`` capsules as the host would send them."""
    for cid in range(batch):
        if kind == "read":
            host.send_command(push_sqe(Sqe(opcode=0x02, cid=cid, nsid=1, cdw12=7)),
                              read_len=BLOCK)
        else:
            host.send_command(push_sqe(Sqe(opcode=0x01, cid=cid, nsid=1, cdw12=7)),
                              data=bytes(BLOCK), incapsule_limit=8192)
        host.abandon(cid)
    return b"".join(bytes(s) for s in host.data_to_send())


def bench_commands(kind: str, hdgst: bool, ddgst: bool, commands: int, batch: int) -> float:
    """CPU nanoseconds per command through TargetQueue (receive, event, response, segments)."""
    host, target = _connected(hdgst, ddgst)
    wire = _capsules(host, kind, batch)
    data = bytes(BLOCK)
    cqes = [push_cqe(Cqe(cid=cid)) for cid in range(batch)]
    get_buffer, buffer_updated = target.get_buffer, target.buffer_updated
    next_event, data_to_send = target.next_event, target.data_to_send
    send_read_data, send_completion = target.send_read_data, target.send_completion
    rounds = max(1, commands // batch)
    size = len(wire)
    done = 0
    start = time.process_time_ns()
    for _ in range(rounds):
        view = get_buffer(size)
        if len(view) >= size:
            view[:size] = wire
            buffer_updated(size)
        else:  # a receive split by the end of the buffer, as a socket would
            target.receive_data(wire)
        while (event := next_event()) is not None:
            assert type(event) is CommandReceived
            cid = event.cid
            if kind == "read":
                send_read_data(cid, data, cqes[cid])
            else:
                send_completion(cqes[cid])
            done += 1
        data_to_send()
    elapsed = time.process_time_ns() - start
    assert done == rounds * batch, (done, rounds, batch)
    return elapsed / done


def bench_crc(fn: Callable[[bytes], int], size: int, total_bytes: int) -> float:
    """MB/s of ``fn`` over buffers of ``size`` bytes."""
    buf = os.urandom(size)
    n = max(1, total_bytes // size)
    start = time.process_time_ns()
    for _ in range(n):
        fn(buf)
    elapsed = max(1, time.process_time_ns() - start)
    return n * size / (elapsed / 1e9) / 1e6


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=200_000,
                        help="commands per measurement (default 200000)")
    parser.add_argument("--crc-mb", type=int, default=256,
                        help="MB hashed per CRC32C measurement (default 256)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="best of this many runs per figure (the machine may be shared)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {
        "python": platform.python_version(), "cpu": _cpu_model(), "repeat": args.repeat,
        "crc32c_active": digest.IMPLEMENTATION, "commands": {}, "crc32c_mb_per_s": {},
    }
    print(f"python {results['python']} on {results['cpu']}; "
          f"CRC32C: {digest.IMPLEMENTATION}")
    print(f"{'command':<24}{'digests':<10}{'QD1 us':>10}{'QD32 us':>10}")
    for kind, label in (("read", "4k read"), ("write", "4k in-capsule write")):
        for hdgst, ddgst, dlabel in ((False, False, "off"), (True, True, "hdr+data")):
            qd1 = min(bench_commands(kind, hdgst, ddgst, args.commands // 4, 1)
                      for _ in range(args.repeat)) / 1000
            qd32 = min(bench_commands(kind, hdgst, ddgst, args.commands, 32)
                       for _ in range(args.repeat)) / 1000
            results["commands"][f"{kind}_4k_digests_{'on' if hdgst else 'off'}"] = {
                "qd1_us": round(qd1, 3), "qd32_us": round(qd32, 3)}
            print(f"{label:<24}{dlabel:<10}{qd1:>10.2f}{qd32:>10.2f}")

    print(f"{'CRC32C':<24}{'4 KiB MB/s':>14}{'128 KiB MB/s':>14}")
    for name, fn in digest.implementations().items():
        small = max(bench_crc(fn, 4096, args.crc_mb << 20) for _ in range(args.repeat))
        large = max(bench_crc(fn, 131072, args.crc_mb << 20) for _ in range(args.repeat))
        results["crc32c_mb_per_s"][name] = {"4k": round(small), "128k": round(large)}
        print(f"{name:<24}{small:>14.0f}{large:>14.0f}")
    speeds = results["crc32c_mb_per_s"]
    fast = next((v for k, v in speeds.items() if k.startswith("crc32c")), None)
    slow = next((v for k, v in speeds.items() if k.startswith("crcmod")), None)
    if fast and slow:
        ratio = {size: round(fast[size] / slow[size], 1) for size in ("4k", "128k")}
        results["crc32c_over_crcmod"] = ratio
        print(f"crc32c / crcmod: {ratio['4k']}x (4 KiB), {ratio['128k']}x (128 KiB)")

    if args.json:
        parent = os.path.dirname(args.json)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    return results


if __name__ == "__main__":
    main()
