"""The daemon's metrics endpoint after real I/O through the target: the series docs/metrics.md
documents, with the counts the host caused, per volume, per tenant, per pool and target-wide;
and what ``[metrics] per_volume`` leaves out."""
from __future__ import annotations

import asyncio
import dataclasses
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sbstore.config import LimitsConfig
from target.host import Controller
from target.host.queue_client import CommandFailed
from tests.control.conftest import NQN_1, NQN_2, DaemonThread, in_thread, make_config

DOCUMENTED = [
    *(f"sbstore_volume_{s}" for s in (
        "reads_total", "writes_total", "read_bytes_total", "written_bytes_total",
        "flushes_total", "write_zeroes_total", "deallocates_total", "errors_total",
        "read_latency_seconds", "write_latency_seconds", "flush_latency_seconds",
        "size_bytes")),
    "sbstore_tenant_volumes",
    *(f"sbstore_tenant_{s}" for s in (
        "reads_total", "writes_total", "read_bytes_total", "written_bytes_total",
        "flushes_total", "write_zeroes_total", "deallocates_total", "errors_total",
        "read_latency_seconds", "write_latency_seconds", "flush_latency_seconds")),
    *(f"sbstore_pool_{s}" for s in (
        "info", "capacity_bytes", "allocated_bytes", "free_bytes", "metadata_bytes",
        "metadata_used_bytes", "volumes", "snapshots")),
    "sbstore_connections", "sbstore_controllers", "sbstore_subsystems", "sbstore_namespaces",
    "sbstore_listeners", "sbstore_listener_connections", "sbstore_connection_limit",
    "sbstore_connections_refused_total", "sbstore_connections_timed_out_total",
    "sbstore_log_lines_suppressed_total", "sbstore_ana_groups", "sbstore_build_info",
]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def full_daemon(tmp_path: Path, sock_dir: Path) -> Iterator[DaemonThread]:
    """A daemon at ``per_volume = "full"``: every documented series."""
    d = DaemonThread(make_config(tmp_path, sock_dir, per_volume="full")).start()
    try:
        yield d
    finally:
        d.stop()


async def test_metrics_after_io(full_daemon: DaemonThread) -> None:
    daemon = full_daemon
    daemon.ok("tenant", "create", "gold")
    daemon.ok("volume", "create", "vol", "--size", "16M", "--tenant", "gold")
    daemon.ok("snapshot", "create", "vol", "snap")
    daemon.ok("export", "create", NQN_1, "--volume", "vol", "--allow-any-host")
    daemon.ok("export", "create", NQN_2, "--volume", "snap", "--allow-any-host")
    async with await Controller.connect("127.0.0.1", daemon.port, NQN_1,
                                        nr_io_queues=2) as ctrl:
        bs = ctrl.block_size(1)
        for lba in range(8):
            await ctrl.write(1, lba, bytes([lba]) * bs)
        await ctrl.flush(1)
        for lba in range(5):
            await ctrl.read(1, lba, 1)
        async with await Controller.connect("127.0.0.1", daemon.port, NQN_2) as snap_ctrl:
            with pytest.raises(CommandFailed):
                await snap_ctrl.write(1, 0, b"\x01" * bs)  # a snapshot is read-only
            samples = await in_thread(scrape, daemon.metrics_url)

    names = {name for name, _ in samples}
    for series in DOCUMENTED:
        assert any(n == series or n.startswith(series + "_") for n in names), series

    vol = {"pool": "p1", "volume": "vol", "tenant": "gold"}
    assert value(samples, "sbstore_volume_writes_total", **vol) == 8
    assert value(samples, "sbstore_volume_written_bytes_total", **vol) == 8 * bs
    assert value(samples, "sbstore_volume_reads_total", **vol) == 5
    assert value(samples, "sbstore_volume_read_bytes_total", **vol) == 5 * bs
    assert value(samples, "sbstore_volume_flushes_total", **vol) == 1
    assert value(samples, "sbstore_volume_read_latency_seconds_count", **vol) == 5
    assert value(samples, "sbstore_volume_write_latency_seconds_bucket", le="+Inf", **vol) == 8
    assert value(samples, "sbstore_volume_read_latency_seconds_sum", **vol) > 0
    assert value(samples, "sbstore_volume_size_bytes", **vol) == 16 << 20
    assert value(samples, "sbstore_volume_errors_total", op="write", **vol) == 0
    snap = {"pool": "p1", "volume": "snap", "tenant": "gold"}
    assert value(samples, "sbstore_volume_errors_total", op="write", **snap) == 1

    assert value(samples, "sbstore_tenant_volumes", tenant="gold") == 2
    assert value(samples, "sbstore_tenant_writes_total", tenant="gold") == 8
    assert value(samples, "sbstore_tenant_errors_total", tenant="gold", op="write") == 1

    pool = {"pool": "p1"}
    capacity = value(samples, "sbstore_pool_capacity_bytes", **pool)
    allocated = value(samples, "sbstore_pool_allocated_bytes", **pool)
    assert allocated > 0 and value(samples, "sbstore_pool_free_bytes", **pool) == \
        capacity - allocated
    assert value(samples, "sbstore_pool_volumes", **pool) == 1
    assert value(samples, "sbstore_pool_snapshots", **pool) == 1

    assert value(samples, "sbstore_subsystems") == 2
    assert value(samples, "sbstore_namespaces") == 2
    assert value(samples, "sbstore_listeners") == 1
    assert value(samples, "sbstore_ana_groups", portid="1", state="optimized") == 2
    assert value(samples, "sbstore_controllers", kind="io") == 2
    assert value(samples, "sbstore_connections") >= 4  # two admin queues, three I/O queues


