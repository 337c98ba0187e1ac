"""NVMe/TCP TLS pre-shared keys (NVMe TCP Transport 1.0 §3.6.1, TP 8011/8018): the PSK
interchange format, the retained and TLS PSK derivations, and the PSK identity.

Theory of operation. An admin holds a *configured PSK* in interchange form::

    NVMeTLSkey-1:<hh>:<base64(key || crc32(key) little-endian)>:

``hh`` names the hash that turns it into a *retained PSK* (00: none, the key is used as is;
01: SHA-256; 02: SHA-384); the key is 32 or 48 bytes. Both ends then compute, for one host and
one subsystem:

    retained = HKDF-Expand-Label(HKDF-Extract(0, configured), "HostNQN", hostnqn, len)
    identity = "NVMe0R<cc> <hostnqn> <subnqn>"                  (version 0)
             | "NVMe1R<cc> <hostnqn> <subnqn> <digest>"         (version 1)
    tls_psk  = HKDF-Expand-Label(HKDF-Extract(0, retained), "nvme-tls-psk", context, hashlen)

``cc`` is the hash of the TLS cipher suite (01: SHA-256 / TLS_AES_128_GCM_SHA256, 02: SHA-384 /
TLS_AES_256_GCM_SHA384): the retained hash, or for ``hh`` 00 the one the key length implies.
The context is the identity (version 0) or "<cc> <digest>" (version 1), where the digest is
base64(HMAC(retained, hostnqn + " " + subnqn + " NVMe-over-Fabrics")).

Two encodings of HKDF-Expand-Label's info are in use (see :class:`LabelEncoding`): RFC 8446's
HkdfLabel, and the one libnvme used up to 1.15 and still offers as "compat", which is what
Debian 13's nvme-cli 2.13 / libnvme 1.13 put in the kernel keyring. A host and its target must
agree, so the encoding is a per-key setting.

Rules: stdlib only (hmac, hashlib); no I/O; every malformed input raises :class:`PskError`
with a message that never contains key material.
"""
from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import zlib
from dataclasses import dataclass

INTERCHANGE_PREFIX = "NVMeTLSkey-1:"
HMAC_SEED = b"NVMe-over-Fabrics"


class PskError(ValueError):
    """A key, identity or derivation input is malformed (the message holds no secret)."""


class PskHash(enum.IntEnum):
    """The hash specifier of the interchange format and of the PSK identity."""

    NONE = 0  # interchange only: the configured PSK is the retained PSK
    SHA256 = 1
    SHA384 = 2

    @property
    def digest_name(self) -> str:
        if self is PskHash.NONE:
            raise PskError("hash 00 has no digest")
        return "sha256" if self is PskHash.SHA256 else "sha384"

    @property
    def length(self) -> int:
        """Output size in bytes (32, 48)."""
        return 32 if self is PskHash.SHA256 else 48

    @property
    def cipher_suite(self) -> str:
        """The TLS 1.3 cipher suite a PSK of this hash is used with (OpenSSL/IANA name)."""
        return "TLS_AES_128_GCM_SHA256" if self is PskHash.SHA256 else "TLS_AES_256_GCM_SHA384"


class LabelEncoding(enum.Enum):
    """How HKDF-Expand-Label's info bytes are laid out.

    RFC8446: uint16 length (big-endian), then label and context each prefixed with a length
    byte: ``be16(L) || len || "tls13 " + label || len || context`` (SPDK; libnvme >= 1.16).
    LIBNVME_COMPAT: ``le16(L) || "tls13 " + label || context``, no prefixes, length in host
    (little-endian) order (libnvme 1.7 to 1.15, so Debian 13's nvme-cli; the kernel keyring
    receives what libnvme computed)."""

    RFC8446 = "rfc8446"
    LIBNVME_COMPAT = "compat"


