"""sbstore.metrics end to end: a real pool, target and initiator; the endpoint scraped over HTTP.

Volumes of a pool file (vol1 and vol2 of tenant t1, a snapshot of vol1 exported read-only-ish
as tenant t2's, so a write to it fails in the device) are served through InstrumentedDevice by a
TargetServer on 127.0.0.1; the Python initiator drives known I/O; the series must show exactly
it. The text the exposition writes itself is checked against what prometheus_client would
write from the same counters, and its kept lines against a fresh render after any change.
"""
from __future__ import annotations

import asyncio
import platform
import random
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

import sbstore
from sbstore.iostats import InstrumentedDevice, IoStats, slot_of
from sbstore.metrics import (
    Exposition,
    MetricsSource,
    PoolSample,
    TargetSample,
    TenantQosSample,
    VolumeSample,
    ana_pairs,
    check_listen_host,
    start_metrics_server,
)
from sbstore.store import Pool
from sbstore.store.pool import PoolStats
from sbstore.volume_device import VolumeDevice
from target.blockdev import RamDevice
from target.host import Controller
from target.host.queue_client import CommandFailed
from target.server import TargetServer
from target.subsystem import Subsystem, Target
from tests.loop_turns import turns_while

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
    metrics = await start_metrics_server("127.0.0.1", 0, exposition=Exposition(served.source))
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
    # The source was read in the loop's thread, the only one that changes the counters.
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
               path=pool_stats.path, io_engine=pool_stats.io_engine) == 1

    # The target, while the host is connected: admin + 2 I/O queues.
    assert val(s, "sbstore_connections") == 3
    assert val(s, "sbstore_controllers", kind="io") == 1
    assert val(s, "sbstore_controllers", kind="discovery") == 0
    assert val(s, "sbstore_subsystems") == 1
    assert val(s, "sbstore_namespaces") == 3
    assert val(s, "sbstore_listeners") == 1
    assert val(s, "sbstore_ana_groups", portid=str(next(iter(served.target.listeners))),
               state="optimized") == 1
    build = [dict(labels) for (name, labels) in s if name == "sbstore_build_info"]
    assert build and build[0]["version"] == sbstore.__version__
    assert any(name.startswith("process_") for name, _ in s)  # the standard collectors



# --- the exposition's text ------------------------------------------------------------------------

