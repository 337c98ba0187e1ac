"""Log pages: Error Information (01h), SMART / Health (02h), Firmware Slot (03h), Changed
Namespace List (04h), Commands Supported and Effects (05h), Asymmetric Namespace Access (0Ch)
and Discovery (70h), as ``push_x``
builders and ``pull_x`` readers.

Rules: pure, stdlib only; a builder returns the whole log page, and the caller slices it by the
command's offset and length (``slice_log``). Layouts: NVMe Base 2.0 Figures 205-210 and 264-265,
agreeing with Linux's ``struct nvme_error_slot``, ``nvme_smart_log``, ``nvme_effects_log`` and
``nvmf_disc_rsp_page_*``.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from target.nvme.spec import (
    DISCOVERY_LOG_ENTRY_SIZE,
    DISCOVERY_LOG_HEADER_SIZE,
    NQN_FIELD_LEN,
    NSID_ALL,
    TCP_SECTYPE_NONE,
    TRTYPE_TCP,
)

ERROR_LOG_ENTRY_SIZE = 64
SMART_LOG_SIZE = 512
FW_SLOT_LOG_SIZE = 512
CHANGED_NS_LIST_SIZE = 4096
CHANGED_NS_LIST_MAX = CHANGED_NS_LIST_SIZE // 4
EFFECTS_LOG_SIZE = 4096
EFFECTS_CSUPP = 1 << 0  # command supported
EFFECTS_LBCC = 1 << 1  # logical block content change


def slice_log(page: bytes, offset: int, length: int) -> bytes:
    """The ``length`` bytes of ``page`` from ``offset``, zero filled past its end (a host may ask
    for more than there is, e.g. when a discovery log shrank between two reads)."""
    part = page[offset:offset + length]
    return part if len(part) == length else part.ljust(length, b"\0")


@dataclass(frozen=True, slots=True)
class ErrorLogEntry:  # Base 2.0 Figure 205
    error_count: int
    sqid: int
    cid: int
    status: int  # the CQE status word without the phase bit
    error_loc: int = 0xFFFF  # byte (and bit) of the SQE at fault; FFFFh: not specific
    lba: int = 0
    nsid: int = 0


def push_error_log(entries: Iterable[ErrorLogEntry]) -> bytes:
    """Entries newest first, as the host reads them."""
    out = bytearray()
    for e in entries:
        rec = bytearray(ERROR_LOG_ENTRY_SIZE)
        # error count, sqid, cid, status field (phase bit 0), parameter error location, lba, nsid
        struct.pack_into("<QHHHHQI", rec, 0, e.error_count, e.sqid, e.cid, e.status & 0xFFFE,
                         e.error_loc, e.lba, e.nsid)
        rec[29] = TRTYPE_TCP  # transport type
        out += rec
    return bytes(out)


def pull_error_log(data: bytes | bytearray | memoryview) -> list[ErrorLogEntry]:
    out = []
    for pos in range(0, len(data) - ERROR_LOG_ENTRY_SIZE + 1, ERROR_LOG_ENTRY_SIZE):
        count, sqid, cid, status, loc, lba, nsid = struct.unpack_from("<QHHHHQI", data, pos)
        if count == 0:
            break
        out.append(ErrorLogEntry(count, sqid, cid, status, loc, lba, nsid))
    return out


@dataclass(frozen=True, slots=True)
class SmartLog:  # Base 2.0 Figure 207 (the counters sbstore keeps)
    critical_warning: int = 0
    temperature_k: int = 0
    avail_spare: int = 100
    spare_thresh: int = 10
    percent_used: int = 0
    data_units_read: int = 0  # thousands of 512-byte units, rounded up
    data_units_written: int = 0
    host_reads: int = 0  # commands
    host_writes: int = 0
    power_cycles: int = 0
    power_on_hours: int = 0
    unsafe_shutdowns: int = 0
    media_errors: int = 0
    num_err_log_entries: int = 0


def data_units(nbytes: int) -> int:
    """SMART data units: thousands of 512-byte units, rounded up."""
    return (nbytes + 512_000 - 1) // 512_000


def push_smart_log(s: SmartLog) -> bytes:
    buf = bytearray(SMART_LOG_SIZE)
    struct.pack_into("<BHBBB", buf, 0, s.critical_warning, s.temperature_k, s.avail_spare,
                     s.spare_thresh, s.percent_used)
    for offset, value in ((32, s.data_units_read), (48, s.data_units_written),
                          (64, s.host_reads), (80, s.host_writes), (112, s.power_cycles),
                          (128, s.power_on_hours), (144, s.unsafe_shutdowns),
                          (160, s.media_errors), (176, s.num_err_log_entries)):
        buf[offset:offset + 16] = value.to_bytes(16, "little")
    return bytes(buf)


def pull_smart_log(data: bytes | bytearray | memoryview) -> SmartLog:
    b = bytes(data[:SMART_LOG_SIZE])
    cw, temp, spare, thresh, used = struct.unpack_from("<BHBBB", b, 0)

    def u128(offset: int) -> int:
        return int.from_bytes(b[offset:offset + 16], "little")

    return SmartLog(cw, temp, spare, thresh, used, u128(32), u128(48), u128(64), u128(80),
                    u128(112), u128(128), u128(144), u128(160), u128(176))


def push_fw_slot_log(firmware: str) -> bytes:
    """Firmware Slot Information (Figure 209): slot 1 active, holding ``firmware``."""
    buf = bytearray(FW_SLOT_LOG_SIZE)
    buf[0] = 0x01  # AFI: running from slot 1
    buf[8:16] = firmware.encode("ascii").ljust(8, b" ")[:8]
    return bytes(buf)


def push_changed_ns_list(nsids: Iterable[int], overflow: bool = False) -> bytes:
    """Changed Namespace List (Figure 210): up to 1024 NSIDs; more than that is reported as a
    single FFFFFFFFh entry."""
    ids = sorted(nsids)
    if overflow or len(ids) > CHANGED_NS_LIST_MAX:
        ids = [NSID_ALL]
    return struct.pack(f"<{len(ids)}I", *ids).ljust(CHANGED_NS_LIST_SIZE, b"\0")


def pull_changed_ns_list(data: bytes | bytearray | memoryview) -> list[int]:
    ids = struct.unpack_from(f"<{len(data) // 4}I", data, 0)
    return [i for i in ids if i]


def push_effects_log(admin_opcodes: Iterable[int], io_opcodes: Iterable[int],
                     io_writes: Iterable[int] = ()) -> bytes:
    """Commands Supported and Effects (Figure 211): ACS[256] then IOCS[256] dwords."""
    buf = bytearray(EFFECTS_LOG_SIZE)
    for op in admin_opcodes:
        struct.pack_into("<I", buf, 4 * op, EFFECTS_CSUPP)
    writes = set(io_writes)
    for op in io_opcodes:
        struct.pack_into("<I", buf, 1024 + 4 * op,
                         EFFECTS_CSUPP | (EFFECTS_LBCC if op in writes else 0))
    return bytes(buf)


ANA_LOG_HEADER_SIZE = 16
ANA_GROUP_DESC_SIZE = 32


@dataclass(frozen=True, slots=True)
class AnaGroupDescriptor:  # Base 2.0 Figure 220
    grpid: int
    state: int  # target.nvme.spec.AnaState
    chgcnt: int = 0
    nsids: tuple[int, ...] = ()


def push_ana_log(chgcnt: int, groups: Iterable[AnaGroupDescriptor], *,
                 groups_only: bool = False) -> bytes:
    """The ANA log page (Figure 219): {chgcnt u64, ngrps u16, 6 reserved}, then per group
    {grpid u32, nnsids u32, chgcnt u64, state u8, 15 reserved, nsid u32 x nnsids}.
    ``groups_only`` (RGO): every descriptor with no NSID list."""
    out = bytearray()
    count = 0
    for g in groups:
        nsids = () if groups_only else tuple(sorted(g.nsids))
        out += struct.pack("<IIQB15x", g.grpid, len(nsids), g.chgcnt, g.state)
        out += struct.pack(f"<{len(nsids)}I", *nsids)
        count += 1
    return struct.pack("<QH6x", chgcnt, count) + bytes(out)


def pull_ana_log(data: bytes | bytearray | memoryview) -> tuple[int, list[AnaGroupDescriptor]]:
    """(chgcnt, descriptors) from an ANA log page, walking it as Linux's nvme_parse_ana_log."""
    b = bytes(data)
    chgcnt, ngrps = struct.unpack_from("<QH", b, 0)
    pos = ANA_LOG_HEADER_SIZE
    groups = []
    for _ in range(ngrps):
        grpid, nnsids, g_chgcnt, state = struct.unpack_from("<IIQB", b, pos)
        pos += ANA_GROUP_DESC_SIZE
        nsids = struct.unpack_from(f"<{nnsids}I", b, pos)
        pos += 4 * nnsids
        groups.append(AnaGroupDescriptor(grpid, state, g_chgcnt, tuple(nsids)))
    return chgcnt, groups


