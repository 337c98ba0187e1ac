"""Random SQEs on every kind of queue: each gets a well-formed completion for its cid (or None
for an Asynchronous Event Request), never an exception, never an Internal Error (which would
mean a handler tripped over its own bug), and the sessions keep answering."""
from __future__ import annotations

import struct
from collections.abc import Coroutine
from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st

from target.controller import QueueSession, Response
from target.nvme.spec import (
    DISCOVERY_NQN,
    NSID_ALL,
    AdminOpcode,
    FeatureId,
    GenericStatus,
    IoOpcode,
    LogPageId,
    Property,
    StatusType,
)
from target.nvme.status import split_status
from tests.unit.controller.helpers import (
    CC_LINUX,
    HOSTNQN,
    SUBNQN,
    Conn,
    connect_data,
    connect_sqe,
    make_env,
    prop_set,
)

ADMIN_OPCODES = [int(op) for op in AdminOpcode] + [0x03, 0x0D, 0x10, 0x80]
IO_OPCODES = [int(op) for op in IoOpcode] + [0x0E, 0x11]
FCTYPES = [0x00, 0x01, 0x04, 0x05, 0x06, 0x08, 0x09]
SMALL_CDW10 = [0, 1, 2, 3, 5, 6, 7, 0x0F, 0x8B, 0x70, 0x00FF0002, 0x03FF0070, 0x01FF0004,
               1 << 31, 0x04, 0x402]
FEATURES = [int(f) for f in FeatureId] + [0x81, 0x55]
LENGTHS = [0, 16, 512, 1024, 4096, 8192, 1 << 20, 0xFFFFFFFF]


