"""The composition root: builds the daemon from its parts and runs it until told to stop.

Rules: this is the only module that knows every part. It owns the event loop's lifetime, the
signals (SIGINT/SIGTERM stop it cleanly), systemd's readiness protocol and what the operator is
told on start.

Start, in order (each step undone on the way out if a later one fails):
  1. the state directory and its lock (one daemon per state directory), the state database;
  2. the pools of the config (opened, or created when ``create_size`` says so);
  3. the target and its server; the control service restores every export from the state,
     and the snapshot schedules start running (``control.schedules``, on the wall clock);
  4. the demo's volume and export (``--demo`` only, created when missing);
  5. the listeners (the config's: a failure stops the start; the API-added ones: logged);
  6. the API (unix socket, and TCP with a bearer token when configured), the metrics endpoint;
  7. ``READY=1`` to systemd, the watchdog pings, the lines for the operator.
Stop (SIGTERM, SIGINT, or ``stop`` set): ``STOPPING=1``; the API, the listeners and every
connection close; the pools flush and close; the state database closes; exit status 0.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import gc
import hashlib
import logging
import os
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sbstore import sdnotify
from sbstore.config import (
    ApiConfig,
    Config,
    ListenerConfig,
    MetricsConfig,
    PoolConfig,
    TargetConfig,
    default_state_dir,
)
from sbstore.control.state import DEFAULT_TENANT, ListenerRecord, StateError, StateStore
from sbstore.qos import QosManager
from sbstore.store.engines.buffers import BufferPool
from target.connlimits import ConnectionLimits
from target.server import TargetServer, TransportLimits
from target.subsystem import Subsystem, Target

log = logging.getLogger("sbstore.daemon")

DEMO_NQN = "nqn.2026-11.io.sbstore:demo"
DEMO_SIZE = 1 << 30
DEMO_POOL = "demo"
DEMO_VOLUME = "demo"
DEMO_POOL_SIZE = 4 << 30
DEFAULT_PORT = 4420
MAX_SOCKET_PATH = 107

__all__ = ["DEFAULT_PORT", "DEMO_NQN", "DaemonError", "DemoConfig", "Running", "connect_lines",
           "default_state_dir", "demo_config", "run_daemon", "serve_demo"]


class DaemonError(Exception):
    """The daemon cannot start; the message says why and what to do."""


@dataclass
class Running:
    """What a started daemon is made of (handed to ``run_daemon``'s ``ready`` callback, for
    tests and embedding; use it from the daemon's loop only)."""

    config: Config
    service: Any
    api: Any
    metrics: Any
    target: Target
    server: TargetServer
    pools: dict[str, Any]
    loop: asyncio.AbstractEventLoop
    stop: asyncio.Event


@dataclass(frozen=True)
class DemoConfig:
    """``serve --demo``: a file pool in the state directory with one volume exported to any
    host (or, with ``ram``, a RAM device and no pool: the protocol alone, for benchmarks)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    state_dir: Path = field(default_factory=default_state_dir)
    ram: bool = False
    size_bytes: int = DEMO_SIZE
    metrics_port: int = 9420
    busy_poll_us: int = 0
    io: str = "auto"  # the demo pool's data I/O engine (sbstore.store.engines)


def connect_lines(nqn: str, host: str, port: int) -> list[str]:
    return [f"nvme discover -t tcp -a {host} -s {port}",
            f"nvme connect -t tcp -a {host} -s {port} -n {nqn}"]


def _socket_path(state_dir: Path) -> Path:
    """``state_dir/api.sock``, or a short path under the runtime directory when that is too
    long for a unix socket (a deep state directory)."""
    p = state_dir.resolve() / "api.sock"
    if len(os.fsencode(p)) <= MAX_SOCKET_PATH:
        return p
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    digest = hashlib.sha1(os.fsencode(state_dir.resolve())).hexdigest()[:12]
    return base / f"sbstore-{digest}" / "api.sock"


def demo_config(demo: DemoConfig) -> Config:
    """The configuration ``serve --demo`` runs with."""
    state_dir = demo.state_dir
    pools = () if demo.ram else (PoolConfig(DEMO_POOL, state_dir / "demo.pool",
                                            create_size=max(DEMO_POOL_SIZE,
                                                            demo.size_bytes * 2), io=demo.io),)
    return Config(
        state_dir=state_dir,
        api=ApiConfig(socket=_socket_path(state_dir)),
        metrics=MetricsConfig(listen=("127.0.0.1", demo.metrics_port), optional=True),
        target=TargetConfig(busy_poll_us=demo.busy_poll_us),
        pools=pools,
        listeners=(ListenerConfig(port=demo.port, address=demo.host),),
        source="--demo")


# --- startup steps ----------------------------------------------------------------------------

def _lock_state_dir(state_dir: Path) -> int:
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise DaemonError(f"cannot create the state directory {state_dir}: "
                          f"{exc.strerror or exc}") from None
    fd = os.open(state_dir / "daemon.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DaemonError(f"another sbstore daemon is using {state_dir}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _open_pool(pc: PoolConfig) -> Any:
    from sbstore.store import DEFAULT_CLUSTER_SIZE, Pool, StoreError

    try:
        if pc.create_size is not None and not pc.path.exists():
            pc.path.parent.mkdir(parents=True, exist_ok=True)
            log.info("pool %s: creating %s (%d bytes)", pc.name, pc.path, pc.create_size)
            return Pool.create(pc.path, pc.create_size,
                               cluster_size=pc.cluster_size or DEFAULT_CLUSTER_SIZE, io=pc.io)
        if not pc.path.exists():
            raise DaemonError(f"pool {pc.name!r}: {pc.path} does not exist (format it with "
                              f"'sbstore pool create --file {pc.path} --size SIZE', or set "
                              f"create_size in the config)")
        return Pool.open(pc.path, io=pc.io)
    except StoreError as exc:
        raise DaemonError(f"pool {pc.name!r} ({pc.path}): {exc}") from None
    except OSError as exc:
        raise DaemonError(f"pool {pc.name!r} ({pc.path}): {exc.strerror or exc}") from None


async def _ensure_demo(service: Any) -> None:
    """The demo's volume and export, created when missing (and left alone when present)."""
    from sbstore.control.service import DEFAULT_BLOCK_SIZE

    pool = service.pools[DEMO_POOL]
    names = {v.name for v in pool.volumes}
    if DEMO_VOLUME not in names:
        await service.create_volume(DEMO_VOLUME, DEMO_SIZE, pool=DEMO_POOL,
                                    block_size=DEFAULT_BLOCK_SIZE)
    if DEMO_NQN not in {e["nqn"] for e in service.list_exports()}:
        await service.create_export(DEMO_NQN, volumes=[DEMO_VOLUME], pool=DEMO_POOL,
                                    allow_any_host=True, model="sbstore demo volume",
                                    serial="SBSDEMO0001")


def _read_token(path: Path) -> str:
    from sbstore.control.client import read_token
    try:
        return read_token(path)
    except (OSError, ValueError) as exc:
        raise DaemonError(f"[api] token_file {path}: {getattr(exc, 'strerror', None) or exc}"
                          ) from None


def _tls_keyring(config: Config) -> Any:
    """The PSKs of TLS listeners (``[target] tls_keyring``), or None. Read now, so a missing or
    world-readable file stops the start with its reason."""
    path = config.target.tls_keyring
    if path is None:
        return None
    from target.tls.keyring import KeyringError, PskKeyring
    try:
        return PskKeyring(path)
    except KeyringError as exc:
        raise DaemonError(f"[target] tls_keyring: {exc}") from None


async def _start_metrics(config: MetricsConfig, service: Any, pools: dict[str, Any],
                         target: Target, server: TargetServer, qos: QosManager,
                         cluster: Any = None) -> Any:
    from sbstore.metrics import (
        Exposition,
        MetricsSource,
        PoolSample,
        TargetSample,
        TenantQosSample,
        VolumeSample,
        ana_pairs,
        start_metrics_server,
    )

    source = MetricsSource(
        volumes=lambda: (VolumeSample(p, v.name, t, s, v.size_bytes)
                         for p, v, t, s in service.iter_exported_volumes()),
        pools=lambda: [PoolSample.of(name, pool) for name, pool in pools.items()],
        target=lambda: TargetSample.of(target, server, with_ana=False),
        ana_pairs=lambda: ana_pairs(target),
        qos=lambda: [TenantQosSample.of(t) for t in qos.stats().values()],
        cluster=cluster.metric_samples if cluster is not None else None)
    exposition = Exposition(source, per_volume=config.per_volume)
    host, port = config.listen
    try:
        return await start_metrics_server(host, port, exposition=exposition,
                                          allow_remote=config.allow_remote)
    except OSError as exc:
        if not config.optional:
            raise DaemonError(f"[metrics] cannot listen on {host}:{port}: "
                              f"{exc.strerror or exc}") from None
        log.warning("metrics: %s:%d is busy (%s); using a free port instead", host, port,
                    exc.strerror or exc)
        return await start_metrics_server(host, 0, exposition=exposition,
                                          allow_remote=config.allow_remote)


def _where(host: str, port: int | str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- the daemon -------------------------------------------------------------------------------

async def run_daemon(config: Config, *, demo: DemoConfig | None = None,
                     announce: Callable[[str], None] = print,
                     stop: asyncio.Event | None = None,
                     ready: Callable[[Running], None] | None = None) -> None:
    """Run until ``stop`` is set (or SIGINT/SIGTERM). DaemonError when it cannot start.
    ``ready(running)`` is called once everything is up."""
    from sbstore.control.api import ApiServer
    from sbstore.control.service import ControlError, ControlService

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (tests run the daemon in-process)

    async with contextlib.AsyncExitStack() as stack:
        lock_fd = _lock_state_dir(config.state_dir)
        stack.callback(os.close, lock_fd)
        try:
            state = StateStore(config.state_db)
        except StateError as exc:
            raise DaemonError(str(exc)) from None
        stack.callback(state.close)

        pools: dict[str, Any] = {}

        async def close_pools() -> None:
            for name, pool in pools.items():
                try:
                    await pool.aclose()
                except Exception:  # close the others
                    log.exception("closing pool %s failed", name)
        stack.push_async_callback(close_pools)
        for pc in config.pools:
            pools[pc.name] = _open_pool(pc)  # the store logs the engine it chose, and why
            log.info("pool %s: %s open", pc.name, pc.path)

        # Every exported volume sits behind its tenant's queue on its pool's dispatcher, and
        # its commands are admitted to the CPU by tenant weight (sbstore.qos.admission).
        qos = QosManager(max_outstanding=config.qos.max_outstanding,
                         cost_bytes=config.qos.cost_bytes, default_tenant=DEFAULT_TENANT,
                         turn_budget=config.qos.cpu_turn_budget,
                         max_inflight=config.qos.max_inflight,
                         latency_bytes=config.qos.latency_bytes)
        stack.callback(qos.close)
        for name in pools:
            # Inline backends: an unlimited tenant's I/O skips the per-pool slot bookkeeping
            # (a coroutine layer and counters per I/O). What executes, and so what queues at
            # the device, is already bounded by the admission controller's room, where the
            # weights act; the slots still order I/Os held by limits.
            qos.backend(name, inline=True)
        target = Target(incapsule_data_size=config.target.incapsule_data_size)
        target.discovery_auth = config.target.discovery_auth
        # Writes' data is gathered in page-aligned buffers: an O_DIRECT engine writes it as it
        # came off the socket, with no copy to align it.
        transfer_buffers = BufferPool()
        limits = config.limits
        server = TargetServer(target, TransportLimits(
            busy_poll_s=config.target.busy_poll_us / 1e6,
            transfer_buffer=transfer_buffers.get), admission=qos.admission,
            connection_limits=ConnectionLimits(
                icreq_timeout_s=limits.icreq_timeout_s,
                connect_timeout_s=limits.connect_timeout_s,
                max_per_listener=limits.max_connections_per_listener,
                max_per_source=limits.max_connections_per_source),
            tls_keyring=_tls_keyring(config))
        stack.push_async_callback(server.close)
        # Cluster mode (docs/cluster.md): replicated volumes' devices are role devices inside
        # the QoS hook; single-node mode builds nothing of it.
        cluster = None
        device_hook: Any = qos.device_hook
        if config.cluster is not None:
            from sbstore.cluster.cntlid import NoFreeSlot
            from sbstore.cluster.runtime import ClusterRuntime
            cluster = ClusterRuntime(config)
            stack.push_async_callback(cluster.stop)
            device_hook = cluster.device_hook(qos.device_hook)
            try:
                await cluster.reserve_controller_ids()
            except NoFreeSlot as exc:  # nothing is served yet
                raise DaemonError(f"[cluster] {exc}") from None
        service = ControlService(state, pools, target, server, device_wrapper=device_hook)
        stack.push_async_callback(service.close)
        service.add_policy_observer(qos.on_policy_change)
        await service.restore()
        cluster_manager = cluster.prepare(service) if cluster is not None else None
        qos.sync(*service.policies())
        from sbstore.control.schedules import ScheduleRunner
        schedules = ScheduleRunner(service)  # snapshot schedules, on the wall clock
        service.on_schedules_changed = schedules.changed
        schedules.start()
        stack.push_async_callback(schedules.stop)

        ram_device = None
        if demo is not None:
            if demo.ram:
                from target.blockdev import RamDevice
                ram_device = RamDevice(demo.size_bytes, block_size=4096)
                subsystem = Subsystem(DEMO_NQN, serial="SBSDEMO0001",
                                      model="sbstore demo volume", allow_any_host=True)
                subsystem.add_namespace(ram_device)
                target.add_subsystem(subsystem)
            else:
                try:
                    await _ensure_demo(service)
                except ControlError as exc:
                    raise DaemonError(f"cannot set up the demo volume: {exc}") from None

        token = None
        if config.api.listen is not None:
            assert config.api.token_file is not None  # the config's loader insists
            token = _read_token(config.api.token_file)
        configured = [ListenerRecord(0, "config", lc.port, lc.address, lc.interface, lc.tls)
                      for lc in config.listeners]
        try:
            problems = await service.open_listeners(configured)
        except (OSError, ValueError) as exc:
            where = ", ".join(lc.where for lc in config.listeners)
            raise DaemonError(f"cannot listen on {where}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        for problem in problems:
            log.error("listener not restored: %s", problem)

        api = ApiServer(service, token=token, cluster=cluster_manager)
        stack.push_async_callback(api.close)
        try:
            await api.start(socket_path=str(config.api.socket) if config.api.socket else None,
                            tcp=config.api.listen)
        except OSError as exc:
            raise DaemonError(f"cannot start the API: {exc.strerror or exc}") from None

        if cluster is not None:
            try:
                await cluster.start()
            except OSError as exc:
                host, port = config.cluster.peer_address  # type: ignore[union-attr]
                raise DaemonError(f"[cluster] cannot listen on peer_address "
                                  f"{_where(host, port)}: {exc.strerror or exc}") from None

        metrics = None
        if config.metrics.enabled:
            metrics = await _start_metrics(config.metrics, service, pools, target, server,
                                            qos, cluster_manager)
            stack.push_async_callback(metrics.aclose)

        watchdog = asyncio.ensure_future(sdnotify.watchdog_loop())

        async def stop_watchdog() -> None:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
        stack.push_async_callback(stop_watchdog)

        live = service.list_listeners()
        bound = [(b["address"], b["port"]) for x in live for b in x["bound"]]
        sdnotify.ready(f"serving {len(service.list_exports())} export(s) on "
                       f"{len(bound)} address(es)")
        if demo is not None:
            first = next((x for x in live if x["source"] == "config"), None)
            port = first["bound"][0]["port"] if first and first["bound"] else demo.port
            what = "RAM" if demo.ram else f"pool {pools[DEMO_POOL].path}"
            announce(f"sbstore: serving {DEMO_NQN} ({demo.size_bytes >> 20} MiB, {what}) "
                     f"on {demo.host}:{port}")
            announce("A host attaches it with:")
            for line in connect_lines(DEMO_NQN, demo.host, port):
                announce(f"  {line}")
        else:
            for address, port in bound:
                announce(f"sbstore: NVMe/TCP on {_where(address, port)}")
        for name, pool in pools.items():
            announce(f"Pool {name}: data I/O through {pool.engine.name} ({pool.engine.reason})")
        if api.socket_path:
            announce(f"Manage it with: sbstore --socket {api.socket_path} volume list")
        if api.tcp_address:
            announce(f"API on http://{_where(*api.tcp_address)} (bearer token from "
                     f"{config.api.token_file})")
        if metrics is not None:
            announce(f"Metrics: {metrics.url}")
        if config.target.busy_poll_us:
            announce(f"Busy-polling: the loop polls for {config.target.busy_poll_us} us after "
                     f"each receive (a core spins while hosts send)")

        # What start-up built (pools' maps, exports, the control state) lives as long as the
        # daemon: move it out of the collector's reach, so that a full collection, which runs
        # on the loop, does not walk it (15-40 ms with 1,000 volumes, a stall for every I/O).
        gc.collect()
        gc.freeze()
        if ready is not None:
            ready(Running(config, service, api, metrics, target, server, pools, loop, stop))
        try:
            await stop.wait()
        finally:
            sdnotify.stopping("stopping")
            announce("sbstore: stopping")
    log.info("stopped")


async def serve_demo(config: DemoConfig, *, announce: Callable[[str], None] = print,
                     stop: asyncio.Event | None = None) -> None:
    """Serve the demo volume to any host until ``stop`` is set (or SIGINT/SIGTERM)."""
    if config.ram and config.state_dir == default_state_dir():
        # A RAM demo keeps nothing: do not touch the user's state directory.
        with tempfile.TemporaryDirectory(prefix="sbstore-ram-") as tmp:
            ram = dataclasses.replace(config, state_dir=Path(tmp))
            await run_daemon(demo_config(ram), demo=ram, announce=announce, stop=stop)
        return
    await run_daemon(demo_config(config), demo=config, announce=announce, stop=stop)
