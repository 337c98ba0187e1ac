"""Prometheus metrics: the text exposition of the daemon's plain counters, rendered in the event
loop in short slices, and the HTTP endpoint that serves it (127.0.0.1:9420 by default).

Rules of this module:
- The I/O path never touches this module: volumes count into :class:`sbstore.iostats.IoStats`
  (plain ints); a scrape reads them.
- Everything runs in the event loop's thread (the only thread that mutates the counters, the
  pools, the target's dicts), and a scrape's work is cut into slices of at most
  :data:`SLICE_S` that yield to the loop between them, so an I/O waits at most one slice for
  a scrape, however many volumes there are. Why not a thread: rendering is pure Python and
  holds the GIL; a thread that holds it makes the loop wait up to the switch interval (5 ms)
  each time it wants it back, which with 1,000 volumes cut a QD1 job's IOPS by 2/3 and
  stretched its latency to 169 ms (perf/control_bench.py).
- The text is written here, not by prometheus_client: its generic path validates and escapes
  every label of every sample (84k lines: 1.4 s of CPU per scrape). Here each volume's label
  set is escaped once, and each volume's lines are kept between scrapes and rebuilt only when
  its counters changed (an idle volume costs a tuple comparison). prometheus_client still
  provides the standard ``process_*``/``python_*`` series (a few dozen lines).
- Per-volume detail is a setting (:data:`sbstore.config.METRICS_PER_VOLUME`): ``full``,
  ``counters`` (no latency histograms, which are 6/7 of a volume's lines) or ``none``. Tenant,
  pool and target series are always complete.
- The daemon describes what exists through :class:`MetricsSource`: callables that return
  samples (:class:`VolumeSample`, :class:`PoolSample`, :class:`TargetSample`,
  :class:`TenantQosSample`), called in the loop's thread at each scrape. The volumes may come
  from a generator: it is walked across slices (so it must tolerate changes between items).
- The endpoint listens on loopback only unless ``allow_remote=True``: metrics name tenants and
  volumes. It answers uncompressed: compressing megabytes would cost the daemon's CPU more
  than it saves on loopback (a reverse proxy in front can compress for remote scrapers).

Series (``docs/metrics.md`` has the same list with notes). Counters end in ``_total``;
latencies are histograms in seconds with power-of-two bounds from 8.192e-06 s to 8.59 s
(``sbstore.iostats.BUCKET_BOUNDS_NS``).

Per exported volume, labels ``pool``, ``volume``, ``tenant`` (``per_volume`` = ``full``; with
``counters`` all but the histograms; with ``none`` none of them):
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
  sbstore_tenant_cpu_admitted_total          commands the admission controller let run (idem)
  sbstore_tenant_cpu_held_total              of those, commands that first waited for their
                                             tenant's turn (weights at work) (idem)
  sbstore_tenant_cpu_waiting_commands        commands waiting for their turn now (idem)
  sbstore_tenant_cpu_ahead_total             commands run at once though others' were held: a
                                             tenant keeping one command at a time (idem)
  sbstore_tenant_cpu_one_at_a_time           1 while the tenant counts as keeping one command
                                             at a time ([qos] latency_bytes applies to the
                                             others) (idem)
Per pool, label ``pool``:
  sbstore_pool_info{uuid,path,io_engine}     1
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
  sbstore_listener_connections{listener}     open connections per listener (address:port)
  sbstore_connection_limit{scope}            the caps ([limits]), scope = listener|source
  sbstore_connections_refused_total{reason}  closed at accept, reason = listener_cap|source_cap
  sbstore_connections_timed_out_total{waiting_for}  closed without an ICReq or a Connect in
                                             time, waiting_for = icreq|connect
  sbstore_log_lines_suppressed_total{kind}   per-connection log lines not written (rate limit),
                                             kind = protocol_error|peer_terminated|refused|
                                             handshake_timeout|connect_refused
  sbstore_ana_groups{portid,state}           (subsystem, ANA group) pairs each port shows in
                                             each ANA state (states with none: no series)
  sbstore_dhchap_authentications_total{result}  DH-HMAC-CHAP transactions (one per queue),
                                             result = success|failure
  sbstore_build_info{version,python}         1
Cluster mode, per replicated volume with a replica on this node, label ``volume``:
  sbstore_cluster_volume_degraded            1 when a replica is missing from its in-sync set
  sbstore_cluster_resync_bytes_total         data bytes this node's resyncs sent (as primary)
  sbstore_cluster_is_primary                 1 when this node is the volume's primary
Plus prometheus_client's process_* and python_* series (``standard_collectors=True``).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from itertools import accumulate
from operator import add, attrgetter, sub
from typing import TYPE_CHECKING, NamedTuple, Self

import sbstore
from sbstore.config import METRICS_PER_VOLUME
from sbstore.iostats import (
    BUCKET_BOUNDS_NS,
    FIRST_BUCKET_EXP,
    LAST_BUCKET_EXP,
    N_SLOTS,
    IoStats,
)
from sbstore.slices import yield_to_io
from target.ana import state_name
from target.connlimits import (
    REFUSED_LISTENER,
    REFUSED_SOURCE,
    WAITING_CONNECT,
    WAITING_ICREQ,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from sbstore.qos import TenantQosStats
    from sbstore.store.pool import Pool, PoolStats
    from target.server import TargetServer
    from target.subsystem import Target

log = logging.getLogger("sbstore.metrics")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9420
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Longest run of rendering between two yields to the loop. A slice is checked every
# _CHECK_EVERY volumes; one volume costs 1-30 us, so a slice overshoots by well under 1 ms.
SLICE_S = 0.001
_CHECK_EVERY = 16
_JOIN_ROWS = 128  # volumes' parts joined at once (full: ~300 KB, a fraction of a slice)

VOLUME_LABELS = ("pool", "volume", "tenant")


# --- what the daemon hands in ------------------------------------------------------------------

class VolumeSample(NamedTuple):
    """One exported volume: where it lives, whose it is, and its live counters. (A named
    tuple: a scrape makes one per exported volume, and a frozen dataclass costs 3x more.)"""

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
    # What keeps unauthenticated clients in check (target.connlimits, target.loglimit); each
    # a tuple of (label value, number).
    listener_connections: tuple[tuple[str, int], ...] = ()
    connection_limits: tuple[tuple[str, int], ...] = ()  # scope: listener, source
    refused: tuple[tuple[str, int], ...] = ()  # reason
    timed_out: tuple[tuple[str, int], ...] = ()  # waiting_for
    log_suppressed: tuple[tuple[str, int], ...] = ()  # kind
    # (portid, ANA state name, how many (subsystem, group) pairs that port shows in it)
    ana_groups: tuple[tuple[int, str, int], ...] = ()
    dhchap_successes: int = 0
    dhchap_failures: int = 0

    @classmethod
    def of(cls, target: Target, server: TargetServer | None = None, *,
           with_ana: bool = True) -> TargetSample:
        """Count what ``target`` (and ``server``'s connections) hold right now (loop thread).
        ``with_ana=False`` leaves ``ana_groups`` empty, for a source whose ``ana_pairs`` gives
        them across slices (the walk visits every subsystem for every port)."""
        subsystems = list(target.subsystems.values())
        sample = cls(
            connections=server.connection_count if server is not None else 0,
            io_controllers=sum(len(s.controllers) for s in subsystems),
            discovery_controllers=len(target.discovery.controllers),
            subsystems=len(subsystems),
            namespaces=sum(len(s.namespaces) for s in subsystems),
            listeners=len(target.listeners),
            ana_groups=count_ana_pairs(ana_pairs(target)) if with_ana else (),
            dhchap_successes=target.dhchap_successes,
            dhchap_failures=target.dhchap_failures,
        )
        if server is None:
            return sample
        gate, limits = server.gate, server.connection_limits
        return replace(
            sample,
            # Every listener, the idle ones too (a series that vanishes at 0 hides a drop).
            listener_connections=tuple(
                (_listener_label(x.traddr, x.trsvcid), gate.open_by_listener.get(x, 0))
                for x in server.listeners),
            connection_limits=(("listener", limits.max_per_listener),
                               ("source", limits.max_per_source)),
            refused=tuple((r, gate.refused[r]) for r in (REFUSED_LISTENER, REFUSED_SOURCE)),
            timed_out=tuple((w, gate.timed_out[w]) for w in (WAITING_ICREQ, WAITING_CONNECT)),
            log_suppressed=tuple(sorted(server.log_suppressed().items())),
        )


def _listener_label(traddr: str, trsvcid: str) -> str:
    return f"[{traddr}]:{trsvcid}" if ":" in traddr else f"{traddr}:{trsvcid}"


def ana_pairs(target: Target) -> Iterator[tuple[int, str]]:
    """(portid, ANA state name) for each (subsystem, ANA group) a port shows: the ports and
    subsystems of the moment it starts, each subsystem's state read when reached (so it can be
    walked across slices while subsystems come and go)."""
    listeners = sorted(target.listeners.items())
    subsystems = list(target.subsystems.values())
    for portid, listener in listeners:
        for subsystem in subsystems:
            if not subsystem.reachable_on(listener):
                continue
            for grpid in subsystem.ana_groups():
                yield portid, state_name(subsystem.ana_state(portid, grpid))


def count_ana_pairs(pairs: Iterable[tuple[int, str]]) -> tuple[tuple[int, str, int], ...]:
    """``TargetSample.ana_groups`` from :func:`ana_pairs`: (portid, state, pairs), sorted."""
    counts: dict[tuple[int, str], int] = {}
    for key in pairs:
        counts[key] = counts.get(key, 0) + 1
    return _ana_rows(counts)


def _ana_rows(counts: dict[tuple[int, str], int]) -> tuple[tuple[int, str, int], ...]:
    return tuple((portid, state, n) for (portid, state), n in sorted(counts.items()))


@dataclass(frozen=True)
class TenantQosSample:
    """What a tenant's QoS queue reports (``sbstore.qos.QosManager.stats()``)."""

    tenant: str
    queued_ios: int
    throttled_seconds: float
    dispatched_ios: int = 0
    dispatched_bytes: int = 0
    cpu_admitted: int = 0
    cpu_held: int = 0
    cpu_waiting: int = 0
    cpu_ahead: int = 0
    cpu_one_at_a_time: int = 0

    @classmethod
    def of(cls, stats: TenantQosStats) -> TenantQosSample:
        """From one tenant's ``QosManager.stats()`` entry."""
        return cls(stats.tenant, stats.queued_ios, stats.throttled_seconds,
                   stats.dispatched_ios, stats.dispatched_bytes, stats.cpu_admitted,
                   stats.cpu_held, stats.cpu_waiting, stats.cpu_ahead,
                   stats.cpu_one_at_a_time)


