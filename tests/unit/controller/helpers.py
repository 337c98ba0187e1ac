"""Build SQEs as the Linux host does and drive QueueSessions by hand (time included)."""
from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field

from target.blockdev import RamDevice
from target.controller import QueueSession, Response
from target.host.queue_client import Completion
from target.nvme.spec import (
    CC_EN,
    NSID_ALL,
    SGL_DATA_BLOCK_OFFSET,
    SGL_TRANSPORT_DATA_BLOCK,
    AdminOpcode,
    FabricsType,
    IoOpcode,
    Property,
)
from target.nvme.structs import Sqe, pull_cqe, push_sqe
from target.subsystem import Listener, Subsystem, Target

SUBNQN = "nqn.2024-01.io.sbstore:unit"
OTHER_NQN = "nqn.2024-01.io.sbstore:other"
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000a1"
HOSTNQN2 = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000b2"
HOSTID = bytes(range(16))
CC_LINUX = 0x00460001  # IOCQES 4, IOSQES 6, SHN 0, AMS 0, MPS 0, CSS 0, EN 1
CC_SHUTDOWN = 0x00464001  # the same with SHN = 01b (normal shutdown)


def sqe(opcode: int, *, cid: int = 1, nsid: int = 0, length: int = 0,
        incapsule: bool = False, **cdws: int) -> bytes:
    return push_sqe(Sqe(opcode, cid=cid, nsid=nsid, sgl_length=length,
                        sgl_id=SGL_DATA_BLOCK_OFFSET if incapsule else SGL_TRANSPORT_DATA_BLOCK,
                        **cdws))


def fabrics(fctype: int, *, cid: int = 1, length: int = 0, incapsule: bool = False,
            **cdws: int) -> bytearray:
    raw = bytearray(sqe(0x7F, cid=cid, length=length, incapsule=incapsule, **cdws))
    raw[4] = fctype
    return raw


def connect_sqe(qid: int = 0, sqsize: int = 31, kato_ms: int = 5000, cattr: int = 0,
                cid: int = 1, recfmt: int = 0) -> bytes:
    raw = fabrics(FabricsType.CONNECT, cid=cid, length=1024, incapsule=True)
    struct.pack_into("<HHHBxI", raw, 40, recfmt, qid, sqsize, cattr, kato_ms)
    return bytes(raw)


def connect_data(subnqn: str = SUBNQN, hostnqn: str = HOSTNQN, cntlid: int = 0xFFFF,
                 hostid: bytes = HOSTID) -> memoryview:
    data = bytearray(1024)
    data[0:16] = hostid
    struct.pack_into("<H", data, 16, cntlid)
    data[256:256 + len(subnqn)] = subnqn.encode()
    data[512:512 + len(hostnqn)] = hostnqn.encode()
    return memoryview(data)


def prop_get(offset: int, size8: bool = False, cid: int = 1) -> bytes:
    raw = fabrics(FabricsType.PROPERTY_GET, cid=cid)
    struct.pack_into("<B3xI", raw, 40, 1 if size8 else 0, offset)
    return bytes(raw)


def prop_set(offset: int, value: int, cid: int = 1, size8: bool = False) -> bytes:
    raw = fabrics(FabricsType.PROPERTY_SET, cid=cid)
    struct.pack_into("<B3xIQ", raw, 40, 1 if size8 else 0, offset, value)
    return bytes(raw)


def identify(cns: int, nsid: int = 0, csi: int = 0, cid: int = 1, length: int = 4096) -> bytes:
    return sqe(AdminOpcode.IDENTIFY, cid=cid, nsid=nsid, length=length, cdw10=cns,
               cdw11=csi << 24)


def get_log_page(lid: int, nbytes: int, offset: int = 0, nsid: int = NSID_ALL,
                 rae: bool = False, csi: int = 0, cid: int = 1,
                 length: int | None = None) -> bytes:
    numd = nbytes // 4 - 1
    return sqe(AdminOpcode.GET_LOG_PAGE, cid=cid, nsid=nsid,
               length=nbytes if length is None else length,
               cdw10=lid | (int(rae) << 15) | (numd & 0xFFFF) << 16, cdw11=numd >> 16,
               cdw12=offset & 0xFFFFFFFF, cdw13=offset >> 32, cdw14=csi << 24)


def set_features(fid: int, cdw11: int, save: bool = False, cid: int = 1) -> bytes:
    return sqe(AdminOpcode.SET_FEATURES, cid=cid, cdw10=fid | (int(save) << 31), cdw11=cdw11)


def get_features(fid: int, sel: int = 0, cdw11: int = 0, cid: int = 1,
                 length: int = 0) -> bytes:
    return sqe(AdminOpcode.GET_FEATURES, cid=cid, length=length, cdw10=fid | sel << 8,
               cdw11=cdw11)


def rw(opcode: int, nsid: int, slba: int, nblocks: int, block_size: int, *, cid: int = 1,
       fua: bool = False, length: int | None = None, incapsule: bool = False) -> bytes:
    return sqe(opcode, cid=cid, nsid=nsid,
               length=nblocks * block_size if length is None else length, incapsule=incapsule,
               cdw10=slba & 0xFFFFFFFF, cdw11=slba >> 32,
               cdw12=((nblocks - 1) & 0xFFFF) | (int(fua) << 30))


def read(nsid: int, slba: int, nblocks: int, block_size: int = 512, **kw: int) -> bytes:
    return rw(IoOpcode.READ, nsid, slba, nblocks, block_size, **kw)  # type: ignore[arg-type]


