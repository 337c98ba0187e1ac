"""Config loading: the example config, defaults, relative paths, and one clear error per
mistake naming the key."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sbstore.config import (
    DEFAULT_API_SOCKET,
    IO_MODES,
    ConfigError,
    LimitsConfig,
    ListenerConfig,
    QosPolicy,
    load_config,
    parse_config,
    parse_host_port,
    parse_size,
)

REPO = Path(__file__).resolve().parents[2]


def test_the_example_config_loads() -> None:
    c = load_config(REPO / "systemd" / "sbstore.toml")
    assert c.state_dir == Path("/var/lib/sbstore") and c.log.level == "info"
    assert c.api.socket == DEFAULT_API_SOCKET and c.api.listen is None
    assert c.metrics.listen == ("127.0.0.1", 9420) and not c.metrics.allow_remote
    assert c.metrics.per_volume == "counters"
    assert [(p.name, str(p.path)) for p in c.pools] == [
        ("nvme0", "/dev/nvme0n1"), ("local", "/var/lib/sbstore/local.pool")]
    assert c.pools[1].create_size == 100 << 30
    assert c.listeners == (ListenerConfig(4420, "192.0.2.10"),
                           ListenerConfig(4420, interface="eth1"))
    assert c.target.busy_poll_us == 0  # busy-polling is off unless asked for
    assert c.target.incapsule_data_size == 128 << 10
    assert c.limits == LimitsConfig()  # the example shows the defaults


def test_minimal_config_and_relative_paths(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('state_dir = "state"\n[api]\nlisten = "[::1]:8420"\ntoken_file = "tok"\n'
                 '[[pools]]\nname = "p"\npath = "p.pool"\ncreate_size = "1G"\n'
                 'cluster_size = 65536\n')
    c = load_config(f)
    assert c.state_dir == tmp_path / "state" and c.state_db == tmp_path / "state" / "state.db"
    assert c.api.listen == ("::1", 8420) and c.api.token_file == tmp_path / "tok"
    assert c.pools[0].path == tmp_path / "p.pool"
    assert (c.pools[0].create_size, c.pools[0].cluster_size) == (1 << 30, 65536)
    assert c.listeners == () and c.metrics.enabled and c.metrics.per_volume == "counters"
    assert c.target.busy_poll_us == 0
    f.write_text('state_dir = "s"\n[metrics]\nper_volume = "full"\n')
    assert load_config(f).metrics.per_volume == "full"


def test_pool_engine_and_admission_keys() -> None:
    c = parse_config({**BASE, "pools": [{"name": "p", "path": "/p", "io": "threads"}],
                      "qos": {"cpu_turn_budget": 8, "max_inflight": 64}}, source="t.toml")
    assert c.pools[0].io == "threads"
    assert (c.qos.cpu_turn_budget, c.qos.max_inflight) == (8, 64)
    assert c.qos.latency_bytes == 128 << 10  # the default
    assert parse_config({**BASE, "qos": {"latency_bytes": "1M"}}).qos.latency_bytes == 1 << 20
    assert parse_config({**BASE, "qos": {"latency_bytes": 0}}).qos.latency_bytes == 0
    assert parse_config({**BASE, "pools": [{"name": "p", "path": "/p"}]}).pools[0].io == "auto"
    # The config is a stdlib leaf and keeps its own list: it must name the store's modes.
    from sbstore.store import engines
    assert IO_MODES == engines.IO_MODES


def test_limits_keys() -> None:
    c = parse_config({**BASE, "limits": {"icreq_timeout_s": 2, "connect_timeout_s": 0.5,
                                         "max_connections_per_listener": 100,
                                         "max_connections_per_source": 10}}, source="t.toml")
    assert c.limits == LimitsConfig(2.0, 0.5, 100, 10)
    # The config is a stdlib leaf with its own defaults: they must be the target's.
    from target.connlimits import ConnectionLimits
    d, t = parse_config(BASE).limits, ConnectionLimits()
    assert (d.icreq_timeout_s, d.connect_timeout_s, d.max_connections_per_listener,
            d.max_connections_per_source) == (t.icreq_timeout_s, t.connect_timeout_s,
                                              t.max_per_listener, t.max_per_source)
    assert (LimitsConfig.MAX_TIMEOUT_S, LimitsConfig.MAX_CONNECTIONS) == (
        ConnectionLimits.MAX_TIMEOUT_S, ConnectionLimits.MAX_CONNECTIONS)


def test_busy_poll_key() -> None:
    c = parse_config({**BASE, "target": {"busy_poll_us": 250}}, source="t.toml")
    assert c.target.busy_poll_us == 250


def test_incapsule_data_size_key() -> None:
    assert parse_config(BASE).target.incapsule_data_size == 128 << 10
    c = parse_config({**BASE, "target": {"incapsule_data_size": 8192}}, source="t.toml")
    assert c.target.incapsule_data_size == 8192


def test_discovery_auth_key() -> None:
    assert parse_config(BASE).target.discovery_auth is False
    c = parse_config({**BASE, "target": {"discovery_auth": True}}, source="t.toml")
    assert c.target.discovery_auth is True
    with pytest.raises(ConfigError, match="discovery_auth"):
        parse_config({**BASE, "target": {"discovery_auth": "yes"}}, source="t.toml")


BASE: dict[str, Any] = {"state_dir": "/s"}


@pytest.mark.parametrize("doc,key,words", [
    ({}, "state_dir", "missing"),
    ({"state_dir": 5}, "state_dir", "must be a string"),
    ({**BASE, "stat_dir": "x"}, "the file", "unknown key 'stat_dir'"),
    ({**BASE, "log": {"level": "loud"}}, "log.level", "not one of"),
    ({**BASE, "log": "info"}, "log", "must be a table"),
    ({**BASE, "api": {"listen": "127.0.0.1:8420"}}, "api.token_file", "bearer token"),
    ({**BASE, "api": {"listen": "nohost:1", "token_file": "t"}}, "api.listen",
     "not an IP address"),
    ({**BASE, "api": {"socket": ""}}, "api", "unreachable"),
    ({**BASE, "api": {"socket": "/" + "x" * 200}}, "api.socket", "longer"),
    ({**BASE, "metrics": {"listen": "0.0.0.0:9420"}}, "metrics.listen", "allow_remote"),
    ({**BASE, "metrics": {"listen": "127.0.0.1:99999"}}, "metrics.listen", "out of range"),
    ({**BASE, "metrics": {"enabled": "yes"}}, "metrics.enabled", "must be a boolean"),
    ({**BASE, "metrics": {"per_volume": "some"}}, "metrics.per_volume", "not one of"),
    ({**BASE, "metrics": {"per_volume": 1}}, "metrics.per_volume", "must be a string"),
    ({**BASE, "pools": {"name": "p"}}, "pools", "must be an array"),
    ({**BASE, "pools": [{"path": "/p"}]}, "pools[0].name", "missing"),
    ({**BASE, "pools": [{"name": "a b", "path": "/p"}]}, "pools[0].name", "letters"),
    ({**BASE, "pools": [{"name": "p"}]}, "pools[0].path", "missing"),
    ({**BASE, "pools": [{"name": "p", "path": "/p", "create_size": "big"}]},
     "pools[0].create_size", "not a size"),
    ({**BASE, "pools": [{"name": "p", "path": "/p", "create_size": 0}]},
     "pools[0].create_size", "positive"),
    ({**BASE, "pools": [{"name": "p", "path": "/p", "cluster_size": "64K"}]},
     "pools[0].cluster_size", "create_size"),
    ({**BASE, "pools": [{"name": "p", "path": "/p", "size": 1}]}, "pools[0]",
     "unknown key 'size'"),
    ({**BASE, "pools": [{"name": "p", "path": "/a"}, {"name": "p", "path": "/b"}]},
     "pools[1].name", "two pools"),
    ({**BASE, "pools": [{"name": "p", "path": "/a"}, {"name": "q", "path": "/a"}]},
     "pools[1].path", "already pool 'p'"),
    ({**BASE, "pools": [{"name": "p", "path": "/p", "io": "aio"}]}, "pools[0].io",
     "not one of"),
    ({**BASE, "qos": {"cpu_turn_budget": 0}}, "qos.cpu_turn_budget", "out of range"),
    ({**BASE, "qos": {"max_inflight": 0}}, "qos.max_inflight", "out of range"),
    ({**BASE, "qos": {"latency_bytes": 512}}, "qos.latency_bytes", "at least 4 KiB"),
    ({**BASE, "qos": {"latency_bytes": "lots"}}, "qos.latency_bytes", ""),
    ({**BASE, "target": {"busy_poll_us": -1}}, "target.busy_poll_us", "out of range"),
    ({**BASE, "target": {"busy_poll_us": 10**7}}, "target.busy_poll_us", "out of range"),
    ({**BASE, "target": {"busy_poll_us": 0.5}}, "target.busy_poll_us", "must be an integer"),
    ({**BASE, "target": {"busy_poll": 5}}, "target", "unknown key 'busy_poll'"),
    ({**BASE, "target": {"incapsule_data_size": 1000}}, "target.incapsule_data_size",
     "not a multiple of 16"),
    ({**BASE, "target": {"incapsule_data_size": 2 << 20}}, "target.incapsule_data_size",
     "not a multiple of 16 in 0..1048576"),
    ({**BASE, "limits": {"icreq_timeout_s": 0}}, "limits.icreq_timeout_s", "out of range"),
    ({**BASE, "limits": {"connect_timeout_s": 86400}}, "limits.connect_timeout_s",
     "out of range"),
    ({**BASE, "limits": {"connect_timeout_s": "10s"}}, "limits.connect_timeout_s",
     "must be an integer or a number"),
    ({**BASE, "limits": {"max_connections_per_listener": 0}},
     "limits.max_connections_per_listener", "out of range"),
    ({**BASE, "limits": {"max_connections_per_source": 2.5}},
     "limits.max_connections_per_source", "must be an integer"),
    ({**BASE, "limits": {"max_connections": 5}}, "limits", "unknown key 'max_connections'"),
    ({**BASE, "listeners": [{"port": 4420}]}, "listeners[0]", "either address or interface"),
    ({**BASE, "listeners": [{"address": "1.2.3.4", "interface": "eth0"}]}, "listeners[0]",
     "not both"),
    ({**BASE, "listeners": [{"address": "eth0"}]}, "listeners[0].address",
     "not an IP address"),
    ({**BASE, "listeners": [{"interface": "eth0", "port": 70000}]}, "listeners[0].port",
     "out of range"),
    ({**BASE, "listeners": [{"interface": "eth0", "port": "4420"}]}, "listeners[0].port",
     "must be an integer"),
    ({**BASE, "listeners": [{"interface": "eth0", "port": True}]}, "listeners[0].port",
     "not a boolean"),
    ({**BASE, "listeners": [{"interface": "eth0"}, {"interface": "eth0"}]}, "listeners[1]",
     "listed twice"),
])
def test_mistakes_name_the_key(doc: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(doc, source="t.toml")
    message = str(refused.value)
    assert message.startswith(f"t.toml: {key}: ") and words in message, message


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("state_dir = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_helpers() -> None:
    assert parse_size("4G") == 4 << 30 and parse_size("512KiB") == 512 << 10
    assert parse_size(4096) == 4096
    for bad in ("", "G", "1.5G", "-1", True, None):
        with pytest.raises(ValueError):
            parse_size(bad)  # type: ignore[arg-type]
    assert parse_host_port("[fe80::1]:1") == ("fe80::1", 1)
    assert parse_host_port("::1", 4420) == ("::1", 4420)
    assert parse_host_port("localhost:1") == ("localhost", 1)
    for bad in ("1.2.3.4", "[::1", "1.2.3.4:x", ":80", "host:80"):
        with pytest.raises(ValueError):
            parse_host_port(bad)


def test_qos_policy() -> None:
    assert QosPolicy().unlimited and QosPolicy().weight == 100
    assert QosPolicy(iops=1).as_dict()["iops"] == 1
    for bad in ({"weight": 0}, {"weight": 1001}, {"iops": -1}, {"iops": 1.5},
                {"burst_s": -0.1}, {"burst_s": float("nan")}, {"bps": True}):
        with pytest.raises(ValueError):
            QosPolicy(**bad)
