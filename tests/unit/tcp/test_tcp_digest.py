"""CRC32C: known vectors (RFC 3720 Appendix B.4 and the classic check value), and every
available implementation agreeing with the active one on any input."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from target.tcp import digest

VECTORS = [
    (b"", 0x00000000),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]


@pytest.mark.parametrize("data,expected", VECTORS)
def test_known_vectors(data: bytes, expected: int) -> None:
    assert digest.crc32c(data) == expected
    assert digest.crc32c(memoryview(data)) == expected
    assert digest.crc32c(bytearray(data)) == expected


@pytest.mark.parametrize("name", list(digest.implementations()))
@pytest.mark.parametrize("data,expected", VECTORS)
def test_every_implementation_knows_the_vectors(name: str, data: bytes, expected: int) -> None:
    fn = digest.implementations()[name]
    assert fn(data) == expected
    assert fn(memoryview(data)) == expected


def test_active_implementation_is_reported() -> None:
    assert digest.IMPLEMENTATION in digest.implementations()
    assert digest.IMPLEMENTATION.startswith(("crc32c", "crcmod"))


def test_digest_goes_on_the_wire_little_endian() -> None:
    assert digest.digest_bytes(b"123456789") == bytes([0x83, 0x92, 0x06, 0xE3])


@given(st.binary(max_size=2048), st.integers(0, 64))
def test_implementations_agree_on_slices(data: bytes, cut: int) -> None:
    view = memoryview(data)[min(cut, len(data)):]
    values = {name: fn(view) for name, fn in digest.implementations().items()}
    assert set(values.values()) == {digest.crc32c(bytes(view))}
