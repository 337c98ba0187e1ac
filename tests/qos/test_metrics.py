"""The QoS series: a QosManager's stats become the tenant series at scrape time."""
from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sbstore.metrics import Exposition, MetricsSource, TenantQosSample
from sbstore.qos import QosManager
from target.blockdev import RamDevice


def series(text: bytes) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for m in text_string_to_metric_families(text.decode()) for s in m.samples}


async def test_manager_stats_become_tenant_series():
    mgr = QosManager()
    mgr.set_tenant_policy("gold", {"iops": 1, "burst_s": 0})
    dev = mgr.wrap(RamDevice(1 << 20, 512), "v", "gold")
    other = mgr.wrap(RamDevice(1 << 20, 512), "w", "silver")
    await dev.read(0, 8)
    await other.write(0, bytes(1024))
    await other.flush()
    source = MetricsSource(qos=lambda: [TenantQosSample.of(s) for s in mgr.stats().values()])
    s = series(Exposition(source, standard_collectors=False).render_now())
    gold, silver = (("tenant", "gold"),), (("tenant", "silver"),)
    assert s[("sbstore_tenant_qos_dispatched_ios_total", gold)] == 1
    assert s[("sbstore_tenant_qos_dispatched_bytes_total", gold)] == 4096
    assert s[("sbstore_tenant_qos_dispatched_ios_total", silver)] == 2
    assert s[("sbstore_tenant_qos_dispatched_bytes_total", silver)] == 1024
    assert s[("sbstore_tenant_queued_ios", gold)] == 0
    assert s[("sbstore_tenant_throttled_seconds_total", gold)] == pytest.approx(0)


def test_sample_defaults_keep_older_sources_working():
    sample = TenantQosSample("t", queued_ios=1, throttled_seconds=2.0)
    assert (sample.dispatched_ios, sample.dispatched_bytes) == (0, 0)


async def test_admission_counters_show_as_tenant_series():
    """Two tenants' hosts through a real target whose admission runs one command per loop
    turn: every command is counted as admitted, the ones that waited for their turn as held,
    and nothing is left waiting once the hosts are done."""
    from target.host import Controller
    from target.server import TargetServer
    from target.subsystem import Subsystem, Target

    mgr = QosManager(turn_budget=1)
    target = Target()
    for tenant in ("a", "b"):
        sub = Subsystem(f"nqn.2026-12.io.sbstore:adm-{tenant}", allow_any_host=True)
        sub.add_namespace(mgr.wrap(RamDevice(1 << 20, 512), f"v-{tenant}", tenant))
        target.add_subsystem(sub)
    server = TargetServer(target, admission=mgr.admission)
    listener = await server.listen("127.0.0.1", 0)
    try:
        async def reads(tenant: str) -> int:
            async with await Controller.connect(
                    "127.0.0.1", int(listener.trsvcid), f"nqn.2026-12.io.sbstore:adm-{tenant}",
                    queue_size=32) as ctrl:
                for _ in range(5):
                    await asyncio.gather(*(ctrl.read(1, i, 1) for i in range(16)))
            return 5 * 16

        sent = dict(zip("ab", await asyncio.gather(reads("a"), reads("b"))))
    finally:
        await server.close()
        mgr.close()
    stats = mgr.stats()
    for tenant in "ab":
        assert stats[tenant].cpu_admitted == sent[tenant]
        assert 0 < stats[tenant].cpu_held <= sent[tenant]
        assert stats[tenant].cpu_waiting == 0
    source = MetricsSource(qos=lambda: [TenantQosSample.of(s) for s in mgr.stats().values()])
    s = series(Exposition(source, standard_collectors=False).render_now())
    a = (("tenant", "a"),)
    assert s[("sbstore_tenant_cpu_admitted_total", a)] == sent["a"]
    assert s[("sbstore_tenant_cpu_held_total", a)] == stats["a"].cpu_held
    assert s[("sbstore_tenant_cpu_waiting_commands", a)] == 0