def run(coro: Coroutine[Any, Any, Response | None]) -> Response | None:
    """Step a handler that never suspends (RAM devices) to its result."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("a RAM-backed command suspended")


@st.composite
def sqes(draw: st.DrawFn, io: bool) -> bytes:
    opcodes = IO_OPCODES if io else ADMIN_OPCODES
    raw = bytearray(draw(st.binary(min_size=64, max_size=64)))
    if io and draw(st.booleans()):  # a well-formed read or write
        nsid, shift = draw(st.sampled_from([(1, 9), (2, 12)]))
        nlb = draw(st.integers(1, 16))
        slba = draw(st.integers(0, ((1 << 20) >> shift) + 4))
        length = nlb << shift if draw(st.integers(0, 5)) else draw(st.sampled_from(LENGTHS))
        struct.pack_into("<BBHI24xI3xBQI", raw, 0, draw(st.sampled_from([1, 2, 2, 8, 0])),
                         0x40, draw(st.integers(0, 0xFFFF)), nsid, length, 0x5A, slba,
                         (nlb - 1) | draw(st.sampled_from([0, 1 << 30, 1 << 25])))
        return bytes(raw)
    if not io and draw(st.integers(0, 2)) == 0:
        if draw(st.booleans()):  # a well-formed Identify
            struct.pack_into("<BBHI24xI3xBII", raw, 0, AdminOpcode.IDENTIFY, 0x40,
                             draw(st.integers(0, 0xFFFF)), draw(st.sampled_from([0, 1, 2, 9])),
                             4096, 0x5A, draw(st.sampled_from([0, 1, 2, 3, 5, 6, 7, 0x1F])), 0)
        else:  # a well-formed Get Log Page
            nbytes = draw(st.sampled_from([64, 512, 1024, 4096, 8192]))
            lid = draw(st.sampled_from([1, 2, 3, 4, 5, 0x70, 0x42]))
            rae = draw(st.booleans())
            struct.pack_into("<BBHI24xI3xBIIIII", raw, 0, AdminOpcode.GET_LOG_PAGE, 0x40,
                             draw(st.integers(0, 0xFFFF)), draw(st.sampled_from([0, 1, NSID_ALL])),
                             nbytes, 0x5A, lid | rae << 15 | (nbytes // 4 - 1) << 16, 0,
                             draw(st.sampled_from([0, 512, 1024, 4100])), 0, 0)
        return bytes(raw)
    if draw(st.integers(0, 3)):  # mostly plausible commands; sometimes pure noise
        raw[0] = draw(st.sampled_from(opcodes))
        raw[1] = draw(st.sampled_from([0x40, 0x40, 0x40, 0x00, 0x41, 0x80]))
        struct.pack_into("<I", raw, 4, draw(st.sampled_from([0, 1, 2, 3, NSID_ALL, 5000])))
        if raw[0] == 0x7F:
            raw[4] = draw(st.sampled_from(FCTYPES))
        struct.pack_into("<I", raw, 32, draw(st.sampled_from(LENGTHS)))
        raw[39] = draw(st.sampled_from([0x5A, 0x01, 0x00]))
        cdw10 = draw(st.sampled_from(SMALL_CDW10) | st.integers(0, 0xFFFFFFFF))
        if raw[0] in (AdminOpcode.SET_FEATURES, AdminOpcode.GET_FEATURES):
            cdw10 = draw(st.sampled_from(FEATURES)) | draw(st.sampled_from([0, 1, 2, 3, 7])) << 8
        struct.pack_into("<I", raw, 40, cdw10)
        struct.pack_into("<II", raw, 44, draw(st.sampled_from([0, 1, 0x3F, 0x100, 1 << 31])),
                         draw(st.integers(0, 0xFFFF) | st.integers(0, 0xFFFFFFFF)))
    return bytes(raw)


def data_blobs() -> st.SearchStrategy[bytes | None]:
    return st.none() | st.binary(max_size=64) | st.sampled_from(
        [bytes(512), bytes(1024), bytes(4096), b"\x5a" * 8192])


commands = st.lists(st.tuples(st.sampled_from(["admin", "io", "fresh", "disc"]),
                              st.data(), data_blobs(),
                              st.sampled_from([0] * 12 + [0x0F, 0x02, 0x22]),
                              st.floats(0, 0.5)), min_size=5, max_size=30)


def check(session: QueueSession, raw: bytes, response: Response | None) -> None:
    if response is None:
        event("deferred (AER)")
        assert raw[0] == AdminOpcode.ASYNC_EVENT_REQUEST and session.qid == 0, raw[:8].hex()
        return
    assert isinstance(response.cqe, bytes) and len(response.cqe) == 16
    _dw0, _dw1, _sqhd, sqid, cid, status = struct.unpack("<IIHHHH", response.cqe)
    assert cid == struct.unpack_from("<H", raw, 2)[0]
    assert status & 1 == 0  # phase bit left to the transport
    assert sqid in (0, 1)
    sct, sc, _dnr = split_status(status)
    event(f"qid {session.qid} opcode {raw[0]:#x}: status {sct:#x}/{sc:#x}")
    assert (sct, sc) != (StatusType.GENERIC, GenericStatus.INTERNAL_ERROR), raw.hex()
    if status == 0 and response.data is not None:
        assert len(response.data) == struct.unpack_from("<I", raw, 32)[0]


def connect(env, subnqn: str, qid: int = 0, cntlid: int = 0xFFFF,  # type: ignore[no-untyped-def]
            now: float = 0.0, must: bool = True) -> Conn:
    conn = Conn.open(env.target, env.listener)
    r = run(conn.session.handle_command(connect_sqe(qid, 31 if qid == 0 else 127, 5000),
                                        connect_data(subnqn, HOSTNQN, cntlid), 0, now))
    assert r is not None
    assert not must or r.cqe[14:16] == b"\0\0"
    if qid == 0 and r.cqe[14:16] == b"\0\0":
        assert run(conn.session.handle_command(prop_set(Property.CC, CC_LINUX), None, 0, now))
    return conn


def reconnect(env, conns: dict[str, Conn], now: float) -> None:  # type: ignore[no-untyped-def]
    """Replace sessions the commands closed, so that later commands meet live queues."""
    if conns["admin"].closed:
        conns["admin"] = connect(env, SUBNQN, now=now)
        conns["io"].session.connection_lost()
    if conns["io"].closed:
        ctrl = conns["admin"].session.controller
        if ctrl is not None:
            conns["io"] = connect(env, SUBNQN, 1, ctrl.cntlid, now, must=False)
    if conns["disc"].closed:
        conns["disc"] = connect(env, DISCOVERY_NQN, now=now)


@given(commands)
def test_random_commands_always_complete_well_formed(cmds: list) -> None:  # type: ignore[type-arg]
    env = make_env()
    admin = connect(env, SUBNQN)
    cntlid = admin.session.controller.cntlid  # type: ignore[union-attr]
    conns = {"admin": admin, "io": connect(env, SUBNQN, 1, cntlid),
             "disc": connect(env, DISCOVERY_NQN), "fresh": Conn.open(env.target, env.listener)}
    now = 0.0
    for kind, data_strategy, blob, data_status, dt in cmds:
        conn = conns[kind]
        raw = data_strategy.draw(sqes(kind == "io"))
        if kind == "io" and raw[0] in (IoOpcode.WRITE, IoOpcode.DATASET_MANAGEMENT) \
                and data_strategy.draw(st.booleans()):
            blob = bytes(struct.unpack_from("<I", raw, 32)[0] & 0xFFFF)  # the SGL's length
        now += dt
        response = run(conn.session.handle_command(raw, None if blob is None else memoryview(blob),
                                                   data_status, now))
        check(conn.session, raw, response)
        for other in conns.values():
            deadline = other.session.next_deadline()
            assert deadline is None or isinstance(deadline, float)
            if deadline is not None and deadline <= now:
                other.session.handle_timer(now)
        reconnect(env, conns, now)
    # Whatever happened, a fresh host can still connect and do I/O.
    survivor = connect(env, SUBNQN)
    assert not survivor.closed
    lid = LogPageId.ERROR_INFORMATION
    r = run(survivor.session.handle_command(
        struct.pack("<BBHI24xI3xBIIII8x", AdminOpcode.GET_LOG_PAGE, 0x40, 7, 0, 64, 0x5A,
                    lid | (15 << 16), 0, 0, 0), None, 0, now))
    assert r is not None and r.cqe[14:16] == b"\0\0"
