"""The tenants/, hostkeys/ and listeners/ records: round trips, and bad values refused as
BadRecord (the reconcile loop skips that key) without quoting a secret."""
from __future__ import annotations

import json

import pytest

from sbstore.cluster import hostkeys
from sbstore.cluster.etcd import KeyValue
from sbstore.cluster.keys import BadRecord, Keys
from sbstore.cluster.listeners import ListenerSpec
from sbstore.cluster.tenants import TenantSpec
from sbstore.cluster.view import ClusterView
from sbstore.config import QosPolicy
from sbstore.control.state import HostAuthRecord
from target.auth.secret import DhchapSecret

KEYS = Keys("/t")
NQN, HOST = "nqn.2026-11.io.example:v", "nqn.2014-08.org.nvmexpress:uuid:1"


def kv(key: str, value: str, revision: int = 5) -> KeyValue:
    return KeyValue(key, value.encode(), revision, revision, 1, 0)


def test_round_trips_through_the_view() -> None:
    secret = DhchapSecret.generate(1).format()
    rec = HostAuthRecord(NQN, HOST, secret, None, ("sha256",), ("ffdhe2048",))
    tenant = TenantSpec("gold", QosPolicy(iops=100, weight=300))
    listener = ListenerSpec("b", 4420, address="127.0.0.1")
    view = ClusterView.parse(KEYS, [
        kv(KEYS.tenant("gold"), tenant.to_json()),
        kv(KEYS.hostkey(NQN, HOST), hostkeys.to_json(rec)),
        kv(KEYS.listener("b", listener.where), listener.to_json())], 9)
    assert view.tenants == {"gold": tenant}
    assert view.hostkeys == {(NQN, HOST): rec}
    assert view.listeners == {("b", "a-127.0.0.1-4420"): listener}
    assert secret not in repr(view)  # a logged view never shows a secret
    assert hostkeys.public(view.hostkeys, NQN)[HOST]["dhchap"] == "set"
    assert secret not in json.dumps(hostkeys.public(view.hostkeys, NQN))


@pytest.mark.parametrize("value", [
    {"name": "gold"}, {"name": "gold", "policy": {"iops": -1}},
    {"name": "gold", "policy": {"nonsense": 1}}, [1]])
def test_bad_tenant_records(value: object) -> None:
    with pytest.raises(BadRecord):
        TenantSpec.from_json(value, "/t/tenants/gold")


def test_bad_host_key_never_quoted() -> None:
    good = DhchapSecret.generate(1).format()
    broken = good[:-6] + "AAAA=:"  # the CRC no longer matches
    data = {"nqn": NQN, "host": HOST, "dhchap_key": broken, "ctrl_key": None,
            "hashes": ["sha256"], "dhgroups": ["ffdhe2048"]}
    with pytest.raises(BadRecord) as info:
        hostkeys.from_json(data, "k")
    assert broken not in str(info.value)
    with pytest.raises(BadRecord):
        hostkeys.from_json({**data, "dhchap_key": good, "hashes": ["md5"]}, "k")
    # a record under another export's or host's key is skipped by the view
    view = ClusterView.parse(KEYS, [kv(KEYS.hostkey(NQN, "nqn.other"), json.dumps(
        {**data, "dhchap_key": good}))], 9)
    assert view.hostkeys == {}


def test_bad_listener_records() -> None:
    for value in ({"node": "b", "port": 1}, {"node": "b", "port": "1", "address": "x"},
                  {"node": "b", "port": 1, "address": "x", "interface": "eth0"}):
        with pytest.raises(BadRecord):
            ListenerSpec.from_json(value, "k")
