"""CRC32C, the NVMe/TCP header and data digest (NVMe/TCP Transport 1.0, "Digests").

Rules:
- CRC-32C (Castagnoli, polynomial 0x1EDC6F41 reflected), initial value 0xFFFFFFFF, final XOR
  0xFFFFFFFF; the 4-byte digest goes on the wire little-endian (``DIGEST.pack``).
- ``crc32c(data)`` takes any contiguous buffer (bytes, bytearray, memoryview) and returns the
  finished value. It never copies what the implementation can read in place.
- Implementation: the ``crc32c`` package (SSE4.2 / ARMv8 instructions when the CPU has them) if
  it imports, else ``crcmod``'s predefined ``crc-32c`` (C table-driven). ``IMPLEMENTATION`` says
  which one is active, for logs and the benchmark; ``implementations()`` lists every importable
  one so the benchmark can compare them.
"""
from __future__ import annotations

import struct
from collections.abc import Callable

Buffer = bytes | bytearray | memoryview

DIGEST = struct.Struct("<I")  # the digest as it sits on the wire
DIGEST_LEN = 4


def _load_crc32c() -> tuple[str, Callable[[Buffer], int]] | None:
    try:
        import crc32c as _mod
    except ImportError:
        return None
    name = "crc32c (hardware)" if getattr(_mod, "hardware_based", False) else "crc32c (software)"
    return name, _mod.crc32c


def _load_crcmod() -> tuple[str, Callable[[Buffer], int]] | None:
    try:
        import crcmod.predefined  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    raw: Callable[[Buffer], int] = crcmod.predefined.mkCrcFun("crc-32c")
    fn = raw
    try:
        raw(memoryview(b"1"))
    except TypeError:  # the pure-Python fallback of crcmod wants bytes

        def fn(data: Buffer) -> int:
            return raw(bytes(data))
    name = "crcmod" if _crcmod_has_extension() else "crcmod (pure Python)"
    return name, fn


def _crcmod_has_extension() -> bool:
    try:
        import crcmod._crcfunext  # type: ignore[import-untyped,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def implementations() -> dict[str, Callable[[Buffer], int]]:
    """Every importable CRC32C implementation by name, the preferred one first."""
    found: dict[str, Callable[[Buffer], int]] = {}
    for loader in (_load_crc32c, _load_crcmod):
        got = loader()
        if got is not None:
            found[got[0]] = got[1]
    return found


def _select() -> tuple[str, Callable[[Buffer], int]]:
    for loader in (_load_crc32c, _load_crcmod):
        got = loader()
        if got is not None:
            return got
    raise ImportError("no CRC32C implementation: install the 'crc32c' or 'crcmod' package")


# crc32c(data) -> int: CRC-32C of a contiguous buffer, finished (init and final XOR 0xFFFFFFFF).
IMPLEMENTATION, crc32c = _select()


def digest_bytes(data: Buffer) -> bytes:
    """The 4 bytes that follow ``data`` on the wire as its digest."""
    return DIGEST.pack(crc32c(data))
