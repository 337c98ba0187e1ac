"""Choosing an engine: auto picks io_uring here, falls back to threads where the kernel refuses
io_uring (simulated EPERM/ENOSYS at the system call; for real through
``kernel.io_uring_disabled``), and to buffered where the file system refuses O_DIRECT
(simulated at the open). A forced mode that cannot work says why."""
from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

import pytest

from sbstore.store.engines import EngineUnavailable, open_engine, ring

from .conftest import Target

DISABLED = "/proc/sys/kernel/io_uring_disabled"


def _refuse_setup(err: int) -> Callable[..., int]:
    def setup(entries: int, params: Any) -> int:
        raise OSError(err, os.strerror(err))
    return setup


def test_auto_picks_io_uring_where_the_kernel_has_it(file_target: Target) -> None:
    e = open_engine(file_target.path)
    try:
        assert (e.name, e.direct) == ("io_uring", True)
        assert e.reason.startswith("io_uring: O_DIRECT")
        assert "\n" not in e.reason
    finally:
        e.close()


@pytest.mark.parametrize("err, words", [
    (errno.EPERM, ["EPERM", "seccomp"]),
    (errno.ENOSYS, ["ENOSYS", "no io_uring"]),
])
async def test_auto_falls_back_to_threads_when_io_uring_is_refused(
        file_target: Target, monkeypatch: pytest.MonkeyPatch, err: int, words: list[str]
) -> None:
    monkeypatch.setattr(ring, "io_uring_setup", _refuse_setup(err))
    e = open_engine(file_target.path)
    try:
        assert (e.name, e.direct) == ("threads", True)
        for w in words:
            assert w in e.reason
        await e.write(0, b"z" * 4096)  # and it serves
        buf = e.buffer(4096)
        await e.read_into(0, buf)
        assert bytes(buf) == b"z" * 4096
    finally:
        e.close()
    with pytest.raises(EngineUnavailable, match=errno.errorcode[err]):
        open_engine(file_target.path, "io_uring")


def test_kernel_io_uring_disabled_sends_auto_to_threads(file_target: Target) -> None:
    try:
        with open(DISABLED) as f:
            old = f.read().strip()
        with open(DISABLED, "w") as f:
            f.write(old)
    except OSError as exc:
        pytest.skip(f"{DISABLED} not writable here: {exc}")
    try:
        with open(DISABLED, "w") as f:
            f.write("2")
        e = open_engine(file_target.path)
        try:
            assert e.name == "threads"
            assert "kernel.io_uring_disabled=2" in e.reason
        finally:
            e.close()
        with pytest.raises(EngineUnavailable, match="io_uring_disabled=2"):
            open_engine(file_target.path, "io_uring")
    finally:
        with open(DISABLED, "w") as f:
            f.write(old)
    e = open_engine(file_target.path)
    try:
        assert e.name == "io_uring"
    finally:
        e.close()


def _refuse_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def fake_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", fake_open)


async def test_auto_goes_buffered_where_o_direct_is_refused(
        file_target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    _refuse_direct(monkeypatch)
    e = open_engine(file_target.path)
    try:
        assert (e.name, e.direct, e.block_align) == ("buffered", False, 1)
        assert "refuses O_DIRECT" in e.reason
        await e.write(100, b"q" * 7)  # any offset and length on the page cache
        buf = e.buffer(7)
        await e.read_into(100, buf)
        assert bytes(buf) == b"q" * 7
    finally:
        e.close()
    for mode in ("io_uring", "threads"):
        with pytest.raises(EngineUnavailable, match="refuses"):
            open_engine(file_target.path, mode)


def test_forced_modes_and_bad_names(file_target: Target) -> None:
    for mode in ("io_uring", "threads", "buffered"):
        e = open_engine(file_target.path, mode)
        try:
            assert e.name == mode
            assert e.reason
        finally:
            e.close()
    with pytest.raises(ValueError, match="io mode"):
        open_engine(file_target.path, "aio")
    with pytest.raises(FileNotFoundError):
        open_engine(file_target.path + ".missing")
