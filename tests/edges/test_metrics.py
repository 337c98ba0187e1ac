"""sbstore.metrics end to end: a real pool, target and initiator; the endpoint scraped over HTTP.

Volumes of a pool file (vol1 and vol2 of tenant t1, a snapshot of vol1 exported read-only-ish
as tenant t2's, so a write to it fails in the device) are served through InstrumentedDevice by a
TargetServer on 127.0.0.1; the Python initiator drives known I/O; the series must show exactly
it.
"""
from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import sbstore
from sbstore.iostats import InstrumentedDevice
from sbstore.metrics import (
    MetricsSource,
    PoolSample,
    SbstoreCollector,
    TargetSample,
    TenantQosSample,
    VolumeSample,
    check_listen_host,
    start_metrics_server,
)
from sbstore.store import Pool
from sbstore.volume_device import VolumeDevice
from target.host import Controller
from target.host.queue_client import CommandFailed
from target.server import TargetServer
from target.subsystem import Subsystem, Target

NQN = "nqn.2026-11.io.sbstore:metrics-test"
MiB = 1 << 20

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def fetch(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        assert resp.status == 200
        return resp.read().decode()


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no series {name}{labels}"
    return samples[key]


@dataclass
class Export:
    name: str
    tenant: str
    device: InstrumentedDevice


@dataclass
class Served:
    pool: Pool
    target: Target
    server: TargetServer
    port: int
    exports: dict[str, Export]
    source: MetricsSource
    source_threads: set[int]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    pool = Pool.create(tmp_path / "pool.img", 64 * MiB, cluster_size=64 << 10)
    target = Target()
    server = TargetServer(target)
    try:
        vol1 = await pool.create_volume("vol1", 8 * MiB, 512)
        vol2 = await pool.create_volume("vol2", 8 * MiB, 512)
        snap1 = await pool.snapshot(vol1, "snap1")
        exports: dict[str, Export] = {}
        sub = Subsystem(NQN, serial="SBSMETRICS01", allow_any_host=True)
        for vol, tenant in ((vol1, "t1"), (vol2, "t1"), (snap1, "t2")):
            dev = InstrumentedDevice(VolumeDevice(vol))
            exports[vol.name] = Export(vol.name, tenant, dev)
            sub.add_namespace(dev)
        target.add_subsystem(sub)
        listener = await server.listen("127.0.0.1", 0)
        threads: set[int] = set()

        def volumes() -> list[VolumeSample]:
            threads.add(threading.get_ident())
            return [VolumeSample(pool="p1", volume=e.name, tenant=e.tenant, stats=e.device.stats,
                                 size_bytes=e.device.num_blocks * e.device.block_size)
                    for e in list(exports.values())]

        source = MetricsSource(volumes=volumes,
                               pools=lambda: [PoolSample.of("p1", pool)],
                               target=lambda: TargetSample.of(target, server))
        yield Served(pool, target, server, int(listener.trsvcid), exports, source, threads)
    finally:
        await server.close()
        await pool.aclose()


async def drive_io(ctrl: Controller) -> None:
    # ns 1 = vol1, ns 2 = vol2, ns 3 = snap1 (a snapshot: writes fail in the store).
    for i in range(4):
        await ctrl.write(1, i * 16, bytes([i + 1]) * 8192)
    await ctrl.write(1, 1000, b"\x07" * 65536)  # R2T
    for i in range(3):
        await ctrl.read(1, i * 16, 8)
    await ctrl.flush(1)
    await ctrl.write(2, 0, b"\x09" * 4096)
    await ctrl.write(2, 8, b"\x0a" * 4096)
    await ctrl.read(2, 0, 8)
    with pytest.raises(CommandFailed):
        await ctrl.write(3, 0, bytes(4096))
    await ctrl.read(3, 0, 1)


async def test_scrape_shows_the_io_done(served: Served) -> None:
    loop = asyncio.get_running_loop()
    collector = SbstoreCollector(served.source, loop=loop)
    metrics = start_metrics_server("127.0.0.1", 0, collector=collector)
    try:
        assert metrics.port > 0
        async with await Controller.connect("127.0.0.1", served.port, NQN,
                                            nr_io_queues=2) as ctrl:
            await drive_io(ctrl)
            text = await asyncio.to_thread(fetch, metrics.url)
            pool_stats = served.pool.stats()
    finally:
        await metrics.aclose()
    s = parse(text)
    # The snapshot was taken in the loop's thread, not in the HTTP server's.
    assert served.source_threads == {threading.get_ident()}

    v1 = {"pool": "p1", "volume": "vol1", "tenant": "t1"}
    v2 = {"pool": "p1", "volume": "vol2", "tenant": "t1"}
    s1 = {"pool": "p1", "volume": "snap1", "tenant": "t2"}
    assert val(s, "sbstore_volume_reads_total", **v1) == 3
    assert val(s, "sbstore_volume_read_bytes_total", **v1) == 3 * 4096
    assert val(s, "sbstore_volume_writes_total", **v1) == 5
    assert val(s, "sbstore_volume_written_bytes_total", **v1) == 4 * 8192 + 65536
    assert val(s, "sbstore_volume_flushes_total", **v1) == 1
    assert val(s, "sbstore_volume_size_bytes", **v1) == 8 * MiB
    assert val(s, "sbstore_volume_reads_total", **v2) == 1
    assert val(s, "sbstore_volume_writes_total", **v2) == 2
    assert val(s, "sbstore_volume_written_bytes_total", **v2) == 8192
    assert val(s, "sbstore_volume_writes_total", **s1) == 0
    assert val(s, "sbstore_volume_reads_total", **s1) == 1
    assert val(s, "sbstore_volume_errors_total", **s1, op="write") == 1
    assert val(s, "sbstore_volume_errors_total", **s1, op="read") == 0
    assert val(s, "sbstore_volume_errors_total", **v1, op="write") == 0

    # Latency histograms: every completed call, cumulative buckets, +Inf = count.
    assert val(s, "sbstore_volume_read_latency_seconds_count", **v1) == 3
    assert val(s, "sbstore_volume_read_latency_seconds_bucket", **v1, le="+Inf") == 3
    assert val(s, "sbstore_volume_write_latency_seconds_count", **v1) == 5
    assert val(s, "sbstore_volume_flush_latency_seconds_count", **v1) == 1
    assert 0 < val(s, "sbstore_volume_write_latency_seconds_sum", **v1) < 60
    les = sorted((float(dict(labels)["le"]), value) for (name, labels), value in s.items()
                 if name == "sbstore_volume_write_latency_seconds_bucket"
                 and dict(labels)["volume"] == "vol1")
    assert les[0][0] == 8.192e-06 and les[-1][0] == float("inf")
    assert [v for _, v in les] == sorted(v for _, v in les)  # cumulative

    # Tenants: sums over their volumes.
    assert val(s, "sbstore_tenant_volumes", tenant="t1") == 2
    assert val(s, "sbstore_tenant_volumes", tenant="t2") == 1
    assert val(s, "sbstore_tenant_reads_total", tenant="t1") == 4
    assert val(s, "sbstore_tenant_writes_total", tenant="t1") == 7
    assert val(s, "sbstore_tenant_written_bytes_total", tenant="t1") == 4 * 8192 + 65536 + 8192
    assert val(s, "sbstore_tenant_read_bytes_total", tenant="t1") == 4 * 4096
    assert val(s, "sbstore_tenant_errors_total", tenant="t2", op="write") == 1
    assert val(s, "sbstore_tenant_read_latency_seconds_count", tenant="t1") == 4
    assert not any(name.startswith("sbstore_tenant_queued") for name, _ in s)  # no QoS source

    # The pool, as Pool.stats() says (no I/O ran since the scrape).
    assert val(s, "sbstore_pool_capacity_bytes", pool="p1") == pool_stats.capacity_bytes
    assert val(s, "sbstore_pool_allocated_bytes", pool="p1") == pool_stats.allocated_bytes
    assert val(s, "sbstore_pool_free_bytes", pool="p1") == pool_stats.free_bytes
    assert pool_stats.allocated_bytes >= 3 * (64 << 10)  # vol1's COW clusters and vol2's
    assert pool_stats.capacity_bytes > 32 * MiB
    assert val(s, "sbstore_pool_volumes", pool="p1") == 2
    assert val(s, "sbstore_pool_snapshots", pool="p1") == 1
    assert val(s, "sbstore_pool_info", pool="p1", uuid=pool_stats.uuid,
               path=pool_stats.path) == 1

    # The target, while the host is connected: admin + 2 I/O queues.
    assert val(s, "sbstore_connections") == 3
    assert val(s, "sbstore_controllers", kind="io") == 1
    assert val(s, "sbstore_controllers", kind="discovery") == 0
    assert val(s, "sbstore_subsystems") == 1
    assert val(s, "sbstore_namespaces") == 3
    assert val(s, "sbstore_listeners") == 1
    build = [dict(labels) for (name, labels) in s if name == "sbstore_build_info"]
    assert build and build[0]["version"] == sbstore.__version__
    assert any(name.startswith("process_") for name, _ in s)  # the standard collectors


async def test_qos_series_when_a_source_gives_them(served: Served) -> None:
    served.source.qos = lambda: [TenantQosSample("t1", queued_ios=5, throttled_seconds=1.5)]
    collector = SbstoreCollector(served.source, loop=asyncio.get_running_loop())
    with start_metrics_server("127.0.0.1", 0, collector=collector,
                              standard_collectors=False) as metrics:
        s = parse(await asyncio.to_thread(fetch, metrics.url))
    assert val(s, "sbstore_tenant_queued_ios", tenant="t1") == 5
    assert val(s, "sbstore_tenant_throttled_seconds_total", tenant="t1") == 1.5
    assert not any(name.startswith("process_") for name, _ in s)


async def test_a_stuck_loop_fails_the_scrape(served: Served) -> None:
    collector = SbstoreCollector(served.source, loop=asyncio.get_running_loop(),
                                 snapshot_timeout_s=0.2)
    with start_metrics_server("127.0.0.1", 0, collector=collector) as metrics:
        result: list[object] = []

        def scrape() -> None:
            try:
                result.append(fetch(metrics.url))
            except urllib.error.HTTPError as exc:
                result.append(exc.code)

        scraper = threading.Thread(target=scrape)
        scraper.start()
        scraper.join(1.0)  # blocks the loop, as a stuck daemon would
        assert not scraper.is_alive()
        assert result == [500]
        # Unblocked, the next scrape works (the abandoned snapshot was dropped).
        assert "sbstore_build_info" in await asyncio.to_thread(fetch, metrics.url)


def test_collector_without_a_loop_and_empty_source() -> None:
    collector = SbstoreCollector(MetricsSource())
    names = {m.name for m in collector.collect()}
    assert {"sbstore_volume_reads", "sbstore_pool_capacity_bytes", "sbstore_build_info"} <= names
    assert "sbstore_connections" not in names  # no target given


def test_loopback_only_unless_allowed() -> None:
    for host in ("127.0.0.1", "127.0.0.53", "::1", "localhost"):
        check_listen_host(host)
    for host in ("0.0.0.0", "::", "192.0.2.2", "metrics.example.com"):
        with pytest.raises(ValueError, match="loopback"):
            check_listen_host(host)
        with pytest.raises(ValueError, match="loopback"):
            start_metrics_server(host, 0, collector=SbstoreCollector(MetricsSource()))
    check_listen_host("0.0.0.0", allow_remote=True)


def test_close_stops_serving() -> None:
    metrics = start_metrics_server("127.0.0.1", 0, collector=SbstoreCollector(MetricsSource()))
    assert "sbstore_build_info" in fetch(metrics.url)
    metrics.close()
    metrics.close()  # idempotent
    with pytest.raises(urllib.error.URLError):
        fetch(metrics.url, timeout=2)


def test_ipv6_loopback() -> None:
    with start_metrics_server("::1", 0, collector=SbstoreCollector(MetricsSource())) as metrics:
        assert metrics.url.startswith("http://[::1]:")
        assert "sbstore_build_info" in fetch(metrics.url)
