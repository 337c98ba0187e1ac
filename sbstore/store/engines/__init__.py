"""TEMPORARY (replaced by the engines branch): a buffered engine only, so the store can move."""
from __future__ import annotations

import asyncio
import os
from typing import Any

from .base import Buffer, EngineUnavailable, IoEngine, ShortIO

__all__ = ["EngineUnavailable", "IoEngine", "ShortIO", "open_engine"]


class _Buffered:
    name = "buffered"
    direct = False
    block_align = 1

    def __init__(self, path: str, readonly: bool) -> None:
        self.reason = "temporary"
        self._fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)

    def _fut(self, result: Any = None, exc: BaseException | None = None) -> asyncio.Future[Any]:
        f = asyncio.get_running_loop().create_future()
        if exc is not None:
            f.set_exception(exc)
        else:
            f.set_result(result)
        return f

    def buffer(self, nbytes: int) -> memoryview:
        return memoryview(bytearray(nbytes))

    def read_into(self, offset: int, buf: memoryview) -> asyncio.Future[None]:
        try:
            n = os.preadv(self._fd, [buf], offset)
        except OSError as exc:
            return self._fut(exc=exc)
        if n != len(buf):
            return self._fut(exc=ShortIO("read", n, len(buf), offset))
        return self._fut()

    def write(self, offset: int, data: Buffer) -> asyncio.Future[None]:
        try:
            n = os.pwritev(self._fd, [data], offset)
        except OSError as exc:
            return self._fut(exc=exc)
        if n != len(data):
            return self._fut(exc=ShortIO("write", n, len(data), offset))
        return self._fut()

    def zero_range(self, offset: int, nbytes: int) -> asyncio.Future[bool]:
        return self._fut(False)

    def punch(self, offset: int, nbytes: int) -> asyncio.Future[bool]:
        return self._fut(False)

    def sync(self) -> asyncio.Future[None]:
        os.fdatasync(self._fd)
        return self._fut()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def stats(self) -> dict[str, int]:
        return {}


def open_engine(path: str, mode: str = "auto", *, readonly: bool = False) -> IoEngine:
    return _Buffered(path, readonly)
