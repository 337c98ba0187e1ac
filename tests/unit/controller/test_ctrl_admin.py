"""Admin commands: log pages, features, AER limits, Abort, unknown opcodes, error log, SMART."""
from __future__ import annotations

import struct

import pytest

from target.nvme.logpages import pull_error_log, pull_smart_log
from target.nvme.spec import (
    AEC_DISCOVERY_CHANGE,
    AEC_NS_ATTRIBUTE,
    AdminOpcode,
    FeatureId,
    HostFeatureId,
    LogPageId,
    StatusType,
)
from target.nvme.spec import (
    CommandSpecificStatus as CS,
)
from target.nvme.spec import (
    GenericStatus as GS,
)
from tests.unit.controller.helpers import (
    HOSTID,
    bring_up_admin,
    connect_io,
    get_features,
    get_log_page,
    identify,
    make_env,
    read,
    set_features,
    sqe,
    write,
)

GENERIC, SPECIFIC = StatusType.GENERIC, StatusType.COMMAND_SPECIFIC


@pytest.mark.parametrize("opcode", [0x00, 0x01, 0x04, 0x05, 0x0D, 0x10, 0x19, 0x7E, 0xC0, 0xFF])
async def test_unknown_admin_opcodes(opcode: int) -> None:
    env = make_env()
    admin, _ = await bring_up_admin(env)
    r = await admin.cmd(sqe(opcode, cid=0x1234))
    assert r.status == (GENERIC, GS.INVALID_OPCODE) and r.dnr and r.cqe.cid == 0x1234


async def test_identify_bad_cns_csi_and_length() -> None:
    env = make_env()
    admin, _ = await bring_up_admin(env)
    for raw in (identify(0x1F), identify(6, csi=2), identify(5, nsid=1, csi=2),
                identify(7, csi=1)):
        assert (await admin.cmd(raw)).status == (GENERIC, GS.INVALID_FIELD)
    r = await admin.cmd(identify(1, length=512))
    assert r.status == (GENERIC, GS.SGL_DATA_LENGTH_INVALID)
    r = await admin.cmd(identify(5, nsid=1))
    assert r.ok and r.data == bytes(4096)
    r = await admin.cmd(identify(7, nsid=0, csi=0))
    assert struct.unpack_from("<3I", r.data) == (1, 2, 0)


async def test_get_log_page_bounds() -> None:
    env = make_env()
    admin, _ = await bring_up_admin(env)
    assert (await admin.cmd(get_log_page(0x42, 512))).status == (SPECIFIC, CS.INVALID_LOG_PAGE)
    assert (await admin.cmd(get_log_page(LogPageId.DISCOVERY, 1024))).status == \
        (SPECIFIC, CS.INVALID_LOG_PAGE)  # discovery log: discovery controllers only
    r = await admin.cmd(get_log_page(LogPageId.SMART_HEALTH, 512, offset=2))
    assert r.status == (GENERIC, GS.INVALID_FIELD)
    r = await admin.cmd(get_log_page(LogPageId.SMART_HEALTH, 512, offset=516))
    assert r.status == (GENERIC, GS.INVALID_FIELD)
    r = await admin.cmd(get_log_page(LogPageId.SMART_HEALTH, 512, length=4096))
    assert r.status == (GENERIC, GS.SGL_DATA_LENGTH_INVALID)
    r = await admin.cmd(get_log_page(LogPageId.SMART_HEALTH, 2 << 20))  # beyond MDTS
    assert r.status == (GENERIC, GS.INVALID_FIELD)
    # A read past the end is zero filled; from an offset it is the page's tail.
    whole = (await admin.cmd(get_log_page(LogPageId.SMART_HEALTH, 512))).data
    tail = await admin.cmd(get_log_page(LogPageId.SMART_HEALTH, 1024, offset=256))
    assert tail.ok and tail.data == whole[256:] + bytes(768)
    r = await admin.cmd(get_log_page(LogPageId.COMMANDS_SUPPORTED, 4096, csi=1))
    assert r.status == (GENERIC, GS.INVALID_FIELD)


