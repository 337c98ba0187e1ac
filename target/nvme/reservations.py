"""Reservation command data and the Reservation Report data structure (Base 2.0 §7.3-7.6).

Layouts (little-endian):
- Reservation Register data, 16 bytes: CRKEY u64 @0 (current key), NRKEY u64 @8 (new key).
- Reservation Acquire data, 16 bytes: CRKEY u64 @0, PRKEY u64 @8 (the key to preempt).
- Reservation Release data, 8 bytes: CRKEY u64 @0.
- Reservation Status (Report), Figure 492/494: GEN u32 @0, RTYPE u8 @4, REGCTL u16 @5 (number
  of registrants), PTPLS u8 @9; the header is 24 bytes, 64 in the extended structure (EDS).
  Then one entry per registrant: regular (24 bytes): CNTLID u16 @0, RCSTS u8 @2 (bit 0: holds
  the reservation), HOSTID 8 bytes @8, RKEY u64 @16; extended (64 bytes): CNTLID u16 @0, RCSTS
  u8 @2, RKEY u64 @8, HOSTID 16 bytes @16.

- Reservation Notification log page (80h), 64 bytes: Log Page Count u64 @0 (per controller,
  counts every notice ever queued, so a host sees a gap when notices were lost), the type u8
  @8 (target.nvme.spec.ReservationNotice), Number of Available Log Pages u8 @9 (still queued
  after this one, at most 255), NSID u32 @12.

The report is cut to the length the host asked for (NUMD), but REGCTL always counts every
registrant, so a host that asked for too little learns how much to ask for.

Rules: values only, stdlib only, ``pull_*``/``push_*`` in pairs; a short buffer raises
``ValueError`` (the I/O path turns it into an NVMe status).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

KEY_PAIR = struct.Struct("<QQ")
KEY = struct.Struct("<Q")
_HEADER = struct.Struct("<IBHxxB")  # gen, rtype, regctl, (reserved), ptpls
_REGULAR_ENTRY = struct.Struct("<HB5x8sQ")  # cntlid, rcsts, hostid (8 bytes), rkey
_EXTENDED_ENTRY = struct.Struct("<HB5xQ16s32x")  # cntlid, rcsts, rkey, hostid (16 bytes)
REGULAR_HEADER_SIZE, EXTENDED_HEADER_SIZE = 24, 64
REGULAR_ENTRY_SIZE, EXTENDED_ENTRY_SIZE = _REGULAR_ENTRY.size, _EXTENDED_ENTRY.size
RCSTS_HOLDS = 1 << 0


def pull_key_pair(data: bytes | bytearray | memoryview | None) -> tuple[int, int]:
    """(CRKEY, NRKEY) of Register or (CRKEY, PRKEY) of Acquire."""
    if data is None or len(data) < KEY_PAIR.size:
        raise ValueError(f"reservation data is {KEY_PAIR.size} bytes, "
                         f"{0 if data is None else len(data)} sent")
    crkey, other = KEY_PAIR.unpack_from(data)
    return crkey, other


def push_key_pair(crkey: int, other: int) -> bytes:
    return KEY_PAIR.pack(crkey, other)


def pull_key(data: bytes | bytearray | memoryview | None) -> int:
    """CRKEY of Release (a host may send the 16 bytes of the other commands: the rest is
    reserved)."""
    if data is None or len(data) < KEY.size:
        raise ValueError(f"reservation data is {KEY.size} bytes, "
                         f"{0 if data is None else len(data)} sent")
    return int(KEY.unpack_from(data)[0])


def push_key(crkey: int) -> bytes:
    return KEY.pack(crkey)


@dataclass(frozen=True, slots=True)
class RegisteredHost:
    """One registrant in a report. ``hostid`` is 16 bytes (8 in the regular structure)."""

    hostid: bytes
    rkey: int
    holds: bool = False
    cntlid: int = 0xFFFF  # dynamic controller model: registrations belong to hosts


@dataclass(frozen=True, slots=True)
class ReservationStatus:
    generation: int
    rtype: int  # 0: no reservation is held
    ptpl: bool
    registrants: tuple[RegisteredHost, ...] = field(default=())
    regctl: int | None = None  # from pull: the count the target reported (may exceed entries)


def report_size(count: int, extended: bool) -> int:
    """Bytes a complete report of ``count`` registrants takes."""
    if extended:
        return EXTENDED_HEADER_SIZE + count * EXTENDED_ENTRY_SIZE
    return REGULAR_HEADER_SIZE + count * REGULAR_ENTRY_SIZE


def push_report(status: ReservationStatus, nbytes: int, *, extended: bool) -> bytes:
    """The report cut (or zero-padded) to ``nbytes``."""
    full = bytearray(report_size(len(status.registrants), extended))
    _HEADER.pack_into(full, 0, status.generation & 0xFFFFFFFF, status.rtype,
                      len(status.registrants), int(status.ptpl))
    offset = EXTENDED_HEADER_SIZE if extended else REGULAR_HEADER_SIZE
    for reg in status.registrants:
        rcsts = RCSTS_HOLDS if reg.holds else 0
        if extended:
            if len(reg.hostid) != 16:
                raise ValueError("an extended report carries 16-byte host ids")
            _EXTENDED_ENTRY.pack_into(full, offset, reg.cntlid, rcsts, reg.rkey, reg.hostid)
            offset += EXTENDED_ENTRY_SIZE
        else:
            if len(reg.hostid) != 8:
                raise ValueError("a regular report carries 8-byte host ids")
            _REGULAR_ENTRY.pack_into(full, offset, reg.cntlid, rcsts, reg.hostid, reg.rkey)
            offset += REGULAR_ENTRY_SIZE
    if nbytes <= len(full):
        return bytes(full[:nbytes])
    return bytes(full) + bytes(nbytes - len(full))


def pull_report(data: bytes | bytearray | memoryview, *, extended: bool) -> ReservationStatus:
    """Decode a report; only the entries that fit in ``data`` are returned."""
    header = EXTENDED_HEADER_SIZE if extended else REGULAR_HEADER_SIZE
    if len(data) < header:
        raise ValueError(f"a reservation report starts with a {header}-byte header, "
                         f"{len(data)} bytes given")
    gen, rtype, regctl, ptpls = _HEADER.unpack_from(data)
    size = EXTENDED_ENTRY_SIZE if extended else REGULAR_ENTRY_SIZE
    fit = min(regctl, (len(data) - header) // size)
    regs = []
    for i in range(fit):
        offset = header + i * size
        if extended:
            cntlid, rcsts, rkey, hostid = _EXTENDED_ENTRY.unpack_from(data, offset)
        else:
            cntlid, rcsts, hostid, rkey = _REGULAR_ENTRY.unpack_from(data, offset)
        regs.append(RegisteredHost(bytes(hostid), rkey, bool(rcsts & RCSTS_HOLDS), cntlid))
    return ReservationStatus(gen, rtype, bool(ptpls & 1), tuple(regs), regctl)


_NOTIFICATION = struct.Struct("<QBB2xI48x")
NOTIFICATION_LOG_SIZE = _NOTIFICATION.size


@dataclass(frozen=True, slots=True)
class ReservationNotification:
    count: int  # 0: the log is empty
    kind: int
    nsid: int
    available: int = 0


def push_notification_log(entry: ReservationNotification) -> bytes:
    return _NOTIFICATION.pack(entry.count, entry.kind, min(entry.available, 0xFF), entry.nsid)


def pull_notification_log(data: bytes | bytearray | memoryview) -> ReservationNotification:
    if len(data) < NOTIFICATION_LOG_SIZE:
        raise ValueError(f"the reservation notification log is {NOTIFICATION_LOG_SIZE} bytes")
    count, kind, available, nsid = _NOTIFICATION.unpack_from(data)
    return ReservationNotification(count, kind, nsid, available)
