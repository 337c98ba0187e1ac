"""A volume moves between two daemons as a full copy plus an increment, checked by the real
Linux host (kernel 6.1 in a QEMU guest): the guest writes through daemon A, the snapshots are
exported from A and imported into B with the CLI, and the guest reads B's copy with O_DIRECT and
finds the same bytes (sha256 in the guest); a stream with one byte flipped is refused and leaves
no volume behind. And ext4 on a volume: a file written, deleted and fstrim'd gives its space
back (du of the pool file, NUSE).

Two ``sbstore serve --config`` processes on the host, one guest for the module."""
from __future__ import annotations

import os
import shlex
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import nvme_host as nh
from .sbstore_process import SbstoreDaemon, free_port, write_config
from .vm import HOST_FROM_GUEST, LinuxHostVM

pytestmark = pytest.mark.linux_host

MiB = 1 << 20
VOLUME_MIB = 32
NQN_A = "nqn.2026-12.io.sbstore:move-a"
NQN_B = "nqn.2026-12.io.sbstore:move-b"
HOST_ID = str(uuid.uuid4())
HOSTNQN = f"nqn.2014-08.org.nvmexpress:uuid:{HOST_ID}"


def _daemon(root: Path, name: str) -> SbstoreDaemon:
    d = root / name
    d.mkdir()
    port = free_port()
    config = write_config(d / "sbstore.toml", state_dir=d / "state", pool_path=d / "p.pool",
                          pool_size="1G", api_socket=d / "api.sock", nvme_port=port,
                          pool_name=name)
    return SbstoreDaemon(config, d / "api.sock", port, d / "daemon.log").start()


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[SbstoreDaemon, SbstoreDaemon, Path]]:
    root = tmp_path_factory.mktemp("move")
    a = _daemon(root, "a")
    try:
        b = _daemon(root, "b")
        try:
            yield a, b, root
        finally:
            b.stop()
    finally:
        a.stop()


def _attach(vm: LinuxHostVM, daemon: SbstoreDaemon, nqn: str) -> str:
    cmd = nh.connect_args(HOST_FROM_GUEST, daemon.port, nqn, hostnqn=HOSTNQN, hostid=HOST_ID)
    r = vm.exec(cmd, timeout=60)
    assert r.rc == 0, f"nvme connect {nqn} failed:\n{r.output}"
    nh.wait_attached(vm, nqn, timeout=20)
    return nh.wait_namespace(vm, nqn, 1, timeout=20)


def _detach(vm: LinuxHostVM, nqn: str) -> None:
    nh.disconnect(vm, nqn).check(f"disconnecting {nqn}")
    nh.wait_detached(vm, nqn)


def _write(vm: LinuxHostVM, dev: str, seek_mib: int, mib: int) -> None:
    vm.exec(f"head -c {mib * MiB} /dev/urandom > /tmp/chunk && dd if=/tmp/chunk "
            f"of={shlex.quote(dev)} bs=1M seek={seek_mib} oflag=direct conv=fsync "
            f"2>/dev/null && rm /tmp/chunk", timeout=180).check("writing")


