"""The daemon's settings: frozen dataclasses, loaded from TOML and validated once.

Rules of this module:
- Every setting the daemon reads at start lives in :class:`Config`; nothing else parses the
  file. Loading checks everything it can without touching the system (types, ranges, unknown
  keys, duplicates) and raises :class:`ConfigError` naming the key (``pools[1].path``) and what
  would be right. Whether a path or an interface exists is the daemon's business at start.
- Relative paths are taken relative to the config file's directory, so a config and its pool
  files can travel together.
- Sizes are integers (bytes) or strings with a binary suffix: ``"4G"``, ``"512K"``.
- Stdlib only: this is a leaf every layer may import (the QoS policy type lives here too, so
  ``sbstore.qos`` can consume it without importing the control module).

The keys (see systemd/sbstore.toml for a commented example)::

    state_dir = "/var/lib/sbstore"      # state.db (exports, hosts, tenants, listeners)
    [log]      level = "info"
    [api]      socket = "/run/sbstore/api.sock"     # "" disables the unix socket
               listen = "127.0.0.1:8420"            # optional TCP, needs token_file
               token_file = "/etc/sbstore/api.token"
    [metrics]  listen = "127.0.0.1:9420"  allow_remote = false  enabled = true
               per_volume = "counters"              # full | counters | none
    [target]   busy_poll_us = 0                     # > 0: poll, not sleep, this long after I/O
               incapsule_data_size = 131072  # bytes of write data a host may send with the
                                             # command (IOCCSZ); larger writes go after R2T
               discovery_auth = false   # true: hosts holding a DH-HMAC-CHAP secret must use it
                                        # on the discovery controller too
               tls_keyring = "/etc/sbstore/tls-psk"  # PSKs per host NQN, mode 0600 (NVMe/TCP TLS)
    [limits]   icreq_timeout_s = 10  connect_timeout_s = 20     # close silent connections
               max_connections_per_listener = 4096  max_connections_per_source = 1024
    [[pools]]  name = "local"  path = "local.pool"  create_size = "100G"  cluster_size = "256K"
               io = "auto"   # auto | io_uring | threads | buffered (the data I/O engine)
    [[listeners]] address = "192.0.2.10" | interface = "eth1";  port = 4420
               tls = "off"                          # off | allowed | required (needs tls_keyring)
    [cluster]  etcd = ["http://127.0.0.1:2379"]  node = "a"  peer_address = "127.0.0.1:4430"
               lease_ttl = 5  prefix = "/sbstore"   # absent: single-node mode (docs/cluster.md)
"""
from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, overload