async def test_counters_survive_a_re_export(daemon: DaemonThread) -> None:
    daemon.ok("volume", "create", "vol", "--size", "4M")
    daemon.ok("export", "create", NQN_1, "--volume", "vol", "--allow-any-host")
    async with await Controller.connect("127.0.0.1", daemon.port, NQN_1) as ctrl:
        await ctrl.read(1, 0, 1)
    daemon.ok("export", "remove-volume", NQN_1, "vol")
    samples = await in_thread(scrape, daemon.metrics_url)
    assert not any(labels and dict(labels).get("volume") == "vol" for _, labels in samples)
    daemon.ok("export", "add-volume", NQN_1, "vol")
    async with await Controller.connect("127.0.0.1", daemon.port, NQN_1) as ctrl:
        await ctrl.read(1, 0, 2)
    await asyncio.sleep(0)
    samples = await in_thread(scrape, daemon.metrics_url)
    assert value(samples, "sbstore_volume_reads_total", pool="p1", volume="vol",
                 tenant="default") == 2


async def test_default_detail_leaves_out_per_volume_histograms(daemon: DaemonThread) -> None:
    daemon.ok("volume", "create", "vol", "--size", "4M")
    daemon.ok("export", "create", NQN_1, "--volume", "vol", "--allow-any-host")
    async with await Controller.connect("127.0.0.1", daemon.port, NQN_1) as ctrl:
        await ctrl.read(1, 0, 1)
    samples = await in_thread(scrape, daemon.metrics_url)
    names = {name for name, _ in samples}
    vol = {"pool": "p1", "volume": "vol", "tenant": "default"}
    assert value(samples, "sbstore_volume_reads_total", **vol) == 1
    assert value(samples, "sbstore_volume_size_bytes", **vol) == 4 << 20
    assert not any(n.startswith("sbstore_volume_") and "latency" in n for n in names)
    assert value(samples, "sbstore_tenant_read_latency_seconds_count", tenant="default") == 1


async def test_connection_limits_from_the_config_act_and_show(tmp_path: Path,
                                                              sock_dir: Path) -> None:
    # [limits] reaches the target: a silent connection is closed at the ICReq deadline, one
    # over the per-source cap at accept, and the metrics count both; a connected host (two
    # connections) is untouched throughout.
    from tests.integration.test_unauthenticated import closed_by_peer, raw_socket
    limits = LimitsConfig(icreq_timeout_s=0.3, connect_timeout_s=0.3,
                          max_connections_per_listener=100, max_connections_per_source=4)
    config = dataclasses.replace(make_config(tmp_path, sock_dir), limits=limits)
    daemon = DaemonThread(config).start()
    port = daemon.port
    try:
        daemon.ok("volume", "create", "vol", "--size", "4M")
        daemon.ok("export", "create", NQN_1, "--volume", "vol", "--allow-any-host")
        async with await Controller.connect("127.0.0.1", daemon.port, NQN_1) as ctrl:
            silent = [await raw_socket(daemon.port) for _ in range(2)]
            refused = await raw_socket(daemon.port)
            try:
                assert await closed_by_peer(refused, 2)
                assert all(await asyncio.gather(*(closed_by_peer(s, 3) for s in silent)))
            finally:
                for s in (*silent, refused):
                    s.close()
            await ctrl.write(1, 0, b"\x05" * ctrl.block_size(1))
            assert bytes(await ctrl.read(1, 0, 1)) == b"\x05" * ctrl.block_size(1)
            samples = await in_thread(scrape, daemon.metrics_url)
    finally:
        daemon.stop()
    listener = next(dict(labels)["listener"] for name, labels in samples
                    if name == "sbstore_listener_connections")
    assert listener == f"127.0.0.1:{port}"
    assert value(samples, "sbstore_listener_connections", listener=listener) == 2
    assert value(samples, "sbstore_connection_limit", scope="source") == 4
    assert value(samples, "sbstore_connection_limit", scope="listener") == 100
    assert value(samples, "sbstore_connections_refused_total", reason="source_cap") == 1
    assert value(samples, "sbstore_connections_refused_total", reason="listener_cap") == 0
    assert value(samples, "sbstore_connections_timed_out_total", waiting_for="icreq") == 2
    assert value(samples, "sbstore_connections_timed_out_total", waiting_for="connect") == 0
    assert value(samples, "sbstore_log_lines_suppressed_total", kind="protocol_error") == 0