def _none() -> tuple[()]:
    return ()


@dataclass
class MetricsSource:
    """Callables the exposition calls at each scrape, in the event loop's thread."""

    volumes: Callable[[], Iterable[VolumeSample]] = _none  # walked lazily, across slices
    pools: Callable[[], Iterable[PoolSample]] = _none
    target: Callable[[], TargetSample | None] = lambda: None
    # With it, sbstore_ana_groups is counted from these pairs (ana_pairs(target)), walked
    # across slices, and the target's sample need not carry them (TargetSample.of(...,
    # with_ana=False)): with 1,000 subsystems the walk was 2-4 ms in one piece.
    ana_pairs: Callable[[], Iterable[tuple[int, str]]] | None = None
    qos: Callable[[], Iterable[TenantQosSample]] | None = None
    # Cluster mode: (volume, degraded, resync bytes total, primary here) per local replica.
    cluster: Callable[[], Iterable[tuple[str, bool, int, bool]]] | None = None


# --- the text format ------------------------------------------------------------------------------

def escape_label(value: str) -> str:
    """A label value as the text format wants it (backslash, double quote, newline escaped)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    """``a="x",b="y"``: the inside of a label set (callers add braces or more labels)."""
    return ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())


def _braced(inner: str) -> str:
    return f"{{{inner}}}" if inner else ""


def _float(value: float) -> str:
    """A float as Prometheus reads it (Python's repr is; ints print without a fraction)."""
    return repr(float(value))


def _header(name: str, kind: str, doc: str) -> str:
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


# The ``le`` labels of the exposed buckets, as prometheus_client formatted them (Go style; for
# these powers of two identical to Python's repr), then +Inf.
_LE = tuple(repr(b / 1e9) for b in BUCKET_BOUNDS_NS)
_FIRST, _LAST = FIRST_BUCKET_EXP, LAST_BUCKET_EXP

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
_HISTOGRAMS = (("read", "reads", "read_slots", "read_sum_ns", "Latency of completed reads."),
               ("write", "writes", "write_slots", "write_sum_ns", "Latency of completed writes."),
               ("flush", "flushes", "flush_slots", "flush_sum_ns",
                "Latency of completed flushes."))
# Every scalar counter of an IoStats, in one C call: a volume's lines change only when this
# tuple does (a histogram never changes without its operation's count), so it is the key of
# the kept text, and summing these tuples makes the tenants' counters.
_COUNTERS = IoStats.COUNTERS
_counters_of = attrgetter(*_COUNTERS)
_INDEX = {name: i for i, name in enumerate(_COUNTERS)}


def _io_headers(prefix: str, histograms: bool) -> list[str]:
    """The families of one set of I/O series, in order: counters, errors, [histograms]."""
    out = [_header(f"{prefix}_{stem}_total", "counter", doc) for stem, _, doc in _IO_COUNTERS]
    out.append(_header(f"{prefix}_errors_total", "counter",
                       "Commands that failed, by operation."))
    if histograms:
        out += [_header(f"{prefix}_{kind}_latency_seconds", "histogram", doc)
                for kind, _, _, _, doc in _HISTOGRAMS]
    return out


def _histogram_template(name: str, inner: str) -> bytes:
    """One histogram's lines (cumulative buckets, +Inf, _count, _sum) with ``%d``/``%b`` where
    the values go: filling it is one C call, where writing 24 lines is 24 Python steps."""
    inner = inner.replace("%", "%%")
    sep = "," if inner else ""
    braced = _braced(inner)
    lines = [f'{name}_bucket{{{inner}{sep}le="{le}"}} %d\n' for le in (*_LE, "+Inf")]
    lines.append(f"{name}_count{braced} %d\n{name}_sum{braced} %b\n")
    return "".join(lines).encode()


def _histogram_text(template: bytes, slots: list[int], sum_ns: int) -> bytes:
    counts = accumulate(slots[_FIRST + 1:_LAST + 1], initial=sum(slots[:_FIRST + 1]))
    total = sum(slots)
    return template % (*counts, total, total, _float(sum_ns / 1e9).encode())


def _io_parts(prefix: str, inner: str, counters: tuple[int, ...],
              histograms: tuple[tuple[bytes, list[int]], ...] = ()) -> list[bytes]:
    """The lines of one label set in each family of :func:`_io_headers` (one part each);
    ``histograms``: (template, slots) of read, write, flush, or nothing."""
    braced = _braced(inner)
    sep = "," if inner else ""
    parts = [f"{prefix}_{stem}_total{braced} {counters[_INDEX[attr]]}\n".encode()
             for stem, attr, _ in _IO_COUNTERS]
    parts.append("".join(f'{prefix}_errors_total{{{inner}{sep}op="{op}"}} '
                         f"{counters[_INDEX[attr]]}\n" for op, attr in _ERROR_KINDS).encode())
    for (_, _, _, sum_attr, _), (template, slots) in zip(_HISTOGRAMS, histograms):
        parts.append(_histogram_text(template, slots, counters[_INDEX[sum_attr]]))
    return parts


def _templates(prefix: str, inner: str) -> tuple[bytes, ...]:
    return tuple(_histogram_template(f"{prefix}_{kind}_latency_seconds", inner)
                 for kind, _, _, _, _ in _HISTOGRAMS)


class _Kept:
    """A volume's lines as of its last change, and the counters they show."""

    __slots__ = ("counters", "key", "parts", "slots", "stats", "templates")

    def __init__(self, stats: IoStats, key: tuple[object, ...], counters: tuple[int, ...],
                 slots: tuple[list[int], list[int], list[int]], parts: list[bytes],
                 templates: tuple[bytes, ...]) -> None:
        self.stats = stats
        self.key = key
        self.counters = counters
        self.slots = slots
        self.parts = parts
        self.templates = templates  # of its histograms, made once (its labels do not change)


# Which counter says whether each histogram is empty (then adding it changes nothing).
_HIST_COUNT = tuple(_INDEX[n] for _, n, _, _, _ in _HISTOGRAMS)


class _TenantSum:
    """A tenant's I/O series: the sums of its volumes' kept counters, kept up to date by
    adding and removing the volumes that changed (an idle volume costs nothing)."""

    __slots__ = ("counters", "slots", "volumes")

    def __init__(self) -> None:
        self.volumes = 0
        self.counters = [0] * len(_COUNTERS)
        self.slots = ([0] * N_SLOTS, [0] * N_SLOTS, [0] * N_SLOTS)

    def add(self, k: _Kept, sign: int) -> None:
        """Add (``sign`` 1) or remove (-1) one volume's counters."""
        self.volumes += sign
        op = add if sign > 0 else sub
        self.counters[:] = map(op, self.counters, k.counters)
        for i, mine, theirs in zip(_HIST_COUNT, self.slots, k.slots):
            if k.counters[i]:
                mine[:] = map(op, mine, theirs)

    def replace(self, old: _Kept, new: _Kept) -> None:
        """One volume's counters went from ``old`` to ``new`` (only changed histograms are
        touched: a read-only volume's write and flush histograms are not)."""
        self.counters[:] = map(add, self.counters, map(sub, new.counters, old.counters))
        for i, mine, was, now in zip(_HIST_COUNT, self.slots, old.slots, new.slots):
            if old.counters[i] != new.counters[i]:
                mine[:] = map(add, mine, map(sub, now, was))


def _gauge_family(name: str, doc: str, rows: Iterable[tuple[str, float]]) -> str:
    return _header(name, "gauge", doc) + "".join(f"{name}{_braced(inner)} {v}\n"
                                                 for inner, v in rows)


def _counter_family(name: str, doc: str, rows: Iterable[tuple[str, float]]) -> str:
    return _header(name, "counter", doc) + "".join(f"{name}{_braced(inner)} {v}\n"
                                                   for inner, v in rows)


class Exposition:
    """Renders every series of the daemon as Prometheus text (format 0.0.4).

    ``per_volume``: ``full``, ``counters`` or ``none`` (see the module rules). ``slice_s``:
    the longest stretch :meth:`render` runs without yielding to the loop. Use it from the
    loop's thread only; renders are serialized.
    """

    def __init__(self, source: MetricsSource, *, per_volume: str = "full",
                 standard_collectors: bool = True, slice_s: float = SLICE_S) -> None:
        if per_volume not in METRICS_PER_VOLUME:
            raise ValueError(f"per_volume must be one of {', '.join(METRICS_PER_VOLUME)}, "
                             f"not {per_volume!r}")
        self.source = source
        self.per_volume = per_volume
        self.slice_s = slice_s
        self._kept: dict[tuple[str, str, str], _Kept] = {}  # (pool, volume, tenant)
        self._tenants: dict[str, _TenantSum] = {}  # sums over self._kept
        self._lock = asyncio.Lock()
        self._registry = _standard_registry() if standard_collectors else None
        self._volume_headers = (_io_headers("sbstore_volume", per_volume == "full")
                                + [_header("sbstore_volume_size_bytes", "gauge",
                                           "Size of the exported volume.")]
                                if per_volume != "none" else [])
        self.slices = 0  # slices the last render took (tests, diagnostics)

    async def render(self) -> list[bytes]:
        """The exposition, as parts to send in order; yields to the loop between slices."""
        async with self._lock:
            out: list[bytes] = []
            for _ in self._steps(out):
                await yield_to_io()
            return out

    def render_now(self) -> bytes:
        """The exposition in one go, without a loop (tests, tools)."""
        out: list[bytes] = []
        for _ in self._steps(out):
            pass
        return b"".join(out)

    def _steps(self, out: list[bytes]) -> Iterator[None]:
        """Appends the exposition to ``out``; yields where the caller may let the loop run."""
        self.slices = 1
        start = time.perf_counter()
        samples = self.source.volumes()  # may be a generator: its cost is sliced too
        full = self.per_volume == "full"
        text = self.per_volume != "none"
        old, fresh = self._kept, {}
        tenants = self._tenants
        rows: list[list[bytes]] = []
        for i, v in enumerate(samples):
            if i % _CHECK_EVERY == _CHECK_EVERY - 1 and \
                    time.perf_counter() - start >= self.slice_s:
                yield
                self.slices += 1
                start = time.perf_counter()
            labels = (v.pool, v.volume, v.tenant)
            if labels in fresh:
                continue  # the same series twice would make the exposition invalid
            stats = v.stats
            counters = _counters_of(stats)
            key = (counters, v.size_bytes)
            was = old.pop(labels, None)
            k = was
            if k is None or k.stats is not stats or k.key != key:
                # New or changed since the last scrape: copy its histograms (what the tenant
                # sums read, so they add up to the lines) and rebuild its lines.
                slots = (list(stats.read_slots), list(stats.write_slots),
                         list(stats.flush_slots))
                parts: list[bytes] = []
                templates: tuple[bytes, ...] = ()
                if text:
                    inner = _labels(pool=v.pool, volume=v.volume, tenant=v.tenant)
                    if full:
                        templates = was.templates if was is not None and was.templates \
                            else _templates("sbstore_volume", inner)
                    parts = _io_parts("sbstore_volume", inner, counters,
                                      tuple(zip(templates, slots)))
                    parts.append(b"" if v.size_bytes is None else
                                 f"sbstore_volume_size_bytes{{{inner}}} {v.size_bytes}\n"
                                 .encode())
                k = _Kept(stats, key, counters, slots, parts, templates)
                if was is not None and was.stats is stats:
                    tenants[v.tenant].replace(was, k)
                else:
                    if was is not None:
                        tenants[v.tenant].add(was, -1)
                    t = tenants.get(v.tenant)
                    if t is None:
                        t = tenants[v.tenant] = _TenantSum()
                    t.add(k, 1)
            fresh[labels] = k
            if text:
                rows.append(k.parts)
        for labels, k in old.items():  # not exported any more
            t = tenants[labels[2]]
            t.add(k, -1)
            if not t.volumes:
                del tenants[labels[2]]
        self._kept = fresh
        yield
        self.slices += 1

        # Volumes: one family at a time (a family's lines must be contiguous), joined
        # _JOIN_ROWS volumes at a time: one join of a whole family (2.4 MB for a histogram
        # of 1,000 volumes) stalled the loop for milliseconds, and thousands of tiny parts
        # cost the sender a Python step each.
        start = time.perf_counter()
        for f, header in enumerate(self._volume_headers):
            out.append(header.encode())
            for i in range(0, len(rows), _JOIN_ROWS):
                out.append(b"".join([r[f] for r in rows[i:i + _JOIN_ROWS]]))
                if time.perf_counter() - start >= self.slice_s:
                    yield
                    self.slices += 1
                    start = time.perf_counter()
        del rows

        # The ANA pairs: every subsystem for every port, so sliced like the volumes.
        ana: tuple[tuple[int, str, int], ...] | None = None
        if self.source.ana_pairs is not None:
            ana_counts: dict[tuple[int, str], int] = {}
            start = time.perf_counter()
            for i, pair in enumerate(self.source.ana_pairs()):
                if i % _CHECK_EVERY == _CHECK_EVERY - 1 and \
                        time.perf_counter() - start >= self.slice_s:
                    yield
                    self.slices += 1
                    start = time.perf_counter()
                ana_counts[pair] = ana_counts.get(pair, 0) + 1
            ana = _ana_rows(ana_counts)
            yield
            self.slices += 1

        # Tenants, pools, the target: a few lines each.
        out.append(self._tenant_text(tenants).encode())
        out.append(self._pool_text().encode())
        out.append(self._target_text(ana).encode())
        if self.source.cluster is not None:
            out.append(self._cluster_text().encode())
        if self._registry is not None:
            yield
            self.slices += 1
            from prometheus_client import generate_latest
            out.append(generate_latest(self._registry))

    def _tenant_text(self, tenants: dict[str, _TenantSum]) -> str:
        ordered = sorted(tenants.items())
        parts = [_gauge_family("sbstore_tenant_volumes", "Exported volumes of the tenant.",
                               ((_labels(tenant=name), t.volumes) for name, t in ordered))]
        headers = _io_headers("sbstore_tenant", True)
        per_tenant = []
        for name, t in ordered:
            inner = _labels(tenant=name)
            per_tenant.append(_io_parts("sbstore_tenant", inner, tuple(t.counters),
                                        tuple(zip(_templates("sbstore_tenant", inner),
                                                  t.slots))))
        for f, header in enumerate(headers):
            parts.append(header + "".join(p[f].decode() for p in per_tenant))
        if self.source.qos is not None:
            qos = sorted(self.source.qos(), key=lambda q: q.tenant)
            for name, kind, doc, attr in (
                    ("sbstore_tenant_queued_ios", "gauge",
                     "I/Os waiting in the tenant's QoS queue.", "queued_ios"),
                    ("sbstore_tenant_throttled_seconds_total", "counter",
                     "Time the tenant's I/Os were held by its limits.", "throttled_seconds"),
                    ("sbstore_tenant_qos_dispatched_ios_total", "counter",
                     "I/Os the tenant's QoS queue passed to the backend.", "dispatched_ios"),
                    ("sbstore_tenant_qos_dispatched_bytes_total", "counter",
                     "Bytes of the I/Os the tenant's QoS queue passed to the backend.",
                     "dispatched_bytes"),
                    ("sbstore_tenant_cpu_admitted_total", "counter",
                     "Commands the admission controller let run.", "cpu_admitted"),
                    ("sbstore_tenant_cpu_held_total", "counter",
                     "Commands that waited for their tenant's turn before running.",
                     "cpu_held"),
                    ("sbstore_tenant_cpu_waiting_commands", "gauge",
                     "Commands waiting for their tenant's turn now.", "cpu_waiting"),
                    ("sbstore_tenant_cpu_ahead_total", "counter",
                     "Commands run at once though other tenants' were held (the tenant "
                     "keeps one command at a time).", "cpu_ahead"),
                    ("sbstore_tenant_cpu_one_at_a_time", "gauge",
                     "1 while the tenant keeps one command at a time: the other tenants' "
                     "data in flight is bounded ([qos] latency_bytes).", "cpu_one_at_a_time")):
                parts.append(_header(name, kind, doc) + "".join(
                    f'{name}{{tenant="{escape_label(q.tenant)}"}} '
                    f"{_float(v) if isinstance(v := getattr(q, attr), float) else v}\n"
                    for q in qos))
        return "".join(parts)

    def _pool_text(self) -> str:
        pools = list(self.source.pools())
        parts = [_gauge_family("sbstore_pool_info", "A pool's identity and data I/O engine.",
                               ((_labels(pool=p.pool, uuid=p.stats.uuid, path=p.stats.path,
                                         io_engine=p.stats.io_engine), 1)
                                for p in pools))]
        for stem, doc in (
                ("capacity_bytes", "Data capacity of the pool."),
                ("allocated_bytes", "Data clusters in use, in bytes."),
                ("free_bytes", "Free data space, in bytes."),
                ("metadata_bytes", "Size of the metadata area."),
                ("metadata_used_bytes", "Metadata pages in use, in bytes."),
                ("volumes", "Volumes in the pool (snapshots not counted)."),
                ("snapshots", "Snapshots in the pool.")):
            parts.append(_gauge_family(f"sbstore_pool_{stem}", doc,
                                       ((_labels(pool=p.pool), getattr(p.stats, stem))
                                        for p in pools)))
        return "".join(parts)

    def _cluster_text(self) -> str:
        assert self.source.cluster is not None
        rows = list(self.source.cluster())
        return "".join([
            _gauge_family("sbstore_cluster_volume_degraded", "1 when a replica of the volume "
                          "is missing from its in-sync set.",
                          ((_labels(volume=v), int(d)) for v, d, _, _ in rows)),
            _counter_family("sbstore_cluster_resync_bytes_total", "Data bytes this node's "
                            "resyncs of the volume sent (as its primary).",
                            ((_labels(volume=v), b) for v, _, b, _ in rows)),
            _gauge_family("sbstore_cluster_is_primary", "1 when this node is the volume's "
                          "primary.", ((_labels(volume=v), int(p)) for v, _, _, p in rows))])

    def _target_text(self, ana: tuple[tuple[int, str, int], ...] | None) -> str:
        """``ana``: the ANA counts from the source's ana_pairs; None: the sample's."""
        t = self.source.target()
        parts = []
        if t is not None:
            parts += [
                _gauge_family("sbstore_connections", "Open NVMe/TCP connections (one per "
                              "queue).", [("", t.connections)]),
                _gauge_family("sbstore_controllers", "Live controllers.",
                              [('kind="io"', t.io_controllers),
                               ('kind="discovery"', t.discovery_controllers)]),
                _gauge_family("sbstore_subsystems", "NVM subsystems.", [("", t.subsystems)]),
                _gauge_family("sbstore_namespaces", "Namespaces over all subsystems.",
                              [("", t.namespaces)]),
                _gauge_family("sbstore_listeners", "NVMe/TCP listeners.", [("", t.listeners)]),
                _gauge_family("sbstore_listener_connections",
                              "Open NVMe/TCP connections per listener.",
                              [(_labels(listener=k), v) for k, v in t.listener_connections]),
                _gauge_family("sbstore_connection_limit",
                              "Most connections open per listener, or per source address "
                              "over all listeners; beyond, they are closed at accept.",
                              [(_labels(scope=k), v) for k, v in t.connection_limits]),
                _counter_family("sbstore_connections_refused_total",
                                "Connections closed at accept: a cap was reached.",
                                [(_labels(reason=k), v) for k, v in t.refused]),
                _counter_family("sbstore_connections_timed_out_total",
                                "Connections closed for sending no ICReq, or no Connect "
                                "after it, in time.",
                                [(_labels(waiting_for=k), v) for k, v in t.timed_out]),
                _counter_family("sbstore_log_lines_suppressed_total",
                                "Per-connection log lines not written (rate-limited).",
                                [(_labels(kind=k), v) for k, v in t.log_suppressed]),
                _gauge_family("sbstore_ana_groups", "(Subsystem, ANA group) pairs a port shows "
                              "in an ANA state.", ((_labels(portid=str(portid), state=state), n)
                                                   for portid, state, n in
                                                   (t.ana_groups if ana is None else ana))),
                _header("sbstore_dhchap_authentications_total", "counter",
                        "DH-HMAC-CHAP transactions, one per queue, by result.")
                + f'sbstore_dhchap_authentications_total{{result="success"}} '
                  f"{t.dhchap_successes}\n"
                + f'sbstore_dhchap_authentications_total{{result="failure"}} '
                  f"{t.dhchap_failures}\n",
            ]
        parts.append(_gauge_family("sbstore_build_info", "sbstore version.", [(
            _labels(version=sbstore.__version__, python=platform.python_version()), 1)]))
        return "".join(parts)


def _standard_registry() -> CollectorRegistry:
    """prometheus_client's process, platform and GC collectors."""
    from prometheus_client import (
        CollectorRegistry,
        GCCollector,
        PlatformCollector,
        ProcessCollector,
    )

    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


# --- serving ------------------------------------------------------------------------------------

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


MAX_HEAD_BYTES = 16 * 1024
REQUEST_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 60.0
MAX_CONNECTIONS = 16
SEND_PIECE = 256 * 1024


class MetricsServer:
    """The running endpoint: ``host``, ``port`` (the bound one when 0 was asked), ``url``,
    ``await aclose()``. An asyncio server in the daemon's loop: one request per connection,
    ``GET /metrics`` (or ``/``) and ``HEAD``; anything else 404/405."""

    def __init__(self, exposition: Exposition, host: str) -> None:
        self.exposition = exposition
        self.host = host
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def _start(self, port: int) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, port,
                                                  limit=MAX_HEAD_BYTES, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        """Stop listening and drop the connections in progress. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        try:
            await asyncio.wait_for(server.wait_closed(), 5)
        except TimeoutError:
            pass

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                TimeoutError, asyncio.CancelledError):
            pass
        except Exception:  # one scrape's failure must not stop the endpoint
            log.exception("metrics request failed")
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        method, target = (parts[0], parts[1]) if len(parts) == 3 else (b"", b"")
        path = target.split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            body = [b"only GET and HEAD\n"]
            status, extra = "405 Method Not Allowed", "Allow: GET, HEAD\r\n"
            ctype = "text/plain; charset=utf-8"
        elif path not in (b"/metrics", b"/"):
            body, status, extra = [b"try /metrics\n"], "404 Not Found", ""
            ctype = "text/plain; charset=utf-8"
        else:
            body, status, extra, ctype = await self.exposition.render(), "200 OK", "", \
                CONTENT_TYPE
        length = sum(len(b) for b in body)
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {length}"
                     f"\r\n{extra}Connection: close\r\n\r\n".encode("latin-1"))
        if method != b"HEAD":
            await _send(writer, body)
        await asyncio.wait_for(writer.drain(), SEND_TIMEOUT_S)


def pieces(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """``chunks`` regrouped into pieces of about ``size`` bytes (small ones joined, large
    ones cut), in order."""
    group: list[bytes] = []
    n = 0
    for chunk in chunks:
        if not chunk:
            continue  # (a volume without a size has an empty part)
        if len(chunk) >= size:
            if group:
                yield b"".join(group)
                group, n = [], 0
            view = memoryview(chunk)
            for off in range(0, len(view), size):
                yield bytes(view[off:off + size])
            continue
        group.append(chunk)
        n += len(chunk)
        if n >= size:
            yield b"".join(group)
            group, n = [], 0
    if group:
        yield b"".join(group)


async def _send(writer: asyncio.StreamWriter, chunks: list[bytes]) -> None:
    """Write ``chunks`` a :data:`SEND_PIECE` at a time, yielding to the loop between pieces:
    the exposition is thousands of small parts (a system call each, written one by one) and
    megabytes in all (copied into a loopback socket in one call, a stall of milliseconds)."""
    writer.transport.set_write_buffer_limits(high=SEND_PIECE, low=0)
    deadline = time.monotonic() + SEND_TIMEOUT_S
    for piece in pieces(chunks, SEND_PIECE):
        writer.write(piece)
        # drain() returns at once while the socket takes everything: yield anyway.
        await yield_to_io()
        await asyncio.wait_for(writer.drain(), max(0.0, deadline - time.monotonic()))


async def start_metrics_server(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                               exposition: Exposition, allow_remote: bool = False
                               ) -> MetricsServer:
    """Serve ``exposition`` over HTTP on ``host:port`` from the running loop.

    Refuses a non-loopback ``host`` unless ``allow_remote`` (ValueError); a port in use raises
    OSError at once."""
    check_listen_host(host, allow_remote=allow_remote)
    server = MetricsServer(exposition, host)
    await server._start(port)
    return server
