"""The target's PSK keyring: the file's format and permissions, reloading, and the answer for
an identity (version 0 and 1, both encodings)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from target.tls import psk as P
from target.tls.keyring import KeyringError, PskKeyring, parse_keyring

HOST = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-4333-8444-555555555555"
SUB = "nqn.2026-12.io.sbstore:v"
KEY = P.ConfiguredPsk(P.PskHash.SHA256, bytes(range(32)))
KEY384 = P.ConfiguredPsk(P.PskHash.SHA384, bytes(range(48)))
TEXT = P.format_interchange(KEY)


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("encoding", list(P.LabelEncoding))
def test_psk_for_matches_what_the_host_derives(tmp_path, version, encoding):
    enc = "" if encoding is P.LabelEncoding.LIBNVME_COMPAT else f" {encoding.value}"
    ring = PskKeyring(_write(tmp_path / "k", f"{HOST} {P.format_interchange(KEY384)}{enc}\n"))
    ident = P.make_identity(KEY384, HOST, SUB, version=version, encoding=encoding)
    assert ring.psk_for(str(ident).encode()) == (P.tls_psk(KEY384, ident, encoding),
                                                 "TLS_AES_256_GCM_SHA384")
    assert ring.psk_for(f"NVMe0R02 nqn.nobody {SUB}".encode()) is None
    with pytest.raises(P.PskError):
        ring.psk_for(b"garbage")


def test_the_file_must_be_private(tmp_path):
    path = _write(tmp_path / "k", f"{HOST} {TEXT}\n", 0o640)
    with pytest.raises(KeyringError, match="chmod 600"):
        PskKeyring(path)
    os.symlink(path, tmp_path / "link")
    path.chmod(0o600)
    with pytest.raises(KeyringError, match="cannot open"):
        PskKeyring(tmp_path / "link")  # no symlinks: O_NOFOLLOW


def test_reloads_when_the_file_changes(tmp_path):
    path = _write(tmp_path / "k", f"{HOST} {TEXT}\n")
    ring = PskKeyring(path)
    assert ring.hosts() == [HOST]
    other = "nqn.2014-08.org.nvmexpress:uuid:other"
    _write(path, f"# rotated\n{other} {TEXT}\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
    assert ring.hosts() == [other]
    ident = P.make_identity(KEY, HOST, SUB)
    assert ring.psk_for(str(ident).encode()) is None  # revoked


@pytest.mark.parametrize("text,words", [
    (f"{HOST}\n", "want"),
    (f"{HOST} {TEXT} compat extra\n", "want"),
    (f"{HOST} {TEXT[:-5]}AAAA:\n", "CRC"),
    (f"{HOST} {TEXT} sha3\n", "encoding"),
    (f"{HOST} {TEXT}\n{HOST} {TEXT}\n", "second key"),
])
def test_malformed_lines_name_the_line_not_the_key(text, words):
    with pytest.raises(KeyringError, match=words) as refused:
        parse_keyring(text, "k")
    assert "line" in str(refused.value)
    assert TEXT.split(":")[2][:8] not in str(refused.value)


def test_keys_set_in_process_and_repr_hide_secrets():
    ring = PskKeyring()
    ring.set(HOST, KEY)
    assert ring.hosts() == [HOST]
    assert TEXT.split(":")[2][:8] not in repr(ring.key_of(HOST))
    ring.remove(HOST)
    assert ring.hosts() == []
