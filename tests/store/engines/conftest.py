"""Targets the engine suite runs on, and the engines themselves.

- ``file``: a file in pytest's tmp_path (a disk file system here, so O_DIRECT, fallocate and
  ``st_blocks`` behave as they do under a real pool file).
- ``loop512`` / ``loop4k``: loop block devices over such a file, with direct I/O on, 512-byte
  and 4096-byte logical sectors (the second makes 512-byte requests unaligned for O_DIRECT).
  Created once per session with ``losetup`` and always detached; skipped where that fails.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sbstore.store.engines import IoEngine, open_engine
from tests.store.loopdev import loop_device

SIZE = 16 << 20
MODES = ["io_uring", "threads", "buffered"]
TARGETS = ["file", "loop512", "loop4k"]


@dataclass
class Target:
    kind: str
    path: str
    size: int
    backing: str  # the file under it (itself for "file")


def _make_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def _loop_device(tmp: Path, sector_size: int) -> Iterator[Target]:
    backing = tmp / f"loop{sector_size}.img"
    with loop_device(backing, SIZE, sector_size) as dev:
        yield Target("loop4k" if sector_size == 4096 else "loop512", dev, SIZE, str(backing))


@pytest.fixture(scope="session")
def loop512(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from _loop_device(tmp_path_factory.mktemp("loop512"), 512)


@pytest.fixture(scope="session")
def loop4k(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from _loop_device(tmp_path_factory.mktemp("loop4k"), 4096)


@pytest.fixture
def file_target(tmp_path: Path) -> Target:
    path = tmp_path / "data.img"
    _make_file(path, SIZE)
    return Target("file", str(path), SIZE, str(path))


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> Target:
    name = "file_target" if request.param == "file" else request.param
    t: Target = request.getfixturevalue(name)
    return t


@pytest.fixture(params=MODES)
def engine(request: pytest.FixtureRequest, target: Target) -> Iterator[IoEngine]:
    e = open_engine(target.path, request.param)
    assert e.name == request.param
    try:
        yield e
    finally:
        e.close()