def write(nsid: int, slba: int, nblocks: int, block_size: int = 512, **kw: int) -> bytes:
    return rw(IoOpcode.WRITE, nsid, slba, nblocks, block_size, **kw)  # type: ignore[arg-type]


def write_zeroes(nsid: int, slba: int, nblocks: int, deac: bool = False, cid: int = 1) -> bytes:
    return sqe(IoOpcode.WRITE_ZEROES, cid=cid, nsid=nsid, cdw10=slba & 0xFFFFFFFF,
               cdw11=slba >> 32, cdw12=(nblocks - 1) | (int(deac) << 25))


def dsm_deallocate(nsid: int, ranges: list[tuple[int, int]], cid: int = 1,
                   pad_to: int = 4096) -> tuple[bytes, memoryview]:
    """Dataset Management as Linux sends it: NR ranges in a 4 KiB buffer."""
    data = bytearray(max(pad_to, 16 * len(ranges)))
    for i, (slba, nlb) in enumerate(ranges):
        struct.pack_into("<IIQ", data, 16 * i, 0, nlb, slba)
    cmd = sqe(IoOpcode.DATASET_MANAGEMENT, cid=cid, nsid=nsid, length=len(data),
              incapsule=True, cdw10=len(ranges) - 1, cdw11=1 << 2)
    return cmd, memoryview(data)


def disconnect(cid: int = 1) -> bytes:
    return bytes(fabrics(FabricsType.DISCONNECT, cid=cid))


@dataclass(frozen=True, slots=True)
class Result(Completion):
    """A completion as the session answered it, read like the initiator reads one (``sct``,
    ``sc``, ``dnr``, ``ok``); ``data`` is bytes here, for easy comparison."""

    @property
    def status(self) -> tuple[int, int]:
        return self.sct, self.sc


def to_result(response: Response) -> Result:
    assert isinstance(response.cqe, bytes) and len(response.cqe) == 16
    return Result(pull_cqe(response.cqe), None if response.data is None else bytes(response.data))


@dataclass
class Conn:
    """One queue's connection, as the server would drive it."""

    session: QueueSession
    async_responses: list[Result] = field(default_factory=list)
    close_calls: int = 0

    @classmethod
    def open(cls, target: Target, listener: Listener, local_traddr: str | None = None) -> Conn:
        conn = cls(QueueSession(target, listener, local_traddr=local_traddr))
        conn.session.on_async_response = lambda r: conn.async_responses.append(to_result(r))

        def closed() -> None:
            conn.close_calls += 1

        conn.session.on_close = closed
        return conn

    async def cmd(self, raw: bytes | bytearray, data: bytes | memoryview | None = None,
                  now: float = 0.0, data_status: int = 0) -> Result:
        response = await self.session.handle_command(
            bytes(raw), memoryview(data) if isinstance(data, bytes) else data, data_status, now)
        assert response is not None, "command did not complete"
        return to_result(response)

    async def pending(self, raw: bytes, now: float = 0.0) -> None:
        """A command that must not complete now (an AER)."""
        assert await self.session.handle_command(raw, None, 0, now) is None

    @property
    def closed(self) -> bool:
        return self.session.closed


@dataclass
class Env:
    target: Target
    subsystem: Subsystem
    listener: Listener
    ram512: RamDevice
    ram4k: RamDevice


def make_env(**target_kw: int) -> Env:
    target = Target(**target_kw)  # type: ignore[arg-type]
    listener = target.add_listener("127.0.0.1", 4420)
    sub = Subsystem(SUBNQN, serial="SBUNIT01", model="sbstore unit")
    ram512 = RamDevice(1 << 20, 512, uuid=uuid.UUID(int=0x512))
    ram4k = RamDevice(1 << 20, 4096, uuid=uuid.UUID(int=0x4096))
    sub.add_namespace(ram512)
    sub.add_namespace(ram4k)
    target.add_subsystem(sub)
    return Env(target, sub, listener, ram512, ram4k)


async def bring_up_admin(env: Env, *, hostnqn: str = HOSTNQN, subnqn: str = SUBNQN,
                         kato_ms: int = 5000, now: float = 0.0,
                         listener: Listener | None = None) -> tuple[Conn, int]:
    """Connect the admin queue and enable the controller as Linux does; (conn, cntlid)."""
    conn = Conn.open(env.target, listener or env.listener)
    r = await conn.cmd(connect_sqe(0, 31, kato_ms), connect_data(subnqn, hostnqn), now)
    assert r.ok, r
    cntlid = r.cqe.dw0 & 0xFFFF
    assert (await conn.cmd(prop_get(Property.CAP, size8=True), now=now)).ok
    assert (await conn.cmd(prop_set(Property.CC, CC_LINUX), now=now)).ok
    csts = await conn.cmd(prop_get(Property.CSTS), now=now)
    assert csts.cqe.dw0 & 1, "CSTS.RDY"
    return conn, cntlid


async def connect_io(env: Env, cntlid: int, qid: int, *, hostnqn: str = HOSTNQN,
                     subnqn: str = SUBNQN, sqsize: int = 127, cattr: int = 0,
                     now: float = 0.0) -> tuple[Conn, Result]:
    conn = Conn.open(env.target, env.listener)
    r = await conn.cmd(connect_sqe(qid, sqsize, 0, cattr), connect_data(subnqn, hostnqn, cntlid),
                       now)
    return conn, r


__all__ = ["CC_EN"]
