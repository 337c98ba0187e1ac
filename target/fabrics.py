"""Fabrics commands (opcode 7Fh): Connect, Property Get/Set, Disconnect. Parse and validate;
the session (target/controller.py) creates controllers and binds queues.

Rules, as Linux nvmet answers and the Linux host decodes (drivers/nvme/host/fabrics.c
``nvmf_log_connect_error``):
- Connect Invalid Parameters (1h/82h) names the bad field in completion dword 0: the byte
  offset (IPO) in bits 15:0, and bit 16 (IATTR) set when that offset is in the Connect data
  rather than in the SQE. An unknown (or unreachable) subsystem NQN is such an error on the
  data's subnqn; a host not on the ACL gets Connect Invalid Host (1h/84h) with hostnqn.
- recfmt other than 0: Connect Incompatible Format. Connect data shorter than 1024 bytes:
  Data SGL Length Invalid.
- An admin Connect asks for a dynamic controller (cntlid FFFFh, or FFFEh "any static") or names
  a static id (1..FFEFh; taken: Controller Busy). An I/O Connect names an existing cntlid whose
  subsystem NQN and host NQN match, and a qid within the granted number of I/O queues.
- Property Get/Set reach the controller registers (CAP 8 bytes, VS/CC/CSTS 4 bytes); only CC is
  writable. Anything else: Invalid Field.
- Authentication Send/Receive (DH-HMAC-CHAP): SECP must be E9h and SPSP0/SPSP1 01h, TL/AL
  non-zero (Invalid Field naming the byte otherwise, as nvmet); the SGL must move exactly TL
  (Send) or AL (Receive) bytes (Data SGL Length Invalid). The messages themselves are the
  session's Responder's (target/auth).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from target.nvme import dhchap
from target.nvme import status as st
from target.nvme.spec import (
    CNTLID_ANY_STATIC,
    CNTLID_DYNAMIC,
    CNTLID_STATIC_MAX,
    CONNECT_DATA_OFFSET_CNTLID,
    CONNECT_DATA_OFFSET_HOSTNQN,
    CONNECT_DATA_OFFSET_SUBNQN,
    CONNECT_DATA_SIZE,
    CONNECT_IATTR_DATA,
    CONNECT_SQE_OFFSET_QID,
    CONNECT_SQE_OFFSET_RECFMT,
    CONNECT_SQE_OFFSET_SQSIZE,
    NQN_FIELD_LEN,
    FabricsType,
    Property,
)
from target.response import Done

if TYPE_CHECKING:
    from target.controller import Controller
    from target.subsystem import Listener, Subsystem, Target

ADMIN_SQSIZE_MAX = 4095  # Base 2.0: the Admin Submission Queue holds at most 4096 entries

_CONNECT_SQE = struct.Struct("<HHHBxI")  # @40: recfmt, qid, sqsize, cattr, reserved, kato
_PROPERTY = struct.Struct("<B3xIQ")  # @40: attrib, offset, value
_U16 = struct.Struct("<H")


@dataclass(frozen=True, slots=True)
class ConnectCommand:  # Fabrics 1.1 Figures 19 and 20
    qid: int
    sqsize: int  # 0's based
    cattr: int
    kato_ms: int
    hostid: bytes
    cntlid: int
    subnqn: str
    hostnqn: str


def invalid_parameter(message: str, offset: int, *, in_data: bool) -> st.NvmeError:
    """Connect Invalid Parameters naming the field at ``offset`` (of the data or the SQE)."""
    dw0 = (CONNECT_IATTR_DATA if in_data else 0) | offset
    return st.with_result(st.ConnectInvalidParameters(message, error_loc=None if in_data
                                                      else offset), dw0)


def _nqn(data: bytes, offset: int) -> str:
    field = data[offset:offset + NQN_FIELD_LEN]
    end = field.find(0)
    if end < 0:
        raise invalid_parameter("NQN without a terminating NUL", offset, in_data=True)
    try:
        return field[:end].decode("utf-8")
    except UnicodeDecodeError:
        raise invalid_parameter("NQN is not UTF-8", offset, in_data=True) from None


def pull_connect(sqe: bytes, data: bytes | bytearray | memoryview | None) -> ConnectCommand:
    recfmt, qid, sqsize, cattr, kato = _CONNECT_SQE.unpack_from(sqe, 40)
    if recfmt != 0:
        raise st.ConnectIncompatibleFormat(f"Connect record format {recfmt}",
                                           error_loc=CONNECT_SQE_OFFSET_RECFMT)
    if data is None or len(data) < CONNECT_DATA_SIZE:
        raise st.SglDataLengthInvalid(
            f"Connect data is {CONNECT_DATA_SIZE} bytes, got {0 if data is None else len(data)}")
    d = bytes(data[:CONNECT_DATA_SIZE])
    return ConnectCommand(qid=qid, sqsize=sqsize, cattr=cattr, kato_ms=kato, hostid=d[:16],
                          cntlid=_U16.unpack_from(d, CONNECT_DATA_OFFSET_CNTLID)[0],
                          subnqn=_nqn(d, CONNECT_DATA_OFFSET_SUBNQN),
                          hostnqn=_nqn(d, CONNECT_DATA_OFFSET_HOSTNQN))


def _find_subsystem(target: Target, listener: Listener, cmd: ConnectCommand) -> Subsystem:
    subsystem = target.find_subsystem(cmd.subnqn)
    if subsystem is None or not subsystem.reachable_on(listener):
        raise invalid_parameter(f"no subsystem {cmd.subnqn!r} here", CONNECT_DATA_OFFSET_SUBNQN,
                                in_data=True)
    return subsystem


def check_secure_channel(listener: Listener, tls_peer: tuple[str, str] | None,
                         cmd: ConnectCommand) -> None:
    """A queue opened with a TLS PSK serves only the host and subsystem its PSK identity
    names (NVMe/TCP TLS: the identity carries both NQNs); a listener that requires TLS takes
    no Connect over plain TCP (the connection layer refuses those first)."""
    if tls_peer is None:
        if listener.tls == "required":
            raise st.with_result(st.ConnectInvalidHost("TLS is required on this port"),
                                 CONNECT_IATTR_DATA | CONNECT_DATA_OFFSET_HOSTNQN)
        return
    hostnqn, subnqn = tls_peer
    if cmd.hostnqn != hostnqn:
        raise st.with_result(st.ConnectInvalidHost(f"host {cmd.hostnqn!r} connected with the PSK "
                                                   f"of {hostnqn!r}"),
                             CONNECT_IATTR_DATA | CONNECT_DATA_OFFSET_HOSTNQN)
    if cmd.subnqn != subnqn:
        raise invalid_parameter(f"subsystem {cmd.subnqn!r} is not the one the PSK identity names",
                                CONNECT_DATA_OFFSET_SUBNQN, in_data=True)


def _check_sqsize(sqsize: int, limit: int) -> None:
    if not 1 <= sqsize <= limit:
        raise invalid_parameter(f"sqsize {sqsize} outside 1..{limit}", CONNECT_SQE_OFFSET_SQSIZE,
                                in_data=False)


def admit_admin(target: Target, listener: Listener,
                cmd: ConnectCommand) -> tuple[Subsystem, int | None]:
    """Validate an admin-queue Connect: (subsystem, requested static cntlid or None)."""
    subsystem = _find_subsystem(target, listener, cmd)
    if not subsystem.host_allowed(cmd.hostnqn):
        raise st.with_result(st.ConnectInvalidHost(f"host {cmd.hostnqn!r} is not allowed on "
                                                   f"{subsystem.nqn}"),
                             CONNECT_IATTR_DATA | CONNECT_DATA_OFFSET_HOSTNQN)
    _check_sqsize(cmd.sqsize, ADMIN_SQSIZE_MAX)
    if cmd.cntlid in (CNTLID_DYNAMIC, CNTLID_ANY_STATIC):
        return subsystem, None
    if subsystem.is_discovery or not 1 <= cmd.cntlid <= CNTLID_STATIC_MAX:
        raise invalid_parameter(f"cntlid {cmd.cntlid:#x}", CONNECT_DATA_OFFSET_CNTLID,
                                in_data=True)
    return subsystem, cmd.cntlid


def find_io_controller(target: Target, listener: Listener, cmd: ConnectCommand) -> Controller:
    """Validate an I/O-queue Connect: the controller it joins."""
    subsystem = _find_subsystem(target, listener, cmd)
    ctrl = subsystem.controllers.get(cmd.cntlid)
    if ctrl is None or ctrl.hostnqn != cmd.hostnqn or ctrl.deleted:
        raise invalid_parameter(f"no controller {cmd.cntlid} of {cmd.hostnqn!r} in "
                                f"{subsystem.nqn}", CONNECT_DATA_OFFSET_CNTLID, in_data=True)
    if cmd.qid > ctrl.io_queues_allowed:
        raise invalid_parameter(f"qid {cmd.qid} beyond the {ctrl.io_queues_allowed} I/O queues "
                                "granted", CONNECT_SQE_OFFSET_QID, in_data=False)
    if not ctrl.ready:
        raise st.CommandSequenceError("I/O queue Connect to a controller that is not enabled")
    if cmd.qid in ctrl.sessions:
        raise st.CommandSequenceError(f"qid {cmd.qid} is connected already",
                                      error_loc=CONNECT_SQE_OFFSET_QID)
    _check_sqsize(cmd.sqsize, ctrl.mqes)
    return ctrl


def property_get(ctrl: Controller, sqe: bytes) -> Done:
    attrib, offset, _value = _PROPERTY.unpack_from(sqe, 40)
    if attrib & 1:  # 8 bytes
        if offset == Property.CAP:
            return Done(ctrl.cap & 0xFFFFFFFF, ctrl.cap >> 32)
        raise st.InvalidField(f"no 8-byte property at {offset:#x}", error_loc=44)
    if offset == Property.CAP:
        value = ctrl.cap & 0xFFFFFFFF
    elif offset == Property.CAP + 4:
        value = ctrl.cap >> 32
    elif offset == Property.VS:
        value = ctrl.vs
    elif offset == Property.CC:
        value = ctrl.cc
    elif offset == Property.CSTS:
        value = ctrl.csts
    else:
        raise st.InvalidField(f"no 4-byte property at {offset:#x}", error_loc=44)
    return Done(value)


def property_set(ctrl: Controller, sqe: bytes, now: float) -> Done:
    attrib, offset, value = _PROPERTY.unpack_from(sqe, 40)
    if attrib & 1 or offset != Property.CC:
        raise st.InvalidField(f"property at {offset:#x} is not writable", error_loc=44)
    ctrl.set_cc(value & 0xFFFFFFFF, now)
    return Done()


def check_disconnect(sqe: bytes) -> None:
    recfmt = _U16.unpack_from(sqe, 40)[0]
    if recfmt != 0:
        raise st.ConnectIncompatibleFormat(f"Disconnect record format {recfmt}",
                                           error_loc=CONNECT_SQE_OFFSET_RECFMT)


_SGL_LENGTH = struct.Struct("<I")  # DPTR's length field @32


def _check_auth_fields(sqe: bytes) -> int:
    spsp0, spsp1, secp, length = dhchap.auth_sqe_fields(sqe)
    if secp != dhchap.SECP_DHCHAP:
        raise st.InvalidField(f"security protocol {secp:#x}", error_loc=43)
    if spsp0 != dhchap.SPSP_DHCHAP:
        raise st.InvalidField(f"SPSP0 {spsp0:#x}", error_loc=41)
    if spsp1 != dhchap.SPSP_DHCHAP:
        raise st.InvalidField(f"SPSP1 {spsp1:#x}", error_loc=42)
    if not length:
        raise st.InvalidField("zero transfer length", error_loc=44)
    sgl_len = _SGL_LENGTH.unpack_from(sqe, 32)[0]
    if sgl_len != length:
        raise st.SglDataLengthInvalid(f"SGL of {sgl_len} bytes for a {length}-byte transfer")
    return length


def auth_send_payload(sqe: bytes, data: bytes | bytearray | memoryview | None) -> bytes:
    """The message an Authentication Send carries (TL bytes)."""
    tl = _check_auth_fields(sqe)
    if data is None or len(data) < tl:
        raise st.SglDataLengthInvalid(f"TL {tl}, {0 if data is None else len(data)} bytes sent")
    return bytes(data[:tl])


def auth_receive_length(sqe: bytes, max_bytes: int) -> int:
    """AL of an Authentication Receive: how many bytes the host reads."""
    al = _check_auth_fields(sqe)
    if al > max_bytes:
        raise st.InvalidField(f"AL {al} beyond MDTS", error_loc=44)
    return al


def fctype_of(sqe: bytes) -> int:
    return sqe[4]


__all__ = ["ConnectCommand", "FabricsType", "admit_admin", "auth_receive_length",
           "auth_send_payload", "check_disconnect", "fctype_of",
           "find_io_controller", "invalid_parameter", "property_get", "property_set",
           "pull_connect"]
