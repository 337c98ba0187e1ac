"""The I/O queue on RAM devices: data round trips and every validation error."""
from __future__ import annotations

import pytest

from target.blockdev import BlockDeviceError, CapacityExceededError
from target.nvme.spec import NSID_ALL, IoOpcode, MediaStatus, StatusType
from target.nvme.spec import GenericStatus as GS
from tests.unit.controller.helpers import (
    Conn,
    Env,
    bring_up_admin,
    connect_io,
    dsm_deallocate,
    make_env,
    read,
    sqe,
    write,
    write_zeroes,
)

GENERIC = StatusType.GENERIC


async def _io(env: Env) -> Conn:
    _, cntlid = await bring_up_admin(env)
    io, r = await connect_io(env, cntlid, 1)
    assert r.ok
    return io


@pytest.mark.parametrize("nsid,bs", [(1, 512), (2, 4096)])
async def test_write_read_round_trip(nsid: int, bs: int) -> None:
    env = make_env()
    io = await _io(env)
    payload = bytes(range(256)) * (3 * bs // 256)
    r = await io.cmd(write(nsid, 5, 3, bs, cid=11), payload)
    assert r.ok and r.cqe.cid == 11 and r.cqe.sqid == 1 and r.data is None
    r = await io.cmd(read(nsid, 5, 3, bs, cid=12))
    assert r.ok and r.cqe.cid == 12 and r.data == payload
    r = await io.cmd(write(nsid, 0, 1, bs, incapsule=True), b"\x01" * bs)  # in-capsule data
    assert r.ok
    dev = env.ram512 if nsid == 1 else env.ram4k
    assert bytes(await dev.read(0, 1)) == b"\x01" * bs


async def test_fua_write_reaches_the_device() -> None:
    env = make_env()
    io = await _io(env)
    seen: list[bool] = []
    original = env.ram512.write

    async def spy(lba: int, data: object, fua: bool = False) -> None:
        seen.append(fua)
        await original(lba, data, fua)  # type: ignore[arg-type]

    env.ram512.write = spy  # type: ignore[method-assign]
    assert (await io.cmd(write(1, 0, 1, fua=True), bytes(512))).ok
    assert (await io.cmd(write(1, 0, 1), bytes(512))).ok
    assert seen == [True, False]


async def test_flush_one_namespace_and_all() -> None:
    env = make_env()
    io = await _io(env)
    flushed: list[str] = []
    for name, dev in (("512", env.ram512), ("4k", env.ram4k)):
        async def flush(name: str = name) -> None:
            flushed.append(name)
        dev.flush = flush  # type: ignore[method-assign]
    assert (await io.cmd(sqe(IoOpcode.FLUSH, nsid=2))).ok
    assert flushed == ["4k"]
    assert (await io.cmd(sqe(IoOpcode.FLUSH, nsid=NSID_ALL))).ok
    assert sorted(flushed) == ["4k", "4k", "512"]
    r = await io.cmd(sqe(IoOpcode.FLUSH, nsid=3))
    assert r.status == (GENERIC, GS.INVALID_NAMESPACE)


async def test_write_zeroes_and_deallocate() -> None:
    env = make_env()
    io = await _io(env)
    assert (await io.cmd(write(1, 0, 16), b"\xee" * 16 * 512)).ok
    assert (await io.cmd(write_zeroes(1, 2, 3))).ok
    assert (await io.cmd(write_zeroes(1, 8, 2, deac=True))).ok
    data = (await io.cmd(read(1, 0, 16))).data
    expect = bytearray(b"\xee" * 16 * 512)
    expect[2 * 512:5 * 512] = bytes(3 * 512)
    expect[8 * 512:10 * 512] = bytes(2 * 512)
    assert data == bytes(expect)
    cmd, buf = dsm_deallocate(1, [(0, 1), (12, 2), (15, 0)])
    assert (await io.cmd(cmd, buf)).ok
    data = (await io.cmd(read(1, 0, 16))).data
    expect[0:512] = bytes(512)
    expect[12 * 512:14 * 512] = bytes(1024)
    assert data == bytes(expect)
    counters = env.subsystem.controllers[1].counters
    assert counters.other_cmds == 3 and counters.writes == 1


async def test_dsm_without_deallocate_is_a_no_op_and_short_data_is_refused() -> None:
    env = make_env()
    io = await _io(env)
    assert (await io.cmd(write(1, 0, 1), b"\x42" * 512)).ok
    cmd = sqe(IoOpcode.DATASET_MANAGEMENT, nsid=1, length=16, incapsule=True, cdw10=0, cdw11=1)
    assert (await io.cmd(cmd, bytes(16))).ok
    assert (await io.cmd(read(1, 0, 1))).data == b"\x42" * 512
    cmd, buf = dsm_deallocate(1, [(0, 1), (1, 1)], pad_to=0)
    r = await io.cmd(cmd, buf[:16])
    assert r.status == (GENERIC, GS.SGL_DATA_LENGTH_INVALID)
    r = await io.cmd(cmd, None)
    assert r.status == (GENERIC, GS.SGL_DATA_LENGTH_INVALID)
    cmd, buf = dsm_deallocate(1, [(2047, 2)])
    assert (await io.cmd(cmd, buf)).status == (GENERIC, GS.LBA_OUT_OF_RANGE)


@pytest.mark.parametrize("make,data,status", [
    (lambda: read(1, 2047, 2), None, GS.LBA_OUT_OF_RANGE),
    (lambda: read(1, 2048, 1), None, GS.LBA_OUT_OF_RANGE),
    (lambda: read(1, (1 << 64) - 1, 1), None, GS.LBA_OUT_OF_RANGE),
    (lambda: write(2, 256, 1, 4096), b"\0" * 4096, GS.LBA_OUT_OF_RANGE),
    (lambda: write_zeroes(1, 2000, 100), None, GS.LBA_OUT_OF_RANGE),
    (lambda: read(3, 0, 1), None, GS.INVALID_NAMESPACE),
    (lambda: read(0, 0, 1), None, GS.INVALID_NAMESPACE),
    (lambda: write(NSID_ALL, 0, 1), b"\0" * 512, GS.INVALID_NAMESPACE),
    (lambda: write_zeroes(7, 0, 1), None, GS.INVALID_NAMESPACE),
    (lambda: read(1, 0, 2, length=512), None, GS.SGL_DATA_LENGTH_INVALID),
    (lambda: write(1, 0, 2), b"\0" * 512, GS.SGL_DATA_LENGTH_INVALID),
    (lambda: write(1, 0, 1), None, GS.SGL_DATA_LENGTH_INVALID),
    (lambda: read(1, 0, 2048 + 1, length=(2049) * 512), None, GS.LBA_OUT_OF_RANGE),
    (lambda: sqe(0x05, nsid=1), None, GS.INVALID_OPCODE),  # Compare: not supported
    (lambda: sqe(0x04, nsid=1), None, GS.INVALID_OPCODE),  # Write Uncorrectable
    (lambda: sqe(0x80, nsid=1), None, GS.INVALID_OPCODE),
    (lambda: bytes([0x02, 0x41]) + read(1, 0, 1)[2:], None, GS.INVALID_FIELD),  # fused
    (lambda: bytes([0x02, 0x00]) + read(1, 0, 1)[2:], None, GS.INVALID_FIELD),  # PRP
])
async def test_bad_io_commands(make, data, status) -> None:  # type: ignore[no-untyped-def]
    env = make_env()
    io = await _io(env)
    r = await io.cmd(make(), data)
    assert r.status == (GENERIC, status) and r.dnr
    assert env.subsystem.controllers[1].counters.errors == 1
    assert (await io.cmd(read(1, 0, 1))).ok  # the queue still works


async def test_mdts_is_enforced_on_reads() -> None:
    env = make_env(max_data_transfer=4096)
    io = await _io(env)
    assert (await io.cmd(read(1, 0, 8))).ok
    r = await io.cmd(read(1, 0, 9))
    assert r.status == (GENERIC, GS.INVALID_FIELD)


async def test_device_errors_map_to_their_status() -> None:
    env = make_env()
    io = await _io(env)

    async def full(lba: int, data: object, fua: bool = False) -> None:
        raise CapacityExceededError("pool full")

    async def bad_read(lba: int, nblocks: int) -> bytes:
        raise BlockDeviceError("media", sct=StatusType.MEDIA,
                               sc=MediaStatus.UNRECOVERED_READ_ERROR)

    async def broken(lba: int, nblocks: int) -> None:
        raise RuntimeError("bug")

    env.ram512.write = full  # type: ignore[method-assign]
    env.ram512.read = bad_read  # type: ignore[method-assign]
    env.ram512.write_zeroes = broken  # type: ignore[method-assign]
    r = await io.cmd(write(1, 0, 1), bytes(512))
    assert r.status == (GENERIC, GS.CAPACITY_EXCEEDED) and r.dnr
    r = await io.cmd(read(1, 0, 1))
    assert r.status == (StatusType.MEDIA, MediaStatus.UNRECOVERED_READ_ERROR) and not r.dnr
    r = await io.cmd(write_zeroes(1, 0, 1))
    assert r.status == (GENERIC, GS.INTERNAL_ERROR) and not r.dnr
    assert env.subsystem.controllers[1].media_errors == 1


async def test_namespace_removed_under_a_live_queue() -> None:
    env = make_env()
    io = await _io(env)
    assert (await io.cmd(read(2, 0, 1, 4096))).ok
    env.subsystem.remove_namespace(2)
    r = await io.cmd(read(2, 0, 1, 4096))
    assert r.status == (GENERIC, GS.INVALID_NAMESPACE)
    nsid = env.subsystem.add_namespace(env.ram4k)
    assert nsid == 2 and (await io.cmd(read(2, 0, 1, 4096))).ok


async def test_commands_on_a_closed_session_are_aborted() -> None:
    env = make_env()
    io = await _io(env)
    io.session.connection_lost()
    r = await io.cmd(read(1, 0, 1))
    assert r.status == (GENERIC, GS.ABORT_SQ_DELETED)
