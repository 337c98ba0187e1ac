"""Submission and completion queue entries: layouts, packers and field readers.

SQE (64 bytes, Base 2.0 §4.2 Figure 88): opcode u8 @0, flags u8 @1 (FUSE 1:0, PSDT 7:6),
cid u16 @2, nsid u32 @4, cdw2 @8, cdw3 @12, mptr u64 @16, dptr 16 bytes @24 (an SGL descriptor
on fabrics: address u64 @24, length u32 @32, 3 reserved, identifier u8 @39), cdw10..cdw15 @40..@60.
CQE (16 bytes, §4.6 Figure 90): dw0 u32 @0, dw1 u32 @4, sqhd u16 @8, sqid u16 @10, cid u16 @12,
status u16 @14 (phase bit 0, then the status field).

The hot path reads fields with ``struct.unpack_from`` on the 64 bytes it already has; these
helpers are for everything else (admin commands, tests, the Python initiator).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from target.nvme.spec import SGL_DATA_BLOCK_OFFSET, SGL_TRANSPORT_DATA_BLOCK

SQE_HEAD = struct.Struct("<BBHI")  # opcode, flags, cid, nsid
SGL_DESC = struct.Struct("<QI3xB")  # address, length, identifier
CDWS = struct.Struct("<6I")  # cdw10..cdw15
CQE = struct.Struct("<IIHHHH")  # dw0, dw1, sqhd, sqid, cid, status
PSDT_SGL = 0x40  # flags bits 7:6 = 01: SGLs for the data (the only form fabrics allows)


@dataclass(frozen=True, slots=True)
class Sqe:
    opcode: int
    cid: int = 0
    nsid: int = 0
    flags: int = PSDT_SGL
    cdw2: int = 0
    cdw3: int = 0
    sgl_address: int = 0
    sgl_length: int = 0
    sgl_id: int = SGL_TRANSPORT_DATA_BLOCK
    cdw10: int = 0
    cdw11: int = 0
    cdw12: int = 0
    cdw13: int = 0
    cdw14: int = 0
    cdw15: int = 0


def push_sqe(sqe: Sqe) -> bytes:
    buf = bytearray(64)
    SQE_HEAD.pack_into(buf, 0, sqe.opcode, sqe.flags, sqe.cid, sqe.nsid)
    struct.pack_into("<II", buf, 8, sqe.cdw2, sqe.cdw3)
    SGL_DESC.pack_into(buf, 24, sqe.sgl_address, sqe.sgl_length, sqe.sgl_id)
    CDWS.pack_into(buf, 40, sqe.cdw10, sqe.cdw11, sqe.cdw12, sqe.cdw13, sqe.cdw14, sqe.cdw15)
    return bytes(buf)


def pull_sqe(data: bytes | bytearray | memoryview) -> Sqe:
    if len(data) < 64:
        raise ValueError(f"an SQE is 64 bytes, got {len(data)}")
    opcode, flags, cid, nsid = SQE_HEAD.unpack_from(data, 0)
    cdw2, cdw3 = struct.unpack_from("<II", data, 8)
    address, length, sgl_id = SGL_DESC.unpack_from(data, 24)
    return Sqe(opcode, cid, nsid, flags, cdw2, cdw3, address, length, sgl_id,
               *CDWS.unpack_from(data, 40))


def sqe_with_incapsule_data(sqe: Sqe, nbytes: int) -> Sqe:
    """The same command, its DPTR describing ``nbytes`` of data inside the capsule."""
    return Sqe(sqe.opcode, sqe.cid, sqe.nsid, sqe.flags, sqe.cdw2, sqe.cdw3, 0, nbytes,
               SGL_DATA_BLOCK_OFFSET, sqe.cdw10, sqe.cdw11, sqe.cdw12, sqe.cdw13, sqe.cdw14,
               sqe.cdw15)


@dataclass(frozen=True, slots=True)
class Cqe:
    cid: int
    status: int = 0  # the status word without the phase bit (see status.status_field)
    dw0: int = 0
    dw1: int = 0
    sqhd: int = 0
    sqid: int = 0


def push_cqe(cqe: Cqe) -> bytes:
    return CQE.pack(cqe.dw0 & 0xFFFFFFFF, cqe.dw1 & 0xFFFFFFFF, cqe.sqhd, cqe.sqid, cqe.cid,
                    cqe.status & 0xFFFE)


def pull_cqe(data: bytes | bytearray | memoryview) -> Cqe:
    if len(data) < 16:
        raise ValueError(f"a CQE is 16 bytes, got {len(data)}")
    dw0, dw1, sqhd, sqid, cid, status = CQE.unpack_from(data, 0)
    return Cqe(cid, status & 0xFFFE, dw0, dw1, sqhd, sqid)
