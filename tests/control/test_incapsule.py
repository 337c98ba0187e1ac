"""Write data in the command capsule (IOCCSZ, ``[target] incapsule_data_size``): the daemon
offers 128 KiB by default, so a write up to that size reaches it with its command, and a larger
one still goes after R2T. A real daemon on 127.0.0.1 and our initiator, whose in-capsule limit
comes from the controller's IOCCSZ: a target that refused the capsule would fail the write."""
from __future__ import annotations

import os

from target.host.controller import Controller
from tests.control.conftest import HOST_A, NQN_1, DaemonThread


async def test_writes_up_to_128k_come_with_their_command(daemon: DaemonThread) -> None:
    daemon.ok("volume", "create", "vol", "--size", "16M")
    daemon.ok("export", "create", NQN_1, "--volume", "vol", "--host", HOST_A)
    async with await Controller.connect("127.0.0.1", daemon.port, NQN_1,
                                        hostnqn=HOST_A) as ctrl:
        assert ctrl.info.ioccsz * 16 - 64 == 128 << 10  # the SQE and 128 KiB of data
        assert ctrl.io_queues[0].incapsule_limit == 128 << 10
        bs = (await ctrl.refresh_namespaces())[1].block_size
        blobs = {0: os.urandom(128 << 10),  # in the capsule, all of it
                 (1 << 20) // bs: os.urandom(8 << 10),  # in the capsule
                 (2 << 20) // bs: os.urandom(256 << 10)}  # after R2T
        for lba, blob in blobs.items():
            await ctrl.write(1, lba, blob)
        for lba, blob in blobs.items():
            assert bytes(await ctrl.read(1, lba, len(blob) // bs)) == blob
