"""MirroredDevice over real ReplicaServers on 127.0.0.1 with RAM replicas: mirroring, fencing,
a lost peer's dirty bitmap, resync (also racing random writes), deposition."""
from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sbstore.cluster.mirror import (
    GRANULE_BYTES,
    RESYNC_RUN_BYTES,
    Deposed,
    DirtyBitmap,
    FenceExpired,
    MirroredDevice,
    PathError,
)
from sbstore.cluster.replica_client import PeerUnavailable, ReplicaClient, StaleEpoch
from sbstore.cluster.replica_server import ReplicaServer
from target.blockdev import RamDevice
from target.io import blockdev_status

BS = 512
SIZE = 4 << 20
NBLOCKS = SIZE // BS
VOL = uuid.uuid4()


class SlowRamDevice(RamDevice):
    """Writes land after a short random delay, as on a real disk: a copy read meanwhile misses
    them, which is what the resync's locks must cope with."""

    def __init__(self, seed: int) -> None:
        super().__init__(SIZE, BS, uuid=VOL)
        self._rng = random.Random(seed)

    async def _delay(self) -> None:
        await asyncio.sleep(self._rng.random() * 0.002)

    async def write(self, lba: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        await self._delay()
        await super().write(lba, data, fua)

    async def write_zeroes(self, lba: int, nblocks: int) -> None:
        await self._delay()
        await super().write_zeroes(lba, nblocks)


class GatedRamDevice(RamDevice):
    """Writes and reads of block 0's granule wait for a gate: a write in flight, or a read that
    took its copy and has not returned it yet, for as long as a test wants."""

    def __init__(self) -> None:
        super().__init__(SIZE, BS, uuid=VOL)
        self.write_gate = asyncio.Event()
        self.read_gate = asyncio.Event()
        self.write_gate.set()
        self.read_gate.set()

    async def write(self, lba: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        if lba < 8:
            await self.write_gate.wait()
        await super().write(lba, data, fua)

    async def read(self, lba: int, nblocks: int) -> memoryview:
        copy = await super().read(lba, nblocks)
        if lba < 8:
            await self.read_gate.wait()
        return copy


class FakeFence:
    def __init__(self, epoch: int = 5) -> None:
        self.epoch = epoch
        self.valid = True
        self.checks = 0

    def may_acknowledge(self) -> bool:
        self.checks += 1
        return self.valid


class Node:
    """A peer: a RAM replica behind its own ReplicaServer (restartable)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dev = RamDevice(SIZE, BS, uuid=VOL)
        self.server: ReplicaServer | None = None
        self.address = ("127.0.0.1", 0)

    async def start(self) -> None:
        self.server = ReplicaServer(lambda u: self.dev if u == VOL else None, node=self.name)
        self.address = await self.server.start("127.0.0.1", 0)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None

    async def client(self) -> ReplicaClient:
        c = ReplicaClient(self.address, VOL, BS, timeout=1.0)
        await c.connect()
        return c


class Cluster:
    def __init__(self) -> None:
        self.local = RamDevice(SIZE, BS, uuid=VOL)
        self.nodes = {"b": Node("b"), "c": Node("c")}
        self.fence = FakeFence()
        self.events: list[str] = []
        self.lost_fails = False
        self.deposed = 0
        self.mirror: MirroredDevice | None = None

    async def on_peer_lost(self, name: str) -> None:
        await asyncio.sleep(0.01)  # an etcd round trip
        if self.lost_fails:
            self.events.append(f"lost {name} failed")
            raise ConnectionError("etcd unreachable")
        self.events.append(f"lost {name}")

    def on_deposed(self) -> None:
        self.deposed += 1

    async def start(self) -> MirroredDevice:
        for node in self.nodes.values():
            await node.start()
        peers = {name: await node.client() for name, node in self.nodes.items()}
        self.mirror = MirroredDevice(self.local, fence=self.fence, peers=peers,
                                     in_sync=set(peers), on_peer_lost=self.on_peer_lost,
                                     on_deposed=self.on_deposed)
        return self.mirror

    async def close(self) -> None:
        if self.mirror is not None:
            for c in self.mirror.peers.values():
                c.close()
        for node in self.nodes.values():
            await node.stop()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    yield c
    await c.close()


async def image(dev: RamDevice) -> bytes:
    return bytes(await dev.read(0, NBLOCKS))


def pattern(seed: int, nblocks: int) -> bytes:
    return random.Random(seed).randbytes(nblocks * BS)


async def test_mirrored_writes_land_everywhere(cluster: Cluster) -> None:
    m = await cluster.start()
    await m.write(0, pattern(1, 8), fua=True)
    await m.write(100, pattern(2, 3))
    await m.write_zeroes(2, 2)
    await m.deallocate([(101, 1), (5, 1)])
    await m.flush()
    assert bytes(await m.read(100, 1)) == pattern(2, 3)[:BS]
    want = await image(cluster.local)
    assert want[:BS] == pattern(1, 8)[:BS]
    for node in cluster.nodes.values():
        assert await image(node.dev) == want
    assert m.stats.writes_mirrored == 4 and m.stats.bytes_mirrored == 11 * BS
    assert m.in_sync == {"b", "c"} and m.dirty_bytes("b") == 0


async def test_fence_invalid_fails_without_writing(cluster: Cluster) -> None:
    m = await cluster.start()
    cluster.fence.valid = False
    for op in (m.write(0, pattern(1, 1)), m.write_zeroes(0, 1), m.deallocate([(0, 1)]),
               m.flush(), m.read(0, 1)):
        with pytest.raises(FenceExpired) as info:
            await op
        assert (info.value.sct, info.value.sc) == (3, 3)
    assert await image(cluster.local) == bytes(SIZE)
    for node in cluster.nodes.values():
        assert await image(node.dev) == bytes(SIZE)
        assert node.server is not None and node.server.stats.bytes == 0


async def test_fence_lapsing_during_the_write_fails_it(cluster: Cluster) -> None:
    m = await cluster.start()

    class LapsesAfterFirstCheck(FakeFence):
        def may_acknowledge(self) -> bool:
            self.checks += 1
            return self.checks == 1

    m._fence = LapsesAfterFirstCheck()
    with pytest.raises(FenceExpired):
        await m.write(0, pattern(1, 1))


async def test_stale_epoch_deposes(cluster: Cluster) -> None:
    m = await cluster.start()
    server = cluster.nodes["c"].server
    assert server is not None
    server.set_epoch(VOL, cluster.fence.epoch + 1)  # another node won an election
    with pytest.raises(Deposed) as info:
        await m.write(0, pattern(1, 1))
    assert (info.value.sct, info.value.sc) == (3, 2)
    assert cluster.deposed == 1
    assert await image(cluster.nodes["c"].dev) == bytes(SIZE)  # refused: nothing written
    with pytest.raises(Deposed):
        await m.write(8, pattern(2, 1))
    with pytest.raises(Deposed):
        await m.read(0, 1)
    assert cluster.deposed == 1 and bytes(await cluster.local.read(8, 1)) == bytes(BS)


def test_path_errors_reach_the_host_without_dnr() -> None:
    for error in (PathError("x"), FenceExpired("x"), Deposed("x")):
        status = blockdev_status(error)
        assert status.sct == 3 and status.dnr is False


async def test_lost_peer_then_resync_moves_exactly_the_dirty_blocks(cluster: Cluster) -> None:
    m = await cluster.start()
    await m.write(0, pattern(0, 64))
    await m.flush()  # what b holds for sure
    await cluster.nodes["b"].stop()

    await m.write(1000, pattern(1, 8))
    cluster.events.append("write done")
    assert cluster.events == ["lost b", "write done"]  # etcd updated before the completion
    assert m.in_sync == {"c"} and m.stats.peers_lost == 1

    rng = random.Random(7)
    written = 8 * BS
    granules = set(range(1000 * BS // GRANULE_BYTES, 1008 * BS // GRANULE_BYTES))
    for i in range(40):
        lba = rng.randrange(NBLOCKS - 16)
        n = rng.randint(1, 16)
        await m.write(lba, pattern(100 + i, n))
        written += n * BS
        granules |= set(range(lba * BS // GRANULE_BYTES, ((lba + n) * BS - 1) // GRANULE_BYTES + 1))
    assert m.dirty_bytes("b") == len(granules) * GRANULE_BYTES
    assert cluster.events == ["lost b", "write done"]  # one etcd update per loss

    await cluster.nodes["b"].start()
    sent = await m.resync("b", await cluster.nodes["b"].client())
    assert sent == len(granules) * GRANULE_BYTES and sent < 2 * written
    assert m.in_sync == {"b", "c"} and m.dirty_bytes("b") == 0 and m.stats.resync_bytes == sent
    want = await image(cluster.local)
    assert await image(cluster.nodes["b"].dev) == want
    assert await image(cluster.nodes["c"].dev) == want
    # Back in sync: it gets the writes again.
    await m.write(3, pattern(9, 1))
    assert bytes(await cluster.nodes["b"].dev.read(3, 1)) == pattern(9, 1)


async def test_a_loss_marks_what_was_not_flushed_yet(cluster: Cluster) -> None:
    m = await cluster.start()
    await m.write(0, pattern(1, 8))  # no flush: b may lose it from its volatile cache
    await m.flush()
    await m.write(80, pattern(2, 8))  # not flushed
    await cluster.nodes["b"].stop()
    await m.write(800, pattern(3, 8))
    assert m.dirty_bytes("b") == 2 * GRANULE_BYTES  # blocks 80..87 and 800..807


async def test_etcd_failure_fails_writes_until_the_loss_is_recorded(cluster: Cluster) -> None:
    m = await cluster.start()
    await cluster.nodes["c"].stop()
    cluster.lost_fails = True
    with pytest.raises(PathError) as info:
        await m.write(0, pattern(1, 1))
    assert (info.value.sct, info.value.sc) == (3, 3)
    with pytest.raises(PathError):
        await m.write(8, pattern(2, 1))  # c still listed in sync in etcd: no acknowledgement
    cluster.lost_fails = False
    await m.write(16, pattern(3, 1))
    assert cluster.events == ["lost c failed", "lost c failed", "lost c"]
    # The second write failed before any I/O: it is nowhere, and not dirty.
    assert bytes(await cluster.local.read(8, 1)) == bytes(BS)
    assert m.dirty_bytes("c") == 2 * GRANULE_BYTES


@pytest.mark.parametrize("seed", [1, 2])
async def test_writes_racing_a_full_resync_end_consistent(cluster: Cluster, seed: int) -> None:
    cluster.local = SlowRamDevice(seed)
    cluster.nodes["b"].dev = SlowRamDevice(seed + 10)
    m = await cluster.start()
    await cluster.nodes["b"].stop()
    await m.write(0, pattern(0, 16))  # b is lost
    assert m.in_sync == {"c"}
    await cluster.nodes["b"].start()
    client = await cluster.nodes["b"].client()

    # Each writer has its own quarter of the volume: overlapping writes in flight together have
    # no defined outcome in NVMe (the devices may apply them in either order), so only the
    # resync may race a write here.
    quarter = NBLOCKS // 4

    async def writer(k: int, wseed: int) -> None:
        rng = random.Random(wseed)
        for i in range(150):
            lba = k * quarter + rng.randrange(quarter - 256)
            kind = rng.random()
            if kind < 0.8:
                await m.write(lba, pattern(wseed * 1000 + i, rng.randint(1, 256)))
            elif kind < 0.9:
                await m.write_zeroes(lba, rng.randint(1, 64))
            else:
                await m.deallocate([(lba, rng.randint(1, 64))])
            if i % 10 == 0:
                await asyncio.sleep(0)

    results = await asyncio.gather(m.resync("b", client, full=True),
                                   *(writer(k, seed * 100 + k) for k in range(4)))
    assert isinstance(results[0], int) and results[0] > 0
    assert m.in_sync == {"b", "c"}
    await m.flush()
    want = await image(cluster.local)
    assert await image(cluster.nodes["b"].dev) == want
    assert await image(cluster.nodes["c"].dev) == want


async def test_resync_waits_for_a_write_in_flight_over_its_run(cluster: Cluster) -> None:
    local = cluster.local = GatedRamDevice()
    m = await cluster.start()
    await cluster.nodes["b"].stop()
    await m.write(64, pattern(0, 1))  # b is lost
    await cluster.nodes["b"].start()
    local.write_gate.clear()
    write = asyncio.ensure_future(m.write(0, pattern(1, 4)))  # b not live: only marked dirty
    await asyncio.sleep(0.01)
    resync = asyncio.ensure_future(m.resync("b", await cluster.nodes["b"].client()))
    await asyncio.sleep(0.05)
    assert not resync.done() and not write.done()  # the run waits for the write to land
    local.write_gate.set()
    await write
    await resync
    assert await image(cluster.nodes["b"].dev) == await image(local)


async def test_a_write_over_a_run_being_resynced_waits(cluster: Cluster) -> None:
    local = cluster.local = GatedRamDevice()
    m = await cluster.start()
    await cluster.nodes["b"].stop()
    await m.write(0, pattern(0, 8))  # b is lost and lacks block 0's granule
    await cluster.nodes["b"].start()
    local.read_gate.clear()
    resync = asyncio.ensure_future(m.resync("b", await cluster.nodes["b"].client()))
    await asyncio.sleep(0.01)  # the run is locked and its copy taken
    write = asyncio.ensure_future(m.write(0, pattern(1, 1)))  # b is live now
    await asyncio.sleep(0.05)
    assert not write.done() and bytes(await RamDevice.read(local, 0, 1)) == pattern(0, 8)[:BS]
    local.read_gate.set()
    await resync
    await write
    assert await image(cluster.nodes["b"].dev) == await image(local)


async def test_resync_failing_keeps_the_peer_out_with_its_bitmap(cluster: Cluster) -> None:
    m = await cluster.start()
    await cluster.nodes["b"].stop()
    await m.write(0, pattern(1, 64))
    before = m.dirty_bytes("b")
    await cluster.nodes["b"].start()
    client = await cluster.nodes["b"].client()
    await cluster.nodes["b"].stop()  # gone again before the resync
    with pytest.raises(PeerUnavailable):
        await m.resync("b", client)
    assert "b" not in m.in_sync and m.dirty_bytes("b") == before
    await m.write(512, pattern(2, 1))  # still tracked, not waited for
    assert m.dirty_bytes("b") == before + GRANULE_BYTES


async def test_takeover_marks_and_full_copy(cluster: Cluster) -> None:
    """A new primary: b was the old one (not in sync), its recent writes are marked dirty."""
    for node in cluster.nodes.values():
        await node.start()
    await cluster.local.write(40, pattern(5, 8))
    peers = {"b": await cluster.nodes["b"].client(), "c": await cluster.nodes["c"].client()}
    m = MirroredDevice(cluster.local, fence=cluster.fence, peers=peers, in_sync={"c"},
                       on_peer_lost=cluster.on_peer_lost, on_deposed=cluster.on_deposed,
                       initial_dirty={"b": [(40, 8)]})
    cluster.mirror = m
    assert m.dirty_bytes("b") == GRANULE_BYTES
    m.mark_dirty("b", 4096, 1)
    assert m.dirty_bytes("b") == 2 * GRANULE_BYTES
    with pytest.raises(ValueError):
        m.mark_dirty("c", 0, 1)
    assert await m.resync("b", peers["b"]) == GRANULE_BYTES  # block 4096's granule is a hole
    assert await image(cluster.nodes["b"].dev) == await image(cluster.local)
    # A full copy sends the 128 KiB runs that are not all zeroes, write-zeroes for the others.
    cluster.nodes["c"].dev = RamDevice(SIZE, BS, uuid=VOL)
    await cluster.nodes["c"].stop()
    await cluster.nodes["c"].start()
    m.forget_peer("c")
    assert m.dirty_bytes("c") == SIZE and "c" not in m.peers
    assert await m.resync("c", await cluster.nodes["c"].client(), full=True) == RESYNC_RUN_BYTES
    assert await image(cluster.nodes["c"].dev) == await image(cluster.local)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 300), st.integers(0, 40)), max_size=30),
       st.integers(0, 350), st.integers(1, 40))
def test_dirty_bitmap_against_a_set(ops: list[tuple[bool, int, int]], start: int,
                                    max_count: int) -> None:
    bitmap = DirtyBitmap(200)
    model: set[int] = set()
    for mark, first, count in ops:
        if mark:
            bitmap.mark(first, count)
            model |= set(range(first, first + count))
        else:
            bitmap.clear(first, count)
            model -= set(range(first, first + count))
    assert bitmap.count() == len(model) and bitmap.any() == bool(model)
    after = sorted(i for i in model if i >= start)
    run = bitmap.next_run(start, max_count)
    if not after:
        assert run is None
    else:
        assert run is not None and run[0] == after[0]
        n = 1
        while n < max_count and after[0] + n in model:
            n += 1
        assert run[1] == n
    other = DirtyBitmap(400)
    other.mark(390, 3)
    bitmap.merge(other)
    assert bitmap.count() == len(model | {390, 391, 392})
    assert DirtyBitmap(13, full=True).count() == 13


async def test_4096_byte_blocks_one_bit_per_block() -> None:
    local = RamDevice(SIZE, 4096, uuid=VOL)
    replica = RamDevice(SIZE, 4096, uuid=VOL)
    server = ReplicaServer(lambda u: replica, node="b")
    address = await server.start("127.0.0.1", 0)
    client = ReplicaClient(address, VOL, 4096)
    await client.connect()
    lost: list[str] = []

    async def on_lost(name: str) -> None:
        lost.append(name)

    m = MirroredDevice(local, fence=FakeFence(), peers={"b": client}, in_sync={"b"},
                       on_peer_lost=on_lost, on_deposed=lambda: None)
    await m.write(0, random.Random(1).randbytes(4096 * 3))
    await m.flush()
    await server.close()
    await m.write(10, random.Random(2).randbytes(4096 * 2))
    await m.write_zeroes(1, 1)
    assert lost == ["b"] and m.dirty_bytes("b") == 3 * 4096
    address = await server.start("127.0.0.1", 0)
    client = ReplicaClient(address, VOL, 4096)
    await client.connect()
    assert await m.resync("b", client) == 2 * 4096  # block 1 went as write-zeroes
    assert bytes(await replica.read(0, SIZE // 4096)) == bytes(await local.read(0, SIZE // 4096))
    client.close()
    await server.close()


async def test_takeover_by_a_survivor_with_its_recent_writes() -> None:
    """a is primary, b in sync; a dies; b takes over with a's bitmap seeded from what b received
    lately, writes on, and resyncs a when it is back: a then equals b."""
    dev_a, dev_b = RamDevice(SIZE, BS, uuid=VOL), RamDevice(SIZE, BS, uuid=VOL)
    server_a = ReplicaServer(lambda u: dev_a, node="a")
    server_b = ReplicaServer(lambda u: dev_b, node="b")
    addr_b = await server_b.start("127.0.0.1", 0)

    async def never_lost(name: str) -> None:
        raise AssertionError(name)

    to_b = ReplicaClient(addr_b, VOL, BS)
    await to_b.connect()
    fence_a = FakeFence(epoch=5)
    on_a = MirroredDevice(dev_a, fence=fence_a, peers={"b": to_b}, in_sync={"b"},
                          on_peer_lost=never_lost, on_deposed=lambda: None)
    await on_a.write(0, pattern(1, 16))
    await on_a.write(3000, pattern(2, 4))
    to_b.close()  # a dies

    server_b.set_epoch(VOL, 9)  # b won the election with epoch 9
    addr_a = await server_a.start("127.0.0.1", 0)
    to_a = ReplicaClient(addr_a, VOL, BS)
    await to_a.connect()
    on_b = MirroredDevice(dev_b, fence=FakeFence(epoch=9), peers={"a": to_a}, in_sync=set(),
                          on_peer_lost=never_lost, on_deposed=lambda: None,
                          initial_dirty={"a": server_b.recent_writes(VOL)})
    assert on_b.dirty_bytes("a") == 3 * GRANULE_BYTES  # blocks 0..15 and 3000..3003
    await on_b.write(5000, pattern(3, 8))
    await dev_a.write(3000, pattern(4, 4))  # a write a held that b never acknowledged
    assert await on_b.resync("a", to_a) == 4 * GRANULE_BYTES
    assert await image(dev_a) == await image(dev_b)
    # The old primary's stream is refused by a now: its epoch is stale.
    stale = ReplicaClient(addr_a, VOL, BS)
    await stale.connect()
    with pytest.raises(StaleEpoch):
        await stale.write(fence_a.epoch, 0, pattern(5, 1))
    for c in (to_a, stale):
        c.close()
    await server_a.close()
    await server_b.close()