@dataclass(frozen=True, slots=True, repr=False)
class ConfiguredPsk:
    """A PSK as the admin configured it. ``repr`` hides the key so it never reaches a log."""

    hash: PskHash
    key: bytes

    def __repr__(self) -> str:
        return f"ConfiguredPsk(hash={self.hash.name}, {len(self.key)} bytes)"

    @property
    def cipher(self) -> PskHash:
        """The TLS hash this key is used with (for hash 00: implied by the length)."""
        if self.hash is not PskHash.NONE:
            return self.hash
        return PskHash.SHA256 if len(self.key) == 32 else PskHash.SHA384


_INTERCHANGE = re.compile(r"NVMeTLSkey-1:(0[0-2]):([A-Za-z0-9+/=]+):\Z")


def parse_interchange(text: str) -> ConfiguredPsk:
    """The configured PSK in ``NVMeTLSkey-1:hh:<base64>:`` form, its CRC-32 checked."""
    match = _INTERCHANGE.match(text.strip())
    if match is None:
        raise PskError("not a PSK in interchange format (NVMeTLSkey-1:hh:<base64>:)")
    psk_hash = PskHash(int(match.group(1)))
    try:
        raw = base64.b64decode(match.group(2), validate=True)
    except binascii.Error:
        raise PskError("the PSK's base64 is malformed") from None
    key, crc = raw[:-4], raw[-4:]
    if len(key) not in (32, 48):
        raise PskError(f"a PSK is 32 or 48 bytes, not {max(0, len(key))}")
    if psk_hash is not PskHash.NONE and len(key) != psk_hash.length:
        raise PskError(f"hash {psk_hash.value:02d} needs a {psk_hash.length}-byte PSK")
    if zlib.crc32(key).to_bytes(4, "little") != crc:
        raise PskError("the PSK's CRC-32 does not match (mistyped key?)")
    return ConfiguredPsk(psk_hash, key)


def format_interchange(psk: ConfiguredPsk) -> str:
    """The interchange form of ``psk`` (what ``nvme gen-tls-key`` prints)."""
    if len(psk.key) not in (32, 48):
        raise PskError(f"a PSK is 32 or 48 bytes, not {len(psk.key)}")
    if psk.hash is not PskHash.NONE and len(psk.key) != psk.hash.length:
        raise PskError(f"hash {psk.hash.value:02d} needs a {psk.hash.length}-byte PSK")
    body = base64.b64encode(psk.key + zlib.crc32(psk.key).to_bytes(4, "little")).decode()
    return f"{INTERCHANGE_PREFIX}{psk.hash.value:02d}:{body}:"


# -- HKDF (RFC 5869) and TLS 1.3's Expand-Label (RFC 8446 §7.1) --------------------------------

def hkdf_extract(digest: str, salt: bytes, ikm: bytes) -> bytes:
    # "HKDF-Extract(0, x)": a salt of HashLen zero bytes (the same HMAC key as an empty salt).
    return hmac.new(salt or bytes(hashlib.new(digest).digest_size), ikm, digest).digest()


def hkdf_expand(digest: str, prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:  # bounded: length <= 255 * HashLen, checked below
        block = hmac.new(prk, block + info + bytes([counter]), digest).digest()
        out += block
        counter += 1
        if counter > 255:
            raise PskError("HKDF output too long")
    return out[:length]


def expand_label_info(label: str, context: bytes, length: int, encoding: LabelEncoding) -> bytes:
    full = b"tls13 " + label.encode()
    if encoding is LabelEncoding.RFC8446:
        if len(full) > 255 or len(context) > 255:
            raise PskError("HKDF label or context longer than 255 bytes")
        return (length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)])
                + context)
    return length.to_bytes(2, "little") + full + context


def expand_label(digest: str, secret: bytes, label: str, context: bytes, length: int,
                 encoding: LabelEncoding) -> bytes:
    """HKDF-Expand-Label(HKDF-Extract(0, secret), label, context, length)."""
    prk = hkdf_extract(digest, b"", secret)
    return hkdf_expand(digest, prk, expand_label_info(label, context, length, encoding), length)


# -- the NVMe derivations -----------------------------------------------------------------------

