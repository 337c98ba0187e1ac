"""DH-HMAC-CHAP messages (NVMe Base 2.0 §8.13.5, in-band authentication): constants and the
byte layouts carried by Authentication Send / Receive, with ``pull_*`` / ``push_*`` codecs.

Rules: layouts only, stdlib only, no cryptography (that is ``target.auth``). All multi-byte
fields are little-endian. Every ``pull_*`` checks that the lengths it is told (HL, DHVLEN) fit
in the bytes it was given and raises :class:`MessageError` otherwise, so a hostile length can
never make a reader look past the payload.

Layouts (Base 2.0 Figures 435-447; the same as Linux include/linux/nvme.h ``nvmf_auth_*``):

- every message starts: auth_type u8 @0 (0 common, 1 DH-HMAC-CHAP), auth_id u8 @1,
  reserved u16, t_id u16 @4 (the transaction id the host chose in Negotiate)
- Negotiate (common, id 00h): sc_c u8 @6, napd u8 @7, then NAPD 64-byte protocol descriptors:
  authid u8 (01h = DH-HMAC-CHAP), reserved, halen u8, dhlen u8, 60-byte id list (hash ids in
  bytes 0..29, DH group ids in bytes 30..59)
- Challenge (01h): hl u8 @6, hashid u8 @8, dhgid u8 @9, dhvlen u16 @10, seqnum u32 @12,
  C1 (hl bytes) @16, then the controller's DH value (dhvlen bytes)
- Reply (02h): hl u8 @6, cvalid u8 @8, dhvlen u16 @10, seqnum u32 @12, R1 (hl) @16,
  C2 (hl), then the host's DH value (dhvlen)
- Success1 (03h): hl u8 @6, rvalid u8 @8, R2 (hl) @16
- Success2 (04h): 16 bytes, nothing but the header
- Failure1 (F1h, controller) / Failure2 (F0h, host), auth_type 0 (common): rescode u8 @6
  (01h: failed), rescode_exp u8 @7 (the reason: :class:`FailureReason`)

The Authentication Send/Receive SQE (Fabrics): fctype @4 (05h Send, 06h Receive), SPSP0 u8
@41, SPSP1 u8 @42, SECP u8 @43 (E9h = DH-HMAC-CHAP), TL (Send) / AL (Receive) u32 @44.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

SECP_DHCHAP = 0xE9  # Security Protocol of Authentication Send/Receive (Base 2.0 §8.13.5.1)
SPSP_DHCHAP = 0x01  # SPSP0 and SPSP1 both 01h for DH-HMAC-CHAP
AUTHID_DHCHAP = 0x01  # protocol descriptor's AUTHID
SC_C_NONE = 0x00  # no secure channel concatenation
MAX_HASH_IDS = 30
MAX_DH_IDS = 30
AUTH_SQE = struct.Struct("<xBBBI")  # @40: reserved, spsp0, spsp1, secp, tl/al


class AuthType(IntEnum):
    COMMON = 0x00
    DHCHAP = 0x01


class MessageId(IntEnum):
    NEGOTIATE = 0x00
    CHALLENGE = 0x01
    REPLY = 0x02
    SUCCESS1 = 0x03
    SUCCESS2 = 0x04
    FAILURE2 = 0xF0
    FAILURE1 = 0xF1


class HashId(IntEnum):  # Base 2.0 Figure 437
    SHA256 = 0x01
    SHA384 = 0x02
    SHA512 = 0x03


class DhGroupId(IntEnum):  # Base 2.0 Figure 438
    NULL = 0x00
    FFDHE2048 = 0x01
    FFDHE3072 = 0x02
    FFDHE4096 = 0x03
    FFDHE6144 = 0x04
    FFDHE8192 = 0x05


class FailureReason(IntEnum):  # rescode_exp of Failure1/Failure2 (Base 2.0 Figure 447)
    FAILED = 0x01
    NOT_USABLE = 0x02
    CONCAT_MISMATCH = 0x03
    HASH_UNUSABLE = 0x04
    DHGROUP_UNUSABLE = 0x05
    INCORRECT_PAYLOAD = 0x06
    INCORRECT_MESSAGE = 0x07


RESCODE_FAILED = 0x01

HASH_LEN: dict[int, int] = {HashId.SHA256: 32, HashId.SHA384: 48, HashId.SHA512: 64}
HASH_NAME: dict[int, str] = {HashId.SHA256: "sha256", HashId.SHA384: "sha384", HashId.SHA512: "sha512"}
DHGROUP_NAME: dict[int, str] = {DhGroupId.NULL: "null", DhGroupId.FFDHE2048: "ffdhe2048",
                DhGroupId.FFDHE3072: "ffdhe3072", DhGroupId.FFDHE4096: "ffdhe4096",
                DhGroupId.FFDHE6144: "ffdhe6144", DhGroupId.FFDHE8192: "ffdhe8192"}

_HEAD = struct.Struct("<BBxxH")  # auth_type, auth_id, reserved, t_id
_NEGOTIATE = struct.Struct("<BBxxHBB")  # + sc_c, napd
_DESCRIPTOR = struct.Struct("<BxBB60s")  # authid, reserved, halen, dhlen, idlist
_CHALLENGE = struct.Struct("<BBxxHBxBBHI")  # + hl, hashid, dhgid, dhvlen, seqnum
_REPLY = struct.Struct("<BBxxHBxBxHI")  # + hl, cvalid, dhvlen, seqnum
_SUCCESS1 = struct.Struct("<BBxxHBxB7x")  # + hl, rvalid
_SUCCESS2 = struct.Struct("<BBxxH10x")
_FAILURE = struct.Struct("<BBxxHBB")  # + rescode, rescode_exp
NEGOTIATE_SIZE = _NEGOTIATE.size + _DESCRIPTOR.size  # with the one descriptor Linux sends
FAILURE_SIZE = _FAILURE.size
SUCCESS2_SIZE = _SUCCESS2.size

Buffer = bytes | bytearray | memoryview


class MessageError(ValueError):
    """The bytes are not a well-formed message; ``reason`` is the Failure code to answer."""

    def __init__(self, message: str,
                 reason: FailureReason = FailureReason.INCORRECT_PAYLOAD) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Negotiate:
    t_id: int
    hash_ids: tuple[int, ...]
    dhgroup_ids: tuple[int, ...]
    sc_c: int = SC_C_NONE


@dataclass(frozen=True, slots=True)
class Challenge:
    t_id: int
    hash_id: int
    dhgroup_id: int
    seqnum: int
    c1: bytes
    dh_value: bytes = b""


@dataclass(frozen=True, slots=True)
class Reply:
    t_id: int
    seqnum: int  # S2: 0 when the host does not authenticate the controller
    r1: bytes
    c2: bytes | None  # None: CVALID clear
    dh_value: bytes = b""


@dataclass(frozen=True, slots=True)
class Success1:
    t_id: int
    hl: int
    r2: bytes | None  # None: RVALID clear


@dataclass(frozen=True, slots=True)
class Failure:
    t_id: int
    reason: int
    from_controller: bool  # Failure1 (controller to host) or Failure2 (host to controller)


def message_kind(data: Buffer) -> tuple[int, int, int]:
    """(auth_type, auth_id, t_id) of any message."""
    if len(data) < _HEAD.size:
        raise MessageError(f"a message is at least {_HEAD.size} bytes, got {len(data)}",
                           FailureReason.INCORRECT_MESSAGE)
    return _HEAD.unpack_from(data, 0)


# --- Negotiate -------------------------------------------------------------------------------
def push_negotiate(msg: Negotiate) -> bytes:
    if len(msg.hash_ids) > MAX_HASH_IDS or len(msg.dhgroup_ids) > MAX_DH_IDS:
        raise ValueError("too many ids for one protocol descriptor")
    ids = bytearray(60)
    ids[:len(msg.hash_ids)] = bytes(msg.hash_ids)
    ids[30:30 + len(msg.dhgroup_ids)] = bytes(msg.dhgroup_ids)
    return (_NEGOTIATE.pack(AuthType.COMMON, MessageId.NEGOTIATE, msg.t_id, msg.sc_c, 1)
            + _DESCRIPTOR.pack(AUTHID_DHCHAP, len(msg.hash_ids), len(msg.dhgroup_ids),
                               bytes(ids)))


def pull_negotiate(data: Buffer) -> Negotiate:
    """The DH-HMAC-CHAP descriptor of a Negotiate. A Negotiate naming no DH-HMAC-CHAP
    descriptor, or more than one (NAPD != 1, as nvmet requires), is refused."""
    if len(data) < NEGOTIATE_SIZE:
        raise MessageError(f"Negotiate is at least {NEGOTIATE_SIZE} bytes, got {len(data)}")
    _type, _id, t_id, sc_c, napd = _NEGOTIATE.unpack_from(data, 0)
    if napd != 1:
        raise MessageError(f"Negotiate with {napd} protocol descriptors",
                           FailureReason.HASH_UNUSABLE)
    authid, halen, dhlen, ids = _DESCRIPTOR.unpack_from(data, _NEGOTIATE.size)
    if authid != AUTHID_DHCHAP:
        raise MessageError(f"protocol descriptor AUTHID {authid:#x}")
    if halen > MAX_HASH_IDS or dhlen > MAX_DH_IDS:
        raise MessageError(f"HALEN {halen} / DHLEN {dhlen} beyond 30")
    return Negotiate(t_id, tuple(ids[:halen]), tuple(ids[30:30 + dhlen]), sc_c)


# --- Challenge -------------------------------------------------------------------------------
def push_challenge(msg: Challenge) -> bytes:
    return (_CHALLENGE.pack(AuthType.DHCHAP, MessageId.CHALLENGE, msg.t_id, len(msg.c1),
                            msg.hash_id, msg.dhgroup_id, len(msg.dh_value), msg.seqnum)
            + msg.c1 + msg.dh_value)


def pull_challenge(data: Buffer) -> Challenge:
    if len(data) < _CHALLENGE.size:
        raise MessageError(f"Challenge is at least {_CHALLENGE.size} bytes, got {len(data)}")
    _t, _i, t_id, hl, hash_id, dhgid, dhvlen, seqnum = _CHALLENGE.unpack_from(data, 0)
    end = _CHALLENGE.size + hl + dhvlen
    if end > len(data):
        raise MessageError(f"Challenge HL {hl} + DHVLEN {dhvlen} beyond {len(data)} bytes")
    c1 = bytes(data[_CHALLENGE.size:_CHALLENGE.size + hl])
    return Challenge(t_id, hash_id, dhgid, seqnum, c1, bytes(data[_CHALLENGE.size + hl:end]))


# --- Reply -----------------------------------------------------------------------------------
def push_reply(msg: Reply) -> bytes:
    hl = len(msg.r1)
    c2 = msg.c2 if msg.c2 is not None else bytes(hl)
    if len(c2) != hl:
        raise ValueError("C2 and R1 differ in length")
    return (_REPLY.pack(AuthType.DHCHAP, MessageId.REPLY, msg.t_id, hl,
                        int(msg.c2 is not None), len(msg.dh_value), msg.seqnum)
            + msg.r1 + c2 + msg.dh_value)


def pull_reply(data: Buffer) -> Reply:
    if len(data) < _REPLY.size:
        raise MessageError(f"Reply is at least {_REPLY.size} bytes, got {len(data)}")
    _t, _i, t_id, hl, cvalid, dhvlen, seqnum = _REPLY.unpack_from(data, 0)
    start = _REPLY.size
    end = start + 2 * hl + dhvlen
    if end > len(data):
        raise MessageError(f"Reply HL {hl} + DHVLEN {dhvlen} beyond {len(data)} bytes")
    r1 = bytes(data[start:start + hl])
    c2 = bytes(data[start + hl:start + 2 * hl]) if cvalid else None
    return Reply(t_id, seqnum, r1, c2, bytes(data[start + 2 * hl:end]))


# --- Success1 / Success2 ---------------------------------------------------------------------
def push_success1(msg: Success1) -> bytes:
    head = _SUCCESS1.pack(AuthType.DHCHAP, MessageId.SUCCESS1, msg.t_id, msg.hl,
                          int(msg.r2 is not None))
    return head + (msg.r2 if msg.r2 is not None else b"")


def pull_success1(data: Buffer) -> Success1:
    if len(data) < _SUCCESS1.size:
        raise MessageError(f"Success1 is at least {_SUCCESS1.size} bytes, got {len(data)}")
    _t, _i, t_id, hl, rvalid = _SUCCESS1.unpack_from(data, 0)
    if not rvalid:
        return Success1(t_id, hl, None)
    if _SUCCESS1.size + hl > len(data):
        raise MessageError(f"Success1 HL {hl} beyond {len(data)} bytes")
    return Success1(t_id, hl, bytes(data[_SUCCESS1.size:_SUCCESS1.size + hl]))


def push_success2(t_id: int) -> bytes:
    return _SUCCESS2.pack(AuthType.DHCHAP, MessageId.SUCCESS2, t_id)


# --- Failure1 / Failure2 ---------------------------------------------------------------------
def push_failure(msg: Failure) -> bytes:
    auth_id = MessageId.FAILURE1 if msg.from_controller else MessageId.FAILURE2
    return _FAILURE.pack(AuthType.COMMON, auth_id, msg.t_id, RESCODE_FAILED, msg.reason)


def pull_failure(data: Buffer) -> Failure:
    if len(data) < _FAILURE.size:
        raise MessageError(f"Failure is {_FAILURE.size} bytes, got {len(data)}")
    _t, auth_id, t_id, _rescode, reason = _FAILURE.unpack_from(data, 0)
    return Failure(t_id, reason, auth_id == MessageId.FAILURE1)


# --- the Authentication Send / Receive command fields ------------------------------------------
def auth_sqe_fields(sqe: Buffer) -> tuple[int, int, int, int]:
    """(spsp0, spsp1, secp, tl-or-al) of an Authentication Send/Receive SQE."""
    return AUTH_SQE.unpack_from(sqe, 40)
