"""RFC 7919 groups computed from the RFC's formula: the known words and safe primality."""
from __future__ import annotations

import random

import pytest

from target.auth import ffdhe
from target.nvme.dhchap import DhGroupId


def _probably_prime(n: int, rounds: int = 2) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    rng = random.Random(7919)
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def test_ffdhe2048_matches_rfc7919_text() -> None:
    # RFC 7919 A.1: the first and last words of ffdhe2048's p.
    text = f"{ffdhe.prime(DhGroupId.FFDHE2048):X}"
    assert text.startswith("FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1")
    assert text.endswith("886B423861285C97FFFFFFFFFFFFFFFF")


@pytest.mark.parametrize("group", [DhGroupId.FFDHE2048, DhGroupId.FFDHE3072])
def test_safe_prime(group: int) -> None:
    p = ffdhe.prime(group)
    assert p.bit_length() == ffdhe.size_bytes(group) * 8
    assert _probably_prime(p, 1) and _probably_prime((p - 1) // 2, 1)


@pytest.mark.parametrize("group", ffdhe.GROUP_IDS)
def test_both_sides_agree(group: int) -> None:
    a, b = ffdhe.generate(group), ffdhe.generate(group)
    assert len(a.public) == ffdhe.size_bytes(group)
    assert ffdhe.shared_secret(a, b.public) == ffdhe.shared_secret(b, a.public)
    assert "private" not in repr(a)


@pytest.mark.parametrize("bad", [0, 1, -1])
def test_refuses_degenerate_values(bad: int) -> None:
    group = DhGroupId.FFDHE2048
    p = ffdhe.prime(group)
    value = (p + bad if bad < 0 else bad).to_bytes(256, "big")
    with pytest.raises(ffdhe.DhError):
        ffdhe.shared_secret(ffdhe.generate(group), value)
    with pytest.raises(ffdhe.DhError):
        ffdhe.shared_secret(ffdhe.generate(group), bytes(255))
