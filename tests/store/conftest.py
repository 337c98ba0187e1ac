"""Store test fixtures: pool files on tmpfs when there is one (a commit's fsync then costs
microseconds, not the tens of milliseconds this VM's disk takes), else in pytest's tmp_path."""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture
def pool_path(pool_dir: Path) -> Path:
    return pool_dir / "pool.img"