@dataclass(frozen=True, slots=True)
class DiscoveryLogEntry:  # Base 2.0 Figure 265
    subtype: int
    portid: int
    trsvcid: str
    subnqn: str
    traddr: str
    adrfam: int
    trtype: int = TRTYPE_TCP
    treq: int = 0
    cntlid: int = 0xFFFF
    asqsz: int = 32
    eflags: int = 0
    sectype: int = TCP_SECTYPE_NONE


def _text_field(text: str, size: int) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) >= size:
        raise ValueError(f"{text!r} does not fit {size} bytes with its terminating NUL")
    return raw.ljust(size, b"\0")


def push_discovery_entry(e: DiscoveryLogEntry) -> bytes:
    buf = bytearray(DISCOVERY_LOG_ENTRY_SIZE)
    struct.pack_into("<BBBBHHHH", buf, 0, e.trtype, e.adrfam, e.subtype, e.treq, e.portid,
                     e.cntlid, e.asqsz, e.eflags)
    buf[32:64] = _text_field(e.trsvcid, 32)
    buf[256:512] = _text_field(e.subnqn, NQN_FIELD_LEN)
    buf[512:768] = _text_field(e.traddr, 256)
    buf[768] = e.sectype  # TSAS for TCP: sectype
    return bytes(buf)