def reference_text(source: MetricsSource) -> str:
    """What prometheus_client writes for the same counters: the series as they were built
    before sbstore wrote its own text (the yardstick of names, types, help and values)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    counters = [("reads", "reads", "Reads completed."), ("writes", "writes", "Writes completed."),
                ("read_bytes", "read_bytes", "Bytes read."),
                ("written_bytes", "write_bytes", "Bytes written."),
                ("flushes", "flushes", "Flushes completed."),
                ("write_zeroes", "write_zeroes", "Write Zeroes commands completed."),
                ("deallocates", "deallocates", "Deallocate (TRIM) commands completed.")]

    def io(prefix: str, names: list[str], rows: list[tuple[list[str], IoStats]]) -> list[object]:
        out: list[object] = []
        for stem, attr, doc in counters:
            c = CounterMetricFamily(f"{prefix}_{stem}", doc, labels=names)
            for labels, stats in rows:
                c.add_metric(labels, getattr(stats, attr))
            out.append(c)
        e = CounterMetricFamily(f"{prefix}_errors", "Commands that failed, by operation.",
                                labels=[*names, "op"])
        for labels, stats in rows:
            for op in ("read", "write", "flush", "other"):
                e.add_metric([*labels, op], getattr(stats, f"{op}_errors"))
        out.append(e)
        for kind in ("read", "write", "flush"):
            plural = "es" if kind == "flush" else "s"
            h = HistogramMetricFamily(f"{prefix}_{kind}_latency_seconds",
                                      f"Latency of completed {kind}{plural}.", labels=names)
            for labels, stats in rows:
                hist = stats.histogram(kind)
                buckets = [(repr(b / 1e9), n) for b, n in hist.buckets()] + [("+Inf", hist.count)]
                h.add_metric(labels, buckets, hist.sum_ns / 1e9)
            out.append(h)
        return out

    class Reference:
        def collect(self) -> list[object]:
            vols = list(source.volumes())
            out = io("sbstore_volume", ["pool", "volume", "tenant"],
                     [([v.pool, v.volume, v.tenant], v.stats) for v in vols])
            size = GaugeMetricFamily("sbstore_volume_size_bytes", "Size of the exported volume.",
                                     labels=["pool", "volume", "tenant"])
            for v in vols:
                if v.size_bytes is not None:
                    size.add_metric([v.pool, v.volume, v.tenant], v.size_bytes)
            out.append(size)
            sums: dict[str, IoStats] = {}
            for v in vols:
                sums.setdefault(v.tenant, IoStats()).add(v.stats)
            n = GaugeMetricFamily("sbstore_tenant_volumes", "Exported volumes of the tenant.",
                                  labels=["tenant"])
            for t in sorted(sums):
                n.add_metric([t], sum(1 for v in vols if v.tenant == t))
            out.append(n)
            out += io("sbstore_tenant", ["tenant"], [([t], sums[t]) for t in sorted(sums)])
            if source.qos is not None:
                fams = [GaugeMetricFamily("sbstore_tenant_queued_ios",
                                          "I/Os waiting in the tenant's QoS queue.",
                                          labels=["tenant"]),
                        CounterMetricFamily("sbstore_tenant_throttled_seconds",
                                            "Time the tenant's I/Os were held by its limits.",
                                            labels=["tenant"]),
                        CounterMetricFamily("sbstore_tenant_qos_dispatched_ios",
                                            "I/Os the tenant's QoS queue passed to the backend.",
                                            labels=["tenant"]),
                        CounterMetricFamily("sbstore_tenant_qos_dispatched_bytes",
                                            "Bytes of the I/Os the tenant's QoS queue passed to "
                                            "the backend.", labels=["tenant"]),
                        CounterMetricFamily("sbstore_tenant_cpu_admitted",
                                            "Commands the admission controller let run.",
                                            labels=["tenant"]),
                        CounterMetricFamily("sbstore_tenant_cpu_held",
                                            "Commands that waited for their tenant's turn "
                                            "before running.", labels=["tenant"]),
                        GaugeMetricFamily("sbstore_tenant_cpu_waiting_commands",
                                          "Commands waiting for their tenant's turn now.",
                                          labels=["tenant"]),
                        CounterMetricFamily("sbstore_tenant_cpu_ahead",
                                            "Commands run at once though other tenants' were "
                                            "held (the tenant keeps one command at a time).",
                                            labels=["tenant"]),
                        GaugeMetricFamily("sbstore_tenant_cpu_one_at_a_time",
                                          "1 while the tenant keeps one command at a time: the "
                                          "other tenants' data in flight is bounded ([qos] "
                                          "latency_bytes).", labels=["tenant"])]
                for q in source.qos():
                    for fam, value in zip(fams, (q.queued_ios, q.throttled_seconds,
                                                 q.dispatched_ios, q.dispatched_bytes,
                                                 q.cpu_admitted, q.cpu_held, q.cpu_waiting,
                                                 q.cpu_ahead, q.cpu_one_at_a_time)):
                        fam.add_metric([q.tenant], value)
                out += fams
            pools = list(source.pools())
            info = GaugeMetricFamily("sbstore_pool_info", "A pool's identity and data I/O "
                                     "engine.", labels=["pool", "uuid", "path", "io_engine"])
            for p in pools:
                info.add_metric([p.pool, p.stats.uuid, p.stats.path, p.stats.io_engine], 1)
            out.append(info)
            for stem, doc in (("capacity_bytes", "Data capacity of the pool."),
                              ("allocated_bytes", "Data clusters in use, in bytes."),
                              ("free_bytes", "Free data space, in bytes."),
                              ("metadata_bytes", "Size of the metadata area."),
                              ("metadata_used_bytes", "Metadata pages in use, in bytes."),
                              ("volumes", "Volumes in the pool (snapshots not counted)."),
                              ("snapshots", "Snapshots in the pool.")):
                g = GaugeMetricFamily(f"sbstore_pool_{stem}", doc, labels=["pool"])
                for p in pools:
                    g.add_metric([p.pool], getattr(p.stats, stem))
                out.append(g)
            t = source.target()
            if t is not None:
                out.append(GaugeMetricFamily("sbstore_connections",
                                             "Open NVMe/TCP connections (one per queue).",
                                             value=t.connections))
                c = GaugeMetricFamily("sbstore_controllers", "Live controllers.", labels=["kind"])
                c.add_metric(["io"], t.io_controllers)
                c.add_metric(["discovery"], t.discovery_controllers)
                out.append(c)
                for name, doc, value in (
                        ("sbstore_subsystems", "NVM subsystems.", t.subsystems),
                        ("sbstore_namespaces", "Namespaces over all subsystems.", t.namespaces),
                        ("sbstore_listeners", "NVMe/TCP listeners.", t.listeners)):
                    out.append(GaugeMetricFamily(name, doc, value=value))
                for family, name, doc, label, rows in (
                        (GaugeMetricFamily, "sbstore_listener_connections",
                         "Open NVMe/TCP connections per listener.", "listener",
                         t.listener_connections),
                        (GaugeMetricFamily, "sbstore_connection_limit",
                         "Most connections open per listener, or per source address over "
                         "all listeners; beyond, they are closed at accept.", "scope",
                         t.connection_limits),
                        (CounterMetricFamily, "sbstore_connections_refused",
                         "Connections closed at accept: a cap was reached.", "reason",
                         t.refused),
                        (CounterMetricFamily, "sbstore_connections_timed_out",
                         "Connections closed for sending no ICReq, or no Connect after it, "
                         "in time.", "waiting_for", t.timed_out),
                        (CounterMetricFamily, "sbstore_log_lines_suppressed",
                         "Per-connection log lines not written (rate-limited).", "kind",
                         t.log_suppressed)):
                    f = family(name, doc, labels=[label])
                    for k, v in rows:
                        f.add_metric([k], v)
                    out.append(f)
                a = GaugeMetricFamily("sbstore_ana_groups", "(Subsystem, ANA group) pairs a "
                                      "port shows in an ANA state.", labels=["portid", "state"])
                for portid, state, n in t.ana_groups:
                    a.add_metric([str(portid), state], n)
                out.append(a)
                a = CounterMetricFamily("sbstore_dhchap_authentications",
                                        "DH-HMAC-CHAP transactions, one per queue, by result.",
                                        labels=["result"])
                a.add_metric(["success"], t.dhchap_successes)
                a.add_metric(["failure"], t.dhchap_failures)
                out.append(a)
            b = GaugeMetricFamily("sbstore_build_info", "sbstore version.",
                                  labels=["version", "python"])
            b.add_metric([sbstore.__version__, platform.python_version()], 1)
            out.append(b)
            return out

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Reference())  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def families_of(text: str) -> list[tuple[str, str, str]]:
    return [(f.name, f.type, f.documentation) for f in text_string_to_metric_families(text)]


def random_stats(rng: random.Random) -> IoStats:
    s = IoStats()
    for kind, n_attr in (("read", "reads"), ("write", "writes"), ("flush", "flushes")):
        for _ in range(rng.randrange(4)):
            dt = rng.choice([1, 5000, 8192, 8193, 10**6, 2**33, 2**33 + 1, 10**12])
            setattr(s, n_attr, getattr(s, n_attr) + 1)
            getattr(s, f"{kind}_slots")[slot_of(dt)] += 1
            setattr(s, f"{kind}_sum_ns", getattr(s, f"{kind}_sum_ns") + dt)
    s.read_bytes, s.write_bytes = s.reads * 4096, s.writes * 512
    s.write_zeroes, s.deallocates = rng.randrange(3), rng.randrange(3)
    for attr in ("read_errors", "write_errors", "flush_errors", "other_errors"):
        setattr(s, attr, rng.randrange(2))
    return s


def test_same_series_as_prometheus_client_writes() -> None:
    rng = random.Random(7)
    odd = 'we"ird\\ten\nant'  # every character the text format escapes
    vols = [VolumeSample(f"p{i % 2}", f"v{i}", odd if i % 5 == 0 else f"t{i % 3}",
                         random_stats(rng), None if i % 4 == 0 else 4096 * i)
            for i in range(40)]
    pool = PoolSample("p0", PoolStats(path="/x/p0.pool", uuid="u-1", cluster_size=4096,
                                      capacity_bytes=10, allocated_bytes=3, free_bytes=7,
                                      metadata_bytes=2, metadata_used_bytes=1, volumes=40,
                                      snapshots=0, generation=5, io_engine="io_uring",
                                      io_reason="O_DIRECT through io_uring",
                                      io_direct=True))
    source = MetricsSource(volumes=lambda: vols, pools=lambda: [pool],
                           target=lambda: TargetSample(
                               1, 2, 3, 4, 5, 6, (("127.0.0.1:4420", 1), ("[::1]:4420", 0)),
                               (("listener", 4096), ("source", 1024)),
                               (("listener_cap", 2), ("source_cap", 3)),
                               (("icreq", 4), ("connect", 5)),
                               (("protocol_error", 6), ("refused", 7)),
                               ana_groups=((1, "optimized", 3), (2, "inaccessible", 1))),
                           qos=lambda: [TenantQosSample("t1", 3, 1.25, 7, 8, 9, 2, 1, 4, 1),
                                        TenantQosSample(odd, 0, 0.0)])
    expected = reference_text(source)
    got = Exposition(source, standard_collectors=False).render_now().decode()
    assert parse(got) == parse(expected)
    assert families_of(got) == families_of(expected)


def test_per_volume_detail_can_be_turned_down() -> None:
    rng = random.Random(3)
    vols = [VolumeSample("p", f"v{i}", f"t{i % 2}", random_stats(rng), 1 << 20)
            for i in range(6)]
    source = MetricsSource(volumes=lambda: vols)
    full = parse(Exposition(source, standard_collectors=False).render_now().decode())
    for level in ("counters", "none"):
        text = Exposition(source, per_volume=level, standard_collectors=False).render_now()
        s = parse(text.decode())
        volume_series = {n for n, _ in s if n.startswith("sbstore_volume_")}
        if level == "counters":
            assert "sbstore_volume_reads_total" in volume_series
            assert "sbstore_volume_errors_total" in volume_series
            assert "sbstore_volume_size_bytes" in volume_series
            assert not any("latency" in n for n in volume_series)
            assert {k: v for k, v in full.items() if "volume_" in k[0] and "latency" not in k[0]
                    } == {k: v for k, v in s.items() if "volume_" in k[0]}
        else:
            assert not volume_series
        # Tenant series stay complete whatever the level.
        assert {k: v for k, v in s.items() if k[0].startswith("sbstore_tenant_")} == \
            {k: v for k, v in full.items() if k[0].startswith("sbstore_tenant_")}
    with pytest.raises(ValueError, match="per_volume"):
        Exposition(source, per_volume="some")


@dataclass
class Vol:
    pool: str
    name: str
    tenant: str
    stats: IoStats
    size: int | None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["io", "tenant", "drop", "add", "resize", "noop",
                                           "rename", "new_stats"]),
                          st.integers(0, 7), st.integers(0, 1 << 30)), max_size=40),
       st.sampled_from(["full", "counters", "none"]))
def test_kept_lines_and_tenant_sums_follow_every_change(
        ops: list[tuple[str, int, int]], level: str) -> None:
    """A long-lived exposition (lines kept, tenant sums kept up to date) shows exactly what a
    fresh one shows, after any sequence of I/O, tenant moves, unexports, re-exports, resizes,
    renames and counter resets."""
    rng = random.Random(len(ops))
    vols = [Vol("p", f"v{i}", f"t{i % 3}", random_stats(rng), 1 << 20) for i in range(5)]
    source = MetricsSource(volumes=lambda: [VolumeSample(v.pool, v.name, v.tenant, v.stats,
                                                         v.size) for v in vols])
    kept = Exposition(source, per_volume=level, standard_collectors=False)
    kept.render_now()
    for op, i, x in ops:
        v = vols[i % len(vols)] if vols else None
        if op == "io" and v is not None:
            fresh = random_stats(random.Random(x))
            v.stats.add(fresh)  # more I/O on the same counters
        elif op == "tenant" and v is not None:
            v.tenant = f"t{x % 4}"
        elif op == "drop" and v is not None:
            vols.remove(v)
        elif op == "add":
            vols.append(Vol("p", f"n{x}", f"t{x % 4}", random_stats(random.Random(x)), x))
        elif op == "resize" and v is not None:
            v.size = x or None
        elif op == "rename" and v is not None:
            v.name = f"r{x}"
        elif op == "new_stats" and v is not None:
            v.stats = IoStats()  # deleted and re-created under the same name
        if len({(v.pool, v.name) for v in vols}) != len(vols):
            vols.pop()  # names are unique in a pool
        got = kept.render_now().decode()
        want = Exposition(source, per_volume=level, standard_collectors=False).render_now()
        assert got == want.decode()


async def test_a_render_yields_to_the_loop_between_slices() -> None:
    """With many volumes the render is cut into slices, and the loop runs other work between
    them (an I/O waits one slice, not the whole render)."""
    vols = [VolumeSample("p", f"v{i}", "t", random_stats(random.Random(i)), 1 << 20)
            for i in range(400)]
    exposition = Exposition(MetricsSource(volumes=lambda: vols), standard_collectors=False,
                            slice_s=0.0)  # yield at every check
    chunks, during = await turns_while(exposition.render())
    assert exposition.slices >= 400 // 16
    assert during >= exposition.slices - 1
    assert b"".join(chunks) == Exposition(MetricsSource(volumes=lambda: vols),
                                          standard_collectors=False).render_now()


async def test_ana_pairs_are_counted_across_slices(served: Served) -> None:
    """The daemon's way: sbstore_ana_groups counted from the source's ana_pairs, walked across
    slices with the loop running between them, gives the exposition the target's sample gives
    in one piece (with 1,000 subsystems that piece was 2-4 ms of stalled loop)."""
    for i in range(64):
        sub = Subsystem(f"{NQN}-{i}", serial=f"SBSANA{i:06d}", allow_any_host=True)
        sub.add_namespace(RamDevice(1 << 20))
        served.target.add_subsystem(sub)
    whole = Exposition(served.source, standard_collectors=False).render_now()
    sliced = Exposition(replace(served.source,
                                target=lambda: TargetSample.of(served.target, served.server,
                                                               with_ana=False),
                                ana_pairs=lambda: ana_pairs(served.target)),
                        standard_collectors=False, slice_s=0.0)  # yield at every check
    unsliced = Exposition(served.source, standard_collectors=False, slice_s=0.0)
    assert b"".join(await sliced.render()) == whole
    await unsliced.render()
    assert sliced.slices >= unsliced.slices + 65 // 16  # the walk took slices of its own
    s = parse(whole.decode())
    assert val(s, "sbstore_ana_groups", portid=str(next(iter(served.target.listeners))),
               state="optimized") == 65
    assert TargetSample.of(served.target, served.server, with_ana=False).ana_groups == ()


async def test_qos_series_when_a_source_gives_them(served: Served) -> None:
    served.source.qos = lambda: [TenantQosSample("t1", queued_ios=5, throttled_seconds=1.5)]
    exposition = Exposition(served.source, standard_collectors=False)
    async with await start_metrics_server("127.0.0.1", 0, exposition=exposition) as metrics:
        s = parse(await asyncio.to_thread(fetch, metrics.url))
    assert val(s, "sbstore_tenant_queued_ios", tenant="t1") == 5
    assert val(s, "sbstore_tenant_throttled_seconds_total", tenant="t1") == 1.5
    assert not any(name.startswith("process_") for name, _ in s)


def test_empty_source() -> None:
    text = Exposition(MetricsSource()).render_now().decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"sbstore_volume_reads", "sbstore_pool_capacity_bytes", "sbstore_build_info"} <= names
    assert "sbstore_connections" not in names  # no target given
    assert any(name.startswith("process_") for name in names)


def http(url: str, method: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def test_endpoint_answers_get_head_and_refuses_the_rest() -> None:
    exposition = Exposition(MetricsSource(), standard_collectors=False)
    async with await start_metrics_server("127.0.0.1", 0, exposition=exposition) as metrics:
        status, headers, body = await asyncio.to_thread(http, metrics.url, "GET")
        assert status == 200 and b"sbstore_build_info" in body
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert int(headers["Content-Length"]) == len(body)
        status, headers, body = await asyncio.to_thread(http, metrics.url, "HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
        base = metrics.url.rsplit("/", 1)[0]
        assert (await asyncio.to_thread(http, base + "/", "GET"))[0] == 200
        assert (await asyncio.to_thread(http, base + "/other", "GET"))[0] == 404
        status, headers, _ = await asyncio.to_thread(http, metrics.url, "POST")
        assert status == 405 and headers["Allow"] == "GET, HEAD"


async def test_loopback_only_unless_allowed() -> None:
    for host in ("127.0.0.1", "127.0.0.53", "::1", "localhost"):
        check_listen_host(host)
    for host in ("0.0.0.0", "::", "192.0.2.2", "metrics.example.com"):
        with pytest.raises(ValueError, match="loopback"):
            check_listen_host(host)
        with pytest.raises(ValueError, match="loopback"):
            await start_metrics_server(host, 0, exposition=Exposition(MetricsSource()))
    check_listen_host("0.0.0.0", allow_remote=True)


async def test_close_stops_serving() -> None:
    metrics = await start_metrics_server("127.0.0.1", 0, exposition=Exposition(MetricsSource()))
    assert "sbstore_build_info" in await asyncio.to_thread(fetch, metrics.url)
    await metrics.aclose()
    await metrics.aclose()  # idempotent
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(fetch, metrics.url, 2)


async def test_ipv6_loopback() -> None:
    exposition = Exposition(MetricsSource())
    async with await start_metrics_server("::1", 0, exposition=exposition) as metrics:
        assert metrics.url.startswith("http://[::1]:")
        assert "sbstore_build_info" in await asyncio.to_thread(fetch, metrics.url)


@given(st.lists(st.binary(max_size=40), max_size=60), st.integers(1, 64))
def test_pieces_regroup_without_losing_or_reordering(chunks: list[bytes], size: int) -> None:
    from sbstore.metrics import pieces

    out = list(pieces(chunks, size))
    assert b"".join(out) == b"".join(chunks)
    assert all(0 < len(p) < 2 * size for p in out)  # joined up to a piece, large ones cut
