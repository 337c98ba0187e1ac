"""Prometheus metrics: a collector that turns the daemon's plain counters into series at scrape
time, and the HTTP endpoint that serves them (127.0.0.1:9420 by default).

Rules of this module:
- The I/O path never touches prometheus_client: volumes count into :class:`sbstore.iostats.IoStats`
  (plain ints); every metric object here is built per scrape from a :class:`Snapshot`.
- The snapshot is taken in the event loop's thread (the only thread that mutates the counters,
  the pools, the target's dicts), then the series are built and rendered in the HTTP server's
  thread. So the loop pays only for copying ints and lists, a scrape never iterates a dict the
  loop is changing, and the series of one scrape are mutually consistent.
- The daemon describes what exists through :class:`MetricsSource`: callables that return samples
  (:class:`VolumeSample`, :class:`PoolSample`, :class:`TargetSample`, :class:`TenantQosSample`).
  They run in the loop's thread, so they may read live state freely.
- The endpoint listens on loopback only unless ``allow_remote=True``: metrics name tenants and
  volumes.

Series (``docs/metrics.md`` has the same list with notes). Counters end in ``_total``;
latencies are histograms in seconds with power-of-two bounds from 8.192e-06 s to 8.59 s
(``sbstore.iostats.BUCKET_BOUNDS_NS``).

Per exported volume, labels ``pool``, ``volume``, ``tenant``:
  sbstore_volume_reads_total                 reads completed
  sbstore_volume_writes_total                writes completed
  sbstore_volume_read_bytes_total            bytes read
  sbstore_volume_written_bytes_total         bytes written
  sbstore_volume_flushes_total               flushes completed
  sbstore_volume_write_zeroes_total          write-zeroes commands completed
  sbstore_volume_deallocates_total           deallocate (TRIM) commands completed
  sbstore_volume_errors_total{op}            failed commands, op = read|write|flush|other
  sbstore_volume_read_latency_seconds        histogram of completed reads
  sbstore_volume_write_latency_seconds       histogram of completed writes
  sbstore_volume_flush_latency_seconds       histogram of completed flushes
  sbstore_volume_size_bytes                  the volume's size (when the daemon gives it)
Per tenant, label ``tenant``, summed over its exported volumes:
  sbstore_tenant_volumes                     exported volumes
  sbstore_tenant_reads_total ... sbstore_tenant_flush_latency_seconds  (as per volume)
  sbstore_tenant_queued_ios                  I/Os waiting in the QoS queue (with a QoS source)
  sbstore_tenant_throttled_seconds_total     time I/Os spent held by limits (with a QoS source)
  sbstore_tenant_qos_dispatched_ios_total    I/Os the QoS queue passed to the backend (idem)
  sbstore_tenant_qos_dispatched_bytes_total  bytes of those I/Os (idem)
Per pool, label ``pool``:
  sbstore_pool_info{uuid,path}               1
  sbstore_pool_capacity_bytes                data capacity
  sbstore_pool_allocated_bytes               data clusters in use
  sbstore_pool_free_bytes                    capacity - allocated
  sbstore_pool_metadata_bytes                metadata area
  sbstore_pool_metadata_used_bytes           metadata pages in use
  sbstore_pool_volumes                       volumes (snapshots not counted)
  sbstore_pool_snapshots                     snapshots
The target:
  sbstore_connections                        open NVMe/TCP connections (one per queue)
  sbstore_controllers{kind}                  live controllers, kind = io|discovery
  sbstore_subsystems                         NVM subsystems (discovery not counted)
  sbstore_namespaces                         namespaces over all subsystems
  sbstore_listeners                          listeners
  sbstore_build_info{version,python}         1
Plus prometheus_client's process_* and python_* series (``standard_collectors=True``).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import platform
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Self

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

import sbstore
from sbstore.iostats import IoStats

if TYPE_CHECKING:
    from sbstore.qos import TenantQosStats
    from sbstore.store.pool import Pool, PoolStats
    from target.server import TargetServer
    from target.subsystem import Target

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9420

VOLUME_LABELS = ("pool", "volume", "tenant")


# --- what the daemon hands in ------------------------------------------------------------------

@dataclass(frozen=True)
class VolumeSample:
    """One exported volume: where it lives, whose it is, and its live counters."""

    pool: str
    volume: str
    tenant: str
    stats: IoStats
    size_bytes: int | None = None


@dataclass(frozen=True)
class PoolSample:
    """A pool's name and its space accounting (``Pool.stats()``)."""

    pool: str
    stats: PoolStats

    @classmethod
    def of(cls, name: str, pool: Pool) -> PoolSample:
        return cls(name, pool.stats())