def push_discovery_log(genctr: int, entries: Iterable[DiscoveryLogEntry]) -> bytes:
    records = [push_discovery_entry(e) for e in entries]
    header = bytearray(DISCOVERY_LOG_HEADER_SIZE)
    struct.pack_into("<QQH", header, 0, genctr, len(records), 0)  # recfmt 0
    return bytes(header) + b"".join(records)


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8")


def pull_discovery_log(data: bytes | bytearray | memoryview) -> tuple[int, list[DiscoveryLogEntry]]:
    """(genctr, entries) from a whole discovery log page."""
    b = bytes(data)
    genctr, numrec, _recfmt = struct.unpack_from("<QQH", b, 0)
    entries = []
    for i in range(numrec):
        pos = DISCOVERY_LOG_HEADER_SIZE + i * DISCOVERY_LOG_ENTRY_SIZE
        rec = b[pos:pos + DISCOVERY_LOG_ENTRY_SIZE]
        if len(rec) < DISCOVERY_LOG_ENTRY_SIZE:
            break
        trtype, adrfam, subtype, treq, portid, cntlid, asqsz, eflags = struct.unpack_from(
            "<BBBBHHHH", rec, 0)
        entries.append(DiscoveryLogEntry(
            subtype=subtype, portid=portid, trsvcid=_cstr(rec[32:64]), subnqn=_cstr(rec[256:512]),
            traddr=_cstr(rec[512:768]), adrfam=adrfam, trtype=trtype, treq=treq, cntlid=cntlid,
            asqsz=asqsz, eflags=eflags, sectype=rec[768]))
    return genctr, entries
