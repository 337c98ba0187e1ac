"""ReplicaServer and ReplicaClient over real sockets on 127.0.0.1 with RAM replicas: frames
applied, epochs fenced, pipelining, bad input confined to its connection, recent writes."""
from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import pytest

from sbstore.cluster.replica_client import (
    PeerUnavailable,
    ReplicaClient,
    ReplicaIOError,
    StaleEpoch,
)
from sbstore.cluster.replica_server import MAX_IN_FLIGHT, ReplicaServer
from sbstore.cluster.wire import (
    REQUEST_HEADER,
    Op,
    Request,
    ResponseDecoder,
    Status,
    encode_request,
    hello_request,
)
from target.blockdev import RamDevice

BS = 512
SIZE = 4 << 20


class Replica:
    def __init__(self) -> None:
        self.dev = RamDevice(SIZE, BS)
        self.server = ReplicaServer(lambda u: self.dev if u == self.dev.uuid else None, node="b")
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    def client(self, timeout: float = 2.0) -> ReplicaClient:
        return ReplicaClient(self.address, self.dev.uuid, BS, timeout=timeout)


@pytest.fixture
async def replica() -> AsyncIterator[Replica]:
    r = Replica()
    r.address = await r.server.start("127.0.0.1", 0)
    yield r
    await r.server.close()


async def test_write_zeroes_deallocate_flush_land_on_the_replica(replica: Replica) -> None:
    c = replica.client()
    await c.connect()
    await c.write(5, 10, b"\xab" * 2 * BS, fua=True)
    assert bytes(await replica.dev.read(10, 2)) == b"\xab" * 2 * BS
    await c.write_zeroes(5, 10, 1)
    await c.deallocate(5, 11, 1)
    await c.flush(5)
    await c.ping(5)
    assert bytes(await replica.dev.read(10, 2)) == bytes(2 * BS)
    assert replica.server.stats.bytes == 2 * BS and c.peer_epoch == 5
    c.close()


