"""A target serving RAM devices to tenants (for perf/tenant_bench.py): the CPU is then the only
thing tenants share, which is what the admission controller orders.

    python3 perf/ram_tenants.py --tenant light:100 --tenant heavy:300 [--size 256M]
                                [--turn-budget 16]

Each ``--tenant NAME:WEIGHT`` gets a RAM device behind its QoS queue, exported as
``nqn.2026-12.io.sbstore.bench:NAME``. Prints ``listening on 127.0.0.1:PORT`` and serves until
SIGTERM or SIGINT. The daemon does the same for pool volumes; this is the RAM yardstick's
twin without a pool, state or API.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from sbstore.config import parse_size  # noqa: E402
from sbstore.qos import QosManager  # noqa: E402
from target.blockdev import RamDevice  # noqa: E402
from target.server import TargetServer  # noqa: E402
from target.subsystem import Subsystem, Target  # noqa: E402

NQN_PREFIX = "nqn.2026-12.io.sbstore.bench:"


async def serve(tenants: list[tuple[str, int]], size: int, turn_budget: int) -> None:
    mgr = QosManager(turn_budget=turn_budget)
    target = Target()
    for name, weight in tenants:
        mgr.set_tenant_policy(name, {"weight": weight})
        sub = Subsystem(NQN_PREFIX + name, allow_any_host=True)
        sub.add_namespace(mgr.wrap(RamDevice(size, 4096), NQN_PREFIX + name, name))
        target.add_subsystem(sub)
    server = TargetServer(target, admission=mgr.admission)
    listener = await server.listen("127.0.0.1", 0)
    print(f"listening on 127.0.0.1:{listener.trsvcid}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()
        mgr.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tenant", action="append", required=True, metavar="NAME:WEIGHT")
    p.add_argument("--size", default="256M")
    p.add_argument("--turn-budget", type=int, default=16)
    args = p.parse_args()
    tenants = []
    for t in args.tenant:
        name, _, weight = t.partition(":")
        tenants.append((name, int(weight or 100)))
    import uvloop
    uvloop.run(serve(tenants, parse_size(args.size), args.turn_budget))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