def retained_psk(psk: ConfiguredPsk, hostnqn: str,
                 encoding: LabelEncoding = LabelEncoding.LIBNVME_COMPAT) -> bytes:
    """The retained PSK a host and a target keep for ``hostnqn``."""
    if psk.hash is PskHash.NONE:
        return psk.key
    return expand_label(psk.hash.digest_name, psk.key, "HostNQN", hostnqn.encode(),
                        len(psk.key), encoding)


def psk_digest(retained: bytes, cipher: PskHash, hostnqn: str, subnqn: str) -> str:
    """The PSK digest of a version 1 identity (base64 of an HMAC over both NQNs)."""
    mac = hmac.new(retained, f"{hostnqn} {subnqn} ".encode() + HMAC_SEED, cipher.digest_name)
    return base64.b64encode(mac.digest()).decode()


@dataclass(frozen=True, slots=True)
class PskIdentity:
    """A parsed PSK identity: ``NVMe<version><R|G><cc> <hostnqn> <subnqn>[ <digest>]``."""

    version: int
    generated: bool  # "G": from DH-HMAC-CHAP secure concatenation, not a configured key
    cipher: PskHash
    hostnqn: str
    subnqn: str
    digest: str | None = None

    def __str__(self) -> str:
        head = f"NVMe{self.version}{'G' if self.generated else 'R'}{self.cipher.value:02d}"
        tail = f" {self.digest}" if self.version == 1 else ""
        return f"{head} {self.hostnqn} {self.subnqn}{tail}"


_IDENTITY = re.compile(r"NVMe([01])([RG])(0[12]) (\S+) (\S+)(?: (\S+))?\Z")


def parse_identity(text: str | bytes) -> PskIdentity:
    """The identity a host sent in its ClientHello (NQNs hold no spaces: NVMe Base §4.5)."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise PskError("PSK identity is not UTF-8") from None
    match = _IDENTITY.match(text)
    if match is None:
        raise PskError("not an NVMe PSK identity")
    version = int(match.group(1))
    digest = match.group(6)
    if (version == 1) != (digest is not None):
        raise PskError("a version 1 identity, and only it, carries a PSK digest")
    return PskIdentity(version, match.group(2) == "G", PskHash(int(match.group(3))),
                       match.group(4), match.group(5), digest)


def make_identity(psk: ConfiguredPsk, hostnqn: str, subnqn: str, *, version: int = 0,
                  encoding: LabelEncoding = LabelEncoding.LIBNVME_COMPAT) -> PskIdentity:
    """The identity a host with ``psk`` presents to ``subnqn`` (as libnvme computes it)."""
    if version not in (0, 1):
        raise PskError(f"PSK identity version {version}: 0 or 1")
    digest = None
    if version == 1:
        digest = psk_digest(retained_psk(psk, hostnqn, encoding), psk.cipher, hostnqn, subnqn)
    return PskIdentity(version, False, psk.cipher, hostnqn, subnqn, digest)


def tls_psk(psk: ConfiguredPsk, identity: PskIdentity,
            encoding: LabelEncoding = LabelEncoding.LIBNVME_COMPAT) -> bytes:
    """The TLS PSK for ``identity``, from the configured PSK of the identity's host.

    Raises PskError if the identity cannot belong to this key: another hash, a generated
    ("G") identity, or a version 1 digest that does not match."""
    if identity.generated:
        raise PskError("generated PSKs (secure concatenation) are not supported")
    if identity.cipher is not psk.cipher:
        raise PskError("the identity names another hash than the host's PSK")
    retained = retained_psk(psk, identity.hostnqn, encoding)
    if identity.version == 0:
        context = str(identity).encode()
    else:
        expected = psk_digest(retained, identity.cipher, identity.hostnqn, identity.subnqn)
        if not hmac.compare_digest(expected, identity.digest or ""):
            raise PskError("the identity's PSK digest does not match the host's PSK")
        context = f"{identity.cipher.value:02d} {identity.digest}".encode()
    return expand_label(identity.cipher.digest_name, retained, "nvme-tls-psk", context,
                        identity.cipher.length, encoding)
