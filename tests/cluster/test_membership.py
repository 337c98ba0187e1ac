"""NodeSession: registration, the lease clock, and riding out etcd outages (real etcd, except
the lease-clock arithmetic, which a fake client and a hand-moved clock check exactly)."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from sbstore.cluster.etcd import EtcdClient, KeyValue, TxnResult
from sbstore.cluster.membership import NodeNameInUse, NodeSession, live_nodes
from tests.cluster.etcd_server import EtcdServer

pytestmark = pytest.mark.timeout(60)


async def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.02)


async def test_registers_refreshes_and_stops(etcd_client: EtcdClient) -> None:
    info = {"peer_address": "127.0.0.1:4430"}
    session = NodeSession(etcd_client, "a", ttl=2, info=lambda: dict(info))
    assert not session.may_acknowledge() and session.lease_id is None
    await session.start()
    try:
        assert session.may_acknowledge() and 0 < session.valid_for() <= 2
        assert await session.live_nodes() == {"a": {"peer_address": "127.0.0.1:4430", "node": "a"}}
        kv = await etcd_client.get("/sbstore/nodes/a")
        assert kv is not None and kv.lease == session.lease_id
        info["peer_address"] = "127.0.0.1:4431"
        await session.refresh_info()
        assert (await live_nodes(etcd_client))["a"]["peer_address"] == "127.0.0.1:4431"
        await asyncio.sleep(2.5)  # longer than the TTL: the keepalive task holds the lease
        assert session.may_acknowledge()
        assert await etcd_client.get("/sbstore/nodes/a") is not None
    finally:
        await session.stop()
    assert not session.may_acknowledge()
    assert await live_nodes(etcd_client) == {}  # revoked, not left to expire


async def test_duplicate_node_name_refused(etcd: EtcdServer, etcd_client: EtcdClient) -> None:
    first = NodeSession(etcd_client, "a", ttl=5)
    await first.start()
    try:
        second = NodeSession(EtcdClient([etcd.url]), "a", ttl=5)
        with pytest.raises(NodeNameInUse, match="another daemon"):
            await second.start()
        assert second.lease_id is None and not second.may_acknowledge()
        kv = await etcd_client.get("/sbstore/nodes/a")
        assert kv is not None and kv.lease == first.lease_id
    finally:
        await first.stop()


async def test_unleased_stale_key_is_taken_over(etcd_client: EtcdClient) -> None:
    await etcd_client.put("/x/nodes/b", json.dumps({"node": "b", "old": True}))
    session = NodeSession(etcd_client, "b", prefix="/x", ttl=3)
    await session.start()
    try:
        kv = await etcd_client.get("/x/nodes/b")
        assert kv is not None and kv.lease == session.lease_id and kv.json() == {"node": "b"}
    finally:
        await session.stop()


async def test_cut_off_stops_acknowledging_in_time_then_new_lease(
        etcd: EtcdServer, etcd_client: EtcdClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sbstore.cluster.membership")
    session = NodeSession(EtcdClient([etcd.url], timeout=0.5), "a", ttl=2)
    new_leases = asyncio.Event()

    async def on_new_lease() -> None:
        new_leases.set()

    session.on_new_lease(on_new_lease)
    await session.start()
    try:
        await asyncio.sleep(1.0)  # a keepalive or two
        first_lease = session.lease_id
        assert session.may_acknowledge()
        etcd.pause()
        paused_at = time.monotonic()
        bound = paused_at + session.ttl - session.margin
        try:
            def acknowledging_ended() -> bool:
                # the last keepalive that succeeded was sent before the pause: whenever we look,
                # the session's own deadline is within the bound (exact, whatever the load)
                now, left = time.monotonic(), session.valid_for()
                assert left == 0.0 or now + left <= bound + 1e-3
                return not session.may_acknowledge()

            await wait_until(acknowledging_ended, 3, "acknowledging stopped")
            assert time.monotonic() < bound + 0.3  # the 0.3 s: slack for polling under load
            await asyncio.sleep(max(0.0, paused_at + session.ttl + 1.0 - time.monotonic()))
        finally:
            etcd.resume()  # the lease's TTL has run out: etcd revokes it now
        await asyncio.wait_for(new_leases.wait(), 8)
        assert session.lease_id not in (None, first_lease)
        assert session.may_acknowledge()
        kv = await etcd_client.get("/sbstore/nodes/a")
        assert kv is not None and kv.lease == session.lease_id
        # several keepalives failed during the pause; the log says so once, and once when over
        messages = [r.getMessage() for r in caplog.records]
        assert sum("cannot renew its lease" in m for m in messages) == 1, messages
        assert sum("lease renewed again" in m for m in messages) == 1, messages
    finally:
        await session.stop()


async def test_etcd_restart_session_carries_on(etcd: EtcdServer, etcd_client: EtcdClient) -> None:
    session = NodeSession(EtcdClient([etcd.url], timeout=0.5), "a", ttl=3)
    called: list[int] = []

    async def on_new_lease() -> None:
        called.append(1)

    session.on_new_lease(on_new_lease)
    await session.start()
    try:
        lease = session.lease_id
        etcd.kill()
        etcd.start()  # same data and ports: etcd restores the lease and extends it
        restarted_at = time.monotonic()
        bound = restarted_at + session.ttl - session.margin  # reached by a keepalive sent after
        await wait_until(lambda: time.monotonic() + session.valid_for() >= bound, 5,
                         "a keepalive sent after the restart succeeded")
        assert session.may_acknowledge() and session.lease_id == lease and called == []
        assert "a" in await live_nodes(etcd_client)
    finally:
        await session.stop()


# -- the lease clock, exactly: a fake client and a clock moved by hand --------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class SlowFakeEtcd:
    """Answers a keepalive only after the test's clock moved on (the request's flight time)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.flight_s = 0.0

    async def lease_grant(self, ttl: int) -> int:
        self.clock.now += self.flight_s
        return 7

    async def txn(self, *args: Any, **kwargs: Any) -> TxnResult:
        return TxnResult(True, 1, [1])

    async def lease_keepalive(self, lease_id: int) -> int:
        self.clock.now += self.flight_s
        return 2

    async def lease_revoke(self, lease_id: int) -> None:
        pass

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        return [], 1


async def test_lease_clock_counts_from_the_send_time() -> None:
    clock = FakeClock()
    fake = SlowFakeEtcd(clock)
    fake.flight_s = 0.3
    session = NodeSession(fake, "a", ttl=2, clock=clock)  # type: ignore[arg-type]
    await session.start()
    try:
        # granted with the request sent at 100.0 and answered at 100.3: valid until
        # 100.0 + 2 - 0.5, whatever the answer's delay
        assert session.margin == 0.5
        clock.now = 101.49
        assert session.may_acknowledge() and abs(session.valid_for() - 0.01) < 1e-9
        clock.now = 101.5
        assert not session.may_acknowledge() and session.valid_for() == 0.0
        clock.now = 101.0
        await session._renew(7)  # sent at 101.0, answered at 101.3
        clock.now = 102.49
        assert session.may_acknowledge()
        clock.now = 102.5
        assert not session.may_acknowledge()
    finally:
        await session.stop()


def test_margin_is_at_most_a_second() -> None:
    assert NodeSession(SlowFakeEtcd(FakeClock()), "a", ttl=10).margin == 1.0  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        NodeSession(SlowFakeEtcd(FakeClock()), "a/b")  # type: ignore[arg-type]