@dataclass(frozen=True)
class TargetSample:
    connections: int = 0
    io_controllers: int = 0
    discovery_controllers: int = 0
    subsystems: int = 0
    namespaces: int = 0
    listeners: int = 0

    @classmethod
    def of(cls, target: Target, server: TargetServer | None = None) -> TargetSample:
        """Count what ``target`` (and ``server``'s connections) hold right now (loop thread)."""
        subsystems = list(target.subsystems.values())
        return cls(
            connections=server.connection_count if server is not None else 0,
            io_controllers=sum(len(s.controllers) for s in subsystems),
            discovery_controllers=len(target.discovery.controllers),
            subsystems=len(subsystems),
            namespaces=sum(len(s.namespaces) for s in subsystems),
            listeners=len(target.listeners),
        )


@dataclass(frozen=True)
class TenantQosSample:
    """What a tenant's QoS queue reports (``sbstore.qos.QosManager.stats()``)."""

    tenant: str
    queued_ios: int
    throttled_seconds: float
    dispatched_ios: int = 0
    dispatched_bytes: int = 0

    @classmethod
    def of(cls, stats: TenantQosStats) -> TenantQosSample:
        """From one tenant's ``QosManager.stats()`` entry."""
        return cls(stats.tenant, stats.queued_ios, stats.throttled_seconds,
                   stats.dispatched_ios, stats.dispatched_bytes)


def _none() -> tuple[()]:
    return ()


@dataclass
class MetricsSource:
    """Callables the collector calls at each scrape, in the event loop's thread."""

    volumes: Callable[[], Iterable[VolumeSample]] = _none
    pools: Callable[[], Iterable[PoolSample]] = _none
    target: Callable[[], TargetSample | None] = lambda: None
    qos: Callable[[], Iterable[TenantQosSample]] | None = None


@dataclass
class Snapshot:
    """Everything one scrape shows, copied: later I/O does not change it."""

    volumes: list[VolumeSample] = field(default_factory=list)
    pools: list[PoolSample] = field(default_factory=list)
    target: TargetSample | None = None
    qos: list[TenantQosSample] | None = None


def take_snapshot(source: MetricsSource) -> Snapshot:
    """Call the source and copy the counters. Run it in the thread that mutates them."""
    volumes = [replace(v, stats=v.stats.snapshot()) for v in source.volumes()]
    return Snapshot(volumes=volumes, pools=list(source.pools()), target=source.target(),
                    qos=None if source.qos is None else list(source.qos()))


# --- the collector ------------------------------------------------------------------------------

class SbstoreCollector(Collector):
    """Builds every sbstore series from one :class:`Snapshot` per scrape.

    ``loop``: the event loop that owns the counters. A scrape from another thread asks the loop
    for the snapshot (and fails after ``snapshot_timeout_s`` if the loop does not answer: a
    stuck daemon should fail its scrape, not report stale numbers). Without a loop, or when
    called from the loop's own thread, the snapshot is taken directly.
    """

    def __init__(self, source: MetricsSource, *, loop: asyncio.AbstractEventLoop | None = None,
                 snapshot_timeout_s: float = 5.0) -> None:
        self.source = source
        self.loop = loop
        self.snapshot_timeout_s = snapshot_timeout_s

    def snapshot(self) -> Snapshot:
        loop = self.loop
        if loop is None or not loop.is_running() or _running_loop() is loop:
            return take_snapshot(self.source)
        result: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()

        def run() -> None:
            if not result.set_running_or_notify_cancel():
                return
            try:
                result.set_result(take_snapshot(self.source))
            except Exception as exc:  # noqa: BLE001 (handed to the scraping thread)
                result.set_exception(exc)

        loop.call_soon_threadsafe(run)
        try:
            return result.result(self.snapshot_timeout_s)
        except concurrent.futures.TimeoutError:
            result.cancel()
            raise RuntimeError(f"the event loop did not answer within "
                               f"{self.snapshot_timeout_s} s") from None

    def collect(self) -> Iterator[Metric]:
        return iter(families(self.snapshot()))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


