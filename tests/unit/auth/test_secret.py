"""DHHC-1 secrets: the nvme-cli text form both ways, the transform, and no key in reprs."""
from __future__ import annotations

import base64
import shutil
import subprocess
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from target.auth.secret import DhchapSecret, SecretError

# Made by `nvme gen-dhchap-key --hmac=1 --key-length=32` (nvme-cli 2.3).
NVME_CLI_KEY = "DHHC-1:01:PKR5zcLV5MoesHfXTqvmEB0edr/mgnG9vHi/SIrqXfIerfMM:"


def test_parses_what_nvme_cli_wrote_and_writes_it_back() -> None:
    secret = DhchapSecret.parse(NVME_CLI_KEY)
    assert secret.transform == 1
    assert secret.format() == NVME_CLI_KEY


@pytest.mark.skipif(shutil.which("nvme") is None, reason="nvme-cli is in test.sh's packages")
def test_parses_a_fresh_nvme_cli_key() -> None:
    for hmac_id, length in ((0, 32), (1, 32), (2, 48), (3, 64)):
        out = subprocess.run(["nvme", "gen-dhchap-key", f"--hmac={hmac_id}",
                              f"--key-length={length}"], capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        secret = DhchapSecret.parse(out)
        assert secret.transform == hmac_id and secret.format() == out


@pytest.mark.parametrize("transform", [0, 1, 2, 3])
def test_generate_round_trips(transform: int) -> None:
    secret = DhchapSecret.generate(transform)
    assert DhchapSecret.parse(secret.format()) == secret
    assert secret != DhchapSecret.generate(transform)


def test_transform_is_hmac_of_the_nqn() -> None:
    import hashlib
    import hmac
    key = bytes(range(32))
    assert DhchapSecret(key, 0).transformed("nqn.x") == key
    assert DhchapSecret(key, 1).transformed("nqn.x") == hmac.new(
        key, b"nqn.xNVMe-over-Fabrics", hashlib.sha256).digest()
    assert len(DhchapSecret(bytes(64), 3).transformed("nqn.x")) == 64


@pytest.mark.parametrize("text", [
    "", "DHHC-2:00:AAAA:", "DHHC-1:00:not base64!:", "DHHC-1:zz:" + "A" * 48 + ":",
    "DHHC-1:04:" + base64.b64encode(bytes(36)).decode() + ":",  # hash id beyond 3
    "DHHC-1:00:" + base64.b64encode(bytes(20)).decode() + ":",  # too short
    "DHHC-1:00:" + base64.b64encode(bytes(32) + b"\0\0\0\1").decode() + ":",  # bad CRC
])
def test_rejects_malformed_without_quoting_it(text: str) -> None:
    with pytest.raises(SecretError) as info:
        DhchapSecret.parse(text)
    if len(text) > 12:
        assert text[10:] not in str(info.value)


@pytest.mark.parametrize("transform,length", [(1, 48), (1, 64), (2, 32), (3, 48)])
def test_key_length_must_match_its_transform_hash(transform: int, length: int) -> None:
    with pytest.raises(SecretError):
        DhchapSecret(bytes(length), transform)
    blob = bytes(length) + zlib.crc32(bytes(length)).to_bytes(4, "little")
    with pytest.raises(SecretError):
        DhchapSecret.parse(f"DHHC-1:{transform:02x}:{base64.b64encode(blob).decode()}:")
    assert DhchapSecret(bytes(length), 0).transform == 0  # untransformed: any of the three


def test_repr_and_fingerprint_show_no_key() -> None:
    secret = DhchapSecret.parse(NVME_CLI_KEY)
    blob = NVME_CLI_KEY.split(":")[2]
    for shown in (repr(secret), str(secret), f"{secret}", secret.fingerprint()):
        assert blob not in shown and blob[:8] not in shown
    assert len(secret.fingerprint()) == 8


@given(hs.binary(min_size=0, max_size=200), hs.integers(0, 255))
def test_parse_never_crashes_on_junk(blob: bytes, hid: int) -> None:
    text = f"DHHC-1:{hid:02x}:{base64.b64encode(blob).decode()}:"
    try:
        secret = DhchapSecret.parse(text)
    except SecretError:
        return
    assert len(blob) in (36, 52, 68) and hid <= 3
    assert hid == 0 or len(blob) - 4 == {1: 32, 2: 48, 3: 64}[hid]
    assert zlib.crc32(blob[:-4]) == int.from_bytes(blob[-4:], "little")
    assert secret.format() == text