DEFAULT_API_SOCKET = Path("/run/sbstore/api.sock")
DEFAULT_METRICS_PORT = 9420
DEFAULT_NVME_PORT = 4420
LOG_LEVELS = ("debug", "info", "warning", "error")
IO_MODES = ("auto", "io_uring", "threads", "buffered")  # sbstore.store.engines' modes
TLS_MODES = ("off", "allowed", "required")  # target.subsystem.TLS_MODES
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def default_state_dir() -> Path:
    """Where ``serve --demo`` keeps its state without ``--state-dir``:
    ``$XDG_STATE_HOME/sbstore``, else ``~/.local/state/sbstore``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return Path(base) / "sbstore"


class ConfigError(ValueError):
    """The configuration is wrong; the message names the key and the file."""


# --- QoS policy (stored by the control module, enforced by sbstore.qos) ---------------------

@dataclass(frozen=True)
class QosPolicy:
    """Limits and share of a tenant or of one volume. A limit of 0 means none.

    ``iops``/``bps`` cap reads and writes together, the ``read_``/``write_`` ones each
    direction; ``burst_s`` is the allowance a bucket holds, in seconds of its rate; ``weight``
    (1..1000) is the tenant's share when tenants compete for the device.
    """

    iops: int = 0
    read_iops: int = 0
    write_iops: int = 0
    bps: int = 0
    read_bps: int = 0
    write_bps: int = 0
    burst_s: float = 1.0
    weight: int = 100

    LIMIT_FIELDS = ("iops", "read_iops", "write_iops", "bps", "read_bps", "write_bps")
    MAX_LIMIT = 1 << 62
    MAX_BURST_S = 3600.0

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            raise ValueError(problem)

    def problem(self) -> str | None:
        """Why this policy is invalid, or None."""
        for name in self.LIMIT_FIELDS:
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= self.MAX_LIMIT:
                return f"{name} must be an integer from 0 (no limit) to {self.MAX_LIMIT}, " \
                       f"not {value!r}"
        if type(self.weight) is not int or not 1 <= self.weight <= 1000:
            return f"weight must be an integer from 1 to 1000, not {self.weight!r}"
        if (type(self.burst_s) not in (int, float) or self.burst_s != self.burst_s
                or not 0 <= self.burst_s <= self.MAX_BURST_S):
            return f"burst_s must be a number of seconds from 0 to {self.MAX_BURST_S:g}, " \
                   f"not {self.burst_s!r}"
        return None

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.field_names()}

    @property
    def unlimited(self) -> bool:
        return all(getattr(self, name) == 0 for name in self.LIMIT_FIELDS)


# --- the daemon's configuration -----------------------------------------------------------

@dataclass(frozen=True)
class LogConfig:
    level: str = "info"


@dataclass(frozen=True)
class ApiConfig:
    """The admin API: a unix socket (None: none) and optionally TCP with a bearer token."""

    socket: Path | None = DEFAULT_API_SOCKET
    listen: tuple[str, int] | None = None
    token_file: Path | None = None


# How much each exported volume shows in the metrics (tenant and pool series are always
# complete): "full" = counters and latency histograms, "counters" = no histograms (a sixth of
# the lines), "none" = no per-volume series.
METRICS_PER_VOLUME = ("full", "counters", "none")


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus endpoint. ``optional``: a busy port only warns (the demo).
    ``per_volume``: one of :data:`METRICS_PER_VOLUME`."""

    enabled: bool = True
    listen: tuple[str, int] = ("127.0.0.1", DEFAULT_METRICS_PORT)
    allow_remote: bool = False
    optional: bool = False
    # "counters" keeps a scrape of 1,000 volumes at 1 MB and a few ms of the loop's CPU;
    # "full" is 9 MB and ~30 ms (perf/control_bench.py).
    per_volume: str = "counters"

    def __post_init__(self) -> None:
        if self.per_volume not in METRICS_PER_VOLUME:
            raise ValueError(f"per_volume must be one of {', '.join(METRICS_PER_VOLUME)}, "
                             f"not {self.per_volume!r}")


@dataclass(frozen=True)
class QosConfig:
    """Tenant queues in front of each pool. At most ``max_outstanding`` I/Os are in the pool at
    once; beyond that they wait in their tenant's queue and leave it by weight. An I/O of
    ``cost_bytes`` costs as much as a second I/O when shares are counted."""

    max_outstanding: int = 32
    cost_bytes: int = 64 << 10
    cpu_turn_budget: int = 16  # commands run per event-loop turn while tenants compete
    max_inflight: int = 32  # commands executing in the target at once (beyond: tenant queues)
    # While a tenant at queue depth 1 is active, the data the others' executing commands move
    # (sbstore.qos.admission); 0: no such bound.
    latency_bytes: int = 128 << 10


