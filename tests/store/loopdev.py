"""Loop block devices for the store's tests: a real block device (``losetup --direct-io=on``)
over a file, so pools and engines are tested on a device node as well as on files."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def loop_device(backing: Path, size: int, sector_size: int = 512) -> Iterator[str]:
    """A loop device over a new sparse file ``backing`` of ``size`` bytes; always detached.
    Skips the test where loop devices cannot be made (not root, no loop support)."""
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    with open(backing, "wb") as f:
        f.truncate(size)
    cmd = ["losetup", "--find", "--show", "--direct-io=on", str(backing)]
    if sector_size != 512:
        cmd[3:3] = ["--sector-size", str(sector_size)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"losetup failed: {exc}")
    if proc.returncode != 0:
        pytest.skip(f"losetup failed: {proc.stderr.strip()}")
    dev = proc.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=30, check=False)
