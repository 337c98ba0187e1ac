"""The finite-field Diffie-Hellman groups DH-HMAC-CHAP uses: RFC 7919's ffdhe2048..ffdhe8192
(generator 2), as Linux's ``ffdheNNNN(dh)`` kpp.

The primes are not pasted in: RFC 7919 §A defines each as

    p = 2^b - 2^(b-64) + (floor(2^(b-130) * e) + X) * 2^64 - 1

with e Euler's number and X the smallest offset that makes p a safe prime; the RFC gives X per
group. :func:`prime` evaluates that formula with integers (e to b bits by its series), so the
values can be checked against the RFC's text by anyone (tests/unit/auth checks the known
leading and trailing words and that p and (p-1)/2 pass Miller-Rabin).

Private exponents: a random value of twice the group's security strength in bits (RFC 7919
§5.2 and SP 800-56A, as Linux's dh.c does), not the full modulus size: ffdhe8192 then costs
two 400-bit modular exponentiations instead of two 8192-bit ones (about 60 ms instead of 3 s
here). Public values and shared secrets are big-endian, zero-padded to the modulus size.
"""
from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass

from target.nvme.dhchap import DhGroupId

GENERATOR = 2
# group id -> (modulus bits, RFC 7919's X, private exponent bits = 2 x security strength)
_GROUPS = {
    DhGroupId.FFDHE2048: (2048, 560316, 225),
    DhGroupId.FFDHE3072: (3072, 2625351, 275),
    DhGroupId.FFDHE4096: (4096, 5736041, 325),
    DhGroupId.FFDHE6144: (6144, 15705020, 375),
    DhGroupId.FFDHE8192: (8192, 10965728, 400),
}
GROUP_IDS = tuple(_GROUPS)


class DhError(ValueError):
    """A peer's public value is unusable (out of range)."""


def _e_fixed_point(bits: int) -> int:
    """floor(e * 2^bits), from e = sum 1/k!, with guard bits for the truncated terms."""
    guard = 64
    term = 1 << (bits + guard)
    total, k = 0, 0
    while term:  # bounded: term shrinks by a factor k each step (about 1000 steps for 8192)
        total += term
        k += 1
        term //= k
    return total >> guard


@functools.cache
def prime(group: int) -> int:
    bits, x, _ = _GROUPS[DhGroupId(group)]
    return (1 << bits) - (1 << (bits - 64)) + ((_e_fixed_point(bits - 130) + x) << 64) - 1


def size_bytes(group: int) -> int:
    return _GROUPS[DhGroupId(group)][0] // 8


@dataclass(frozen=True, slots=True, repr=False)
class KeyPair:
    group: int
    private: int
    public: bytes  # g^x mod p, big-endian, padded to the modulus size

    def __repr__(self) -> str:
        return f"KeyPair(group={self.group})"


def generate(group: int) -> KeyPair:
    """A fresh key pair (one modular exponentiation: run it off the event loop)."""
    p = prime(group)
    exp_bits = _GROUPS[DhGroupId(group)][2]
    x = secrets.randbits(exp_bits) | (1 << (exp_bits - 1))
    return KeyPair(group, x, pow(GENERATOR, x, p).to_bytes(size_bytes(group), "big"))


def shared_secret(pair: KeyPair, peer_public: bytes) -> bytes:
    """The session key: peer^x mod p, padded to the modulus size. A peer value outside
    2..p-2 (the ones that give away the secret) is refused."""
    p = prime(pair.group)
    if len(peer_public) != size_bytes(pair.group):
        raise DhError(f"DH value of {len(peer_public)} bytes, {size_bytes(pair.group)} expected")
    y = int.from_bytes(peer_public, "big")
    if not 1 < y < p - 1:
        raise DhError("DH value out of range")
    return pow(y, pair.private, p).to_bytes(size_bytes(pair.group), "big")
