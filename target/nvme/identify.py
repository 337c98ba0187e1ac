"""Identify data structures: Identify Controller, Identify Namespace, namespace lists and
namespace identification descriptors, as ``push_x`` builders (and ``pull_x`` readers for tests
and the Python host).

Rules: pure functions over plain values, stdlib only, every structure exactly 4096 bytes. The
controller decides *what* to report (target/admin.py); this module only knows *where* each field
sits. Offsets are from NVMe Base 2.0 Figure 275 (controller), NVM Command Set 1.0 Figure 97
(namespace) and Base 2.0 Figure 276/277 (descriptors), and agree with Linux's
``struct nvme_id_ctrl`` / ``struct nvme_id_ns``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from target.nvme.spec import IDENTIFY_DATA_SIZE, NsIdDescriptorType

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def _ascii_field(text: str, size: int) -> bytes:
    """Serial/model/firmware: ASCII, space padded, never truncated silently."""
    raw = text.encode("ascii")
    if len(raw) > size:
        raise ValueError(f"{text!r} is longer than {size} bytes")
    return raw.ljust(size, b" ")


def _nqn_field(nqn: str) -> bytes:
    raw = nqn.encode("utf-8")
    if len(raw) >= 256:
        raise ValueError("an NQN field holds at most 255 bytes")
    return raw.ljust(256, b"\0")


@dataclass(frozen=True, slots=True)
class IdentifyController:
    """The fields of Identify Controller (CNS 01h) that sbstore fills; the rest are zero."""

    cntlid: int
    serial: str
    model: str
    firmware: str
    subnqn: str
    ver: int
    cntrltype: int
    mdts: int = 0  # 2^mdts units of CAP.MPSMIN; 0 = no limit
    cmic: int = 0
    rab: int = 6
    oaes: int = 0
    ctratt: int = 0
    oacs: int = 0
    acl: int = 3  # 0's based
    aerl: int = 3  # 0's based
    frmw: int = 0
    lpa: int = 0
    elpe: int = 0  # 0's based
    kas: int = 0  # 100 ms units
    anatt: int = 0  # ANA transition time, seconds
    anacap: int = 0
    anagrpmax: int = 0  # largest ANA group id
    nanagrpid: int = 0  # number of ANA group ids
    sqes: int = 0
    cqes: int = 0
    maxcmd: int = 0
    nn: int = 0
    oncs: int = 0
    vwc: int = 0
    sgls: int = 0
    mnan: int = 0
    ioccsz: int = 0  # 16-byte units
    iorcsz: int = 0  # 16-byte units
    icdoff: int = 0
    fcatt: int = 0
    msdbd: int = 0
    ofcs: int = 0
    ps0_max_power_cw: int = 0  # power state 0 max power, centiwatts


def push_identify_controller(idc: IdentifyController) -> bytes:
    buf = bytearray(IDENTIFY_DATA_SIZE)
    buf[4:24] = _ascii_field(idc.serial, 20)
    buf[24:64] = _ascii_field(idc.model, 40)
    buf[64:72] = _ascii_field(idc.firmware, 8)
    struct.pack_into("<BxxxBBHIIIII", buf, 72, idc.rab, idc.cmic, idc.mdts, idc.cntlid, idc.ver,
                     0, 0, idc.oaes, idc.ctratt)
    buf[111] = idc.cntrltype
    struct.pack_into("<HBBBBBB", buf, 256, idc.oacs, idc.acl, idc.aerl, idc.frmw, idc.lpa,
                     idc.elpe, 0)  # npss 0: one power state
    _U16.pack_into(buf, 320, idc.kas)
    struct.pack_into("<BBII", buf, 342, idc.anatt, idc.anacap, idc.anagrpmax, idc.nanagrpid)
    struct.pack_into("<BBHIHHBB", buf, 512, idc.sqes, idc.cqes, idc.maxcmd, idc.nn, idc.oncs,
                     0, 0, idc.vwc)  # fuses, fna
    _U32.pack_into(buf, 536, idc.sgls)
    _U32.pack_into(buf, 540, idc.mnan)
    buf[768:1024] = _nqn_field(idc.subnqn)
    struct.pack_into("<IIHBBH", buf, 1792, idc.ioccsz, idc.iorcsz, idc.icdoff, idc.fcatt,
                     idc.msdbd, idc.ofcs)
    _U16.pack_into(buf, 2048, idc.ps0_max_power_cw)  # psd[0].max_power
    return bytes(buf)


def pull_identify_controller(data: bytes | bytearray | memoryview) -> IdentifyController:
    if len(data) < IDENTIFY_DATA_SIZE:
        raise ValueError("Identify Controller data is 4096 bytes")
    b = bytes(data[:IDENTIFY_DATA_SIZE])
    rab, cmic, mdts, cntlid, ver, _r3r, _r3e, oaes, ctratt = struct.unpack_from(
        "<BxxxBBHIIIII", b, 72)
    oacs, acl, aerl, frmw, lpa, elpe, _npss = struct.unpack_from("<HBBBBBB", b, 256)
    sqes, cqes, maxcmd, nn, oncs, _fuses, _fna, vwc = struct.unpack_from("<BBHIHHBB", b, 512)
    ioccsz, iorcsz, icdoff, fcatt, msdbd, ofcs = struct.unpack_from("<IIHBBH", b, 1792)
    anatt, anacap, anagrpmax, nanagrpid = struct.unpack_from("<BBII", b, 342)
    return IdentifyController(
        cntlid=cntlid, serial=b[4:24].decode("ascii").rstrip(" "),
        model=b[24:64].decode("ascii").rstrip(" "), firmware=b[64:72].decode("ascii").rstrip(" "),
        subnqn=b[768:1024].split(b"\0", 1)[0].decode("utf-8"), ver=ver, cntrltype=b[111],
        mdts=mdts, cmic=cmic, rab=rab, oaes=oaes, ctratt=ctratt, oacs=oacs, acl=acl, aerl=aerl,
        frmw=frmw, lpa=lpa, elpe=elpe, kas=_U16.unpack_from(b, 320)[0],
        anatt=anatt, anacap=anacap, anagrpmax=anagrpmax, nanagrpid=nanagrpid, sqes=sqes,
        cqes=cqes, maxcmd=maxcmd, nn=nn, oncs=oncs, vwc=vwc, sgls=_U32.unpack_from(b, 536)[0],
        mnan=_U32.unpack_from(b, 540)[0], ioccsz=ioccsz, iorcsz=iorcsz, icdoff=icdoff,
        fcatt=fcatt, msdbd=msdbd, ofcs=ofcs, ps0_max_power_cw=_U16.unpack_from(b, 2048)[0])


@dataclass(frozen=True, slots=True)
class IdentifyNamespace:
    """Identify Namespace (CNS 00h) with one LBA format (index 0)."""

    nsze: int
    ncap: int
    nuse: int
    lbads: int  # log2 of the block size
    nsfeat: int = 0
    nmic: int = 0
    rescap: int = 0  # reservation capabilities
    dlfeat: int = 0
    nvmcap: int = 0  # bytes
    anagrpid: int = 0  # the namespace's ANA group
    nguid: bytes = bytes(16)
    eui64: bytes = bytes(8)
    extra_lbafs: tuple[int, ...] = field(default=())  # only for pull; push writes one format

    @property
    def block_size(self) -> int:
        """Bytes per logical block of the format in use."""
        return 1 << self.lbads


def push_identify_namespace(idn: IdentifyNamespace) -> bytes:
    buf = bytearray(IDENTIFY_DATA_SIZE)
    # nsze, ncap, nuse, nsfeat, nlbaf (0's based), flbas, mc, dpc, dps, nmic, rescap, fpi, dlfeat
    struct.pack_into("<QQQBBBBBBBBBB", buf, 0, idn.nsze, idn.ncap, idn.nuse, idn.nsfeat, 0, 0,
                     0, 0, 0, idn.nmic, idn.rescap, 0, idn.dlfeat)
    buf[48:64] = idn.nvmcap.to_bytes(16, "little")
    _U32.pack_into(buf, 92, idn.anagrpid)
    if len(idn.nguid) != 16 or len(idn.eui64) != 8:
        raise ValueError("NGUID is 16 bytes, EUI64 8")
    buf[104:120] = idn.nguid
    buf[120:128] = idn.eui64
    struct.pack_into("<HBB", buf, 128, 0, idn.lbads, 0)  # lbaf[0]: ms 0, lbads, rp 0 (best)
    return bytes(buf)


def pull_identify_namespace(data: bytes | bytearray | memoryview) -> IdentifyNamespace:
    if len(data) < IDENTIFY_DATA_SIZE:
        raise ValueError("Identify Namespace data is 4096 bytes")
    b = bytes(data[:IDENTIFY_DATA_SIZE])
    (nsze, ncap, nuse, nsfeat, nlbaf, flbas, _mc, _dpc, _dps, nmic, rescap, _fpi,
     dlfeat) = struct.unpack_from("<QQQBBBBBBBBBB", b, 0)
    lbaf = [struct.unpack_from("<HBB", b, 128 + 4 * i) for i in range(nlbaf + 1)]
    return IdentifyNamespace(
        nsze=nsze, ncap=ncap, nuse=nuse, lbads=lbaf[flbas & 0xF][1], nsfeat=nsfeat, nmic=nmic,
        rescap=rescap, dlfeat=dlfeat, nvmcap=int.from_bytes(b[48:64], "little"),
        anagrpid=_U32.unpack_from(b, 92)[0], nguid=b[104:120],
        eui64=b[120:128], extra_lbafs=tuple(x[1] for x in lbaf[1:]))


def push_namespace_list(nsids: list[int]) -> bytes:
    """Active Namespace ID list (CNS 02h/07h): up to 1024 ascending NSIDs, zero padded."""
    ids = sorted(nsids)[:IDENTIFY_DATA_SIZE // 4]
    return struct.pack(f"<{len(ids)}I", *ids).ljust(IDENTIFY_DATA_SIZE, b"\0")


def pull_namespace_list(data: bytes | bytearray | memoryview) -> list[int]:
    ids = struct.unpack_from(f"<{IDENTIFY_DATA_SIZE // 4}I", data, 0)
    out = []
    for nsid in ids:
        if nsid == 0:
            break
        out.append(nsid)
    return out


def push_ns_id_descriptors(*, eui64: bytes | None = None, nguid: bytes | None = None,
                           uuid: bytes | None = None, csi: int | None = None) -> bytes:
    """Namespace Identification Descriptor list (CNS 03h): {nidt u8, nidl u8, 2 reserved,
    nid[nidl]} records, ended by a zero-length record (the zero padding)."""
    out = bytearray()
    for nidt, value, length in ((NsIdDescriptorType.EUI64, eui64, 8),
                                (NsIdDescriptorType.NGUID, nguid, 16),
                                (NsIdDescriptorType.UUID, uuid, 16),
                                (NsIdDescriptorType.CSI, None if csi is None else bytes([csi]), 1)):
        if value is None:
            continue
        if len(value) != length:
            raise ValueError(f"descriptor type {nidt} is {length} bytes")
        out += struct.pack("<BBxx", nidt, length) + value
    return bytes(out.ljust(IDENTIFY_DATA_SIZE, b"\0"))


def pull_ns_id_descriptors(data: bytes | bytearray | memoryview) -> dict[int, bytes]:
    """{nidt: nid} from a descriptor list, as Linux's nvme_identify_ns_descs walks it."""
    b = bytes(data)
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 4 <= len(b):
        nidt, nidl = b[pos], b[pos + 1]
        if nidl == 0:
            break
        out[nidt] = b[pos + 4:pos + 4 + nidl]
        pos += 4 + nidl
    return out
