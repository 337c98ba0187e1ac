"""The target's TLS PSKs, one per host NQN, and the answer to "which key for this identity?".

Where keys come from: a keyring file that only its owner may read (mode 0600 or stricter;
anything looser is refused, as ssh refuses a readable private key), one host per line::

    # hostnqn                                  configured PSK                       [encoding]
    nqn.2014-08.org.nvmexpress:uuid:f81d...    NVMeTLSkey-1:01:VRLbtnN9AQb2...:     compat

``encoding`` is ``compat`` (default: libnvme up to 1.15, so Debian 13's nvme-cli) or
``rfc8446`` (SPDK, newer libnvme): see :class:`target.tls.psk.LabelEncoding`. The file is read
again when its modification time changes, checked at each TLS handshake (a stat per new
connection), so keys are added, rotated and revoked without restarting the daemon.

Rules: keys never reach a log, an exception message or a listing (errors name the line, not its
content); :meth:`PskKeyring.hosts` lists host NQNs only.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from target.tls.psk import (
    ConfiguredPsk,
    LabelEncoding,
    PskError,
    parse_identity,
    parse_interchange,
    tls_psk,
)


class KeyringError(ValueError):
    """The keyring file is unusable (wrong permissions, malformed line)."""


@dataclass(frozen=True, slots=True)
class HostKey:
    psk: ConfiguredPsk
    encoding: LabelEncoding = LabelEncoding.LIBNVME_COMPAT


def parse_keyring(text: str, source: str = "keyring") -> dict[str, HostKey]:
    keys: dict[str, HostKey] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{source} line {lineno}"
        if len(fields) not in (2, 3):
            raise KeyringError(f"{where}: want '<hostnqn> <NVMeTLSkey-1:...> [compat|rfc8446]'")
        try:
            psk = parse_interchange(fields[1])
        except PskError as exc:
            raise KeyringError(f"{where}: {exc}") from None
        try:
            encoding = LabelEncoding(fields[2]) if len(fields) == 3 else LabelEncoding.LIBNVME_COMPAT
        except ValueError:
            raise KeyringError(f"{where}: encoding is compat or rfc8446") from None
        if fields[0] in keys:
            raise KeyringError(f"{where}: a second key for the same host")
        keys[fields[0]] = HostKey(psk, encoding)
    return keys


class PskKeyring:
    """Host NQN -> configured PSK, from a file (``path``) and/or set in process."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._file_keys: dict[str, HostKey] = {}
        self._own_keys: dict[str, HostKey] = {}
        self._mtime_ns: int | None = None
        if self.path is not None:
            self._reload()

    def set(self, hostnqn: str, psk: ConfiguredPsk,
            encoding: LabelEncoding = LabelEncoding.LIBNVME_COMPAT) -> None:
        self._own_keys[hostnqn] = HostKey(psk, encoding)

    def remove(self, hostnqn: str) -> None:
        self._own_keys.pop(hostnqn, None)

    def hosts(self) -> list[str]:
        self._maybe_reload()
        return sorted({*self._file_keys, *self._own_keys})

    def key_of(self, hostnqn: str) -> HostKey | None:
        self._maybe_reload()
        return self._own_keys.get(hostnqn) or self._file_keys.get(hostnqn)

    def psk_for(self, identity: bytes) -> tuple[bytes, str] | None:
        """The TLS PSK and cipher suite for the identity a host sent; None for a host with no
        key. Raises PskError for an identity that is malformed or does not fit the key."""
        ident = parse_identity(identity)
        host = self.key_of(ident.hostnqn)
        if host is None:
            return None
        return tls_psk(host.psk, ident, host.encoding), ident.cipher.cipher_suite

    # -- the file -----------------------------------------------------------------------------
    def _maybe_reload(self) -> None:
        if self.path is None:
            return
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            mtime = None
        if mtime != self._mtime_ns:
            self._reload()

    def _reload(self) -> None:
        assert self.path is not None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise KeyringError(f"cannot open TLS keyring {self.path}: {exc.strerror}") from None
        with os.fdopen(fd, "r", encoding="utf-8") as f:
            st = os.fstat(f.fileno())
            if stat.S_IMODE(st.st_mode) & 0o077:
                raise KeyringError(f"TLS keyring {self.path} is readable by others "
                                   f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it")
            keys = parse_keyring(f.read(), str(self.path))
        self._file_keys = keys
        self._mtime_ns = st.st_mtime_ns
