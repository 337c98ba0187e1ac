"""The DH worker process: results, errors as the inline call would raise them, only
target.auth.ffdhe runs there, a killed worker is replaced, and close() ends it."""
from __future__ import annotations

import os
import signal

import pytest

from target.auth import ffdhe
from target.nvme.dhchap import DhGroupId
from target.offload import OffloadError, ProcessOffload


async def test_worker_computes_and_stops() -> None:
    off = ProcessOffload(timeout_s=30)
    try:
        a = await off(ffdhe.generate, DhGroupId.FFDHE2048)
        b = ffdhe.generate(DhGroupId.FFDHE2048)
        assert await off(ffdhe.shared_secret, a, b.public) == ffdhe.shared_secret(b, a.public)
        with pytest.raises(ffdhe.DhError):
            await off(ffdhe.shared_secret, a, bytes(256))
        with pytest.raises(OffloadError, match="not a function of target.auth.ffdhe"):
            await off(os.getpid)
        proc = off._proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)  # a dead worker is replaced
        await proc.wait()
        await off(ffdhe.generate, DhGroupId.FFDHE2048)
        assert off._proc is not None and off._proc.pid != proc.pid
    finally:
        last = off._proc
        await off.close()
    assert last is not None and last.returncode is not None
