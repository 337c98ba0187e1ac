"""NVMe/TCP PDUs: layouts, values, and ``pull_x``/``push_x`` codecs for all nine PDU types.

Layouts follow the NVMe/TCP Transport Specification 1.0, "PDU definitions" (and
include/linux/nvme-tcp.h). Every PDU starts with the 8-byte common header (CH): type u8,
flags u8, hlen u8, pdo u8, plen u32 (the whole PDU on the wire: header, header digest,
padding, data, data digest). All multi-byte fields are little-endian. The termination requests
carry FEI at byte 10, as the specification and SPDK lay it out (the kernel's C struct would
align it to 12; Linux reads only FES).

Wire order of a PDU::

    CH + PSH (hlen bytes) | HDGST (4, if flags.HDGSTF) | PAD (to pdo) | DATA | DDGST (4, if DDGSTF)

Rules of this module:
- Values are frozen dataclasses with slots; codecs come in pairs ``push_x(pdu, ...) -> bytes``
  and ``pull_x(buf) -> X``. Digests and padding are wire options, not part of the value:
  ``push_x`` takes ``hdgst``/``ddgst``/``pda`` (the *receiver's* PDU data alignment, 0's based
  dwords) and sets the flags; ``pull_x`` follows the flags it reads and verifies the digests.
- ``pull_pdu(buf)`` frames: it returns ``None`` while ``buf`` holds less than a whole PDU, or
  ``(pdu, nbytes)`` once it does, leaving trailing bytes alone. Malformed input raises a
  :class:`TransportError` carrying the fatal error status (FES) and the
  fatal error information (FEI: the byte offset of the offending header field) a peer would
  send in a termination request. A data digest mismatch is not fatal (the
  receiver may fail just the command) and raises :class:`DataDigestError` carrying the decoded PDU.
- Negotiated state (which digests are on, CPDA/HPDA alignment, MAXH2CDATA) is checked by the
  queues (``target.tcp.queue``, ``target.tcp.host``), not here: the codec decodes any PDU that is
  self-consistent. The hot path of the queues uses the ``struct.Struct`` objects below directly.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from target.tcp.digest import DIGEST, DIGEST_LEN, crc32c

Buffer = bytes | bytearray | memoryview


class PduType(IntEnum):  # the PDU-type field of the CH
    IC_REQ = 0x0
    IC_RESP = 0x1
    H2C_TERM_REQ = 0x2
    C2H_TERM_REQ = 0x3
    CAPSULE_CMD = 0x4
    CAPSULE_RESP = 0x5
    H2C_DATA = 0x6
    C2H_DATA = 0x7
    R2T = 0x9


# The same values as plain ints for the hot paths: an IntEnum member costs a class attribute
# lookup (~70 ns here) at every use, and struct.pack converts it through __index__.
(PDU_IC_REQ, PDU_IC_RESP, PDU_H2C_TERM_REQ, PDU_C2H_TERM_REQ, PDU_CAPSULE_CMD, PDU_CAPSULE_RESP,
 PDU_H2C_DATA, PDU_C2H_DATA, PDU_R2T) = (int(t) for t in PduType)

# CH.flags. DATA_LAST and DATA_SUCCESS only on H2CData/C2HData.
HDGSTF = 0x01
DDGSTF = 0x02
DATA_LAST = 0x04
DATA_SUCCESS = 0x08

# ICReq/ICResp DGST field.
HDGST_ENABLE = 0x01
DDGST_ENABLE = 0x02


class Fes(IntEnum):  # fatal error status of a termination request (H2CTermReq/C2HTermReq)
    INVALID_PDU_HEADER = 0x01  # FEI: byte offset of the offending header field
    PDU_SEQUENCE_ERROR = 0x02
    HEADER_DIGEST_ERROR = 0x03
    DATA_OUT_OF_RANGE = 0x04
    DATA_LIMIT_EXCEEDED = 0x05  # also "R2T limit exceeded"
    UNSUPPORTED_PARAMETER = 0x06  # FEI: byte offset of the parameter


R2T_LIMIT_EXCEEDED = Fes.DATA_LIMIT_EXCEEDED

PFV_1_0 = 0
CH_LEN = 8
IC_PDU_LEN = 128  # hlen and plen of ICReq and ICResp
TERM_HLEN = 24
TERM_MAX_DATA = 128  # the offending header copied into a termination request
TERM_MAX_PLEN = TERM_HLEN + TERM_MAX_DATA
CMD_HLEN = 72  # CH + the 64-byte SQE
RESP_HLEN = 24  # CH + the 16-byte CQE
DATA_HLEN = 24  # H2CData, C2HData, R2T
PDA_MAX = 31  # HPDA and CPDA: 0..31, 0's based dwords
MIN_MAXH2CDATA = 4096  # the Linux host refuses a smaller MAXH2CDATA (drivers/nvme/host/tcp.c)

HLEN: dict[int, int] = {
    PduType.IC_REQ: IC_PDU_LEN, PduType.IC_RESP: IC_PDU_LEN,
    PduType.H2C_TERM_REQ: TERM_HLEN, PduType.C2H_TERM_REQ: TERM_HLEN,
    PduType.CAPSULE_CMD: CMD_HLEN, PduType.CAPSULE_RESP: RESP_HLEN,
    PduType.H2C_DATA: DATA_HLEN, PduType.C2H_DATA: DATA_HLEN, PduType.R2T: DATA_HLEN,
}
# PDU types that may carry a header digest, and those that may carry data (with a data digest).
DIGEST_TYPES = frozenset({PduType.CAPSULE_CMD, PduType.CAPSULE_RESP, PduType.H2C_DATA,
                          PduType.C2H_DATA, PduType.R2T})
DATA_TYPES = frozenset({PduType.CAPSULE_CMD, PduType.H2C_DATA, PduType.C2H_DATA})

# Field offsets inside a PDU, for FEI values.
FEI_TYPE, FEI_FLAGS, FEI_HLEN, FEI_PDO, FEI_PLEN = 0, 1, 2, 3, 4
FEI_PFV, FEI_PDA, FEI_DGST, FEI_MAXR2T = 8, 10, 11, 12  # ICReq/ICResp
FEI_CCCID, FEI_TTAG, FEI_DATAO, FEI_DATAL = 8, 10, 12, 16  # H2CData/C2HData/R2T
FEI_SQE = 8  # CapsuleCmd: the SQE starts here; SQE byte n is at FEI_SQE + n

# Structs: the hot path packs and unpacks whole headers with one call.
CH = struct.Struct("<BBBBI")  # type, flags, hlen, pdo, plen
IC = struct.Struct("<BBBBIHBBI112x")  # CH, pfv, hpda|cpda, dgst, maxr2t|maxh2cdata
TERM = struct.Struct("<BBBBIHI10x")  # CH, fes u16 @8, fei u32 @10 (spec and SPDK layout)
DATA = struct.Struct("<BBBBIHHII4x")  # CH, cccid, ttag, datao|r2to, datal|r2tl
DATA_FIELDS = struct.Struct("<HHII")  # cccid, ttag, datao, datal at offset 8

_ZEROS = bytes(256)


class TransportError(Exception):
    """A fatal NVMe/TCP protocol error: answered with a termination request, then close.

    ``fes`` is the fatal error status (:class:`Fes`), ``fei`` the fatal error information
    (for FES 1 and 6, the byte offset of the offending field in the PDU; otherwise 0).
    """

    def __init__(self, fes: int, fei: int = 0, message: str = "") -> None:
        super().__init__(message or f"NVMe/TCP fatal error (FES {fes}, FEI {fei})")
        self.fes = int(fes)
        self.fei = int(fei)
        self.message = message or str(self.args[0])


class _FixedStatus(TransportError):
    """A TransportError whose FES is fixed by its class: ``Subclass(fei, message)``."""

    FES: ClassVar[Fes]

    def __init__(self, fei: int = 0, message: str = "") -> None:
        super().__init__(self.FES, fei, message)


class InvalidPduHeader(_FixedStatus):
    FES = Fes.INVALID_PDU_HEADER


class PduSequenceError(_FixedStatus):
    FES = Fes.PDU_SEQUENCE_ERROR


class HeaderDigestError(_FixedStatus):
    FES = Fes.HEADER_DIGEST_ERROR


class DataOutOfRange(_FixedStatus):
    FES = Fes.DATA_OUT_OF_RANGE


class DataLimitExceeded(_FixedStatus):
    FES = Fes.DATA_LIMIT_EXCEEDED


class UnsupportedParameter(_FixedStatus):
    FES = Fes.UNSUPPORTED_PARAMETER


_BY_FES: dict[int, type[_FixedStatus]] = {
    int(c.FES): c for c in (InvalidPduHeader, PduSequenceError, HeaderDigestError, DataOutOfRange,
                            DataLimitExceeded, UnsupportedParameter)}


def transport_error(fes: int, fei: int = 0, message: str = "") -> TransportError:
    """The :class:`TransportError` subclass for ``fes`` (the base class for unknown values)."""
    cls = _BY_FES.get(fes)
    if cls is None:
        return TransportError(fes, fei, message)
    return cls(fei, message)


class DataDigestError(Exception):
    """A PDU's data digest does not match its data. Not fatal: the command fails instead."""

    def __init__(self, pdu: Pdu, nbytes: int) -> None:
        super().__init__(f"data digest mismatch in {type(pdu).__name__}")
        self.pdu = pdu
        self.nbytes = nbytes


