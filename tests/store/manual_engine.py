"""An IoEngine whose I/Os complete only when a test says so, in the order it chooses.

It does the I/O for real on the pool file (a buffered fd) at the moment it completes it, so a
test can hold a read or a write in flight, run other commands meanwhile, and see exactly what
the pool does with clusters that I/O still touches.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sbstore.store.engines.base import Buffer, ShortIO


@dataclass
class HeldIo:
    kind: str  # "read", "write", "zero", "punch", "sync"
    offset: int
    nbytes: int
    run: Callable[[], Any]
    fut: asyncio.Future[Any]


class ManualEngine:
    name = "manual"
    reason = "test engine completing I/O on command"
    direct = True
    block_align = 512

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self.held: list[HeldIo] = []
        self.hold = False  # False: complete every I/O at once (within the call)

    def _io(self, kind: str, offset: int, nbytes: int, run: Callable[[], Any]
            ) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        io = HeldIo(kind, offset, nbytes, run, fut)
        if self.hold:
            self.held.append(io)
        else:
            self._complete(io)
        return fut

    @staticmethod
    def _complete(io: HeldIo) -> None:
        try:
            io.fut.set_result(io.run())
        except OSError as exc:
            io.fut.set_exception(exc)

    def release(self, pick: Callable[[HeldIo], bool] = lambda io: True) -> int:
        """Complete the held I/Os ``pick`` selects, in the order they were issued."""
        done = [io for io in self.held if pick(io)]
        self.held = [io for io in self.held if io not in done]
        for io in done:
            self._complete(io)
        return len(done)

    def buffer(self, nbytes: int) -> memoryview:
        return memoryview(bytearray(nbytes))

    def read_into(self, offset: int, buf: memoryview) -> asyncio.Future[None]:
        def run() -> None:
            n = os.preadv(self._fd, [buf], offset)
            if n != len(buf):
                raise ShortIO("read", n, len(buf), offset)
        return self._io("read", offset, len(buf), run)

    def write(self, offset: int, data: Buffer) -> asyncio.Future[None]:
        copy = bytes(data)
        return self._io("write", offset, len(copy), lambda: os.pwrite(self._fd, copy, offset))

    def zero_range(self, offset: int, nbytes: int) -> asyncio.Future[bool]:
        def run() -> bool:
            os.pwrite(self._fd, bytes(nbytes), offset)
            return True
        return self._io("zero", offset, nbytes, run)

    def punch(self, offset: int, nbytes: int) -> asyncio.Future[bool]:
        return self.zero_range(offset, nbytes)

    def sync(self) -> asyncio.Future[None]:
        return self._io("sync", 0, 0, lambda: os.fdatasync(self._fd))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def stats(self) -> dict[str, int]:
        return {"inflight": len(self.held)}