@dataclass(frozen=True)
class TargetConfig:
    """The NVMe/TCP target's event loop. ``busy_poll_us`` > 0: after each receive the loop
    polls its sockets instead of sleeping for this many microseconds (lower latency at low
    queue depth, for a core spent spinning; see target.busypoll). 0 (the default): off."""

    busy_poll_us: int = 0
    # Write data a host may send in the command capsule (IOCCSZ less the SQE). A write up to
    # this size reaches the target in one PDU with its command instead of waiting for an R2T:
    # a round trip and a PDU less. Measured against 8 KiB (perf/ab_bench.py on a pool, 5
    # rounds): 64k writes at QD1 20% more IOPS; 128k sequential writes at QD16 9% more IOPS
    # for 17% less target CPU per write.
    # What it costs: unsolicited data held per outstanding command, at most the queue's
    # entries times this, as R2T'd data already is once received (target.tcp.queue).
    incapsule_data_size: int = 128 << 10
    # DH-HMAC-CHAP on the discovery controller: a host that holds a secret on some export must
    # authenticate (with any of its secrets) before it reads the discovery log. Off by
    # default, as Linux nvmet: `nvme discover` without a secret keeps working.
    discovery_auth: bool = False
    # The PSKs of NVMe/TCP TLS listeners (target.tls.keyring's file format); None: no TLS.
    tls_keyring: Path | None = None

    MAX_BUSY_POLL_US = 1_000_000
    MAX_INCAPSULE_DATA_SIZE = 1 << 20  # the target's largest transfer (MDTS) and no more


@dataclass(frozen=True)
class LimitsConfig:
    """What a client may hold before it has identified itself (issue 8): a connection that
    sends no ICReq within ``icreq_timeout_s`` of accept, or no Connect within
    ``connect_timeout_s`` of the ICResp, is closed; a connection beyond
    ``max_connections_per_listener`` open on its listener, or ``max_connections_per_source``
    open from its address (over all listeners), is closed at accept. A connected queue is never
    closed by these. The defaults and why they are what they are: target.connlimits
    (ConnectionLimits, which these become)."""

    icreq_timeout_s: float = 10.0
    connect_timeout_s: float = 20.0
    max_connections_per_listener: int = 4096
    max_connections_per_source: int = 1024

    MAX_TIMEOUT_S = 3600.0
    MAX_CONNECTIONS = 1 << 20


@dataclass(frozen=True)
class PoolConfig:
    """A pool to open at start. ``create_size``: format ``path`` (a file) with this size when
    it does not exist yet; otherwise a missing pool is an error."""

    name: str
    path: Path
    create_size: int | None = None
    cluster_size: int | None = None
    io: str = "auto"  # the data I/O engine: auto | io_uring | threads | buffered


@dataclass(frozen=True)
class ListenerConfig:
    """An NVMe/TCP listener the daemon always opens: by address, or every address of an
    interface (followed as they change)."""

    port: int
    address: str | None = None
    interface: str | None = None
    tls: str = "off"  # NVMe/TCP TLS 1.3 with a PSK: off | allowed | required

    def __post_init__(self) -> None:
        if (self.address is None) == (self.interface is None):
            raise ValueError("a listener has either an address or an interface")

    @property
    def where(self) -> str:
        if self.interface is not None:
            return f"interface {self.interface} port {self.port}"
        host = f"[{self.address}]" if self.address and ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ClusterConfig:
    """Cluster mode (docs/cluster.md): this node's name, the etcd endpoints the nodes share,
    the replication listener (``peer_address``: bound here and advertised to the other nodes),
    the lease's TTL (a node cut off from etcd stops acknowledging replicated writes within it,
    and a survivor takes over after it) and the key prefix of the cluster's state."""

    etcd: tuple[str, ...]
    node: str
    peer_address: tuple[str, int]
    lease_ttl: int = 5
    prefix: str = "/sbstore"

    MIN_LEASE_TTL = 2  # the lease clock keeps a 1 s margin: below 2 s nothing is left
    MAX_LEASE_TTL = 60


