"""DH-HMAC-CHAP secrets in the ``DHHC-1`` text form that ``nvme gen-dhchap-key`` writes and the
Linux host and nvmet read (libnvme / drivers/nvme/common/auth.c):

    DHHC-1:<hh>:<base64 of key || CRC-32 of key, little-endian>:

``hh`` is the hash used to transform the key before use (00 none, 01 SHA-256, 02 SHA-384,
03 SHA-512); the key is 32, 48 or 64 bytes; the CRC is the usual CRC-32 (zlib's). The
transformed key, the one both sides use as HMAC key, is HMAC-hash(key, NQN ||
"NVMe-over-Fabrics") with the host's NQN for a host secret and the subsystem's NQN for a
controller secret; with ``hh`` 00 the key is used as it is.

Secrets are kept in :class:`DhchapSecret`, whose repr and str show no key material.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
import zlib

KEY_LENGTHS = (32, 48, 64)
TRANSFORM_HASHES = {0: None, 1: "sha256", 2: "sha384", 3: "sha512"}
# With a transform hash the key is as long as the hash (nvme gen-dhchap-key insists too): Linux
# keys the HMAC with the transformed key but the raw key's length, so any other length would
# make it compute with bytes beyond the transformed key.
TRANSFORM_KEY_LENGTH = {1: 32, 2: 48, 3: 64}
_PREFIX = "DHHC-1:"
_CRC = struct.Struct("<I")


class SecretError(ValueError):
    """Not a valid DHHC-1 secret. The message never quotes the text it was given."""


class DhchapSecret:
    """One secret: the raw key and its transform hash id (0..3)."""

    __slots__ = ("_key", "transform")

    def __init__(self, key: bytes, transform: int = 0) -> None:
        if len(key) not in KEY_LENGTHS:
            raise SecretError(f"a DH-HMAC-CHAP key is 32, 48 or 64 bytes, not {len(key)}")
        if transform not in TRANSFORM_HASHES:
            raise SecretError(f"transform hash id {transform} is not 0..3")
        if transform and len(key) != TRANSFORM_KEY_LENGTH[transform]:
            raise SecretError(f"a key transformed with hash {transform} is "
                              f"{TRANSFORM_KEY_LENGTH[transform]} bytes, not {len(key)}")
        self._key = bytes(key)
        self.transform = transform

    @classmethod
    def parse(cls, text: str) -> DhchapSecret:
        text = text.strip()
        if not text.startswith(_PREFIX):
            raise SecretError("a DH-HMAC-CHAP secret starts with 'DHHC-1:'")
        fields = text[len(_PREFIX):].split(":")
        # "hh:base64:" (the trailing colon is optional, as the kernel accepts either)
        if len(fields) not in (2, 3) or (len(fields) == 3 and fields[2]):
            raise SecretError("a DH-HMAC-CHAP secret is DHHC-1:<hash>:<base64>:")
        try:
            transform = int(fields[0], 16)
            blob = base64.b64decode(fields[1], validate=True)
        except (ValueError, binascii.Error):
            raise SecretError("the secret's hash id or base64 part does not decode") from None
        if len(blob) - 4 not in KEY_LENGTHS:
            raise SecretError(f"the secret holds {len(blob)} bytes: a 32, 48 or 64-byte key "
                              "and a 4-byte CRC expected")
        key, crc = blob[:-4], _CRC.unpack_from(blob, len(blob) - 4)[0]
        if zlib.crc32(key) != crc:
            raise SecretError("the secret's CRC does not match its key")
        return cls(key, transform)

    @classmethod
    def generate(cls, transform: int = 0, length: int | None = None) -> DhchapSecret:
        """A fresh random secret; the length defaults to the transform hash's size (as
        nvme gen-dhchap-key does)."""
        if length is None:
            length = TRANSFORM_KEY_LENGTH.get(transform, 32)
        return cls(secrets.token_bytes(length), transform)

    def format(self) -> str:
        """The DHHC-1 text (this *is* the secret: store it 0600, never log it)."""
        blob = self._key + _CRC.pack(zlib.crc32(self._key))
        return f"{_PREFIX}{self.transform:02x}:{base64.b64encode(blob).decode()}:"

    def transformed(self, nqn: str) -> bytes:
        """The HMAC key this secret gives for ``nqn``."""
        name = TRANSFORM_HASHES[self.transform]
        if name is None:
            return self._key
        return hmac.new(self._key, nqn.encode() + b"NVMe-over-Fabrics", name).digest()

    def fingerprint(self) -> str:
        """A short, one-way name for the secret (to tell two apart in listings): the first
        8 hex digits of SHA-256 over a fixed label and the key."""
        return hashlib.sha256(b"sbstore dhchap fingerprint\0" + self._key).hexdigest()[:8]

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, DhchapSecret) and other.transform == self.transform
                and hmac.compare_digest(other._key, self._key))

    def __hash__(self) -> int:
        return hash((self.transform, self.fingerprint()))

    def __repr__(self) -> str:
        return f"DhchapSecret(transform={self.transform}, bytes={len(self._key)})"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:  # never pickle key material by accident
        raise TypeError("DhchapSecret is not picklable")
