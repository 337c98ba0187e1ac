"""QoS through the daemon: a tenant's policy set with the CLI holds for a host that is already
connected, changes live, and shows in the metrics. Bounds are generous (this is behaviour, not
a benchmark: perf/qos_bench.py measures the figures)."""
from __future__ import annotations

import asyncio
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from target.host import Controller
from tests.control.conftest import NQN_1, DaemonThread, in_thread

QD = 8


async def _read_iops(ctrl: Controller, seconds: float) -> float:
    """Closed-loop 4 KiB reads at depth QD for ``seconds``; I/Os per second achieved."""
    stop_at = time.monotonic() + seconds
    count = 0

    async def worker(i: int) -> None:
        nonlocal count
        lba = i * 64
        while time.monotonic() < stop_at:
            await ctrl.read(1, lba % 4096, 1)
            lba += 1
            count += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(QD)))
    return count / (time.monotonic() - t0)


def _tenant_series(url: str, tenant: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("sbstore_tenant_") and s.labels.get("tenant") == tenant:
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


async def test_tenant_limit_applies_live_to_a_connected_host(daemon: DaemonThread) -> None:
    daemon.ok("tenant", "create", "capped")
    daemon.ok("volume", "create", "vol", "--size", "16M", "--block-size", "4096",
              "--tenant", "capped")
    daemon.ok("export", "create", NQN_1, "--volume", "vol", "--allow-any-host")
    async with await Controller.connect("127.0.0.1", daemon.port, NQN_1,
                                        nr_io_queues=2) as ctrl:
        unlimited = await _read_iops(ctrl, 1.0)
        limit = 200
        assert unlimited > 2 * limit, f"the unlimited run is too slow to tell ({unlimited:.0f})"

        await in_thread(daemon.ok, "tenant", "set", "capped", "--iops", str(limit),
                        "--burst-s", "0.05")
        await _read_iops(ctrl, 0.3)  # let the burst drain
        limited = await _read_iops(ctrl, 2.0)
        assert 0.8 * limit <= limited <= 1.2 * limit, (limited, limit)

        samples = await in_thread(_tenant_series, daemon.metrics_url, "capped")
        assert samples["sbstore_tenant_throttled_seconds_total"] > 0.5
        assert samples["sbstore_tenant_qos_dispatched_ios_total"] > limited
        assert "sbstore_tenant_queued_ios" in samples
        # The daemon's admission controller counted every command it let run.
        assert samples["sbstore_tenant_cpu_admitted_total"] >= samples[
            "sbstore_tenant_qos_dispatched_ios_total"]
        assert samples["sbstore_tenant_cpu_waiting_commands"] == 0

        # The pool's engine counted the reads that reached the device (a thin volume never
        # written reads zeroes without any, so write first).
        await ctrl.write(1, 0, bytes(4096))
        await ctrl.read(1, 0, 1)
        pool = await in_thread(daemon.client.get, "/v1/pools/p1")
        assert pool["io_stats"]["reads"] >= 1 and pool["io_stats"]["writes"] >= 1

        # A volume's own limit applies inside its tenant's.
        await in_thread(daemon.ok, "volume", "set", "vol", "--read-iops", "100",
                        "--burst-s", "0.05")
        await _read_iops(ctrl, 0.3)
        inner = await _read_iops(ctrl, 2.0)
        assert 80 <= inner <= 120, inner

        # Dropping both limits gives the host its speed back, still without reconnecting.
        await in_thread(daemon.ok, "volume", "set", "vol", "--clear-limits")
        await in_thread(daemon.ok, "tenant", "set", "capped", "--iops", "0")
        again = await _read_iops(ctrl, 1.0)
        assert again > 2 * limit, again


async def test_policies_survive_a_restart(daemon: DaemonThread) -> None:
    daemon.ok("tenant", "create", "slow", "--iops", "150", "--burst-s", "0.05")
    daemon.ok("volume", "create", "vol", "--size", "16M", "--block-size", "4096",
              "--tenant", "slow")
    daemon.ok("export", "create", NQN_1, "--volume", "vol", "--allow-any-host")
    await in_thread(daemon.restart)
    async with await Controller.connect("127.0.0.1", daemon.port, NQN_1) as ctrl:
        await _read_iops(ctrl, 0.3)
        limited = await _read_iops(ctrl, 2.0)
    assert 0.8 * 150 <= limited <= 1.2 * 150, limited
