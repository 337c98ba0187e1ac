"""Bad input gets the protocol's own error and the target keeps serving everyone else."""
from __future__ import annotations

import asyncio
import struct

import pytest

from target.host import Controller, QueueClient
from target.host import commands as cmd
from target.host.queue_client import CommandFailed
from target.nvme.spec import CommandSpecificStatus, GenericStatus, StatusType
from target.nvme.structs import Sqe
from tests.integration.conftest import NQN


async def _still_serves(served) -> None:
    async with await Controller.connect(*served.addr, NQN, nr_io_queues=1) as other:
        await other.write(1, 100, b"\x5a" * 512)
        assert bytes(await other.read(1, 100, 1)) == b"\x5a" * 512


async def test_lba_out_of_range(served):
    async with await Controller.connect(*served.addr, NQN, nr_io_queues=1) as ctrl:
        nsze = ctrl.namespaces[1].nsze
        q = ctrl.queue(0)
        done = await q.submit(cmd.read(0, 1, nsze - 1, 2, 512), read_len=1024)
        assert (done.sct, done.sc) == (StatusType.GENERIC, GenericStatus.LBA_OUT_OF_RANGE)
        done = await q.submit(cmd.write(0, 1, nsze, 1, 512), data=b"\0" * 512)
        assert (done.sct, done.sc) == (StatusType.GENERIC, GenericStatus.LBA_OUT_OF_RANGE)
        # The same connection still works.
        await ctrl.write(1, nsze - 1, b"\x11" * 512)
        assert bytes(await ctrl.read(1, nsze - 1, 1)) == b"\x11" * 512


async def test_unknown_opcode_admin_and_io(served):
    async with await Controller.connect(*served.addr, NQN, nr_io_queues=1) as ctrl:
        done = await ctrl.admin.submit(Sqe(0x7E, sgl_id=0))
        assert (done.sct, done.sc) == (StatusType.GENERIC, GenericStatus.INVALID_OPCODE)
        done = await ctrl.queue(0).submit(Sqe(0x7C, nsid=1, sgl_id=0))
        assert (done.sct, done.sc) == (StatusType.GENERIC, GenericStatus.INVALID_OPCODE)
        assert done.dnr
        await _still_serves(served)


async def test_connect_to_unknown_subsystem_is_refused(served):
    with pytest.raises(CommandFailed) as info:
        await Controller.connect(*served.addr, "nqn.2026-11.io.sbstore:nope", nr_io_queues=1)
    assert info.value.sct == StatusType.COMMAND_SPECIFIC
    assert info.value.sc == CommandSpecificStatus.CONNECT_INVALID_PARAMETERS
    await _still_serves(served)


async def test_keep_alive_timeout_drops_the_silent_host_only(served):
    silent = await Controller.connect(*served.addr, NQN, nr_io_queues=2, kato_ms=1000,
                                      keep_alive=False)
    talker = await Controller.connect(*served.addr, NQN, nr_io_queues=1, kato_ms=1000)
    try:
        await silent.write(1, 0, b"\x01" * 512)
        # Silence for well over KATO: the target must drop the controller and all its queues.
        assert await silent.admin.wait_closed(timeout_s=8)
        for q in silent.io_queues:
            assert await q.wait_closed(timeout_s=2)
        await talker.write(1, 1, b"\x02" * 512)  # the talker kept its controller
        assert bytes(await talker.read(1, 0, 2)) == b"\x01" * 512 + b"\x02" * 512
    finally:
        await silent.close(shutdown=False)
        await talker.close()


async def test_malformed_pdu_terminates_only_that_connection(served):
    bystander = await Controller.connect(*served.addr, NQN, nr_io_queues=1)
    try:
        q = await QueueClient.open(*served.addr)
        # A CapsuleCmd header claiming an absurd length and a wrong header length.
        q.send_raw(struct.pack("<BBBBI", 0x04, 0, 30, 0, 0x7FFFFFFF) + b"\0" * 64)
        assert await q.wait_closed(timeout_s=5)
        await bystander.write(1, 7, b"\x77" * 512)
        assert bytes(await bystander.read(1, 7, 1)) == b"\x77" * 512
    finally:
        await bystander.close()


async def test_garbage_before_icreq_terminates(served):
    reader, writer = await asyncio.open_connection(*served.addr)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\0" * 100)
    data = await asyncio.wait_for(reader.read(1024), 5)
    # Either a C2HTermReq (type 0x03) or a plain close: never a hang, never an ICResp.
    assert data == b"" or data[0] == 0x03
    writer.close()
    await _still_serves(served)
