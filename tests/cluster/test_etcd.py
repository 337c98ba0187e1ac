"""The etcd client against a real etcd (tests/cluster/etcd_server.py)."""
from __future__ import annotations

import asyncio
import socket
import time

import pytest

from sbstore.cluster.etcd import (Compare, EtcdClient, EtcdError, EtcdUnavailable, LeaseExpired,
                                  Op)
from tests.cluster.etcd_server import EtcdServer, free_port

pytestmark = pytest.mark.timeout(60)


async def test_put_get_prefix_delete(etcd_client: EtcdClient) -> None:
    rev1 = await etcd_client.put("/t/b", b"2")
    rev2 = await etcd_client.put("/t/a", '{"x": 1}')
    await etcd_client.put("/t0", b"outside the prefix")
    assert rev2 > rev1 > 0
    kv = await etcd_client.get("/t/a")
    assert kv is not None and kv.json() == {"x": 1}
    assert kv.create_revision == kv.mod_revision == rev2 and kv.version == 1 and kv.lease == 0
    assert await etcd_client.get("/t/missing") is None

    kvs, revision = await etcd_client.get_prefix("/t/")
    assert [(k.key, k.value) for k in kvs] == [("/t/a", b'{"x": 1}'), ("/t/b", b"2")]
    assert revision >= rev2 + 1

    assert await etcd_client.delete("/t/a") == 1
    assert await etcd_client.delete("/t/a") == 0
    assert await etcd_client.delete_prefix("/t/") == 1
    assert (await etcd_client.get_prefix("/t/"))[0] == []
    assert await etcd_client.get("/t0") is not None


async def test_prefix_of_top_bytes(etcd_client: EtcdClient) -> None:
    await etcd_client.put("/p\u00ff", b"1")  # UTF-8 c3 bf: the range end must step past it
    await etcd_client.put("/p\u00ff/x", b"2")
    await etcd_client.put("/q", b"3")
    kvs, _ = await etcd_client.get_prefix("/p\u00ff")
    assert [kv.key for kv in kvs] == ["/p\u00ff", "/p\u00ff/x"]


async def test_txn_success_and_failure(etcd_client: EtcdClient) -> None:
    rev = await etcd_client.put("k", b"v1")
    ok = await etcd_client.txn([Compare.value("k", "==", "v1"), Compare.mod_revision("k", "==", rev),
                                Compare.version("k", "<", 2)],
                               [Op.put("k", b"v2"), Op.get("k"), Op.delete("other")])
    assert ok.succeeded
    assert ok.responses[0] == ok.revision
    assert [kv.value for kv in ok.responses[1]] == [b"v2"]
    assert ok.responses[2] == 0

    failed = await etcd_client.txn([Compare.value("k", "!=", b"v2")], [Op.delete("k")],
                                   [Op.get("k")])
    assert not failed.succeeded
    assert [kv.value for kv in failed.responses[0]] == [b"v2"]
    assert (await etcd_client.get("k")) is not None


async def test_election_pattern_exactly_one_wins(etcd: EtcdServer,
                                                 etcd_client: EtcdClient) -> None:
    campaigners = [EtcdClient([etcd.url]) for _ in range(2)]

    async def campaign(node: str, client: EtcdClient) -> bool:
        result = await client.txn([Compare.create_revision("primary/v", "==", 0)],
                                  [Op.put("primary/v", node)], [Op.get("primary/v")])
        return result.succeeded

    wins = await asyncio.gather(*(campaign(f"n{i}", c) for i, c in enumerate(campaigners)))
    assert sorted(wins) == [False, True]
    winner = f"n{wins.index(True)}"
    kv = await etcd_client.get("primary/v")
    assert kv is not None and kv.value.decode() == winner


async def test_lease_expiry_deletes_leased_keys(etcd_client: EtcdClient) -> None:
    lease = await etcd_client.lease_grant(2)
    await etcd_client.put("leased", b"x", lease=lease)
    kv = await etcd_client.get("leased")
    assert kv is not None and kv.lease == lease
    assert 0 < await etcd_client.lease_keepalive(lease) <= 2
    deadline = time.monotonic() + 6
    while await etcd_client.get("leased") is not None:
        assert time.monotonic() < deadline, "the leased key outlived its lease"
        await asyncio.sleep(0.2)
    with pytest.raises(LeaseExpired):
        await etcd_client.lease_keepalive(lease)


async def test_revoked_lease(etcd_client: EtcdClient) -> None:
    lease = await etcd_client.lease_grant(30)
    await etcd_client.put("leased", b"x", lease=lease)
    await etcd_client.lease_revoke(lease)
    assert await etcd_client.get("leased") is None
    with pytest.raises(LeaseExpired):
        await etcd_client.lease_keepalive(lease)
    with pytest.raises(LeaseExpired):
        await etcd_client.put("leased", b"x", lease=lease)
    await etcd_client.lease_revoke(lease)  # already gone: not an error


async def test_error_answer_is_etcd_error_not_unavailable(etcd_client: EtcdClient) -> None:
    with pytest.raises(EtcdError) as info:
        await etcd_client.put("", b"an empty key is refused")
    assert not isinstance(info.value, EtcdUnavailable)
    assert "key is not provided" in str(info.value)


async def test_unreachable_endpoints_raise_within_timeout() -> None:
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens: refused at once
    silent = socket.socket()  # listens but never accepts nor answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        client = EtcdClient([refused, silent_url], timeout=0.5)
        started = time.monotonic()
        with pytest.raises(EtcdUnavailable) as info:
            await client.get("k")
        assert time.monotonic() - started < 1.0
        assert refused in str(info.value) and silent_url in str(info.value)
    finally:
        silent.close()


async def test_failover_to_second_endpoint(etcd: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    client = EtcdClient([dead, etcd.url], timeout=1.0)
    await client.put("k", b"v")
    kv = await client.get("k")
    assert kv is not None and kv.value == b"v"
    assert client._preferred == 1  # remembered: the dead endpoint is not tried first any more


async def test_failover_past_a_silent_endpoint_within_the_timeout(etcd: EtcdServer) -> None:
    silent = socket.socket()  # accepts connections (the backlog) and never answers: a hung etcd
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        client = EtcdClient([f"http://127.0.0.1:{silent.getsockname()[1]}", etcd.url],
                            timeout=2.0)
        started = time.monotonic()
        assert await client.put("k", b"v") > 0  # the silent one had half the timeout
        assert time.monotonic() - started < 2.0
    finally:
        silent.close()


async def test_paused_etcd_is_unavailable_and_back_after_resume(etcd: EtcdServer) -> None:
    client = EtcdClient([etcd.url], timeout=0.5)
    await client.put("k", b"v")
    etcd.pause()
    try:
        with pytest.raises(EtcdUnavailable, match="timed out"):
            await client.get("k")
    finally:
        etcd.resume()
    kv = await client.get("k")
    assert kv is not None and kv.value == b"v"


def test_bad_endpoint_refused() -> None:
    with pytest.raises(ValueError):
        EtcdClient(["https://x:1"])
    with pytest.raises(ValueError):
        EtcdClient([])
