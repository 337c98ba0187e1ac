"""Data written through the initiator is read back identically: 1, 4 and 8 queues, 512 B to
1 MiB, digests on and off, in-capsule (<= 8 KiB) and R2T (larger) writes."""
from __future__ import annotations

import asyncio
import os
import random

import pytest

from target.host import Controller
from tests.integration.conftest import NQN, NQN_4K

SIZES = [512, 4096, 8192, 8704, 65536, 128 * 1024 + 512, 1 << 20]


@pytest.mark.parametrize("queues", [1, 4, 8])
@pytest.mark.parametrize("digests", [False, True], ids=["plain", "digests"])
async def test_write_read_back_every_size(served, queues, digests):
    ctrl = await Controller.connect(*served.addr, NQN, nr_io_queues=queues, hdgst=digests,
                                    ddgst=digests)
    async with ctrl:
        assert len(ctrl.io_queues) == queues
        bs = ctrl.block_size(1)
        assert bs == 512
        rng = random.Random(queues * 2 + digests)
        # One write per size per queue, all in flight together, to distinct ranges.
        jobs = []
        lba = 0
        for size in SIZES:
            for q in range(queues):
                jobs.append((lba, os.urandom(size) if size < 65536 else rng.randbytes(size), q))
                lba += size // bs + 8
        await asyncio.gather(*(ctrl.write(1, lba_, data, queue=q) for lba_, data, q in jobs))
        reads = await asyncio.gather(*(ctrl.read(1, lba_, len(data) // bs, queue=(q + 1) % queues)
                                       for lba_, data, q in jobs))
        for (lba_, data, _), got in zip(jobs, reads):
            assert bytes(got) == data, f"mismatch at lba {lba_} ({len(data)} bytes)"


async def test_4k_namespace_and_flush_fua(served):
    async with await Controller.connect(*served.addr, NQN_4K, nr_io_queues=2) as ctrl:
        assert ctrl.block_size(1) == 4096
        ns = ctrl.namespaces[1]
        assert ns.nsze * 4096 == 64 << 20
        data = os.urandom(3 * 4096)
        await ctrl.write(1, 10, data, fua=True)
        await ctrl.flush(1)
        assert bytes(await ctrl.read(1, 10, 3)) == data
        assert bytes(served.ram4k._buf[10 * 4096:13 * 4096]) == data


async def test_write_zeroes_and_deallocate_read_zeroes(served):
    async with await Controller.connect(*served.addr, NQN, nr_io_queues=1) as ctrl:
        await ctrl.write(1, 0, b"\xab" * (64 * 512))
        await ctrl.write_zeroes(1, 8, 8)
        await ctrl.deallocate(1, [(32, 16), (56, 4)])
        got = bytes(await ctrl.read(1, 0, 64))
        expect = bytearray(b"\xab" * (64 * 512))
        for lba, n in [(8, 8), (32, 16), (56, 4)]:
            expect[lba * 512:(lba + n) * 512] = bytes(n * 512)
        assert got == bytes(expect)


async def test_pipelined_queue_depth(served):
    """More commands in flight than one round trip: 256 4 KiB writes at depth 64 on 2 queues."""
    async with await Controller.connect(*served.addr, NQN, nr_io_queues=2, queue_size=64) as ctrl:
        blobs = [os.urandom(4096) for _ in range(256)]
        await asyncio.gather(*(ctrl.write(1, i * 8, b) for i, b in enumerate(blobs)))
        got = await asyncio.gather(*(ctrl.read(1, i * 8, 8) for i in range(256)))
        assert [bytes(g) for g in got] == blobs


async def test_identify_values(served):
    async with await Controller.connect(*served.addr, NQN, nr_io_queues=1) as ctrl:
        info = ctrl.info
        assert info.subnqn == NQN
        assert info.serial == "SBSTEST0001"
        assert info.cntlid == ctrl.cntlid
        assert info.nn >= 1
        assert info.cntrltype == 1
        # 8 KiB of in-capsule data: IOCCSZ counts 16-byte units of SQE + data.
        assert info.ioccsz * 16 - 64 >= 8192
        assert info.mdts == 0 or (4096 << info.mdts) >= 1 << 20
        assert info.oncs & (1 << 3) and info.oncs & (1 << 2)  # Write Zeroes, DSM
        assert info.vwc & 1
        desc = await ctrl.ns_descriptors(1)
        assert 0x2 in desc and 0x3 in desc  # NGUID and UUID
        again = await ctrl.ns_descriptors(1)
        assert again == desc