async def test_commands_effects_and_firmware_logs() -> None:
    env = make_env()
    admin, _ = await bring_up_admin(env)
    effects = (await admin.cmd(get_log_page(LogPageId.COMMANDS_SUPPORTED, 4096, nsid=0))).data
    acs = struct.unpack_from("<256I", effects, 0)
    iocs = struct.unpack_from("<256I", effects, 1024)
    assert acs[AdminOpcode.IDENTIFY] & 1 and acs[AdminOpcode.KEEP_ALIVE] & 1 and not acs[0x01]
    assert iocs[0x02] == 1 and iocs[0x01] == 3 and iocs[0x08] == 3 and not iocs[0x05]
    fw = (await admin.cmd(get_log_page(LogPageId.FIRMWARE_SLOT, 512))).data
    assert fw[0] == 1 and fw[8:16].rstrip(b" ") == b"0.1"


async def test_smart_counts_io_per_controller_and_namespace() -> None:
    env = make_env()
    admin, cntlid = await bring_up_admin(env)
    io, _ = await connect_io(env, cntlid, 1)
    for i in range(3):
        assert (await io.cmd(write(1, i * 8, 8), bytes(4096))).ok
    assert (await io.cmd(read(1, 0, 16))).ok
    assert (await io.cmd(read(2, 0, 2, 4096))).ok
    smart = pull_smart_log((await admin.cmd(get_log_page(LogPageId.SMART_HEALTH, 512))).data)
    assert smart.host_writes == 3 and smart.host_reads == 2
    assert smart.data_units_written == 1 and smart.data_units_read == 1  # rounded up
    ns2 = pull_smart_log((await admin.cmd(get_log_page(LogPageId.SMART_HEALTH, 512,
                                                      nsid=2))).data)
    assert ns2.host_reads == 1 and ns2.host_writes == 0
    r = await admin.cmd(get_log_page(LogPageId.SMART_HEALTH, 512, nsid=9))
    assert r.status == (GENERIC, GS.INVALID_NAMESPACE)
    ctrl = env.subsystem.controllers[cntlid]
    assert ctrl.counters.as_dict()["read_bytes"] == 16 * 512 + 2 * 4096
    assert env.subsystem.namespaces[1].counters.writes == 3


async def test_error_log_records_failures_newest_first() -> None:
    env = make_env()
    admin, cntlid = await bring_up_admin(env)
    io, _ = await connect_io(env, cntlid, 1)
    assert not (await io.cmd(read(1, 1 << 40, 1, cid=5))).ok
    assert not (await admin.cmd(sqe(0x7E, cid=6))).ok
    entries = pull_error_log((await admin.cmd(get_log_page(LogPageId.ERROR_INFORMATION,
                                                           64 * 64))).data)
    assert [(e.error_count, e.sqid, e.cid) for e in entries] == [(2, 0, 6), (1, 1, 5)]
    assert entries[1].lba == 1 << 40 and entries[1].nsid == 1
    assert entries[1].status >> 1 & 0xFF == GS.LBA_OUT_OF_RANGE
    smart = pull_smart_log((await admin.cmd(get_log_page(LogPageId.SMART_HEALTH, 512))).data)
    assert smart.num_err_log_entries == 2


async def test_features_round_trip_and_defaults() -> None:
    env = make_env()
    admin, _cntlid = await bring_up_admin(env, kato_ms=7000)

    async def value(fid: int, sel: int = 0, cdw11: int = 0) -> int:
        r = await admin.cmd(get_features(fid, sel, cdw11))
        assert r.ok, (fid, r)
        return r.cqe.dw0

    assert await value(FeatureId.KEEP_ALIVE_TIMER) == 7000
    assert await value(FeatureId.VOLATILE_WRITE_CACHE) == 1
    assert await value(FeatureId.NUMBER_OF_QUEUES) == (127 << 16) | 127
    for fid, v in ((FeatureId.ARBITRATION, 0x0303), (FeatureId.INTERRUPT_COALESCING, 0x0A08),
                   (FeatureId.WRITE_ATOMICITY, 1), (FeatureId.ERROR_RECOVERY, 5),
                   (FeatureId.POWER_MANAGEMENT, 0), (FeatureId.ASYNC_EVENT_CONFIG,
                                                     AEC_NS_ATTRIBUTE | 0x3)):
        assert (await admin.cmd(set_features(fid, v))).ok
        assert await value(fid) == v
        assert await value(fid, sel=1) == 0  # default
        assert await value(fid, sel=3) & 0x4  # changeable
    over = await value(FeatureId.TEMPERATURE_THRESHOLD)
    assert over == 343
    assert (await admin.cmd(set_features(FeatureId.TEMPERATURE_THRESHOLD, 350))).ok
    assert await value(FeatureId.TEMPERATURE_THRESHOLD) == 350
    assert await value(FeatureId.TEMPERATURE_THRESHOLD, cdw11=1 << 20) == 0  # under
    assert (await admin.cmd(set_features(FeatureId.KEEP_ALIVE_TIMER, 9000))).ok
    assert await value(FeatureId.KEEP_ALIVE_TIMER) == 9000
    host_id = await admin.cmd(get_features(HostFeatureId.HOST_IDENTIFIER, cdw11=1, length=16))
    assert host_id.ok and host_id.data == HOSTID


