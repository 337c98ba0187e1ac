"""Store test fixtures: pool files on tmpfs when there is one (a commit's fsync then costs
microseconds, not the tens of milliseconds this VM's disk takes), else in pytest's tmp_path.

- ``every_engine``: a test module that uses it (``pytestmark``) runs once per data I/O engine
  (``Pool.default_io``).
- ``pool_path``: a pool file; parametrized indirectly with ``"loop"`` it is a loop block device
  (direct I/O on) of 64 MiB over a file on disk instead. A module that sets ``POOL_ON =
  ("file", "loop")`` runs every test that takes a pool on both."""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sbstore.store import Pool
from tests.store.loopdev import loop_device

SHM = Path("/dev/shm")


@pytest.fixture
def pool_dir(tmp_path: Path) -> Iterator[Path]:
    if SHM.is_dir() and os.access(SHM, os.W_OK):
        d = SHM / f"sbstore-test-{uuid.uuid4().hex[:12]}"
        d.mkdir()
        try:
            yield d
        finally:
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
    else:
        yield tmp_path


ENGINES = ("io_uring", "threads", "buffered")
POOL_DEVICE_BYTES = 64 << 20


@pytest.fixture(params=ENGINES)
def every_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(Pool, "default_io", request.param)
    return str(request.param)


@pytest.fixture
def pool_path(request: pytest.FixtureRequest, pool_dir: Path,
              tmp_path: Path) -> Iterator[Path]:
    if getattr(request, "param", "file") == "file":
        yield pool_dir / "pool.img"
        return
    with loop_device(tmp_path / "loop.img", POOL_DEVICE_BYTES) as dev:
        yield Path(dev)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    on = getattr(metafunc.module, "POOL_ON", None)
    if on and "pool_path" in metafunc.fixturenames:
        metafunc.parametrize("pool_path", on, indirect=True)
