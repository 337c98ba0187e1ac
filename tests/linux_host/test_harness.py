"""Self-test of the linux-host harness: the command channel, and the guest's host tools against
the guest's own kernel target (nvmet), independently of sbstore.

If these fail, a failure in test_sbstore_target.py says nothing about sbstore.
"""
from __future__ import annotations

import time

import pytest

from . import nvme_host as nh
from .vm import GuestTimeout, LinuxHostVM

pytestmark = pytest.mark.linux_host

KERNEL_NQN = "nqn.2026-11.io.sbstore.test:kernel-nvmet"


def test_guest_runs_the_packaged_kernel(linux_host: LinuxHostVM) -> None:
    r = linux_host.exec("uname -r", timeout=30)
    assert r.rc == 0, r.output
    assert r.output == linux_host.image.kernel_release + "\n"


def test_exit_status_propagates(linux_host: LinuxHostVM) -> None:
    assert linux_host.exec("false", timeout=30).rc == 1
    assert linux_host.exec("true", timeout=30).rc == 0
    assert linux_host.exec("echo out; echo err >&2; exit 7", timeout=30) == (7, "out\nerr\n")
    assert linux_host.exec("kill -9 $$", timeout=30).rc == 137


def test_output_is_byte_exact(linux_host: LinuxHostVM) -> None:
    # No echo of the command, no CR/LF translation, no trailing newline added.
    assert linux_host.exec("printf 'a\\r\\nb'", timeout=30).output == "a\r\nb"
    assert linux_host.exec("printf ''", timeout=30).output == ""
    # A long output (about 190 KB), and a multi-line script with quotes.
    r = linux_host.exec("seq 1 30000", timeout=60)
    assert r.output == "".join(f"{i}\n" for i in range(1, 30001))
    r = linux_host.exec("x='it''s'\nfor w in \"$x\" 2; do\n  echo \"[$w]\"\ndone", timeout=30)
    assert r.output == "[its]\n[2]\n"


def test_timeout_kills_the_command_and_the_channel_recovers(linux_host: LinuxHostVM) -> None:
    t0 = time.monotonic()
    with pytest.raises(GuestTimeout):
        linux_host.exec("echo started; sleep 987 & sleep 987", timeout=1)
    assert time.monotonic() - t0 < 15
    # The whole process group went, background child included; no old watchdog is left either.
    r = linux_host.exec("ps -o args | grep '^sleep' || true", timeout=30)
    assert "sleep 987" not in r.output, r.output
    assert r.output in ("", "sleep 30\n"), r.output  # at most the watchdog of this command
    assert linux_host.exec("echo alive", timeout=30) == (0, "alive\n")


def test_kernel_nvmet_discover_connect_fio_disconnect(linux_host: LinuxHostVM) -> None:
    vm = linux_host
    target = nh.setup_kernel_target(vm, KERNEL_NQN, size_mib=128)
    try:
        disc = nh.discover(vm, target.traddr, target.trsvcid)
        assert disc.rc == 0, f"nvme discover failed: {disc.describe()}"
        nqns = [r.get("subnqn") for r in nh.discovery_records(disc)]
        assert KERNEL_NQN in nqns, f"discovery log lacks {KERNEL_NQN}: {disc.describe()}"

        r = vm.exec(nh.connect_args(target.traddr, target.trsvcid, KERNEL_NQN), timeout=60)
        assert r.rc == 0, f"nvme connect failed: {r.output}"
        dev = nh.wait_attached(vm, KERNEL_NQN).namespaces[0]

        job = nh.fio(vm, "harness-verify", dev, rw="randwrite", bs="4k", iodepth=16,
                     size="16m", verify="crc32c", verify_fatal=1, runtime=60)
        assert job.rc == 0 and job.job is not None and job.job["error"] == 0, job.describe()
        assert job.io_bytes("write") == 16 << 20, job.describe()
        assert job.io_bytes("read") == 16 << 20, f"verify did not read back: {job.describe()}"

        # The filesystem tools work on it too (a test may want a file system over NVMe/TCP).
        r = vm.exec(f"mkfs.ext4 -q -F {dev} && mkdir -p /mnt/t && mount -t ext4 {dev} /mnt/t"
                    f" && echo data > /mnt/t/f && umount /mnt/t && fsck -n {dev}", timeout=120)
        assert r.rc == 0, f"mkfs.ext4 / mount / fsck failed: {r.output}"

        r = nh.disconnect(vm, KERNEL_NQN)
        assert r.rc == 0 and "disconnected 1 controller" in r.output, r.output
        left = nh.wait_detached(vm, KERNEL_NQN)
        assert left == nh.Attached((), ()), f"still attached after disconnect: {left}"
    finally:
        nh.disconnect(vm, KERNEL_NQN)
        nh.teardown_kernel_target(vm, target)
