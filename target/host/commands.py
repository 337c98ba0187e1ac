"""SQEs the initiator sends, and the few structures it reads back (Connect data, discovery log).

Layouts: NVMe over Fabrics 1.1 §3.3 (Connect: recfmt u16 @40, qid u16 @42, sqsize u16 @44,
cattr u8 @46, kato u32 @48; fctype in byte 4), §3.4/§3.5 (Property Get/Set: attrib u8 @40,
offset u32 @44, value u64 @48); Base 2.0 §5.16 (Get Log Page: LID, RAE, NUMDL/NUMDU, offset),
§5.17 (Identify: CNS, CNTID), §5.27 (Set Features); NVM Command Set §3.2 (Read/Write: SLBA in
cdw10-11, NLB 0's based in cdw12 15:0, FUA cdw12 bit 30; Write Zeroes DEAC cdw12 bit 25;
Dataset Management NR cdw10 7:0, AD cdw11 bit 2, 16-byte ranges).

What comes back (Identify data, log pages) is decoded by the same codecs that encode it on the
target side: ``target.nvme.identify`` and ``target.nvme.logpages`` (``pull_*``).
"""
from __future__ import annotations

import struct
import uuid as uuid_mod
from typing import Iterable

from target.nvme.dhchap import SECP_DHCHAP, SPSP_DHCHAP
from target.nvme.spec import (
    NQN_FIELD_LEN,
    RESV_CPTPL_SHIFT,
    RESV_IEKEY,
    RESV_REPORT_EDS,
    SGL_DATA_BLOCK_OFFSET,
    SGL_TRANSPORT_DATA_BLOCK,
    AdminOpcode,
    FabricsType,
    IoOpcode,
)
from target.nvme.structs import Sqe

CONNECT_DATA_LEN = 1024
CATTR_DISABLE_SQ_FLOW_CONTROL = 1 << 2
RW_FUA = 1 << 30
WRITE_ZEROES_DEAC = 1 << 25
DSM_DEALLOCATE = 1 << 2
DSM_RANGE = struct.Struct("<IIQ")  # context attributes, length in blocks, starting LBA


def default_hostnqn(hostid: uuid_mod.UUID) -> str:
    return f"nqn.2014-08.org.nvmexpress:uuid:{hostid}"


def connect(cid: int, *, qid: int, sqsize: int, kato_ms: int = 0,
            disable_sq_flow_control: bool = False) -> Sqe:
    """Connect capsule (its 1024-byte data goes in-capsule: see :func:`connect_data`).
    ``sqsize`` is the queue's number of entries; the wire field is 0's based."""
    cattr = CATTR_DISABLE_SQ_FLOW_CONTROL if disable_sq_flow_control else 0
    return Sqe(AdminOpcode.FABRICS, cid, nsid=FabricsType.CONNECT, sgl_length=CONNECT_DATA_LEN,
               sgl_id=SGL_DATA_BLOCK_OFFSET, cdw10=qid << 16, cdw11=(sqsize - 1) | (cattr << 16),
               cdw12=kato_ms)


def connect_data(*, hostid: uuid_mod.UUID, cntlid: int, subnqn: str, hostnqn: str) -> bytes:
    buf = bytearray(CONNECT_DATA_LEN)
    buf[0:16] = hostid.bytes
    struct.pack_into("<H", buf, 16, cntlid)
    buf[256:256 + NQN_FIELD_LEN] = _nqn_field(subnqn)
    buf[512:512 + NQN_FIELD_LEN] = _nqn_field(hostnqn)
    return bytes(buf)


def _nqn_field(nqn: str) -> bytes:
    raw = nqn.encode()
    if len(raw) >= NQN_FIELD_LEN:
        raise ValueError(f"NQN longer than {NQN_FIELD_LEN - 1} bytes: {nqn!r}")
    return raw.ljust(NQN_FIELD_LEN, b"\0")


def property_get(cid: int, offset: int, size: int = 4) -> Sqe:
    return Sqe(AdminOpcode.FABRICS, cid, nsid=FabricsType.PROPERTY_GET, sgl_id=0,
               cdw10=1 if size == 8 else 0, cdw11=offset)


def property_set(cid: int, offset: int, value: int, size: int = 4) -> Sqe:
    return Sqe(AdminOpcode.FABRICS, cid, nsid=FabricsType.PROPERTY_SET, sgl_id=0,
               cdw10=1 if size == 8 else 0, cdw11=offset, cdw12=value & 0xFFFFFFFF,
               cdw13=value >> 32)


def disconnect(cid: int) -> Sqe:
    return Sqe(AdminOpcode.FABRICS, cid, nsid=FabricsType.DISCONNECT, sgl_id=0)


def identify(cid: int, cns: int, nsid: int = 0, cntid: int = 0, csi: int = 0) -> Sqe:
    return Sqe(AdminOpcode.IDENTIFY, cid, nsid=nsid, sgl_length=4096, cdw10=cns | (cntid << 16),
               cdw11=csi << 24)


def get_log_page(cid: int, lid: int, nbytes: int, *, offset: int = 0, nsid: int = 0xFFFFFFFF,
                 rae: bool = False, lsp: int = 0) -> Sqe:
    numd = nbytes // 4 - 1
    return Sqe(AdminOpcode.GET_LOG_PAGE, cid, nsid=nsid, sgl_length=nbytes,
               cdw10=lid | (lsp << 8) | (int(rae) << 15) | ((numd & 0xFFFF) << 16),
               cdw11=numd >> 16, cdw12=offset & 0xFFFFFFFF, cdw13=offset >> 32)