_IO_COUNTERS = (
    # (series stem, IoStats attribute, help)
    ("reads", "reads", "Reads completed."),
    ("writes", "writes", "Writes completed."),
    ("read_bytes", "read_bytes", "Bytes read."),
    ("written_bytes", "write_bytes", "Bytes written."),
    ("flushes", "flushes", "Flushes completed."),
    ("write_zeroes", "write_zeroes", "Write Zeroes commands completed."),
    ("deallocates", "deallocates", "Deallocate (TRIM) commands completed."),
)
_ERROR_KINDS = (("read", "read_errors"), ("write", "write_errors"), ("flush", "flush_errors"),
                ("other", "other_errors"))


def _histogram_buckets(stats: IoStats, kind: str) -> tuple[list[tuple[str, float]], float]:
    h = stats.histogram(kind)
    buckets: list[tuple[str, float]] = [
        (floatToGoString(bound / 1e9), n)  # type: ignore[no-untyped-call]
        for bound, n in h.buckets()]
    buckets.append(("+Inf", h.count))
    return buckets, h.sum_ns / 1e9


def _io_families(prefix: str, labelnames: list[str],
                 rows: list[tuple[list[str], IoStats]]) -> list[Metric]:
    out: list[Metric] = []
    for stem, attr, doc in _IO_COUNTERS:
        c = CounterMetricFamily(f"{prefix}_{stem}", doc, labels=labelnames)
        for labels, stats in rows:
            c.add_metric(labels, getattr(stats, attr))
        out.append(c)
    errors = CounterMetricFamily(f"{prefix}_errors", "Commands that failed, by operation.",
                                 labels=[*labelnames, "op"])
    for labels, stats in rows:
        for op, attr in _ERROR_KINDS:
            errors.add_metric([*labels, op], getattr(stats, attr))
    out.append(errors)
    for kind in IoStats.HISTOGRAMS:
        hist = HistogramMetricFamily(f"{prefix}_{kind}_latency_seconds",
                                     f"Latency of completed {kind}es." if kind == "flush"
                                     else f"Latency of completed {kind}s.",
                                     labels=labelnames)
        for labels, stats in rows:
            buckets, total = _histogram_buckets(stats, kind)
            hist.add_metric(labels, buckets, total)
        out.append(hist)
    return out


def families(snap: Snapshot) -> list[Metric]:
    """Every series of one scrape."""
    out: list[Metric] = []

    # Volumes.
    vol_rows = [([v.pool, v.volume, v.tenant], v.stats) for v in snap.volumes]
    out += _io_families("sbstore_volume", list(VOLUME_LABELS), vol_rows)
    size = GaugeMetricFamily("sbstore_volume_size_bytes", "Size of the exported volume.",
                             labels=list(VOLUME_LABELS))
    for v in snap.volumes:
        if v.size_bytes is not None:
            size.add_metric([v.pool, v.volume, v.tenant], v.size_bytes)
    out.append(size)

    # Tenants: sums over their volumes.
    tenants: dict[str, IoStats] = {}
    counts: dict[str, int] = defaultdict(int)
    for v in snap.volumes:
        agg = tenants.get(v.tenant)
        if agg is None:
            agg = tenants[v.tenant] = IoStats()
        agg.add(v.stats)
        counts[v.tenant] += 1
    nvol = GaugeMetricFamily("sbstore_tenant_volumes", "Exported volumes of the tenant.",
                             labels=["tenant"])
    for tenant, n in sorted(counts.items()):
        nvol.add_metric([tenant], n)
    out.append(nvol)
    out += _io_families("sbstore_tenant", ["tenant"],
                        [([t], s) for t, s in sorted(tenants.items())])
    if snap.qos is not None:
        queued = GaugeMetricFamily("sbstore_tenant_queued_ios",
                                   "I/Os waiting in the tenant's QoS queue.", labels=["tenant"])
        throttled = CounterMetricFamily("sbstore_tenant_throttled_seconds",
                                        "Time the tenant's I/Os were held by its limits.",
                                        labels=["tenant"])
        dispatched = CounterMetricFamily("sbstore_tenant_qos_dispatched_ios",
                                         "I/Os the tenant's QoS queue passed to the backend.",
                                         labels=["tenant"])
        dispatched_bytes = CounterMetricFamily(
            "sbstore_tenant_qos_dispatched_bytes",
            "Bytes of the I/Os the tenant's QoS queue passed to the backend.", labels=["tenant"])
        for q in snap.qos:
            queued.add_metric([q.tenant], q.queued_ios)
            throttled.add_metric([q.tenant], q.throttled_seconds)
            dispatched.add_metric([q.tenant], q.dispatched_ios)
            dispatched_bytes.add_metric([q.tenant], q.dispatched_bytes)
        out += [queued, throttled, dispatched, dispatched_bytes]

    # Pools.
    info = GaugeMetricFamily("sbstore_pool_info", "A pool's identity.",
                             labels=["pool", "uuid", "path"])
    gauges = [
        ("capacity_bytes", "capacity_bytes", "Data capacity of the pool."),
        ("allocated_bytes", "allocated_bytes", "Data clusters in use, in bytes."),
        ("free_bytes", "free_bytes", "Free data space, in bytes."),
        ("metadata_bytes", "metadata_bytes", "Size of the metadata area."),
        ("metadata_used_bytes", "metadata_used_bytes", "Metadata pages in use, in bytes."),
        ("volumes", "volumes", "Volumes in the pool (snapshots not counted)."),
        ("snapshots", "snapshots", "Snapshots in the pool."),
    ]
    pool_families = [GaugeMetricFamily(f"sbstore_pool_{stem}", doc, labels=["pool"])
                     for stem, _, doc in gauges]
    for p in snap.pools:
        info.add_metric([p.pool, p.stats.uuid, p.stats.path], 1)
        for fam, (_, attr, _) in zip(pool_families, gauges):
            fam.add_metric([p.pool], getattr(p.stats, attr))
    out += [info, *pool_families]

    # The target.
    t = snap.target
    if t is not None:
        out.append(GaugeMetricFamily("sbstore_connections",
                                     "Open NVMe/TCP connections (one per queue).",
                                     value=t.connections))
        ctrls = GaugeMetricFamily("sbstore_controllers", "Live controllers.", labels=["kind"])
        ctrls.add_metric(["io"], t.io_controllers)
        ctrls.add_metric(["discovery"], t.discovery_controllers)
        out.append(ctrls)
        out.append(GaugeMetricFamily("sbstore_subsystems", "NVM subsystems.",
                                     value=t.subsystems))
        out.append(GaugeMetricFamily("sbstore_namespaces", "Namespaces over all subsystems.",
                                     value=t.namespaces))
        out.append(GaugeMetricFamily("sbstore_listeners", "NVMe/TCP listeners.",
                                     value=t.listeners))

    build = GaugeMetricFamily("sbstore_build_info", "sbstore version.",
                              labels=["version", "python"])
    build.add_metric([sbstore.__version__, platform.python_version()], 1)
    out.append(build)
    return out


