"""What a command produces: :class:`Response` (what the server sends) and :class:`Done` (what an
admin or fabrics handler returns before the session turns it into a completion).

Both are NamedTuples so that the I/O path can build a Response with ``tuple.__new__`` (no Python
``__init__`` call) and the server can still read ``response.cqe`` / ``response.data``.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

Payload = bytes | bytearray | memoryview

CQE = struct.Struct("<IIHHHH")  # dw0, dw1, sqhd, sqid, cid, status (Base 2.0 Figure 90)
pack_cqe = CQE.pack


class Response(NamedTuple):
    """A completion (16-byte CQE) and the controller-to-host data that goes before it."""

    cqe: bytes
    data: Payload | None = None


class Done(NamedTuple):
    """A handler's successful result: completion dwords 0 and 1, and data for the host."""

    dw0: int = 0
    dw1: int = 0
    data: Payload | None = None


def completion(cid: int, sqid: int, sqhd: int, status: int = 0, dw0: int = 0,
               dw1: int = 0) -> bytes:
    """A CQE; ``status`` is the status word without the phase bit (status.status_field)."""
    return pack_cqe(dw0 & 0xFFFFFFFF, dw1 & 0xFFFFFFFF, sqhd & 0xFFFF, sqid, cid & 0xFFFF,
                    status & 0xFFFE)