# -- alignment --------------------------------------------------------------------------------
def pda_bytes(pda: int) -> int:
    """Alignment in bytes for a 0's based dword count (HPDA/CPDA): 0 -> 4, 31 -> 128."""
    return (pda + 1) * 4


def data_offset(hlen: int, hdgst: bool, pda: int) -> int:
    """PDO for a PDU with data: header and header digest, rounded up to the receiver's PDA."""
    end = hlen + (DIGEST_LEN if hdgst else 0)
    align = (pda + 1) * 4
    return -(-end // align) * align


# -- values -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ICReq:  # Initialize Connection Request
    pfv: int = PFV_1_0
    hpda: int = 0
    dgst: int = 0  # HDGST_ENABLE | DDGST_ENABLE
    maxr2t: int = 0  # 0's based: outstanding R2Ts per command the host accepts

    @property
    def hdgst(self) -> bool:
        return bool(self.dgst & HDGST_ENABLE)

    @property
    def ddgst(self) -> bool:
        return bool(self.dgst & DDGST_ENABLE)


@dataclass(frozen=True, slots=True)
class ICResp:  # Initialize Connection Response
    pfv: int = PFV_1_0
    cpda: int = 0
    dgst: int = 0
    maxh2cdata: int = 131072  # bytes of data per H2CData PDU, not 0's based

    @property
    def hdgst(self) -> bool:
        return bool(self.dgst & HDGST_ENABLE)

    @property
    def ddgst(self) -> bool:
        return bool(self.dgst & DDGST_ENABLE)


@dataclass(frozen=True, slots=True)
class H2CTermReq:  # Host to Controller Terminate Connection Request
    fes: int
    fei: int = 0
    hdr: bytes = b""  # the header of the PDU in error, at most 128 bytes


@dataclass(frozen=True, slots=True)
class C2HTermReq:  # Controller to Host Terminate Connection Request
    fes: int
    fei: int = 0
    hdr: bytes = b""


@dataclass(frozen=True, slots=True)
class CapsuleCmd:  # Command Capsule
    sqe: bytes  # 64 bytes
    data: bytes = b""  # in-capsule data


@dataclass(frozen=True, slots=True)
class CapsuleResp:  # Response Capsule
    cqe: bytes  # 16 bytes


@dataclass(frozen=True, slots=True)
class H2CData:  # Host to Controller Data Transfer
    cccid: int
    ttag: int
    datao: int
    data: bytes
    last: bool = True


@dataclass(frozen=True, slots=True)
class C2HData:  # Controller to Host Data Transfer (its TTAG field is reserved)
    cccid: int
    datao: int
    data: bytes
    last: bool = True
    success: bool = False


@dataclass(frozen=True, slots=True)
class R2T:  # Ready to Transfer
    cccid: int
    ttag: int
    r2to: int
    r2tl: int


Pdu = (ICReq | ICResp | H2CTermReq | C2HTermReq | CapsuleCmd | CapsuleResp | H2CData | C2HData
       | R2T)


# -- push -------------------------------------------------------------------------------------
def _with_hdgst(header: bytes, hdgst: bool) -> bytes:
    return header + DIGEST.pack(crc32c(header)) if hdgst else header


def _data_pdu(header_fields: tuple[int | bytes, ...], hlen: int, flags: int, data: Buffer, *,
              hdgst: bool, ddgst: bool, pda: int, pack: struct.Struct) -> bytes:
    """Build a PDU whose header comes from ``pack`` (first five fields: the CH) and which
    carries ``data`` (possibly empty) at the receiver's alignment."""
    ptype = int(header_fields[0])
    if hdgst:
        flags |= HDGSTF
    hd = DIGEST_LEN if hdgst else 0
    if len(data):
        if ddgst:
            flags |= DDGSTF
        pdo = data_offset(hlen, hdgst, pda)
        plen = pdo + len(data) + (DIGEST_LEN if ddgst else 0)
    else:
        pdo, plen = 0, hlen + hd
    header = pack.pack(ptype, flags, hlen, pdo, plen, *header_fields[1:])
    parts = [_with_hdgst(header, hdgst)]
    if len(data):
        parts.append(_ZEROS[:pdo - hlen - hd])
        parts.append(bytes(data))
        if ddgst:
            parts.append(DIGEST.pack(crc32c(data)))
    return b"".join(parts)


def push_icreq(pdu: ICReq) -> bytes:
    return IC.pack(PduType.IC_REQ, 0, IC_PDU_LEN, 0, IC_PDU_LEN, pdu.pfv, pdu.hpda, pdu.dgst,
                   pdu.maxr2t)


def push_icresp(pdu: ICResp) -> bytes:
    return IC.pack(PduType.IC_RESP, 0, IC_PDU_LEN, 0, IC_PDU_LEN, pdu.pfv, pdu.cpda, pdu.dgst,
                   pdu.maxh2cdata)


def _push_term(ptype: int, pdu: H2CTermReq | C2HTermReq) -> bytes:
    hdr = bytes(pdu.hdr[:TERM_MAX_DATA])
    return TERM.pack(ptype, 0, TERM_HLEN, 0, TERM_HLEN + len(hdr), pdu.fes, pdu.fei) + hdr


def push_h2c_term_req(pdu: H2CTermReq) -> bytes:
    return _push_term(PduType.H2C_TERM_REQ, pdu)


def push_c2h_term_req(pdu: C2HTermReq) -> bytes:
    return _push_term(PduType.C2H_TERM_REQ, pdu)


_CMD_CH = struct.Struct("<BBBBI64s")
_RESP_CH = struct.Struct("<BBBBI16s")


def push_capsule_cmd(pdu: CapsuleCmd, *, hdgst: bool = False, ddgst: bool = False,
                     pda: int = 0) -> bytes:
    """``pda``: the controller's CPDA."""
    if len(pdu.sqe) != 64:
        raise ValueError(f"an SQE is 64 bytes, got {len(pdu.sqe)}")
    return _data_pdu((PduType.CAPSULE_CMD, bytes(pdu.sqe)), CMD_HLEN, 0, pdu.data, hdgst=hdgst,
                     ddgst=ddgst, pda=pda, pack=_CMD_CH)


def push_capsule_resp(pdu: CapsuleResp, *, hdgst: bool = False) -> bytes:
    if len(pdu.cqe) != 16:
        raise ValueError(f"a CQE is 16 bytes, got {len(pdu.cqe)}")
    header = _RESP_CH.pack(PduType.CAPSULE_RESP, HDGSTF if hdgst else 0, RESP_HLEN, 0,
                           RESP_HLEN + (DIGEST_LEN if hdgst else 0), bytes(pdu.cqe))
    return _with_hdgst(header, hdgst)


def push_h2c_data(pdu: H2CData, *, hdgst: bool = False, ddgst: bool = False,
                  pda: int = 0) -> bytes:
    """``pda``: the controller's CPDA."""
    flags = DATA_LAST if pdu.last else 0
    return _data_pdu((PduType.H2C_DATA, pdu.cccid, pdu.ttag, pdu.datao, len(pdu.data)),
                     DATA_HLEN, flags, pdu.data, hdgst=hdgst, ddgst=ddgst, pda=pda, pack=DATA)


def push_c2h_data(pdu: C2HData, *, hdgst: bool = False, ddgst: bool = False,
                  pda: int = 0) -> bytes:
    """``pda``: the host's HPDA."""
    flags = (DATA_LAST if pdu.last else 0) | (DATA_SUCCESS if pdu.success else 0)
    return _data_pdu((PduType.C2H_DATA, pdu.cccid, 0, pdu.datao, len(pdu.data)), DATA_HLEN,
                     flags, pdu.data, hdgst=hdgst, ddgst=ddgst, pda=pda, pack=DATA)


def push_r2t(pdu: R2T, *, hdgst: bool = False) -> bytes:
    header = DATA.pack(PduType.R2T, HDGSTF if hdgst else 0, DATA_HLEN, 0,
                       DATA_HLEN + (DIGEST_LEN if hdgst else 0), pdu.cccid, pdu.ttag, pdu.r2to,
                       pdu.r2tl)
    return _with_hdgst(header, hdgst)


def push_pdu(pdu: Pdu, *, hdgst: bool = False, ddgst: bool = False, pda: int = 0) -> bytes:
    """Any PDU; options that do not apply to its type are ignored."""
    if isinstance(pdu, ICReq):
        return push_icreq(pdu)
    if isinstance(pdu, ICResp):
        return push_icresp(pdu)
    if isinstance(pdu, H2CTermReq):
        return push_h2c_term_req(pdu)
    if isinstance(pdu, C2HTermReq):
        return push_c2h_term_req(pdu)
    if isinstance(pdu, CapsuleCmd):
        return push_capsule_cmd(pdu, hdgst=hdgst, ddgst=ddgst, pda=pda)
    if isinstance(pdu, CapsuleResp):
        return push_capsule_resp(pdu, hdgst=hdgst)
    if isinstance(pdu, H2CData):
        return push_h2c_data(pdu, hdgst=hdgst, ddgst=ddgst, pda=pda)
    if isinstance(pdu, C2HData):
        return push_c2h_data(pdu, hdgst=hdgst, ddgst=ddgst, pda=pda)
    if isinstance(pdu, R2T):
        return push_r2t(pdu, hdgst=hdgst)
    raise TypeError(f"not a PDU: {pdu!r}")


# -- pull -------------------------------------------------------------------------------------
def _frame(buf: Buffer, ptype: int) -> tuple[memoryview, int, int, int]:
    """Check the CH of a whole PDU of type ``ptype`` at the start of ``buf`` and its header
    digest. Returns (the PDU's bytes, flags, data start, data end); data start == end when the
    PDU has no data. The data digest, if any, is verified by :func:`_data`."""
    mv = memoryview(buf)
    if mv.format != "B":
        mv = mv.cast("B")
    if len(mv) < CH_LEN:
        raise ValueError(f"a PDU is at least {CH_LEN} bytes, got {len(mv)}")
    got_type, flags, hlen, pdo, plen = CH.unpack_from(mv, 0)
    if got_type != ptype:
        raise InvalidPduHeader(FEI_TYPE, f"PDU type {got_type:#x}, expected {ptype:#x}")
    if hlen != HLEN[ptype]:
        raise InvalidPduHeader(FEI_HLEN, f"hlen {hlen} for PDU type {ptype:#x}")
    if len(mv) < plen or len(mv) < hlen:
        raise ValueError(f"truncated PDU: {len(mv)} of {max(plen, hlen)} bytes")
    hd = DIGEST_LEN if (flags & HDGSTF and ptype in DIGEST_TYPES) else 0
    hdr_end = hlen + hd
    if ptype in (PduType.IC_REQ, PduType.IC_RESP):
        if plen != IC_PDU_LEN:
            raise InvalidPduHeader(FEI_PLEN, f"plen {plen} for an IC PDU")
        return mv[:plen], flags, plen, plen
    if ptype in (PduType.H2C_TERM_REQ, PduType.C2H_TERM_REQ):
        if plen < TERM_HLEN or plen > TERM_MAX_PLEN:
            raise InvalidPduHeader(FEI_PLEN, f"plen {plen} for a termination request")
        return mv[:plen], flags, TERM_HLEN, plen
    if plen < hdr_end:
        raise InvalidPduHeader(FEI_PLEN, f"plen {plen} shorter than the header ({hdr_end})")
    if hd and mv[hlen:hdr_end] != DIGEST.pack(crc32c(mv[:hlen])):
        raise HeaderDigestError(0, "header digest mismatch")
    if plen == hdr_end:
        return mv[:plen], flags, plen, plen
    if ptype not in DATA_TYPES:
        raise InvalidPduHeader(FEI_PLEN, f"plen {plen}: PDU type {ptype:#x} carries no data")
    dd = DIGEST_LEN if flags & DDGSTF else 0
    if pdo < hdr_end or pdo + dd >= plen:
        raise InvalidPduHeader(FEI_PDO, f"pdo {pdo} with hlen {hlen}, plen {plen}")
    return mv[:plen], flags, pdo, plen - dd


def _data(pdu_bytes: memoryview, flags: int, start: int, end: int) -> tuple[bytes, bool]:
    """(the data, whether its digest is right) of a PDU framed by :func:`_frame`."""
    data = pdu_bytes[start:end]
    ok = True
    if start < end and flags & DDGSTF:
        ok = pdu_bytes[end:end + DIGEST_LEN] == DIGEST.pack(crc32c(data))
    return data.tobytes(), ok


def pull_icreq(buf: Buffer) -> ICReq:
    mv, _, _, _ = _frame(buf, PduType.IC_REQ)
    _, _, _, _, _, pfv, hpda, dgst, maxr2t = IC.unpack_from(mv, 0)
    return ICReq(pfv, hpda, dgst, maxr2t)


def pull_icresp(buf: Buffer) -> ICResp:
    mv, _, _, _ = _frame(buf, PduType.IC_RESP)
    _, _, _, _, _, pfv, cpda, dgst, maxh2cdata = IC.unpack_from(mv, 0)
    return ICResp(pfv, cpda, dgst, maxh2cdata)


def pull_h2c_term_req(buf: Buffer) -> H2CTermReq:
    mv, _, start, end = _frame(buf, PduType.H2C_TERM_REQ)
    fes, fei = TERM.unpack_from(mv, 0)[5:]
    return H2CTermReq(fes, fei, mv[start:end].tobytes())


def pull_c2h_term_req(buf: Buffer) -> C2HTermReq:
    mv, _, start, end = _frame(buf, PduType.C2H_TERM_REQ)
    fes, fei = TERM.unpack_from(mv, 0)[5:]
    return C2HTermReq(fes, fei, mv[start:end].tobytes())


def _checked(pdu: Pdu, ok: bool, mv: memoryview) -> Pdu:
    if not ok:
        raise DataDigestError(pdu, len(mv))
    return pdu


def pull_capsule_cmd(buf: Buffer) -> CapsuleCmd:
    mv, flags, start, end = _frame(buf, PduType.CAPSULE_CMD)
    data, ok = _data(mv, flags, start, end)
    return _checked(CapsuleCmd(mv[CH_LEN:CMD_HLEN].tobytes(), data), ok, mv)  # type: ignore


def pull_capsule_resp(buf: Buffer) -> CapsuleResp:
    mv, _, _, _ = _frame(buf, PduType.CAPSULE_RESP)
    return CapsuleResp(mv[CH_LEN:RESP_HLEN].tobytes())


def _data_header(mv: memoryview, start: int, end: int) -> tuple[int, int, int]:
    cccid, ttag, datao, datal = DATA_FIELDS.unpack_from(mv, CH_LEN)
    if datal != end - start:
        raise InvalidPduHeader(FEI_DATAL, f"datal {datal} but {end - start} bytes of data")
    return cccid, ttag, datao


def pull_h2c_data(buf: Buffer) -> H2CData:
    mv, flags, start, end = _frame(buf, PduType.H2C_DATA)
    cccid, ttag, datao = _data_header(mv, start, end)
    data, ok = _data(mv, flags, start, end)
    return _checked(H2CData(cccid, ttag, datao, data, bool(flags & DATA_LAST)),  # type: ignore
                    ok, mv)


def pull_c2h_data(buf: Buffer) -> C2HData:
    mv, flags, start, end = _frame(buf, PduType.C2H_DATA)
    cccid, _, datao = _data_header(mv, start, end)
    data, ok = _data(mv, flags, start, end)
    pdu = C2HData(cccid, datao, data, bool(flags & DATA_LAST), bool(flags & DATA_SUCCESS))
    return _checked(pdu, ok, mv)  # type: ignore[return-value]


def pull_r2t(buf: Buffer) -> R2T:
    mv, _, _, _ = _frame(buf, PduType.R2T)
    cccid, ttag, r2to, r2tl = DATA_FIELDS.unpack_from(mv, CH_LEN)
    return R2T(cccid, ttag, r2to, r2tl)


_PULL: dict[int, Callable[[memoryview], Pdu]] = {
    PduType.IC_REQ: pull_icreq, PduType.IC_RESP: pull_icresp,
    PduType.H2C_TERM_REQ: pull_h2c_term_req, PduType.C2H_TERM_REQ: pull_c2h_term_req,
    PduType.CAPSULE_CMD: pull_capsule_cmd, PduType.CAPSULE_RESP: pull_capsule_resp,
    PduType.H2C_DATA: pull_h2c_data, PduType.C2H_DATA: pull_c2h_data, PduType.R2T: pull_r2t,
}


def pull_pdu(buf: Buffer, *, max_plen: int = 1 << 24) -> tuple[Pdu, int] | None:
    """Decode the PDU at the start of ``buf``: ``(pdu, its length)``, or None while ``buf`` holds
    only part of it. A ``plen`` above ``max_plen`` raises :class:`DataLimitExceeded` as soon as
    the CH is in, so a caller that buffers until this returns never buffers more than that."""
    mv = memoryview(buf)
    if len(mv) < CH_LEN:
        return None
    ptype, _, hlen, _, plen = CH.unpack_from(mv, 0)
    pull = _PULL.get(ptype)
    if pull is None:
        raise InvalidPduHeader(FEI_TYPE, f"unknown PDU type {ptype:#x}")
    if hlen != HLEN[ptype]:
        raise InvalidPduHeader(FEI_HLEN, f"hlen {hlen} for PDU type {ptype:#x}")
    if plen < hlen:
        raise InvalidPduHeader(FEI_PLEN, f"plen {plen} shorter than hlen {hlen}")
    if plen > max_plen:
        raise DataLimitExceeded(0, f"plen {plen} above the limit {max_plen}")
    if len(mv) < plen:
        return None
    return pull(mv[:plen]), plen
