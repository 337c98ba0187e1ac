"""First writes zero the new cluster with fallocate(ZERO_RANGE) where the backing supports it
(ext4, xfs, block devices), else by writing zeroes (tmpfs). Both must leave every byte the write
did not cover reading as zeroes, also in a cluster reused from a deleted volume, and survive a
reopen. The pool lives in pytest's tmp_path (a disk file system), not /dev/shm, so the
fallocate path really runs where the file system has it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from sbstore.store import Pool
from sbstore.store.check import check_pool

pytestmark = [pytest.mark.usefixtures("every_engine")]

CLUSTER = 64 << 10


@pytest.mark.parametrize("mode", ["fallocate", "write"])
async def test_first_write_into_a_reused_cluster_reads_zeroes_around_it(tmp_path: Path,
                                                                        mode: str) -> None:
    if mode == "fallocate" and not _file_system_zeroes(tmp_path):
        pytest.skip(f"the file system of {tmp_path} has no fallocate(ZERO_RANGE)")
    path = tmp_path / "pool.img"
    pool = Pool.create(path, 64 << 20, cluster_size=CLUSTER)
    if mode == "write":
        pool._backing.zero_range_supported = False
    try:
        # A cluster full of another volume's bytes, then freed.
        old = await pool.create_volume("old", 16 * CLUSTER)
        for i in range(16):
            await old.write(i * CLUSTER // 512, b"\xaa" * CLUSTER)
        await pool.flush()
        await pool.delete("old")
        await pool.flush()

        new = await pool.create_volume("new", 16 * CLUSTER)
        data = os.urandom(4096)
        for i in range(16):  # 4 KiB in the middle of every cluster: each is a first write
            await new.write(i * CLUSTER // 512 + 16, data)
        await pool.flush()
        expect = bytearray(CLUSTER)
        expect[16 * 512:16 * 512 + 4096] = data
        for i in range(16):
            got = bytes(await new.read(i * CLUSTER // 512, CLUSTER // 512))
            assert got == bytes(expect), f"cluster {i}: old bytes or garbage around the write"
        # The fast path ran where it should, and did not fall back.
        assert pool._backing.zero_range_supported == (mode == "fallocate")
    finally:
        await pool.aclose()
    report = check_pool(str(path))
    assert report.clean, report.problems
    reopened = Pool.open(path)
    try:
        got = bytes(await reopened.volume("new").read(0, CLUSTER // 512))
        assert got == bytes(expect)
    finally:
        await reopened.aclose()


def _file_system_zeroes(directory: Path) -> bool:
    from sbstore.store.backing import Backing
    b = Backing(directory / "probe", create_size=1 << 20, lock=False)
    try:
        return b.zero_range(4096, 4096)
    finally:
        b.close()
        os.unlink(directory / "probe")


def test_zero_range_zeroes_and_remembers_when_unsupported(tmp_path: Path) -> None:
    from sbstore.store.backing import Backing
    b = Backing(tmp_path / "f", create_size=1 << 20, lock=False)
    try:
        os.pwrite(b.fd, b"\xee" * 8192, 4096)
        if b.zero_range(4096, 4096):
            assert os.pread(b.fd, 8192, 4096) == bytes(4096) + b"\xee" * 4096
        else:
            assert not b.zero_range_supported and not b.zero_range(4096, 4096)
    finally:
        b.close()