@pytest.mark.parametrize("raw,status", [
    (set_features(0x55, 0), (GENERIC, GS.INVALID_FIELD)),
    (get_features(0x55), (GENERIC, GS.INVALID_FIELD)),
    (get_features(FeatureId.ARBITRATION, sel=4), (GENERIC, GS.INVALID_FIELD)),
    (set_features(FeatureId.ARBITRATION, 0, save=True), (SPECIFIC, CS.FEATURE_NOT_SAVEABLE)),
    (set_features(FeatureId.POWER_MANAGEMENT, 1), (GENERIC, GS.INVALID_FIELD)),
    (set_features(FeatureId.ASYNC_EVENT_CONFIG, AEC_DISCOVERY_CHANGE), (GENERIC, GS.INVALID_FIELD)),
    (set_features(FeatureId.TEMPERATURE_THRESHOLD, 2 << 20), (GENERIC, GS.INVALID_FIELD)),
    (set_features(HostFeatureId.HOST_IDENTIFIER, 1), (GENERIC, GS.COMMAND_SEQUENCE_ERROR)),
    (get_features(HostFeatureId.HOST_IDENTIFIER, cdw11=0, length=8), (GENERIC, GS.INVALID_FIELD)),
])
async def test_feature_errors(raw: bytes, status: tuple[int, int]) -> None:
    env = make_env()
    admin, _ = await bring_up_admin(env)
    r = await admin.cmd(raw)
    assert r.status == status and r.dnr


async def test_volatile_write_cache_off_makes_writes_fua() -> None:
    env = make_env()
    admin, cntlid = await bring_up_admin(env)
    io, _ = await connect_io(env, cntlid, 1)
    seen: list[bool] = []
    original = env.ram512.write

    async def spy(lba: int, data: object, fua: bool = False) -> None:
        seen.append(fua)
        await original(lba, data, fua)  # type: ignore[arg-type]

    env.ram512.write = spy  # type: ignore[method-assign]
    assert (await io.cmd(write(1, 0, 1), bytes(512))).ok
    assert (await admin.cmd(set_features(FeatureId.VOLATILE_WRITE_CACHE, 0))).ok
    assert (await admin.cmd(get_features(FeatureId.VOLATILE_WRITE_CACHE))).cqe.dw0 == 0
    assert (await io.cmd(write(1, 0, 1), bytes(512))).ok
    assert (await io.cmd(write(1, 0, 1, fua=True), bytes(512))).ok
    assert seen == [False, True, True]


async def test_aer_limit_and_abort() -> None:
    env = make_env()
    admin, _ = await bring_up_admin(env)
    for cid in range(4):
        await admin.pending(sqe(AdminOpcode.ASYNC_EVENT_REQUEST, cid=100 + cid))
    r = await admin.cmd(sqe(AdminOpcode.ASYNC_EVENT_REQUEST, cid=104))
    assert r.status == (SPECIFIC, CS.ASYNC_EVENT_LIMIT_EXCEEDED)
    r = await admin.cmd(sqe(AdminOpcode.ABORT, cdw10=100 << 16))
    assert r.ok and r.cqe.dw0 & 1  # not aborted
    assert admin.async_responses == []


async def test_keep_alive_command_completes() -> None:
    env = make_env()
    admin, _ = await bring_up_admin(env)
    r = await admin.cmd(sqe(AdminOpcode.KEEP_ALIVE, cid=3), now=1.0)
    assert r.ok and r.cqe.cid == 3
