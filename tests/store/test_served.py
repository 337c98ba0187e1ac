"""Store volumes served unchanged by the target over NVMe/TCP on 127.0.0.1, and the one table
that turns store errors into NVMe status (``sbstore.volume_device``)."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from sbstore.store import (
    Corrupt,
    InvalidArgument,
    NoSpace,
    NotFound,
    OutOfRange,
    Pool,
    ReadOnly,
)
from sbstore.volume_device import VolumeDevice, to_blockdev_error
from target.blockdev import BlockDevice, CapacityExceededError, OutOfRangeError
from target.host import CommandFailed, Controller
from target.server import TargetServer
from target.subsystem import Subsystem, Target

pytestmark = [pytest.mark.usefixtures("every_engine")]
POOL_ON = ("file", "loop")  # every test that takes a pool runs on a file and a block device

NQN = "nqn.2026-11.io.sbstore:store-test"


def test_error_table() -> None:
    assert isinstance(to_blockdev_error(NoSpace("full")), CapacityExceededError)
    assert isinstance(to_blockdev_error(OutOfRange("far")), OutOfRangeError)
    for exc, sct, sc in ((NoSpace("x"), 0, 0x81), (OutOfRange("x"), 0, 0x80),
                         (ReadOnly("x"), 0, 0x20), (NotFound("x"), 0, 0x0B),
                         (InvalidArgument("x"), 0, 0x02), (Corrupt("x"), 2, 0x81)):
        err = to_blockdev_error(exc)
        assert (err.sct, err.sc) == (sct, sc), exc
        assert str(err) == "x"


async def test_volume_served_over_nvme_tcp(pool_path: Path) -> None:
    pool = Pool.create(pool_path, 8 << 20, cluster_size=64 << 10)
    vol = await pool.create_volume("vm", 64 << 20)  # thin: 8x the pool
    snap = await vol.snapshot("gold")
    dev = VolumeDevice(vol)
    assert isinstance(dev, BlockDevice)
    target = Target()
    sub = Subsystem(NQN, serial="SBSTORE0001", model="sbstore volume", allow_any_host=True)
    sub.add_namespace(dev)
    sub.add_namespace(VolumeDevice(snap))
    target.add_subsystem(sub)
    server = TargetServer(target)
    listener = await server.listen("127.0.0.1", 0)
    try:
        ctrl = await Controller.connect("127.0.0.1", int(listener.trsvcid), NQN,
                                        nr_io_queues=4)
        async with ctrl:
            assert ctrl.namespaces[1].nsze == (64 << 20) // 512
            blobs = [os.urandom(4096 * (1 + i % 8)) for i in range(32)]
            await asyncio.gather(*(ctrl.write(1, i * 256, b, queue=i % 4)
                                   for i, b in enumerate(blobs)))
            await ctrl.flush(1)
            got = await asyncio.gather(*(ctrl.read(1, i * 256, len(b) // 512, queue=(i + 1) % 4)
                                         for i, b in enumerate(blobs)))
            assert [bytes(g) for g in got] == blobs
            await ctrl.deallocate(1, [(0, 256)])
            assert bytes(await ctrl.read(1, 0, 8)) == bytes(4096)
            # The snapshot is write protected.
            with pytest.raises(CommandFailed) as err:
                await ctrl.write(2, 0, b"\0" * 512)
            assert (err.value.sct, err.value.sc) == (0, 0x20)
            assert bytes(await ctrl.read(2, 256, 8)) == bytes(4096)
            # Filling the pool: Capacity Exceeded, and what was written stays readable.
            with pytest.raises(CommandFailed) as err:
                for i in range(200):
                    await ctrl.write(1, 20000 + i * 128, os.urandom(64 << 10))
            assert (err.value.sct, err.value.sc) == (0, 0x81)
            assert bytes(await ctrl.read(1, 256, len(blobs[1]) // 512)) == blobs[1]
            with pytest.raises(CommandFailed) as err:
                await ctrl.read(1, (64 << 20) // 512, 1)
            assert (err.value.sct, err.value.sc) == (0, 0x80)
    finally:
        await server.close()
        await pool.aclose()