# --- serving ------------------------------------------------------------------------------------

def make_registry(collector: Collector, *, standard_collectors: bool = True
                  ) -> CollectorRegistry:
    """A registry with ``collector`` (and the process/platform/GC collectors when asked)."""
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if standard_collectors:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


def check_listen_host(host: str, *, allow_remote: bool = False) -> None:
    """Refuse a non-loopback address unless ``allow_remote`` (ValueError)."""
    if allow_remote:
        return
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the metrics endpoint listens on loopback only, not {host!r} "
                         f"(allow_remote=True opens it to the network)")


class MetricsServer:
    """The running endpoint: ``host``, ``port`` (the bound one when 0 was asked), ``close()``.

    It is prometheus_client's threaded WSGI server (one daemon thread, a thread per request).
    Why a thread and not an asyncio server in the daemon's loop: rendering a scrape of many
    volumes takes milliseconds of pure Python; in a thread it is interleaved with the loop at
    the GIL's switch interval instead of stalling every I/O for the whole render, and the
    snapshot it needs is still taken in the loop (see :class:`SbstoreCollector`).
    """

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._httpd, self._thread = start_http_server(port, host, registry)
        self.host = host
        self.port: int = self._httpd.server_port
        self._lock = threading.Lock()
        self._closed = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop serving and wait (bounded) for the server thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout_s)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """:meth:`close` from a coroutine: stopping the server thread takes up to its poll
        interval (0.5 s), which the event loop should not sit through."""
        await asyncio.to_thread(self.close, timeout_s)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_metrics_server(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                         collector: Collector, allow_remote: bool = False,
                         standard_collectors: bool = True) -> MetricsServer:
    """Serve ``collector`` (with the standard process series) over HTTP on ``host:port``.

    Refuses a non-loopback ``host`` unless ``allow_remote``. Blocking but quick: call it from
    the loop at startup (binding happens here, so a port in use raises OSError at once)."""
    check_listen_host(host, allow_remote=allow_remote)
    return MetricsServer(host, port,
                         make_registry(collector, standard_collectors=standard_collectors))