async def test_a_write_longer_than_one_frame_is_split(replica: Replica) -> None:
    c = replica.client()
    await c.connect()
    data = bytes(range(256)) * (3 << 20 >> 8)  # 3 MiB: three frames
    await c.write(1, 0, data)
    assert bytes(await replica.dev.read(0, len(data) // BS)) == data
    c.close()


async def test_pipelined_writes_all_answered(replica: Replica) -> None:
    c = replica.client()
    await c.connect()
    futs = [c.start_write(1, i, bytes([i % 256]) * BS) for i in range(500)]
    await asyncio.gather(*futs)
    for i in (0, 77, 499):
        assert bytes(await replica.dev.read(i, 1)) == bytes([i % 256]) * BS
    assert replica.server.stats.frames >= 501
    c.close()


async def test_stale_epoch_refused_and_nothing_written(replica: Replica) -> None:
    replica.server.set_epoch(replica.dev.uuid, 10)
    c = replica.client()
    await c.connect()
    with pytest.raises(StaleEpoch) as info:
        await c.write(9, 0, b"\x01" * BS)
    assert info.value.known_epoch == 10
    assert bytes(await replica.dev.read(0, 1)) == bytes(BS)
    await c.write(11, 0, b"\x02" * BS)  # a newer primary raises the known epoch
    assert replica.server.known_epoch(replica.dev.uuid) == 11
    with pytest.raises(StaleEpoch):
        await c.flush(10)
    replica.server.set_epoch(replica.dev.uuid, 3)  # never falls
    assert replica.server.known_epoch(replica.dev.uuid) == 11
    assert replica.server.stats.stale_refusals == 2
    c.close()


async def test_unknown_volume_and_out_of_range(replica: Replica) -> None:
    c = ReplicaClient(replica.address, uuid.uuid4(), BS)
    with pytest.raises(ReplicaIOError) as info:
        await c.connect()
    assert info.value.status == Status.NO_VOLUME
    c = replica.client()
    await c.connect()
    with pytest.raises(ReplicaIOError) as info:
        await c.write(1, SIZE // BS, b"\x01" * BS)
    assert info.value.status == Status.OUT_OF_RANGE
    await c.ping(1)  # the connection goes on
    c.close()


async def test_refused_connection_and_silent_peer_are_peer_unavailable() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(PeerUnavailable):
        await ReplicaClient(("127.0.0.1", port), uuid.uuid4(), BS).connect()
    # A peer that accepts and never answers: the request times out and the client is lost.
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    addr = silent.sockets[0].getsockname()
    c = ReplicaClient(addr, uuid.uuid4(), BS, timeout=0.3)
    with pytest.raises(PeerUnavailable, match="did not answer"):
        await c.connect()
    with pytest.raises(PeerUnavailable):
        c.start_flush(1)
    silent.close()


async def test_server_closing_fails_pending_requests(replica: Replica) -> None:
    c = replica.client()
    await c.connect()
    await replica.server.close()
    with pytest.raises(PeerUnavailable):
        for _ in range(50):  # the loss is seen within a few round trips
            await c.ping(1)
            await asyncio.sleep(0.01)


async def raw_exchange(address: tuple[str, int], payload: bytes) -> tuple[list[object], bool]:
    """Send bytes, read until EOF (bounded): the responses and whether the server closed."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(payload)
    await writer.drain()
    data = b""
    closed = False
    try:
        while len(data) < 1 << 16:
            chunk = await asyncio.wait_for(reader.read(4096), 2.0)
            if not chunk:
                closed = True
                break
            data += chunk
    except TimeoutError:
        pass
    writer.close()
    return list(ResponseDecoder().feed(data)), closed


async def test_garbage_closes_that_connection_only(replica: Replica) -> None:
    good = replica.client()
    await good.connect()
    responses, closed = await raw_exchange(replica.address, b"\x00garbage" * 10)
    assert closed and responses == []
    # A readable header with an unknown op: answered BAD_REQUEST by tag, then closed.
    hello = encode_request(hello_request(1, replica.dev.uuid, BS))
    bad = REQUEST_HEADER.pack(b"SBRQ", 77, 0, 0, 42, 0, 0, 0)
    responses, closed = await raw_exchange(replica.address, hello + bad)
    assert closed
    assert [(r.tag, r.status) for r in responses] == [(1, Status.OK), (42, Status.BAD_REQUEST)]  # type: ignore[attr-defined]
    # The other client is still served.
    await good.write(1, 3, b"\x07" * BS)
    assert bytes(await replica.dev.read(3, 1)) == b"\x07" * BS
    assert replica.server.stats.bad_requests == 2
    good.close()


async def test_write_before_hello_is_bad_request(replica: Replica) -> None:
    responses, closed = await raw_exchange(replica.address,
                                           encode_request(Request(Op.PING, 9, 0)))
    assert closed and [(r.tag, r.status) for r in responses] == [(9, Status.BAD_REQUEST)]  # type: ignore[attr-defined]


async def test_recent_writes_window_and_overflow() -> None:
    r = Replica()
    r.server = ReplicaServer(lambda u: r.dev, node="b", recent_writes_max=8)
    r.address = await r.server.start("127.0.0.1", 0)
    c = r.client()
    await c.connect()
    await c.write(1, 4, b"\x01" * 2 * BS)
    await c.write_zeroes(1, 100, 3)
    await c.flush(1)
    assert r.server.recent_writes(r.dev.uuid) == [(4, 2), (100, 3)]
    assert r.server.recent_writes(r.dev.uuid, seconds=0.0) == []
    assert r.server.recent_writes(uuid.uuid4()) == []
    for i in range(10):
        await c.write(1, i, b"\x02" * BS)
    # Entries inside the window were pushed out: the whole volume is reported.
    assert r.server.recent_writes(r.dev.uuid) == [(0, SIZE // BS)]
    c.close()
    await r.server.close()


async def test_hello_with_the_wrong_block_size_is_refused(replica: Replica) -> None:
    c = ReplicaClient(replica.address, replica.dev.uuid, 4096)
    with pytest.raises(ReplicaIOError) as info:
        await c.connect()
    assert info.value.status == Status.BAD_REQUEST


class BlockedDevice(RamDevice):
    """Writes wait for a gate: frames pile up on the replica."""

    def __init__(self) -> None:
        super().__init__(SIZE, BS)
        self.gate = asyncio.Event()

    async def write(self, lba: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        await self.gate.wait()
        await super().write(lba, data, fua)


async def test_frames_beyond_the_in_flight_cap_wait_in_tcp() -> None:
    dev = BlockedDevice()
    server = ReplicaServer(lambda u: dev, node="b")
    address = await server.start("127.0.0.1", 0)
    c = ReplicaClient(address, dev.uuid, BS)
    await c.connect()
    futs = [c.start_write(1, i, bytes([i % 256]) * BS) for i in range(MAX_IN_FLIGHT + 3000)]
    await asyncio.sleep(0.1)
    assert server.stats.frames <= MAX_IN_FLIGHT + 1  # the rest is not read yet
    dev.gate.set()
    await asyncio.gather(*futs)
    assert server.stats.frames == MAX_IN_FLIGHT + 3001
    last = MAX_IN_FLIGHT + 2999
    assert bytes(await dev.read(last, 1)) == bytes([last % 256]) * BS
    c.close()
    await server.close()


async def test_busy_polling_on_both_sides() -> None:
    r = Replica()
    r.server = ReplicaServer(lambda u: r.dev, node="b", busy_poll_s=0.001)
    r.address = await r.server.start("127.0.0.1", 0)
    c = ReplicaClient(r.address, r.dev.uuid, BS, busy_poll_s=0.001)
    await c.connect()
    for i in range(20):
        await c.write(1, i, b"\x05" * BS)
    assert r.server.poller is not None and r.server.poller.spins > 0
    assert bytes(await r.dev.read(19, 1)) == b"\x05" * BS
    c.close()
    await r.server.close()
