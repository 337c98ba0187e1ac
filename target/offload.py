"""Slow pure computations off the event loop: :class:`ProcessOffload` runs a function of
``target.auth.ffdhe`` in one child process (``target.auth.worker_main``) and awaits the
result. The server points ``Target.offload`` at one (DH-HMAC-CHAP's modular
exponentiations); tests and tools keep the inline default.

Rules: the child starts on first use and is restarted after a failure; requests are sent one
at a time (a lock); every wait is bounded (``timeout_s``); :meth:`close` ends the child
(stdin closed, then SIGKILL after a grace period), and the server calls it when it closes.
A function whose ``DhError`` (a bad peer value) the child reports is raised here as the same
exception type, so callers see what they would have seen inline.
"""
from __future__ import annotations

import asyncio
import logging
import os
import pickle
import struct
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from target.auth import ffdhe

log = logging.getLogger(__name__)

T = TypeVar("T")
_LEN = struct.Struct("<I")


class OffloadError(RuntimeError):
    """The worker process failed or did not answer in time."""


class ProcessOffload:
    def __init__(self, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self._lock: asyncio.Lock | None = None
        self.calls = 0

    async def __call__(self, fn: Callable[..., T], /, *args: Any) -> T:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                return await asyncio.wait_for(self._call(fn, args), self.timeout_s)
            except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError) as e:
                await self._kill()
                raise OffloadError(f"DH worker: {type(e).__name__}") from None

    async def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        proc = await self._started()
        assert proc.stdin is not None and proc.stdout is not None
        body = pickle.dumps((fn, args))
        proc.stdin.write(_LEN.pack(len(body)) + body)
        await proc.stdin.drain()
        (n,) = _LEN.unpack(await proc.stdout.readexactly(_LEN.size))
        ok, value = pickle.loads(await proc.stdout.readexactly(n))  # noqa: S301 - our child
        self.calls += 1
        if ok:
            return value  # type: ignore[no-any-return]
        if str(value).startswith("DhError:"):
            raise ffdhe.DhError(str(value).split(": ", 1)[-1])
        raise OffloadError(f"DH worker: {value}")

    async def _started(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        env = dict(os.environ)
        # The child imports target.auth from wherever this process did.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "target.auth.worker_main", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=None, env=env)
        log.debug("DH worker process %d started", self._proc.pid)
        return self._proc

    async def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.kill()
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except asyncio.TimeoutError:
            log.warning("DH worker process %d did not exit after SIGKILL", proc.pid)

    async def close(self, grace_s: float = 2.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except asyncio.TimeoutError:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 5.0)