def set_features(cid: int, fid: int, value: int, nsid: int = 0) -> Sqe:
    return Sqe(AdminOpcode.SET_FEATURES, cid, nsid=nsid, sgl_id=0, cdw10=fid, cdw11=value)


def get_features(cid: int, fid: int, nsid: int = 0, sel: int = 0) -> Sqe:
    return Sqe(AdminOpcode.GET_FEATURES, cid, nsid=nsid, sgl_id=0, cdw10=fid | (sel << 8))


def keep_alive(cid: int) -> Sqe:
    return Sqe(AdminOpcode.KEEP_ALIVE, cid, sgl_id=0)


def async_event_request(cid: int) -> Sqe:
    return Sqe(AdminOpcode.ASYNC_EVENT_REQUEST, cid, sgl_id=0)


def read(cid: int, nsid: int, lba: int, nblocks: int, block_size: int) -> Sqe:
    return Sqe(IoOpcode.READ, cid, nsid=nsid, sgl_length=nblocks * block_size,
               cdw10=lba & 0xFFFFFFFF, cdw11=lba >> 32, cdw12=nblocks - 1)


def write(cid: int, nsid: int, lba: int, nblocks: int, block_size: int, fua: bool = False) -> Sqe:
    return Sqe(IoOpcode.WRITE, cid, nsid=nsid, sgl_length=nblocks * block_size,
               cdw10=lba & 0xFFFFFFFF, cdw11=lba >> 32,
               cdw12=(nblocks - 1) | (RW_FUA if fua else 0))


def flush(cid: int, nsid: int) -> Sqe:
    return Sqe(IoOpcode.FLUSH, cid, nsid=nsid, sgl_id=0)


def write_zeroes(cid: int, nsid: int, lba: int, nblocks: int, deallocate: bool = True) -> Sqe:
    return Sqe(IoOpcode.WRITE_ZEROES, cid, nsid=nsid, sgl_id=0, cdw10=lba & 0xFFFFFFFF,
               cdw11=lba >> 32, cdw12=(nblocks - 1) | (WRITE_ZEROES_DEAC if deallocate else 0))


def dataset_management(cid: int, nsid: int, nranges: int) -> Sqe:
    return Sqe(IoOpcode.DATASET_MANAGEMENT, cid, nsid=nsid, sgl_length=nranges * DSM_RANGE.size,
               cdw10=nranges - 1, cdw11=DSM_DEALLOCATE)


def dsm_ranges(ranges: Iterable[tuple[int, int]]) -> bytes:
    return b"".join(DSM_RANGE.pack(0, nblocks, lba) for lba, nblocks in ranges)


def _auth(cid: int, fctype: int, length: int, *, incapsule: bool) -> Sqe:
    # SPSP0 @41, SPSP1 @42, SECP @43 (cdw10 bytes 1..3), TL/AL @44 (cdw11).
    return Sqe(AdminOpcode.FABRICS, cid, nsid=fctype, sgl_length=length,
               sgl_id=SGL_DATA_BLOCK_OFFSET if incapsule else SGL_TRANSPORT_DATA_BLOCK,
               cdw10=(SPSP_DHCHAP << 8) | (SPSP_DHCHAP << 16) | (SECP_DHCHAP << 24),
               cdw11=length)


def auth_send(cid: int, tl: int) -> Sqe:
    """Authentication Send of a ``tl``-byte DH-HMAC-CHAP message (sent in-capsule)."""
    return _auth(cid, FabricsType.AUTH_SEND, tl, incapsule=True)


def auth_receive(cid: int, al: int) -> Sqe:
    """Authentication Receive of up to ``al`` bytes."""
    return _auth(cid, FabricsType.AUTH_RECEIVE, al, incapsule=False)


# --- Reservations (Base 2.0 §7.3-7.6): the data is a key pair (or one key for Release) --------
def resv_register(cid: int, nsid: int, action: int, *, iekey: bool = False,
                  cptpl: int = 0) -> Sqe:
    return Sqe(IoOpcode.RESERVATION_REGISTER, cid, nsid=nsid, sgl_length=16,
               sgl_id=SGL_DATA_BLOCK_OFFSET,
               cdw10=action | (RESV_IEKEY if iekey else 0) | (cptpl << RESV_CPTPL_SHIFT))


def resv_acquire(cid: int, nsid: int, action: int, rtype: int, *, iekey: bool = False) -> Sqe:
    return Sqe(IoOpcode.RESERVATION_ACQUIRE, cid, nsid=nsid, sgl_length=16,
               sgl_id=SGL_DATA_BLOCK_OFFSET,
               cdw10=action | (RESV_IEKEY if iekey else 0) | (rtype << 8))


def resv_release(cid: int, nsid: int, action: int, rtype: int, *, iekey: bool = False) -> Sqe:
    return Sqe(IoOpcode.RESERVATION_RELEASE, cid, nsid=nsid, sgl_length=8,
               sgl_id=SGL_DATA_BLOCK_OFFSET,
               cdw10=action | (RESV_IEKEY if iekey else 0) | (rtype << 8))


def resv_report(cid: int, nsid: int, nbytes: int, *, extended: bool = True) -> Sqe:
    return Sqe(IoOpcode.RESERVATION_REPORT, cid, nsid=nsid, sgl_length=nbytes,
               cdw10=nbytes // 4 - 1, cdw11=RESV_REPORT_EDS if extended else 0)
