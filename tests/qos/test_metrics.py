"""The QoS series: a QosManager's stats become the tenant series at scrape time."""
from __future__ import annotations

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