def test_full_copy_and_increment_read_the_same_through_the_host(
        linux_host: LinuxHostVM, daemons: tuple[SbstoreDaemon, SbstoreDaemon, Path]) -> None:
    a, b, root = daemons
    vm = linux_host
    a.cli("volume", "create", "vm", "--size", f"{VOLUME_MIB}M").ok("create")
    a.cli("export", "create", NQN_A, "--volume", "vm", "--allow-any-host").ok("export")
    dev = _attach(vm, a, NQN_A)
    _write(vm, dev, 0, 12)
    a.cli("snapshot", "create", "vm", "mon").ok("snapshot mon")
    _write(vm, dev, 8, 8)  # overwrites half of what mon holds, and more
    a.cli("snapshot", "create", "vm", "tue").ok("snapshot tue")
    source = nh.sha256_device(vm, dev, VOLUME_MIB)
    _detach(vm, NQN_A)

    full, inc = root / "mon.stream", root / "tue.stream"
    a.cli("volume", "export", "mon", "--to", str(full)).ok("export mon")
    a.cli("volume", "export", "tue", "--since", "mon", "--to", str(inc)).ok("export tue")
    assert inc.stat().st_size < full.stat().st_size  # the increment carries only the change

    # A stream with one byte flipped is refused and creates nothing.
    bad = root / "bad.stream"
    raw = bytearray(full.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    bad.write_bytes(bytes(raw))
    refused = b.cli("volume", "import", str(bad), "vm")
    assert refused.rc == 1, refused.describe()
    assert b.cli("volume", "list", "--all").ok("list") == []

    b.cli("volume", "import", str(full), "vm").ok("import mon")
    b.cli("volume", "import", str(inc), "vm").ok("import tue")
    b.cli("export", "create", NQN_B, "--volume", "vm", "--allow-any-host").ok("export on b")
    copy = _attach(vm, b, NQN_B)
    try:
        assert nh.sha256_device(vm, copy, VOLUME_MIB) == source, (
            "the imported volume does not read what the source volume read")
    finally:
        _detach(vm, NQN_B)


def _nuse_blocks(vm: LinuxHostVM, dev: str) -> int:
    r = vm.exec(f"nvme id-ns {shlex.quote(dev)} | grep -i '^nuse'", timeout=30)
    r.check("nvme id-ns")
    return int(r.output.split(":")[1].strip(), 0)


def _pool_medium_bytes(daemon: SbstoreDaemon) -> int:
    pool = daemon.cli("status").ok("status")["pools"][0]
    return os.stat(pool["path"]).st_blocks * 512


# The issue asks for 512 MiB; at the guest's ~13 MB/s under TCG that is 40 s of writing, so the
# suite runs the same steps with less (SBSTORE_FSTRIM_MIB=512 runs the full size).
FSTRIM_MIB = int(os.environ.get("SBSTORE_FSTRIM_MIB", "48"))


def test_fstrim_on_ext4_gives_the_space_back(
        linux_host: LinuxHostVM, daemons: tuple[SbstoreDaemon, SbstoreDaemon, Path]) -> None:
    """The guest writes a file on ext4, deletes it and runs fstrim: the pool file's allocated
    size (du) drops by at least 88% of the file (450 of 512 MiB), and NUSE with it."""
    a, _, _ = daemons
    vm = linux_host
    nqn = "nqn.2026-12.io.sbstore:fstrim"
    size_mib = FSTRIM_MIB + 128
    a.cli("volume", "create", "fs", "--size", f"{size_mib}M").ok("create")
    a.cli("export", "create", nqn, "--volume", "fs", "--allow-any-host").ok("export")
    dev = shlex.quote(_attach(vm, a, nqn))
    try:
        vm.exec(f"set -e; mkfs.ext4 -q -F {dev}; mkdir -p /mnt/t; mount -t ext4 {dev} /mnt/t; "
                f"dd if=/dev/zero of=/mnt/t/big bs=1M count={FSTRIM_MIB} conv=fsync "
                f"2>/dev/null", timeout=60 + FSTRIM_MIB).check("mkfs and write")
        time.sleep(1.5)  # the pool's commit timer
        du_full, nuse_full = _pool_medium_bytes(a), _nuse_blocks(vm, dev)
        vm.exec("rm /mnt/t/big && sync && fstrim /mnt/t", timeout=120).check("rm and fstrim")
        want = FSTRIM_MIB * MiB * 88 // 100
        deadline = time.monotonic() + 20
        while du_full - _pool_medium_bytes(a) < want and time.monotonic() < deadline:
            time.sleep(0.5)
        dropped = du_full - _pool_medium_bytes(a)
        nuse_dropped = (nuse_full - _nuse_blocks(vm, dev)) * 4096
        print(f"fstrim after {FSTRIM_MIB} MiB: du dropped {dropped / MiB:.0f} MiB, NUSE "
              f"{nuse_dropped / MiB:.0f} MiB")
        assert dropped >= want, f"du dropped {dropped >> 20} MiB, want {want >> 20}"
        assert nuse_dropped >= want, f"NUSE dropped {nuse_dropped >> 20} MiB"
    finally:
        vm.exec("umount /mnt/t 2>/dev/null; true", timeout=60)
        _detach(vm, nqn)
