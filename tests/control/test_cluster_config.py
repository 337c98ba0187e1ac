"""``[cluster]`` in the config: the defaults, and one clear error per mistake naming the key."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sbstore.config import ClusterConfig, ConfigError, load_config, parse_config

BASE: dict[str, Any] = {"state_dir": "/s"}
GOOD: dict[str, Any] = {"etcd": ["http://127.0.0.1:2379"], "node": "a",
                        "peer_address": "127.0.0.1:4430"}


def test_single_node_mode_has_no_cluster() -> None:
    assert parse_config(BASE, source="t.toml").cluster is None


def test_cluster_section_and_defaults(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('state_dir = "s"\n[cluster]\netcd = ["http://10.0.0.1:2379/", '
                 '"http://10.0.0.2:2379"]\nnode = "node-a"\npeer_address = "10.0.0.1:4430"\n')
    c = load_config(f).cluster
    assert c == ClusterConfig(etcd=("http://10.0.0.1:2379", "http://10.0.0.2:2379"),
                              node="node-a", peer_address=("10.0.0.1", 4430))
    assert (c.lease_ttl, c.prefix) == (5, "/sbstore")
    c = parse_config({**BASE, "cluster": {**GOOD, "lease_ttl": 2, "prefix": "/t/x"}},
                     source="t.toml").cluster
    assert c is not None and (c.lease_ttl, c.prefix) == (2, "/t/x")


@pytest.mark.parametrize("change,key,words", [
    ({"etcd": []}, "cluster.etcd", "missing or empty"),
    ({"etcd": "http://127.0.0.1:2379"}, "cluster.etcd", "must be an array"),
    ({"etcd": ["127.0.0.1:2379"]}, "cluster.etcd", "not an etcd client URL"),
    ({"etcd": ["http://a:1", "http://a:1"]}, "cluster.etcd", "listed twice"),
    ({"node": None}, "cluster.node", "missing"),
    ({"node": "a b"}, "cluster.node", "letters"),
    ({"peer_address": None}, "cluster.peer_address", "missing"),
    ({"peer_address": "127.0.0.1"}, "cluster.peer_address", "no port"),
    ({"peer_address": "127.0.0.1:0"}, "cluster.peer_address", "fixed port"),
    ({"peer_address": "0.0.0.0:4430"}, "cluster.peer_address", "wildcard"),
    ({"lease_ttl": 1}, "cluster.lease_ttl", "out of range"),
    ({"lease_ttl": 2.5}, "cluster.lease_ttl", "must be an integer"),
    ({"prefix": "sbstore/"}, "cluster.prefix", "must look like"),
    ({"nodes": "x"}, "cluster", "unknown key 'nodes'"),
])
def test_mistakes_name_the_key(change: dict[str, Any], key: str, words: str) -> None:
    section = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as refused:
        parse_config({**BASE, "cluster": section}, source="t.toml")
    message = str(refused.value)
    assert message.startswith(f"t.toml: {key}: ") and words in message, message


def test_the_cluster_example_config_loads() -> None:
    c = load_config(Path(__file__).resolve().parents[2] / "systemd" / "sbstore-cluster.toml")
    assert c.cluster is not None and c.cluster.node == "node-a"
    assert c.cluster.peer_address == ("192.0.2.10", 4430) and len(c.cluster.etcd) == 3