@dataclass(frozen=True)
class Config:
    state_dir: Path
    log: LogConfig = field(default_factory=LogConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    qos: QosConfig = field(default_factory=QosConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    pools: tuple[PoolConfig, ...] = ()
    listeners: tuple[ListenerConfig, ...] = ()
    cluster: ClusterConfig | None = None  # None: single-node mode
    source: str = "<built in>"  # the file it came from, for messages

    @property
    def state_db(self) -> Path:
        return self.state_dir / "state.db"


# --- parsing helpers ----------------------------------------------------------------------

def parse_size(text: str | int) -> int:
    """``10G`` -> 10737418240; an int is taken as bytes. Suffixes K, M, G, T, P (powers of
    1024), optionally followed by ``iB`` or ``B``. ValueError when it is not a size."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a size")  # noqa: TRY004 (callers catch ValueError)
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"{text} is not a size (negative)")
        return text
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a size")  # noqa: TRY004
    m = re.fullmatch(r"\s*(\d+)\s*([KMGTP]?)(?:I?B)?\s*", text.upper())
    if not m:
        raise ValueError(f"{text!r} is not a size (examples: 4096, 512K, 10G)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, or ``HOST`` when ``default_port`` is given. HOST is an IP
    address or ``localhost``. ValueError with a reason otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{text!r} is not HOST:PORT")
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"{text!r}: missing ']'")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':PORT' after ']'")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        host, port_text = text, ""  # a bare IPv6 address
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"{text!r}: no address")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    if not port_text:
        if default_port is None:
            raise ValueError(f"{text!r}: no port (HOST:PORT)")
        return host, default_port
    if not port_text.isdigit():
        raise ValueError(f"{text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is out of range 0..65535")
    return host, port


def check_name(kind: str, name: object) -> str:
    """Pool and tenant names: 1..64 of letters, digits, ``_ . -``, starting alphanumeric."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"{kind} name {name!r} must be 1 to 64 letters, digits, '_', '.' or "
                         f"'-', starting with a letter or digit")
    return name


class _Section:
    """Reads one table of the TOML document, remembering which keys were used."""

    def __init__(self, data: object, where: str, source: str) -> None:
        self.where = where
        self.source = source
        if not isinstance(data, Mapping):
            raise self.error(f"must be a table, not {_kind(data)}")
        self.data: Mapping[str, Any] = data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def error(self, message: str, key: str | None = None) -> ConfigError:
        what = self.key(key) if key else (self.where or "the file")
        return ConfigError(f"{self.source}: {what}: {message}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.error(f"must be {_kind_name(kind)}, not a boolean", name)
        if not isinstance(value, kind):
            raise self.error(f"must be {_kind_name(kind)}, not {_kind(value)}", name)
        return value

    @overload
    def size(self, name: str, default: int) -> int: ...

    @overload
    def size(self, name: str, default: None = None) -> int | None: ...

    def size(self, name: str, default: int | None = None) -> int | None:
        """A size: bytes as an integer, or a string such as "64K" (:func:`parse_size`)."""
        raw = self.get(name, (int, str), default)
        if raw is None:
            return None
        try:
            return parse_size(raw)
        except ValueError as exc:
            raise self.error(str(exc), name) from None

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            known = ", ".join(sorted(self.used))
            raise self.error(f"unknown key {unknown[0]!r} (known here: {known})")


def _kind(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_kind(k()) if k is not Path else "a path" for k in kinds)


def _path(value: str, base: Path) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else base / p


def parse_config(data: Mapping[str, Any], *, source: str = "<config>",
                 base_dir: Path | None = None) -> Config:
    """Validate a parsed TOML document into a :class:`Config` (ConfigError otherwise)."""
    base = base_dir or Path.cwd()
    top = _Section(data, "", source)
    state_dir_text = top.get("state_dir", str)
    if state_dir_text is None:
        raise top.error("missing; the directory for the state database, e.g. "
                        "state_dir = \"/var/lib/sbstore\"", "state_dir")
    if not state_dir_text.strip():
        raise top.error("must not be empty", "state_dir")
    state_dir = _path(state_dir_text, base)

    log_s = _Section(top.get("log", dict, {}), "log", source)
    level = log_s.get("level", str, "info")
    if level not in LOG_LEVELS:
        raise log_s.error(f"{level!r} is not one of {', '.join(LOG_LEVELS)}", "level")
    log_s.done()

    api_s = _Section(top.get("api", dict, {}), "api", source)
    socket_text = api_s.get("socket", str, str(DEFAULT_API_SOCKET))
    socket_path = _path(socket_text, base) if socket_text else None
    if socket_path is not None and len(os.fsencode(socket_path)) > 107:
        raise api_s.error("is longer than a unix socket path may be (107 bytes)", "socket")
    api_listen = None
    listen_text = api_s.get("listen", str)
    if listen_text:
        try:
            api_listen = parse_host_port(listen_text)
        except ValueError as exc:
            raise api_s.error(str(exc), "listen") from None
    token_text = api_s.get("token_file", str)
    token_file = _path(token_text, base) if token_text else None
    if api_listen is not None and token_file is None:
        raise api_s.error("the API on TCP needs a bearer token: set token_file to a file "
                          "holding it", "token_file")
    if api_listen is None and socket_path is None:
        raise api_s.error("neither a socket nor a TCP listen address: the API would be "
                          "unreachable")
    api_s.done()
    api = ApiConfig(socket=socket_path, listen=api_listen, token_file=token_file)

    m_s = _Section(top.get("metrics", dict, {}), "metrics", source)
    enabled = m_s.get("enabled", bool, True)
    allow_remote = m_s.get("allow_remote", bool, False)
    try:
        m_listen = parse_host_port(m_s.get("listen", str, f"127.0.0.1:{DEFAULT_METRICS_PORT}"),
                                   DEFAULT_METRICS_PORT)
    except ValueError as exc:
        raise m_s.error(str(exc), "listen") from None
    if enabled and not allow_remote and m_listen[0] != "localhost" \
            and not ipaddress.ip_address(m_listen[0]).is_loopback:
        raise m_s.error(f"{m_listen[0]} is not a loopback address; the series name tenants "
                        f"and volumes: set allow_remote = true to serve them to the network",
                        "listen")
    per_volume = m_s.get("per_volume", str, MetricsConfig.per_volume)
    if per_volume not in METRICS_PER_VOLUME:
        raise m_s.error(f"{per_volume!r} is not one of {', '.join(METRICS_PER_VOLUME)}",
                        "per_volume")
    m_s.done()
    metrics = MetricsConfig(enabled=enabled, listen=m_listen, allow_remote=allow_remote,
                            per_volume=per_volume)

    q_s = _Section(top.get("qos", dict, {}), "qos", source)
    max_outstanding = q_s.get("max_outstanding", int, QosConfig.max_outstanding)
    if not 1 <= max_outstanding <= 65536:
        raise q_s.error(f"{max_outstanding} is out of range 1..65536", "max_outstanding")
    cost_bytes = q_s.size("cost_bytes", QosConfig.cost_bytes)
    if cost_bytes < 512:
        raise q_s.error("must be at least 512 bytes", "cost_bytes")
    turn_budget = q_s.get("cpu_turn_budget", int, QosConfig.cpu_turn_budget)
    if not 1 <= turn_budget <= 4096:
        raise q_s.error(f"{turn_budget} is out of range 1..4096", "cpu_turn_budget")
    max_inflight = q_s.get("max_inflight", int, QosConfig.max_inflight)
    if not 1 <= max_inflight <= 65536:
        raise q_s.error(f"{max_inflight} is out of range 1..65536", "max_inflight")
    latency_bytes = q_s.size("latency_bytes", QosConfig.latency_bytes)
    if latency_bytes and latency_bytes < 4096:
        raise q_s.error("must be 0 (off) or at least 4 KiB", "latency_bytes")
    q_s.done()
    qos = QosConfig(max_outstanding=max_outstanding, cost_bytes=cost_bytes,
                    cpu_turn_budget=turn_budget, max_inflight=max_inflight,
                    latency_bytes=latency_bytes)

    t_s = _Section(top.get("target", dict, {}), "target", source)
    busy_poll_us = t_s.get("busy_poll_us", int, 0)
    if not 0 <= busy_poll_us <= TargetConfig.MAX_BUSY_POLL_US:
        raise t_s.error(f"{busy_poll_us} is out of range 0..{TargetConfig.MAX_BUSY_POLL_US} "
                        f"(microseconds; 0 turns busy-polling off)", "busy_poll_us")
    incapsule = t_s.get("incapsule_data_size", int, TargetConfig.incapsule_data_size)
    if not 0 <= incapsule <= TargetConfig.MAX_INCAPSULE_DATA_SIZE or incapsule % 16:
        raise t_s.error(f"{incapsule} is not a multiple of 16 in 0.."
                        f"{TargetConfig.MAX_INCAPSULE_DATA_SIZE} (bytes)",
                        "incapsule_data_size")
    discovery_auth = t_s.get("discovery_auth", bool, False)
    keyring_text = t_s.get("tls_keyring", str)
    t_s.done()
    target = TargetConfig(busy_poll_us=busy_poll_us, incapsule_data_size=incapsule,
                          discovery_auth=discovery_auth,
                          tls_keyring=_path(keyring_text, base) if keyring_text else None)

    l_s = _Section(top.get("limits", dict, {}), "limits", source)
    timeouts: list[float] = []
    for key in ("icreq_timeout_s", "connect_timeout_s"):
        value = l_s.get(key, (int, float), getattr(LimitsConfig, key))
        if math.isnan(value) or not 0 < value <= LimitsConfig.MAX_TIMEOUT_S:
            raise l_s.error(f"{value} is out of range: seconds above 0, at most "
                            f"{LimitsConfig.MAX_TIMEOUT_S:g}", key)
        timeouts.append(float(value))
    caps: list[int] = []
    for key in ("max_connections_per_listener", "max_connections_per_source"):
        value = l_s.get(key, int, getattr(LimitsConfig, key))
        if not 1 <= value <= LimitsConfig.MAX_CONNECTIONS:
            raise l_s.error(f"{value} is out of range 1..{LimitsConfig.MAX_CONNECTIONS}", key)
        caps.append(value)
    l_s.done()
    limits = LimitsConfig(icreq_timeout_s=timeouts[0], connect_timeout_s=timeouts[1],
                          max_connections_per_listener=caps[0],
                          max_connections_per_source=caps[1])

    pools: list[PoolConfig] = []
    raw_pools = top.get("pools", list, [])
    for i, raw in enumerate(raw_pools):
        s = _Section(raw, f"pools[{i}]", source)
        name = s.get("name", str)
        if name is None:
            raise s.error("missing (the name the API and metrics use)", "name")
        try:
            check_name("pool", name)
        except ValueError as exc:
            raise s.error(str(exc), "name") from None
        path_text = s.get("path", str)
        if not path_text:
            raise s.error("missing (a pool file or block device)", "path")
        create_size = cluster_size = None
        for key in ("create_size", "cluster_size"):
            size = s.size(key)
            if size is None:
                continue
            if size <= 0:
                raise s.error("must be positive", key)
            if key == "create_size":
                create_size = size
            else:
                cluster_size = size
        if cluster_size is not None and create_size is None:
            raise s.error("only applies when the pool is created: set create_size too",
                          "cluster_size")
        io = s.get("io", str, "auto")
        if io not in IO_MODES:
            raise s.error(f"{io!r} is not one of {', '.join(IO_MODES)}", "io")
        s.done()
        pools.append(PoolConfig(name, _path(path_text, base), create_size, cluster_size, io))
    for i, p in enumerate(pools):
        for earlier in pools[:i]:
            if earlier.name == p.name:
                raise top.error(f"two pools are named {p.name!r}", f"pools[{i}].name")
            if earlier.path == p.path:
                raise top.error(f"{p.path} is already pool {earlier.name!r}", f"pools[{i}].path")

    listeners: list[ListenerConfig] = []
    for i, raw in enumerate(top.get("listeners", list, [])):
        s = _Section(raw, f"listeners[{i}]", source)
        address = s.get("address", str)
        interface = s.get("interface", str)
        port = s.get("port", int, DEFAULT_NVME_PORT)
        tls = s.get("tls", str, "off")
        if tls not in TLS_MODES:
            raise s.error(f"{tls!r} is not one of {', '.join(TLS_MODES)}", "tls")
        if tls != "off" and target.tls_keyring is None:
            raise s.error("a TLS listener needs the hosts' PSKs: set [target] tls_keyring",
                          "tls")
        if (address is None) == (interface is None):
            raise s.error("give either address or interface (not both)")
        if address is not None:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise s.error(f"{address!r} is not an IP address", "address") from None
        if interface is not None and not re.fullmatch(r"[^\s/:]{1,15}", interface):
            raise s.error(f"{interface!r} is not an interface name", "interface")
        if not 0 <= port <= 65535:
            raise s.error(f"{port} is out of range 0..65535", "port")
        s.done()
        lc = ListenerConfig(port=port, address=address, interface=interface, tls=tls)
        if any((x.port, x.address, x.interface) == (port, address, interface)
               for x in listeners):
            raise s.error(f"{lc.where} is listed twice")
        listeners.append(lc)
    cluster = None
    raw_cluster = top.get("cluster", dict)
    if raw_cluster is not None:
        cluster = _parse_cluster(_Section(raw_cluster, "cluster", source))
    top.done()
    return Config(state_dir=state_dir, log=LogConfig(level), api=api, metrics=metrics,
                  qos=qos, target=target, limits=limits, pools=tuple(pools),
                  listeners=tuple(listeners), cluster=cluster, source=source)


def _parse_cluster(s: _Section) -> ClusterConfig:
    """``[cluster]``: every key is checked here, so a node never joins with half a setting."""
    etcd = s.get("etcd", list)
    if not etcd:
        raise s.error("missing or empty: the etcd client URLs, e.g. "
                      "etcd = [\"http://127.0.0.1:2379\"]", "etcd")
    for url in etcd:
        if not isinstance(url, str) or not re.fullmatch(r"https?://[^\s/]+(:\d+)?/?", url):
            raise s.error(f"{url!r} is not an etcd client URL (http://HOST:PORT)", "etcd")
    if len(set(etcd)) != len(etcd):
        raise s.error("an endpoint is listed twice", "etcd")
    node = s.get("node", str)
    if node is None:
        raise s.error("missing: this node's name, unique in the cluster", "node")
    try:
        check_name("node", node)
    except ValueError as exc:
        raise s.error(str(exc), "node") from None
    peer_text = s.get("peer_address", str)
    if peer_text is None:
        raise s.error("missing: the replication listener's HOST:PORT, which the other nodes "
                      "connect to (e.g. \"192.0.2.10:4430\")", "peer_address")
    try:
        peer = parse_host_port(peer_text)
    except ValueError as exc:
        raise s.error(str(exc), "peer_address") from None
    if peer[1] == 0:
        raise s.error("needs a fixed port: the other nodes find it in etcd", "peer_address")
    if peer[0] in ("0.0.0.0", "::"):
        raise s.error("is advertised to the other nodes: give an address they can reach, "
                      "not a wildcard", "peer_address")
    ttl = s.get("lease_ttl", int, ClusterConfig.lease_ttl)
    if not ClusterConfig.MIN_LEASE_TTL <= ttl <= ClusterConfig.MAX_LEASE_TTL:
        raise s.error(f"{ttl} is out of range {ClusterConfig.MIN_LEASE_TTL}.."
                      f"{ClusterConfig.MAX_LEASE_TTL} (seconds)", "lease_ttl")
    prefix = s.get("prefix", str, ClusterConfig.prefix)
    if not re.fullmatch(r"(/[A-Za-z0-9_.-]+)+", prefix):
        raise s.error(f"{prefix!r} must look like /name or /name/sub (no trailing '/')",
                      "prefix")
    s.done()
    return ClusterConfig(etcd=tuple(u.rstrip("/") for u in etcd), node=node,
                         peer_address=peer, lease_ttl=ttl, prefix=prefix)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file (ConfigError with the key at fault)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(data, source=str(p), base_dir=p.resolve().parent)
