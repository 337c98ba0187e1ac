"""PSK interchange format, derivations and identities, checked against values computed on
independent paths: libnvme's published test vectors (interchange), Debian's nvme-cli
(``nvme gen-tls-key`` / ``nvme check-tls-key``), and the ``openssl kdf HKDF`` command with the
HKDF info bytes written out by hand from the spec text (derivations)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import shutil
import subprocess
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from target.tls import psk as P

HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
SUBNQN = "nqn.2026-12.io.sbstore:vol1"
# libnvme test/psk.c (import/export vectors): the key and its interchange forms.
LIBNVME_KEY = bytes.fromhex("5512dbb6737d0106f65975b773dfb011ffc344bcf442e2dd6d8bc4870b5d5b03")
LIBNVME_KEY48 = LIBNVME_KEY + bytes.fromhex("ffc344bcf442e2dd6d8bc4870b5d5b03")
LIBNVME_VECTORS = [
    (P.PskHash.NONE, LIBNVME_KEY,
     "NVMeTLSkey-1:00:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:"),
    (P.PskHash.SHA256, LIBNVME_KEY,
     "NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:"),
    (P.PskHash.SHA384, LIBNVME_KEY48,
     "NVMeTLSkey-1:02:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwP/w0S89ELi3W2LxIcLXVsDn8kXZQ==:"),
]


@pytest.mark.parametrize("psk_hash,key,text", LIBNVME_VECTORS)
def test_interchange_matches_libnvme_vectors(psk_hash, key, text):
    parsed = P.parse_interchange(text)
    assert parsed == P.ConfiguredPsk(psk_hash, key)
    assert P.format_interchange(parsed) == text


def test_interchange_rejects_bad_crc_length_and_form():
    good = LIBNVME_VECTORS[1][2]
    raw = bytearray(base64.b64decode(good.split(":")[2]))
    raw[0] ^= 1
    with pytest.raises(P.PskError, match="CRC"):
        P.parse_interchange(f"NVMeTLSkey-1:01:{base64.b64encode(bytes(raw)).decode()}:")
    with pytest.raises(P.PskError, match="hash 02"):
        P.parse_interchange(good.replace(":01:", ":02:"))
    for bad in ("", "NVMeTLSkey-1:03:" + good.split(":")[2] + ":", good[:-1],
                "NVMeTLSkey-1:01:@@@@:", "NVMeTLSkey-1:01:QUJD:"):
        with pytest.raises(P.PskError):
            P.parse_interchange(bad)


def test_repr_never_shows_the_key():
    key = P.parse_interchange(LIBNVME_VECTORS[1][2])
    assert LIBNVME_KEY.hex() not in repr(key) and "VRLb" not in repr(key)


@given(st.sampled_from([(P.PskHash.NONE, 32), (P.PskHash.NONE, 48), (P.PskHash.SHA256, 32),
                        (P.PskHash.SHA384, 48)]), st.data())
def test_interchange_round_trip(hash_len, data):
    psk_hash, n = hash_len
    key = P.ConfiguredPsk(psk_hash, data.draw(st.binary(min_size=n, max_size=n)))
    assert P.parse_interchange(P.format_interchange(key)) == key


@given(st.text(max_size=120))
def test_parse_interchange_raises_only_pskerror(text):
    try:
        P.parse_interchange(text)
    except P.PskError:
        pass


# -- Debian's nvme-cli (2.3 here: it formats and checks keys, it does not derive) ---------------

nvme = shutil.which("nvme")


@pytest.mark.skipif(nvme is None, reason="nvme-cli is not installed")
@pytest.mark.parametrize("hmac_id", [1, 2])
def test_keys_from_nvme_gen_tls_key_parse(hmac_id):
    out = subprocess.run([nvme, "gen-tls-key", f"--hmac={hmac_id}"], capture_output=True,
                         text=True, timeout=10, check=True).stdout.strip()
    key = P.parse_interchange(out)
    assert key.hash == hmac_id and len(key.key) == (32 if hmac_id == 1 else 48)
    assert P.format_interchange(key) == out


@pytest.mark.skipif(nvme is None, reason="nvme-cli is not installed")
def test_nvme_check_tls_key_accepts_ours_with_the_same_crc():
    key = P.ConfiguredPsk(P.PskHash.SHA256, bytes(range(7, 39)))
    out = subprocess.run([nvme, "check-tls-key", f"--key={P.format_interchange(key)}"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    crc = re.search(r"CRC ([0-9a-f]+)", out.stdout)
    assert crc and int(crc.group(1), 16) == zlib.crc32(key.key)


# -- derivations, against `openssl kdf` -----------------------------------------------------------

openssl = shutil.which("openssl")


def openssl_hkdf(digest: str, key: bytes, info: bytes, length: int) -> bytes:
    """HKDF extract-and-expand with an empty (= HashLen zeros) salt, by the openssl command."""
    out = subprocess.run(
        [openssl, "kdf", "-keylen", str(length), "-kdfopt", f"digest:{digest}",
         "-kdfopt", f"hexkey:{key.hex()}", "-kdfopt", f"hexinfo:{info.hex()}", "HKDF"],
        capture_output=True, text=True, timeout=10, check=True).stdout
    return bytes.fromhex(out.strip().replace(":", ""))


def compat_info(length: int, label: bytes, context: bytes) -> bytes:
    return length.to_bytes(2, "little") + b"tls13 " + label + context


def rfc_info(length: int, label: bytes, context: bytes) -> bytes:
    full = b"tls13 " + label
    return length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context


ENCODINGS = [(P.LabelEncoding.LIBNVME_COMPAT, compat_info), (P.LabelEncoding.RFC8446, rfc_info)]


@pytest.mark.skipif(openssl is None, reason="the openssl command is not installed")
@pytest.mark.parametrize("encoding,info", ENCODINGS)
@pytest.mark.parametrize("psk_hash,key", [(P.PskHash.SHA256, LIBNVME_KEY),
                                          (P.PskHash.SHA384, LIBNVME_KEY48)])
def test_retained_and_tls_psk_version0(encoding, info, psk_hash, key):
    psk = P.ConfiguredPsk(psk_hash, key)
    md = "SHA256" if psk_hash == 1 else "SHA384"
    retained = openssl_hkdf(md, key, info(len(key), b"HostNQN", HOSTNQN.encode()), len(key))
    assert P.retained_psk(psk, HOSTNQN, encoding) == retained

    identity = P.make_identity(psk, HOSTNQN, SUBNQN, version=0, encoding=encoding)
    assert str(identity) == f"NVMe0R0{psk_hash.value} {HOSTNQN} {SUBNQN}"
    expected = openssl_hkdf(md, retained, info(psk_hash.length, b"nvme-tls-psk",
                                               str(identity).encode()), psk_hash.length)
    assert P.tls_psk(psk, identity, encoding) == expected


@pytest.mark.skipif(openssl is None, reason="the openssl command is not installed")
@pytest.mark.parametrize("encoding,info", ENCODINGS)
def test_tls_psk_version1_with_digest(encoding, info):
    psk = P.ConfiguredPsk(P.PskHash.SHA384, LIBNVME_KEY48)
    retained = openssl_hkdf("SHA384", psk.key, info(48, b"HostNQN", HOSTNQN.encode()), 48)
    digest = base64.b64encode(hmac.new(
        retained, f"{HOSTNQN} {SUBNQN} NVMe-over-Fabrics".encode(), hashlib.sha384).digest()
    ).decode()
    identity = P.make_identity(psk, HOSTNQN, SUBNQN, version=1, encoding=encoding)
    assert str(identity) == f"NVMe1R02 {HOSTNQN} {SUBNQN} {digest}"
    expected = openssl_hkdf("SHA384", retained,
                            info(48, b"nvme-tls-psk", f"02 {digest}".encode()), 48)
    assert P.tls_psk(psk, identity, encoding) == expected


def test_unhashed_key_is_its_own_retained_psk_and_length_picks_the_cipher():
    for n, cipher in ((32, P.PskHash.SHA256), (48, P.PskHash.SHA384)):
        psk = P.ConfiguredPsk(P.PskHash.NONE, bytes(n))
        assert P.retained_psk(psk, HOSTNQN) == bytes(n)
        assert P.make_identity(psk, HOSTNQN, SUBNQN).cipher is cipher


def test_identity_parse_round_trip_and_rejections():
    psk = P.ConfiguredPsk(P.PskHash.SHA256, LIBNVME_KEY)
    for version in (0, 1):
        ident = P.make_identity(psk, HOSTNQN, SUBNQN, version=version)
        assert P.parse_identity(str(ident).encode()) == ident
    for bad in (b"", b"NVMe0R03 a b", b"NVMe2R01 a b", b"NVMe0R01 a b c", b"NVMe1R01 a b",
                b"\xff\xfe", b"NVMe0R01 a"):
        with pytest.raises(P.PskError):
            P.parse_identity(bad)


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300),
                 st.text(max_size=200).map(lambda t: "NVMe0R01 " + t),
                 st.text(max_size=200).map(lambda t: "NVMe1R02 a b " + t)))
def test_parse_identity_raises_only_pskerror(raw):
    try:
        ident = P.parse_identity(raw)
    except P.PskError:
        return
    assert P.parse_identity(str(ident)) == ident  # what parses, prints back the same


def test_tls_psk_refuses_identities_that_do_not_fit_the_key():
    psk = P.ConfiguredPsk(P.PskHash.SHA256, LIBNVME_KEY)
    ident = P.make_identity(psk, HOSTNQN, SUBNQN, version=1)
    forged = P.PskIdentity(1, False, ident.cipher, HOSTNQN, "nqn.other", ident.digest)
    with pytest.raises(P.PskError, match="digest"):
        P.tls_psk(psk, forged)
    with pytest.raises(P.PskError, match="hash"):
        P.tls_psk(psk, P.PskIdentity(0, False, P.PskHash.SHA384, HOSTNQN, SUBNQN))
    with pytest.raises(P.PskError, match="generated"):
        P.tls_psk(psk, P.PskIdentity(0, True, P.PskHash.SHA256, HOSTNQN, SUBNQN))


# -- Debian 13's nvme-cli 2.13 / libnvme 1.13 ------------------------------------------------------
# Printed by `nvme check-tls-key -d KEY -n HOSTNQN -c SUBNQN -I 1` (trixie's nvme-cli, run through
# trixie's loader on this machine): the version 1 identity, whose digest is an HMAC keyed with
# the retained PSK, so it checks libnvme's retained-PSK derivation (the "compat" encoding).
LIBNVME_1_13_V1 = [
    ("NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:",
     "NVMe1R01", "L/l5PLC16X8fMQe4TK+WkfvuWIqYaKx+Eete8zAwFTI="),
    ("NVMeTLSkey-1:02:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwP/w0S89ELi3W2LxIcLXVsDn8kXZQ==:",
     "NVMe1R02", "oRYm7Ut15vlsYRQdJzX+8soDaULM/qOftbbpVwcd+oW/flzmVgJChPdFu1F2M0Rv"),
    ("NVMeTLSkey-1:00:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:",
     "NVMe1R01", "eRYTs/IXawrm1godh4AJl4EZOsKzf21wzaHehj9QcpY="),
]


@pytest.mark.parametrize("text,head,digest", LIBNVME_1_13_V1)
def test_identity_matches_libnvme_1_13(text, head, digest):
    key = P.parse_interchange(text)
    ident = P.make_identity(key, HOSTNQN, SUBNQN, version=1)
    assert str(ident) == f"{head} {HOSTNQN} {SUBNQN} {digest}"
    assert str(P.make_identity(key, HOSTNQN, SUBNQN)) == f"NVMe0{head[5:]} {HOSTNQN} {SUBNQN}"
    # The RFC 8446 encoding gives another retained PSK, so another digest (hash 00 aside).
    rfc = P.make_identity(key, HOSTNQN, SUBNQN, version=1, encoding=P.LabelEncoding.RFC8446)
    assert (rfc.digest == digest) == (key.hash is P.PskHash.NONE)
