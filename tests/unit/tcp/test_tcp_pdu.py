"""The PDU codec: push -> pull round trips for all nine types, framing of partial input, exact
layouts, and malformed input mapped to the right fatal error status (FES) and field (FEI)."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from target.tcp import pdu as P
from target.tcp.digest import crc32c

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
payload = st.binary(max_size=700)

PDUS = st.one_of(
    st.builds(P.ICReq, pfv=u16, hpda=u8, dgst=u8, maxr2t=u32),
    st.builds(P.ICResp, pfv=u16, cpda=u8, dgst=u8, maxh2cdata=u32),
    st.builds(P.H2CTermReq, fes=u16, fei=u32, hdr=st.binary(max_size=128)),
    st.builds(P.C2HTermReq, fes=u16, fei=u32, hdr=st.binary(max_size=128)),
    st.builds(P.CapsuleCmd, sqe=st.binary(min_size=64, max_size=64), data=payload),
    st.builds(P.CapsuleResp, cqe=st.binary(min_size=16, max_size=16)),
    st.builds(P.H2CData, cccid=u16, ttag=u16, datao=u32, data=payload, last=st.booleans()),
    st.builds(P.C2HData, cccid=u16, datao=u32, data=payload, last=st.booleans(),
              success=st.booleans()),
    st.builds(P.R2T, cccid=u16, ttag=u16, r2to=u32, r2tl=u32),
)
OPTIONS = st.fixed_dictionaries({"hdgst": st.booleans(), "ddgst": st.booleans(),
                                 "pda": st.integers(0, P.PDA_MAX)})

SQE = bytes(range(64))
SAMPLES = [
    P.ICReq(0, 0, 3, 0), P.ICResp(0, 0, 3, 131072), P.H2CTermReq(1, 2, bytes(range(30))),
    P.C2HTermReq(3), P.CapsuleCmd(SQE), P.CapsuleCmd(SQE, b"\xaa" * 300),
    P.CapsuleResp(bytes(range(16))), P.H2CData(1, 2, 4096, b"\x55" * 257, True),
    P.C2HData(7, 0, b"\x66" * 300, True, True), P.R2T(9, 3, 0, 8192),
]
SAMPLE_OPTIONS = [{}, {"hdgst": True, "ddgst": True}, {"hdgst": True, "ddgst": True, "pda": 7}]


@given(PDUS, OPTIONS)
def test_push_then_pull_round_trips(pdu: P.Pdu, options: dict) -> None:
    wire = P.push_pdu(pdu, **options)
    assert P.pull_pdu(wire) == (pdu, len(wire))
    # Trailing bytes are left alone.
    assert P.pull_pdu(wire + b"\x04\x00\x48") == (pdu, len(wire))


@given(PDUS, OPTIONS, st.data())
def test_any_prefix_needs_more_data(pdu: P.Pdu, options: dict, data: st.DataObject) -> None:
    wire = P.push_pdu(pdu, **options)
    cut = data.draw(st.integers(0, len(wire) - 1))
    assert P.pull_pdu(wire[:cut]) is None


@pytest.mark.parametrize("options", SAMPLE_OPTIONS)
@pytest.mark.parametrize("pdu", SAMPLES, ids=lambda p: type(p).__name__)
def test_decoded_whole_byte_by_byte_and_at_every_split(pdu: P.Pdu, options: dict) -> None:
    wire = P.push_pdu(pdu, **options)
    # Whole, and typed pull_x on exactly its bytes.
    assert P.pull_pdu(wire) == (pdu, len(wire))
    assert P._PULL[P.CH.unpack_from(wire)[0]](wire) == pdu
    # Grown one byte at a time: None until the last byte.
    grown = bytearray()
    for i, byte in enumerate(wire):
        grown.append(byte)
        got = P.pull_pdu(grown)
        assert got is None if i < len(wire) - 1 else got == (pdu, len(wire))
    # Every split point, with the rest of the stream behind it.
    stream = wire + P.push_pdu(P.CapsuleResp(bytes(16)))
    for cut in range(len(wire)):
        assert P.pull_pdu(stream[:cut]) is None
        assert P.pull_pdu(stream) == (pdu, len(wire))


def test_icreq_layout() -> None:
    wire = P.push_icreq(P.ICReq(pfv=0, hpda=2, dgst=P.HDGST_ENABLE | P.DDGST_ENABLE, maxr2t=7))
    assert len(wire) == 128
    assert wire[:8] == bytes([0x00, 0x00, 128, 0x00, 128, 0, 0, 0])
    assert wire[8:16] == bytes([0, 0, 2, 3, 7, 0, 0, 0])
    assert wire[16:] == bytes(112)


def test_term_req_layout_fei_at_offset_10() -> None:
    wire = P.push_c2h_term_req(P.C2HTermReq(P.Fes.DATA_OUT_OF_RANGE, 0x11223344, b"\x07" * 5))
    assert wire[:8] == bytes([0x03, 0, 24, 0, 29, 0, 0, 0])
    assert wire[8:10] == b"\x04\x00"
    assert wire[10:14] == bytes([0x44, 0x33, 0x22, 0x11])
    assert wire[14:24] == bytes(10)
    assert wire[24:] == b"\x07" * 5


def test_capsule_cmd_with_digests_and_alignment() -> None:
    wire = P.push_capsule_cmd(P.CapsuleCmd(SQE, b"abc"), hdgst=True, ddgst=True, pda=3)
    ptype, flags, hlen, pdo, plen = P.CH.unpack_from(wire)
    assert (ptype, flags, hlen) == (0x04, P.HDGSTF | P.DDGSTF, 72)
    assert pdo == 80  # 72 + 4 rounded up to 16 bytes
    assert plen == 80 + 3 + 4 == len(wire)
    assert wire[8:72] == SQE
    assert struct.unpack_from("<I", wire, 72)[0] == crc32c(wire[:72])
    assert wire[76:80] == bytes(4)
    assert wire[80:83] == b"abc"
    assert struct.unpack_from("<I", wire, 83)[0] == crc32c(b"abc")


def test_capsule_cmd_without_data_has_pdo_zero() -> None:
    wire = P.push_capsule_cmd(P.CapsuleCmd(SQE), hdgst=True, ddgst=True)
    assert P.CH.unpack(wire[:8]) == (0x04, P.HDGSTF, 72, 0, 76)


def test_c2h_data_flags_and_layout() -> None:
    wire = P.push_c2h_data(P.C2HData(5, 4096, b"xy", last=True, success=True))
    assert P.DATA.unpack_from(wire) == (0x07, P.DATA_LAST | P.DATA_SUCCESS, 24, 24, 26, 5, 0,
                                        4096, 2)
    assert wire[24:] == b"xy"


def test_data_offset_rounds_to_the_receivers_alignment() -> None:
    assert P.data_offset(24, False, 0) == 24
    assert P.data_offset(24, True, 0) == 28
    assert P.data_offset(72, True, 31) == 128
    assert P.pda_bytes(0) == 4 and P.pda_bytes(31) == 128


def _ch(ptype: int, flags: int = 0, hlen: int | None = None, pdo: int = 0,
        plen: int | None = None) -> bytes:
    hlen = P.HLEN.get(ptype, 24) if hlen is None else hlen
    return P.CH.pack(ptype, flags, hlen, pdo, hlen if plen is None else plen)


@pytest.mark.parametrize("wire,cls,fei", [
    (_ch(0x08, hlen=24) + bytes(16), P.InvalidPduHeader, P.FEI_TYPE),
    (_ch(0xFF, hlen=24) + bytes(16), P.InvalidPduHeader, P.FEI_TYPE),
    (_ch(0x04, hlen=30, plen=72) + bytes(64), P.InvalidPduHeader, P.FEI_HLEN),
    (_ch(0x04, plen=20) + bytes(64), P.InvalidPduHeader, P.FEI_PLEN),
    (_ch(0x00, plen=129) + bytes(121), P.InvalidPduHeader, P.FEI_PLEN),
    (_ch(0x02, plen=200) + bytes(192), P.InvalidPduHeader, P.FEI_PLEN),
    (_ch(0x09, plen=28) + bytes(20), P.InvalidPduHeader, P.FEI_PLEN),  # R2T carries no data
    (_ch(0x06, pdo=8, plen=30) + bytes(22), P.InvalidPduHeader, P.FEI_PDO),
    (P.DATA.pack(0x06, 0, 24, 24, 30, 1, 2, 0, 5) + bytes(6), P.InvalidPduHeader, P.FEI_DATAL),
])
def test_malformed_pdus(wire: bytes, cls: type, fei: int) -> None:
    with pytest.raises(cls) as info:
        P.pull_pdu(wire)
    assert info.value.fei == fei
    assert info.value.fes == cls.FES


def test_header_digest_mismatch() -> None:
    wire = bytearray(P.push_capsule_resp(P.CapsuleResp(bytes(16)), hdgst=True))
    wire[10] ^= 1
    with pytest.raises(P.HeaderDigestError) as info:
        P.pull_pdu(wire)
    assert info.value.fes == P.Fes.HEADER_DIGEST_ERROR == 3


def test_data_digest_mismatch_is_not_fatal() -> None:
    pdu = P.H2CData(1, 2, 0, b"payload")
    wire = bytearray(P.push_h2c_data(pdu, hdgst=True, ddgst=True))
    wire[30] ^= 0xFF
    with pytest.raises(P.DataDigestError) as info:
        P.pull_pdu(wire)
    assert not isinstance(info.value, P.TransportError)
    assert info.value.nbytes == len(wire)
    assert isinstance(info.value.pdu, P.H2CData) and info.value.pdu.ttag == 2


def test_giant_plen_is_refused_from_the_common_header() -> None:
    with pytest.raises(P.DataLimitExceeded) as info:
        P.pull_pdu(_ch(0x04, plen=0xFFFFFFFF), max_plen=1 << 20)
    assert info.value.fes == 5


def test_transport_error_family() -> None:
    err = P.transport_error(4, 12, "out")
    assert isinstance(err, P.DataOutOfRange) and isinstance(err, P.TransportError)
    assert (err.fes, err.fei, err.message) == (4, 12, "out")
    assert type(P.transport_error(99)) is P.TransportError
    assert P.R2T_LIMIT_EXCEEDED == P.Fes.DATA_LIMIT_EXCEEDED == 5
    assert P.HeaderDigestError().fes == 3


def test_push_refuses_wrong_sizes() -> None:
    with pytest.raises(ValueError):
        P.push_capsule_cmd(P.CapsuleCmd(b"short"))
    with pytest.raises(ValueError):
        P.push_capsule_resp(P.CapsuleResp(b"short"))
