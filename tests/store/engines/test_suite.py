"""The contract of ``engines/base.py``, run on every engine x every target (file, loop
devices with 512 and 4096-byte sectors): round trips, many I/Os in flight, zeroing, punching,
sync, errors, and buffers that stay out of the pool while referenced."""
from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import random

import pytest

from sbstore.store.engines import EngineClosed, IoEngine, ShortIO

from .conftest import SIZE, Target

SIZES = [512, 1024, 4096, 4096 + 512, 8192, 65536, 131072, 1 << 20, (2 << 20) + 4096]
OFFSETS = [0, 512, 4096, 12288 + 512, 1 << 20, 7 << 20]


def _addr(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


async def test_round_trips_at_many_sizes_and_offsets(engine: IoEngine) -> None:
    rnd = random.Random(1)
    for size in SIZES:
        for off in OFFSETS:
            data = rnd.randbytes(size)
            buf = engine.buffer(size)
            buf[:] = data
            await engine.write(off, buf)
            back = engine.buffer(size)
            await engine.read_into(off, back)
            assert bytes(back) == data, f"{size} bytes at {off}"
    st = engine.stats()
    assert st["reads"] == st["writes"] == len(SIZES) * len(OFFSETS)
    assert st["read_bytes"] == st["written_bytes"] == sum(SIZES) * len(OFFSETS)
    assert st["inflight"] == 0


async def test_512_byte_io_at_every_sector_of_a_4k_page(engine: IoEngine,
                                                        target: Target) -> None:
    """On the 4K-sector device these are off the device's alignment: the slower path."""
    base = 3 << 20
    sectors = [os.urandom(512) for _ in range(8)]
    for i in (5, 0, 7, 2, 1, 6, 3, 4):
        await engine.write(base + 512 * i, sectors[i])
    whole = engine.buffer(4096)
    await engine.read_into(base, whole)
    assert bytes(whole) == b"".join(sectors)
    for i in range(8):
        one = engine.buffer(512)
        await engine.read_into(base + 512 * i, one)
        assert bytes(one) == sectors[i]
    if engine.direct and engine.block_align == 4096:
        assert engine.stats()["unaligned"] >= 16


async def test_block_align_matches_the_device(engine: IoEngine, target: Target) -> None:
    if not engine.direct:
        assert engine.block_align == 1
    elif target.kind == "loop4k":
        assert engine.block_align == 4096
    else:
        assert engine.block_align == 512


async def test_writes_of_any_bytes_like_and_reads_into_unaligned_memory(
        engine: IoEngine) -> None:
    data = os.urandom(8192)
    await engine.write(0, data)  # bytes
    await engine.write(8192, bytearray(data))  # bytearray
    await engine.write(16384, memoryview(bytearray(b"\0" + data))[1:])  # odd address
    await engine.write(24576, memoryview(data).cast("I"))  # not format "B"
    for off in (0, 8192, 16384, 24576):
        raw = bytearray(8192 + 1)
        view = memoryview(raw)[1:]  # an address O_DIRECT refuses: bounced
        await engine.read_into(off, view)
        assert bytes(view) == data, off


async def test_hundreds_of_ios_in_flight_before_the_first_await(engine: IoEngine) -> None:
    n = 600
    chunks = [os.urandom(4096) for _ in range(n)]
    writes = []
    for i, c in enumerate(chunks):
        b = engine.buffer(4096)
        b[:] = c
        writes.append(engine.write(i * 4096, b))
    if engine.name != "buffered":
        assert engine.stats()["inflight"] == n
    await asyncio.gather(*writes)
    bufs = [engine.buffer(4096) for _ in range(n)]
    order = list(range(n))
    random.Random(2).shuffle(order)
    reads = [engine.read_into(i * 4096, bufs[i]) for i in order]
    await asyncio.gather(*reads)
    for i in range(n):
        assert bytes(bufs[i]) == chunks[i], i
    assert engine.stats()["inflight"] == 0


async def test_zero_range_reads_back_zeroes(engine: IoEngine, target: Target) -> None:
    off, n = 2 << 20, 256 << 10
    await engine.write(off, os.urandom(n))
    assert await engine.zero_range(off + 4096, 128 << 10) is True
    back = engine.buffer(n)
    await engine.read_into(off, back)
    assert bytes(back[4096:4096 + (128 << 10)]) == bytes(128 << 10)
    assert bytes(back[:4096]) != bytes(4096)
    assert bytes(back[4096 + (128 << 10):]) != bytes(n - 4096 - (128 << 10))


async def test_punch_reads_back_zeroes_and_frees_the_blocks(engine: IoEngine,
                                                            target: Target) -> None:
    off, n = 4 << 20, 1 << 20
    await engine.write(off, os.urandom(n))
    await engine.sync()
    before = os.stat(target.backing).st_blocks
    assert await engine.punch(off, n) is True
    back = engine.buffer(n)
    await engine.read_into(off, back)
    assert bytes(back) == bytes(n)
    if target.kind == "file":
        assert os.stat(target.backing).st_blocks <= before - n // 512


async def test_zeroing_a_range_off_the_device_sectors_says_it_cannot(
        engine: IoEngine, target: Target) -> None:
    """A block device refuses fallocate off its sectors: the caller is told to write zeroes,
    and later aligned requests still use fallocate."""
    if target.kind != "loop4k":
        pytest.skip("only a 4K-sector device has sectors a 512-byte range can miss")
    assert await engine.zero_range(512, 4096) is False
    assert await engine.punch(512, 4096) is False
    assert await engine.zero_range(0, 8192) is True


async def test_sync_completes_and_is_counted(engine: IoEngine) -> None:
    await engine.write(0, os.urandom(4096))
    await engine.sync()
    await asyncio.gather(engine.sync(), engine.sync())
    assert engine.stats()["syncs"] == 3


async def test_read_past_the_end_is_a_short_io(engine: IoEngine, target: Target) -> None:
    buf = engine.buffer(4096)
    with pytest.raises(ShortIO) as info:
        await engine.read_into(SIZE, buf)
    assert info.value.errno == errno.EIO
    assert (info.value.done, info.value.wanted, info.value.offset) == (0, 4096, SIZE)
    straddling = engine.buffer(8192)
    with pytest.raises(ShortIO) as info:
        await engine.read_into(SIZE - 4096, straddling)
    assert info.value.done == 4096
    await engine.read_into(0, buf)  # the engine goes on serving


async def test_a_closed_engine_refuses_io_and_fails_what_was_in_flight(
        engine: IoEngine) -> None:
    await engine.write(0, os.urandom(65536))
    inflight = [engine.read_into(i * 4096, engine.buffer(4096)) for i in range(16)]
    engine.close()
    for aw in inflight:
        if engine.name == "buffered":
            await aw  # completed within the call: nothing was in flight
        else:
            with pytest.raises(EngineClosed):
                await aw
    with pytest.raises(EngineClosed) as info:
        await engine.read_into(0, engine.buffer(4096))
    assert info.value.errno == errno.EBADF
    with pytest.raises(EngineClosed):
        await engine.write(0, b"x" * 512)
    with pytest.raises(EngineClosed):
        await engine.sync()
    engine.close()  # twice is fine


async def test_a_buffer_held_by_a_send_is_not_reused(engine: IoEngine) -> None:
    """A read's data handed to a transport that still holds a slice of it: later reads into
    fresh buffers must never land in it."""
    await engine.write(0, b"\xaa" * 4096)
    buf = engine.buffer(4096)
    await engine.read_into(0, buf)
    held = buf[512:1024]  # what a send would still be holding
    start = _addr(held) - 512
    del buf
    await engine.write(4096, b"\x55" * 4096)
    for _ in range(200):
        b = engine.buffer(4096)
        assert not start <= _addr(b) < start + 4096
        await engine.read_into(4096, b)
    assert bytes(held) == b"\xaa" * 512


async def test_write_on_a_read_only_engine_fails_with_its_errno(target: Target) -> None:
    from sbstore.store.engines import open_engine
    for mode in ("io_uring", "threads", "buffered"):
        e = open_engine(target.path, mode, readonly=True)
        try:
            with pytest.raises(OSError) as info:
                await e.write(0, b"\0" * 4096)
            assert info.value.errno == errno.EBADF, mode
            buf = e.buffer(4096)
            await e.read_into(0, buf)
        finally:
            e.close()


async def test_empty_transfers_complete_at_once(engine: IoEngine) -> None:
    await engine.read_into(4096, engine.buffer(0))
    await engine.write(4096, b"")
    await engine.write(4096, engine.buffer(0))
