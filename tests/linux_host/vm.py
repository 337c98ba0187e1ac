"""The real Linux NVMe/TCP host in a QEMU guest: image builder and interactive guest session.

The machines that run the suite cannot load nvme-tcp themselves, so the stock Linux initiator
(kernel nvme-tcp + nvme-cli + fio) runs in a throw-away guest (facts in
``/work/shared/reference/linux-host-vm.md``). This module has two jobs:

Image (:func:`build_image`): a kernel and an initramfs, built only from Debian packages.
  - The kernel is the package ``linux-image-cloud-amd64`` depends on, fetched with
    ``apt-get download`` and unpacked with ``dpkg -x``; ``depmod -b`` makes ``modules.dep``.
  - Two kernels (:class:`HostKernel`): Debian 12's 6.1 (:data:`KERNEL_6_1`, the default, from
    the machine's own apt sources) and Debian 13's 6.12 (:data:`KERNEL_6_12`: NVMe in-band
    authentication, TLS, multipath), fetched from the trixie suite through a private apt
    configuration under the cache directory, so the machine's own sources stay as they are.
    6.12 ships its modules as ``.ko.xz`` under ``usr/lib/modules``: they are decompressed into
    the image (busybox ``insmod`` takes plain ``.ko``), and virtio_pci is built in.
  - The initramfs (newc cpio written here, uncompressed: decompressing 40 MB of gzip costs the
    TCG guest over a second of every boot) holds busybox as ``/init``'s shell, the
    kernel modules in :data:`GUEST_MODULES` with their dependencies, and the host's own binaries
    (:data:`HOST_BINARIES`) with every library ``ldd`` lists.
  - Cached under ``$SBSTORE_VM_CACHE`` or ``~/.cache/sbstore/linux-host``, keyed by the kernel
    package version, the identity (path, size, mtime) of every file copied from the host and the
    recipe itself, so a new kernel package, a nvme-cli upgrade or a change here rebuilds. Builds
    hold a file lock, so concurrent test runs do not race.

Guest (:class:`LinuxHostVM`): TCG (``/dev/kvm`` is not usable for a stock kernel here), user
networking with nothing forwarded inward (the guest reaches the host's 127.0.0.1:PORT as
10.0.2.2:PORT). Two serial ports:
  - ttyS0 -> a file: the kernel console (:meth:`LinuxHostVM.console`), every kernel message
    (loglevel=7) and what /init prints.
  - ttyS1 -> a unix socket: the command channel. A busybox shell agent reads one line per command
    (``ID LIMIT BASE64``), runs the decoded script in its own session with stdin /dev/null and
    stdout+stderr to the port, then prints an end marker carrying ``$?``. The port is in raw mode
    (no echo, no CR/LF translation), so the output is exactly what the command wrote. Every
    command has a guest-side watchdog (kills its process group) and a host-side deadline, and a
    begin marker per command lets the host drop any late output of an earlier command.
The guest is killed whatever happens: :meth:`LinuxHostVM.stop`, the context manager, an
``atexit`` hook, and ``PR_SET_PDEATHSIG`` (QEMU dies with the process that started it).

Run ``python3 tests/linux_host/vm.py build`` to build (prints the paths), ``... shell`` for a
line-at-a-time shell in the guest.
"""
from __future__ import annotations

import atexit
import base64
import ctypes
import fcntl
import hashlib
import itertools
import json
import lzma
import math
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple

# Bump when the image recipe changes in a way the key below would not notice.
RECIPE_VERSION = 2

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"

# Modules loaded at boot, in this order (each after its own dependencies from modules.dep).
GUEST_MODULES = (
    "configfs",
    "virtio_pci",
    "virtio_net",
    "virtio-rng",  # seeds the guest's crng at once (getrandom() would block for seconds)
    "nvme-fabrics",
    "nvme-tcp",
    "nvmet",
    "nvmet-tcp",
)

# Debian 13's 6.12 cloud kernel: virtio and virtio_pci are built in; tls.ko for NVMe/TCP TLS.
GUEST_MODULES_6_12 = (
    "configfs",
    "virtio_net",
    "virtio-rng",
    "tls",
    "nvme-fabrics",
    "nvme-tcp",
    "nvmet",
    "nvmet-tcp",
)


@dataclass(frozen=True)
class HostKernel:
    """Which Debian cloud kernel the guest boots. ``suite`` None: the package the machine's
    own apt sources offer; else the cloud kernel of that Debian suite, through a private apt
    configuration (its package lists live in the cache directory)."""

    name: str  # "6.1" / "6.12": how tests and the cache name it
    suite: str | None
    modules: tuple[str, ...]


KERNEL_6_1 = HostKernel("6.1", None, GUEST_MODULES)
KERNEL_6_12 = HostKernel("6.12", "trixie", GUEST_MODULES_6_12)
DEBIAN_MIRROR = "http://deb.debian.org/debian"
APT_LISTS_MAX_AGE_S = 24 * 3600  # a private suite's package lists are refreshed daily

# Host binaries copied into the guest (with their ldd closure), and the Debian package of each.
HOST_BINARIES: dict[str, str] = {
    "/usr/sbin/nvme": "nvme-cli",
    "/usr/bin/fio": "fio",
    "/usr/sbin/blkdiscard": "util-linux",
    "/usr/sbin/fsck": "util-linux",
    "/usr/sbin/mke2fs": "e2fsprogs",
    "/usr/sbin/e2fsck": "e2fsprogs",
}
# Extra names for copied binaries: guest path -> target guest path.
HOST_ALIASES = {
    "/usr/sbin/mkfs.ext4": "/usr/sbin/mke2fs",
    "/usr/sbin/fsck.ext4": "/usr/sbin/e2fsck",
}
HOST_DATA_FILES = ("/etc/mke2fs.conf",)

# Commands the image build runs on the host, and the package providing each.
BUILD_TOOLS: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "busybox": "busybox-static",
    "depmod": "kmod",
    "ldd": "libc-bin",
    "dpkg": "dpkg",
    "apt-get": "apt",
}

GUEST_IP = "10.0.2.15"
HOST_FROM_GUEST = "10.0.2.2"  # QEMU user networking: this address is the host's loopback

_SBIN_PATHS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


class VMError(RuntimeError):
    """The guest could not be built, booted or driven."""


class GuestTimeout(VMError):
    """A guest command did not finish in time; ``output`` holds what it printed so far."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class ExecResult(NamedTuple):
    """What one guest command returned: its exit status and its stdout+stderr, interleaved."""

    rc: int
    output: str

    def check(self, what: str = "command") -> ExecResult:
        """Return self if rc is 0, else raise VMError carrying the output."""
        if self.rc != 0:
            raise VMError(f"{what} failed with rc={self.rc}:\n{self.output}")
        return self


# --------------------------------------------------------------------------------------------
# Host tools


def _which(cmd: str) -> str | None:
    found = shutil.which(cmd)
    if found:
        return found
    for d in _SBIN_PATHS:
        p = os.path.join(d, cmd)
        if os.access(p, os.X_OK):
            return p
    return None


def _run(argv: Sequence[str], *, timeout: float = 300, cwd: str | Path | None = None,
         env: dict[str, str] | None = None) -> str:
    """Run a build step; raise VMError with its output when it fails."""
    try:
        proc = subprocess.run(list(argv), check=False, cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)
    except FileNotFoundError as exc:
        raise VMError(f"{argv[0]} not found: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise VMError(f"{' '.join(argv)} timed out after {timeout}s") from exc
    if proc.returncode != 0:
        raise VMError(f"{' '.join(argv)} failed (rc={proc.returncode}):\n{proc.stdout}")
    return proc.stdout


def missing_packages() -> list[str]:
    """Debian packages whose commands the build or the guest needs and this host lacks."""
    missing: list[str] = []
    for cmd, pkg in BUILD_TOOLS.items():
        if _which(cmd) is None and pkg not in missing:
            missing.append(pkg)
    for path, pkg in HOST_BINARIES.items():
        if not os.access(path, os.X_OK) and pkg not in missing:
            missing.append(pkg)
    return missing


def ensure_host_packages() -> None:
    """Install (as root, with apt-get) what :func:`missing_packages` lists, else raise VMError.

    The linux-host tests are not skipped when tools are missing: they fail with this message.
    """
    missing = missing_packages()
    if not missing:
        return
    hint = f"apt-get install -y {' '.join(missing)}"
    if os.geteuid() != 0 or _which("apt-get") is None:
        raise VMError(f"the linux-host guest needs Debian packages that are missing: {hint}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        _run(["apt-get", "install", "-y", "-q", *missing], env=env, timeout=900)
    except VMError:
        _run(["apt-get", "update", "-q"], env=env, timeout=600)
        _run(["apt-get", "install", "-y", "-q", *missing], env=env, timeout=900)
    still = missing_packages()
    if still:
        raise VMError(f"still missing after apt-get install: {' '.join(still)}")


# --------------------------------------------------------------------------------------------
# Kernel package


@dataclass(frozen=True)
class KernelPackage:
    name: str  # e.g. linux-image-6.1.0-50-cloud-amd64
    version: str  # Debian version, e.g. 6.1.176-1


class PrivateApt:
    """apt-get/apt-cache over one Debian suite only, with lists and caches under ``root``
    (the machine's sources, lists and configuration are left alone)."""

    def __init__(self, root: Path, suite: str) -> None:
        self.root = root
        self.suite = suite
        self.lists = root / "lists"
        self.sources = root / "sources.list"

    def options(self) -> list[str]:
        return ["-o", f"Dir::Etc::sourcelist={self.sources}",
                "-o", "Dir::Etc::sourceparts=/dev/null",
                "-o", f"Dir::State::Lists={self.lists}",
                "-o", f"Dir::Cache={self.root / 'cache'}",
                "-o", "APT::Architectures=amd64", "-o", "Acquire::Languages=none"]

    def update(self, *, force: bool = False) -> None:
        stamp = self.root / ".updated"
        if not force and stamp.exists() and \
                time.time() - stamp.stat().st_mtime < APT_LISTS_MAX_AGE_S:
            return
        for d in (self.lists / "partial", self.root / "cache" / "archives" / "partial"):
            d.mkdir(parents=True, exist_ok=True)
        keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
        self.sources.write_text(f"deb [signed-by={keyring}] {DEBIAN_MIRROR} {self.suite} main\n")
        _run(["apt-get", "-q", *self.options(), "update"],
             env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), timeout=600)
        stamp.touch()


def _apt_options(kernel: HostKernel, cache: Path | None) -> list[str]:
    if kernel.suite is None:
        return []
    root = (cache or default_cache_dir()) / f"apt-{kernel.suite}"
    apt = PrivateApt(root, kernel.suite)
    apt.update()
    return apt.options()


def resolve_kernel_package(kernel: HostKernel = KERNEL_6_1,
                           cache: Path | None = None) -> KernelPackage:
    """The kernel package the cloud meta-package depends on, at its candidate version."""
    def query() -> KernelPackage:
        opts = _apt_options(kernel, cache)
        meta = _run(["apt-cache", *opts, "show", "--no-all-versions", KERNEL_META_PACKAGE])
        m = re.search(r"^Depends:.*?\b(linux-image-\S+-cloud-amd64)(?:\s*\(=\s*([^)\s]+)\))?",
                      meta, re.MULTILINE)
        if not m:
            raise VMError(f"no kernel dependency in apt-cache show {KERNEL_META_PACKAGE}:\n{meta}")
        name, version = m.group(1), m.group(2)
        if version is None:  # not pinned by the meta package: take the candidate
            show = _run(["apt-cache", *opts, "show", "--no-all-versions", name])
            v = re.search(r"^Version:\s*(\S+)", show, re.MULTILINE)
            if not v:
                raise VMError(f"no Version in apt-cache show {name}")
            version = v.group(1)
        return KernelPackage(name, version)

    try:
        return query()
    except VMError:
        if kernel.suite is not None:
            PrivateApt((cache or default_cache_dir()) / f"apt-{kernel.suite}",
                       kernel.suite).update(force=True)
            return query()
        if os.geteuid() != 0:
            raise
        _run(["apt-get", "update", "-q"], env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
             timeout=600)
        return query()


def fetch_kernel_deb(pkg: KernelPackage, debs: Path, apt_options: Sequence[str] = ()) -> Path:
    """The package's .deb in ``debs``, downloaded with apt-get if not there yet."""
    debs.mkdir(parents=True, exist_ok=True)
    arch_free = pkg.version.split(":")[-1]
    for p in debs.glob(f"{pkg.name}_*.deb"):
        if p.name.startswith(f"{pkg.name}_{arch_free}_"):
            return p
    with tempfile.TemporaryDirectory(dir=debs, prefix=".dl-") as tmp:
        # Readable by the _apt sandbox user, so apt does not complain when we are root.
        os.chmod(tmp, 0o777)
        _run(["apt-get", "download", "-q", *apt_options, f"{pkg.name}={pkg.version}"], cwd=tmp,
             timeout=600)
        got = list(Path(tmp).glob("*.deb"))
        if len(got) != 1:
            raise VMError(f"apt-get download {pkg.name} produced {got}")
        dest = debs / got[0].name
        os.replace(got[0], dest)
        return dest


# --------------------------------------------------------------------------------------------
# cpio (newc) writer


class CpioWriter:
    """Streams a newc cpio archive (the format the kernel unpacks as initramfs).

    Entries keep mode and symlink targets; owners are root and mtimes 0 so the image depends
    only on its content. Parents must be added before their children (the kernel does not make
    missing directories).
    """

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._ino = itertools.count(1)
        self.names: set[str] = set()

    def _header(self, name: str, mode: int, size: int, nlink: int = 1,
                rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (next(self._ino), mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        head = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._out.write(head + encoded + b"\0" * (-(len(head) + len(encoded)) % 4))
        self.names.add(name)

    def _pad(self, size: int) -> None:
        self._out.write(b"\0" * (-size % 4))

    def directory(self, name: str, mode: int = 0o755) -> None:
        if name not in self.names:
            self._header(name, stat.S_IFDIR | mode, 0, nlink=2)

    def parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.directory("/".join(parts[:i]))

    def data(self, name: str, content: bytes, mode: int = 0o644) -> None:
        self.parents(name)
        self._header(name, stat.S_IFREG | mode, len(content))
        self._out.write(content)
        self._pad(len(content))

    def file(self, name: str, src: str | Path) -> None:
        st = os.stat(src)
        self.parents(name)
        self._header(name, stat.S_IFREG | stat.S_IMODE(st.st_mode), st.st_size)
        with open(src, "rb") as f:
            copied = 0
            while chunk := f.read(1 << 20):
                self._out.write(chunk)
                copied += len(chunk)
        if copied != st.st_size:
            raise VMError(f"{src} changed size while being copied")
        self._pad(st.st_size)

    def symlink(self, name: str, target: str) -> None:
        self.parents(name)
        raw = target.encode()
        self._header(name, stat.S_IFLNK | 0o777, len(raw))
        self._out.write(raw)
        self._pad(len(raw))

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.parents(name)
        self._header(name, stat.S_IFCHR | mode, 0, rdev=(major, minor))

    def close(self) -> None:
        self._header("TRAILER!!!", 0, 0)


# --------------------------------------------------------------------------------------------
# Guest userland

INIT_SCRIPT = r"""#!/bin/sh
# /init of the sbstore linux-host guest (tests/linux_host/vm.py): mounts, modules, network,
# NVMe host identity, then the command agent on ttyS1 (respawned if it exits).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp /var/tmp /root /etc/nvme
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t devpts devpts /dev/pts
kv=$(uname -r)
while read -r m; do
  insmod "/lib/modules/$kv/$m" || echo "sbstore-init: insmod $m failed"
done < /etc/sbstore/modules
mount -t configfs configfs /sys/kernel/config || echo "sbstore-init: configfs mount failed"
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
ip link set eth0 up && ip addr add @GUEST_IP@/24 dev eth0 && ip route add default via @GATEWAY@ \
  || echo "sbstore-init: network setup failed"
uuid=$(cat /proc/sys/kernel/random/uuid)
echo "nqn.2014-08.org.nvmexpress:uuid:$uuid" > /etc/nvme/hostnqn
echo "$uuid" > /etc/nvme/hostid
echo "sbstore-init: ready"
while :; do
  sh /etc/sbstore/agent.sh < /dev/ttyS1 > /dev/ttyS1 2>&1
  echo "sbstore-init: agent exited rc=$?"
  sleep 1
done
"""

# One command per line: "SBX ID LIMIT LEN BASE64(script)". Markers start with \036 (RS), which
# no command output of ours contains, and carry the id, so late output of an older command is
# recognisable and dropped by the host.
# Busybox ash is racy with asynchronous children, so the agent never has any when it reads or
# waits:
# - `read` restarts from scratch when a signal (SIGCHLD) interrupts it, losing what it had read
#   of the line; a line that lost its head is answered with BAD (nothing run) and the host sends
#   it again.
# - `wait PID` can miss the child's exit and hang until some other child exits.
# So the command runs in the foreground (in its own session, so the watchdog can kill its whole
# process group), and the watchdog is double-forked: a child of init, not of the agent. The
# watchdog writes .dog (its pid) then checks .done; the agent writes .done then reads .dog: so
# either the agent kills the watchdog (and its sleep), or the watchdog sees .done and leaves.
AGENT_SCRIPT = r"""# command agent of the sbstore linux-host guest; stdin/stdout are ttyS1
stty raw -echo 2>/dev/null
printf '\036@@READY@@\n'
while IFS=' ' read -r magic id limit len code; do
  [ -n "$magic" ] || continue
  case "$limit:$len" in *[!0-9:]*|:*|*:) limit=x ;; esac
  if [ "$magic" != SBX ] || [ "$limit" = x ] || [ "${#code}" != "$len" ]; then
    printf '\036@@BAD@@\n'
    continue
  fi
  f=/tmp/.sbstore-$id
  if ! printf '%s' "$code" | base64 -d > "$f.sh" 2>/dev/null; then
    printf '\036@@BAD@@\n'
    continue
  fi
  (setsid sh -c 'echo $$ > "$1.dog"; [ -e "$1.done" ] || sleep "$2"
     if [ -e "$1.done" ]; then rm -f "$1.done" "$1.dog"; exit 0; fi
     : > "$1.timeout"; p=$(cat "$1.pgid") && kill -9 -"$p"' dog "$f" "$limit" \
     < /dev/null > /dev/null 2>&1 &)
  printf '\036@@B:%s@@\n' "$id"
  setsid sh -c 'echo $$ > "$1.pgid"; exec sh "$1.sh"' cmd "$f" < /dev/null 2>&1
  rc=$?
  : > "$f.done"
  dog=$(cat "$f.dog" 2>/dev/null) && kill -9 -"$dog" 2>/dev/null && rm -f "$f.done"
  to=0
  [ -e "$f.timeout" ] && to=1
  rm -f "$f.sh" "$f.pgid" "$f.dog" "$f.timeout"
  printf '\n\036@@E:%s:%s:%s@@\n' "$id" "$rc" "$to"
done
"""


def _ldd_closure(binary: str) -> list[str]:
    """Absolute paths of the shared objects ``binary`` loads (empty for a static binary)."""
    proc = subprocess.run(["ldd", binary], check=False, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=60)
    if proc.returncode != 0:
        if "not a dynamic executable" in proc.stdout or "statically linked" in proc.stdout:
            return []
        raise VMError(f"ldd {binary} failed:\n{proc.stdout}")
    libs: list[str] = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        m = re.match(r"\S+ => (/\S+) \(", line) or re.match(r"(/\S+) \(", line)
        if m:
            libs.append(m.group(1))
        elif "=> not found" in line:
            raise VMError(f"ldd {binary}: {line}")
    return libs


def _host_files() -> list[str]:
    """Every host file copied into the guest (binaries, their libraries, data files)."""
    busybox = _which("busybox")
    if busybox is None:
        raise VMError("busybox not found (apt-get install busybox-static)")
    files = [busybox, *HOST_BINARIES]
    for b in [busybox, *HOST_BINARIES]:
        files.extend(_ldd_closure(b))
    files.extend(p for p in HOST_DATA_FILES if os.path.exists(p))
    seen: dict[str, None] = {}
    for f in files:
        seen.setdefault(f, None)
    return list(seen)


def _guest_path(host_path: str) -> tuple[str, str]:
    """(name as referenced, real file) for a host path, both relative and under merged /usr."""
    real = os.path.realpath(host_path)
    ref = os.path.join(os.path.realpath(os.path.dirname(host_path)), os.path.basename(host_path))
    return ref.lstrip("/"), real.lstrip("/")


def _image_key(pkg: KernelPackage, host_files: list[str],
               kernel: HostKernel = KERNEL_6_1) -> str:
    ident = []
    for f in host_files:
        st = os.stat(f)
        ident.append((f, os.path.realpath(f), st.st_size, st.st_mtime_ns))
    blob = json.dumps({
        "recipe": RECIPE_VERSION,
        "kernel": [pkg.name, pkg.version],
        "modules": kernel.modules,
        "files": ident,
        "aliases": HOST_ALIASES,
        "init": INIT_SCRIPT,
        "agent": AGENT_SCRIPT,
    }, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class GuestImage:
    """A built guest: kernel, initramfs and what went into them."""

    kernel: Path
    initrd: Path
    kernel_release: str  # uname -r inside the guest
    kernel_package: str  # name=version
    key: str
    build_seconds: float = 0.0  # 0 when it came from the cache
    host_kernel: str = KERNEL_6_1.name  # HostKernel.name


def default_cache_dir() -> Path:
    env = os.environ.get("SBSTORE_VM_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "sbstore" / "linux-host"


def _module_closure(moddir: Path, wanted: Sequence[str]) -> list[str]:
    """Module paths (relative to ``moddir``) in a load order where deps come first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        deps[mod] = rest.split()
        by_name[os.path.basename(mod).split(".ko")[0].replace("-", "_")] = mod
    order: list[str] = []

    def visit(mod: str, depth: int) -> None:
        if depth > 64:
            raise VMError(f"module dependency loop at {mod}")
        if mod in order:
            return
        # modules.dep lists the transitive dependencies, the deepest last.
        for d in reversed(deps.get(mod, [])):
            visit(d, depth + 1)
        order.append(mod)

    builtin: set[str] = set()
    if (moddir / "modules.builtin").exists():
        builtin = {os.path.basename(line).split(".ko")[0].replace("-", "_")
                   for line in (moddir / "modules.builtin").read_text().split()}
    for name in wanted:
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            if name.replace("-", "_") in builtin:
                continue  # part of the kernel image: nothing to load
            raise VMError(f"kernel module {name} not in {moddir}/modules.dep")
        visit(path, 0)
    return order


def _write_initramfs(out_path: Path, kroot: Path, kernel_release: str,
                     host_files: list[str], stage: Path,
                     wanted: Sequence[str] = GUEST_MODULES) -> None:
    moddir = kroot / "lib" / "modules" / kernel_release
    compressed = _module_closure(moddir, wanted)
    # A module tree with only what we ship, so the guest's modules.dep matches its files;
    # xz-compressed modules (6.12) are stored plain, for busybox insmod.
    sdir = stage / "lib" / "modules" / kernel_release
    modules = []
    for m in compressed:
        plain = m[:-3] if m.endswith(".xz") else m
        (sdir / plain).parent.mkdir(parents=True, exist_ok=True)
        if m.endswith(".xz"):
            with lzma.open(moddir / m) as src, open(sdir / plain, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copy2(moddir / m, sdir / m)
        modules.append(plain)
    for meta in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (moddir / meta).exists():
            shutil.copy2(moddir / meta, sdir / meta)
    _run(["depmod", "-b", str(stage), kernel_release])

    with open(out_path, "wb") as raw:
        cpio = CpioWriter(raw)
        for d in ("usr", "usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "dev", "proc", "sys",
                  "run", "root", "etc", "etc/sbstore", "var"):
            cpio.directory(d)
        cpio.directory("tmp", 0o1777)
        for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"),
                             ("lib64", "usr/lib64")):
            cpio.symlink(link, target)
        cpio.char_device("dev/console", 5, 1)
        cpio.char_device("dev/null", 1, 3, 0o666)

        busybox = _which("busybox")
        assert busybox is not None
        for f in host_files:
            ref, real = _guest_path(f)
            if real not in cpio.names:
                cpio.file(real, f)
            if ref != real and ref not in cpio.names:
                cpio.symlink(ref, "/" + real)
        bb_ref, _ = _guest_path(busybox)
        if bb_ref != "usr/bin/busybox":
            cpio.symlink("usr/bin/busybox", "/" + bb_ref)
        for alias, target in HOST_ALIASES.items():
            cpio.symlink(alias.lstrip("/"), target)
        applets = _run([busybox, "--list"]).split()
        for applet in applets:
            if applet in ("busybox", "init", "linuxrc"):
                continue
            if any(f"usr/{d}/{applet}" in cpio.names for d in ("bin", "sbin")):
                continue  # a real binary of that name is in the image
            cpio.symlink(f"usr/bin/{applet}", "busybox")
        cpio.data("init", INIT_SCRIPT.replace("@GUEST_IP@", GUEST_IP)
                  .replace("@GATEWAY@", HOST_FROM_GUEST).encode(), 0o755)
        cpio.data("etc/sbstore/agent.sh", AGENT_SCRIPT.encode(), 0o644)
        cpio.data("etc/sbstore/modules", "".join(m + "\n" for m in modules).encode())
        cpio.data("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        cpio.data("etc/group", b"root:x:0:\n")
        # stage/lib/modules/... goes to usr/lib/modules/... (lib is a symlink to usr/lib).
        for root, dirs, files in os.walk(stage / "lib"):
            dirs.sort()
            rel = os.path.join("usr", os.path.relpath(root, stage))
            for name in dirs:
                cpio.directory(os.path.normpath(os.path.join(rel, name)))
            for name in sorted(files):
                cpio.file(os.path.normpath(os.path.join(rel, name)), os.path.join(root, name))
        cpio.close()


def _load_image(dest: Path, build_seconds: float = 0.0) -> GuestImage | None:
    manifest = dest / "manifest.json"
    if not manifest.exists():
        return None
    info = json.loads(manifest.read_text())
    return GuestImage(dest / "vmlinuz", dest / "initrd.cpio", info["kernel_release"],
                      info["kernel_package"], dest.name, build_seconds,
                      info.get("kernel", KERNEL_6_1.name))


def _newest_image(cache: Path, kernel: HostKernel = KERNEL_6_1) -> GuestImage | None:
    images = cache / "images"
    if not images.is_dir():
        return None
    built = sorted((p for p in images.iterdir() if (p / "manifest.json").exists()),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for p in built:
        image = _load_image(p)
        if image is not None and image.host_kernel == kernel.name:
            return image
    return None


def build_image(cache_dir: Path | None = None, *, log: IO[str] | None = None,
                kernel: HostKernel = KERNEL_6_1) -> GuestImage:
    """The guest image for the current kernel package and host binaries, built if not cached.
    ``kernel``: which Debian cloud kernel (:data:`KERNEL_6_1` or :data:`KERNEL_6_12`).

    When apt cannot say which kernel is current (no package lists, no network) the newest
    cached image is used. When the kernel download fails (lists older than the mirror), the
    lists are refreshed (as root) and the newer kernel is used.
    """
    ensure_host_packages()
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    (cache / "images").mkdir(parents=True, exist_ok=True)
    host_files = _host_files()
    try:
        pkg = resolve_kernel_package(kernel, cache)
    except VMError as exc:
        fallback = _newest_image(cache, kernel)
        if fallback is None:
            raise
        if log:
            print(f"linux-host: using cached {fallback.kernel_package}: {exc}", file=log)
        return fallback
    cached = _load_image(cache / "images" / _image_key(pkg, host_files, kernel))
    if cached is not None:
        return cached
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be building the same image
        cached = _load_image(cache / "images" / _image_key(pkg, host_files, kernel))
        if cached is not None:
            return cached
        t0 = time.monotonic()
        apt_options = _apt_options(kernel, cache)
        try:
            deb = fetch_kernel_deb(pkg, cache / "debs", apt_options)
        except VMError:
            if kernel.suite is not None:
                PrivateApt(cache / f"apt-{kernel.suite}", kernel.suite).update(force=True)
            elif os.geteuid() != 0:
                raise
            else:
                _run(["apt-get", "update", "-q"],
                     env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), timeout=600)
            pkg = resolve_kernel_package(kernel, cache)
            cached = _load_image(cache / "images" / _image_key(pkg, host_files, kernel))
            if cached is not None:
                return cached
            deb = fetch_kernel_deb(pkg, cache / "debs", apt_options)
        key = _image_key(pkg, host_files, kernel)
        if log:
            print(f"linux-host: building guest image {key} ({pkg.name}={pkg.version})", file=log)
        dest = cache / "images" / key
        work = Path(tempfile.mkdtemp(dir=cache / "images", prefix=".build-"))
        try:
            kroot = work / "kernel"
            _run(["dpkg-deb", "-x", str(deb), str(kroot)])
            if not (kroot / "lib").exists() and (kroot / "usr" / "lib" / "modules").is_dir():
                (kroot / "lib").symlink_to("usr/lib")  # merged-/usr package (Debian 13)
            releases = [p.name for p in (kroot / "lib" / "modules").iterdir()]
            if len(releases) != 1:
                raise VMError(f"{deb.name}: expected one module tree, found {releases}")
            release = releases[0]
            _run(["depmod", "-b", str(kroot), release])
            out = work / "out"
            out.mkdir()
            shutil.copy2(kroot / "boot" / f"vmlinuz-{release}", out / "vmlinuz")
            _write_initramfs(out / "initrd.cpio", kroot, release, host_files, work / "modstage",
                             kernel.modules)
            (out / "manifest.json").write_text(json.dumps({
                "kernel": kernel.name,
                "kernel_release": release,
                "kernel_package": f"{pkg.name}={pkg.version}",
                "deb": deb.name,
                "files": host_files,
                "modules": list(kernel.modules),
            }, indent=1))
            os.replace(out, dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _prune(cache / "images", keep=4)  # two kernels, and the previous build of each
        _prune(cache / "debs", keep=3)
        image = _load_image(dest, time.monotonic() - t0)
        assert image is not None
        return image


def _prune(directory: Path, keep: int) -> None:
    """Drop all but the ``keep`` newest entries (old kernels and old host binaries)."""
    if not directory.is_dir():
        return
    entries = sorted((p for p in directory.iterdir() if not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Guest session

_LIVE: weakref.WeakSet[LinuxHostVM] = weakref.WeakSet()


@atexit.register
def _kill_all() -> None:
    for vm in list(_LIVE):
        vm.stop(graceful=False)


def die_with_parent() -> None:
    """preexec_fn: QEMU gets SIGKILL when the process that started it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux/glibc: the atexit hook and stop() still kill the guest


_BAD = b"\x1e@@BAD@@\n"
_END = re.compile(rb"\n\x1e@@E:([0-9a-f]+\.\d+):(-?\d+):(\d)@@\n")


@dataclass(eq=False)
class LinuxHostVM:
    """One booted guest with the Linux NVMe/TCP host; drive it with :meth:`exec`.

    Every ``exec`` runs in a fresh ``sh`` (cwd /, stdin /dev/null, PATH with the guest's
    binaries). Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    image: GuestImage
    memory_mb: int = 1024
    cpus: int = 2
    boot_timeout: float = 120.0
    qemu: str = "qemu-system-x86_64"
    extra_append: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._dir: Path | None = None
        self._rx = bytearray()
        self._nonce = secrets.token_hex(4)
        self._seq = itertools.count(1)
        self._console_final: str | None = None
        self._qemu_log_final: str | None = None
        self.resends = 0  # commands the agent received mangled and the host sent again

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> LinuxHostVM:
        if self._proc is not None:
            raise VMError("guest already started")
        qemu = _which(self.qemu)
        if qemu is None:
            raise VMError(f"{self.qemu} not found: apt-get install -y qemu-system-x86")
        self._dir = Path(tempfile.mkdtemp(prefix="sbstore-vm-"))
        sock_path = self._dir / "cmd.sock"
        # loglevel=7: every kernel message reaches the console file (costs no measurable boot
        # time). mitigations=off: nothing untrusted runs in the guest, and TCG boots faster.
        append = (f"console=ttyS0 loglevel=7 panic=-1 rdinit=/init mitigations=off "
                  f"{self.extra_append}").strip()
        argv = [
            qemu, "-accel", "tcg", "-m", str(self.memory_mb), "-smp", str(self.cpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", append,
            "-chardev", f"file,id=con0,path={self._dir / 'console.log'}",
            "-serial", "chardev:con0",
            "-chardev", f"socket,id=cmd0,path={sock_path},server=on,wait=on",
            "-serial", "chardev:cmd0",
            "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
            "-device", "virtio-rng-pci",
        ]
        t0 = time.monotonic()
        self._qemu_log = open(self._dir / "qemu.log", "wb")
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._qemu_log,
                                      stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        _LIVE.add(self)
        try:
            self._connect(sock_path, t0 + 30)
            self._wait_ready(t0 + self.boot_timeout)
        except GuestTimeout as exc:
            console, qlog = self.console(), self._qemu_log_text()
            self.stop(graceful=False)
            raise VMError(f"{exc} (no agent after {self.boot_timeout}s)\n--- qemu ---\n{qlog}"
                          f"\n--- console ---\n{console[-16000:]}") from exc
        except BaseException:
            self.stop(graceful=False)
            raise
        self.timings["boot"] = time.monotonic() - t0
        return self

    def _connect(self, path: Path, deadline: float) -> None:
        # QEMU waits (wait=on) for this connection before it runs the guest, so nothing the
        # guest prints on ttyS1 is lost.
        while True:
            self._check_alive("while starting")
            if path.exists():
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(str(path))
                    self._sock = s
                    return
                except OSError:
                    s.close()
            if time.monotonic() > deadline:
                raise VMError(f"QEMU did not open {path}\n{self._qemu_log_text()}")
            time.sleep(0.02)

    def _wait_ready(self, deadline: float) -> None:
        marker = b"\x1e@@READY@@\n"
        while marker not in self._rx:
            self._recv(deadline, "booting")
        del self._rx[: self._rx.index(marker) + len(marker)]

    def _check_alive(self, doing: str) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise VMError(f"QEMU exited (rc={self._proc.returncode}) {doing}\n"
                          f"--- qemu ---\n{self._qemu_log_text()}\n"
                          f"--- console ---\n{self.console()[-8000:]}")

    def _recv(self, deadline: float, doing: str) -> None:
        assert self._sock is not None
        left = deadline - time.monotonic()
        if left <= 0:
            raise GuestTimeout(f"guest timed out {doing}")
        self._sock.settimeout(min(left, 1.0))
        try:
            chunk = self._sock.recv(1 << 16)
        except TimeoutError:
            self._check_alive(doing)
            return
        if not chunk:
            self._check_alive(doing)
            raise VMError(f"guest command channel closed {doing}\n"
                          f"--- console ---\n{self.console()[-4000:]}")
        self._rx += chunk

    def stop(self, graceful: bool = True) -> None:
        """Power the guest off (kill it if it does not go in a few seconds); idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            if graceful and self._sock is not None:
                try:
                    # Immediate power-off through sysrq; nothing in the guest needs a clean stop.
                    code = base64.b64encode(b"echo o > /proc/sysrq-trigger").decode()
                    self._send_line(f"SBX {self._nonce}.0 5 {len(code)} {code}")
                    proc.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._dir is not None:
            self._console_final = self.console()
            self._qemu_log_final = self._qemu_log_text()
            self._qemu_log.close()
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        _LIVE.discard(self)

    def __enter__(self) -> LinuxHostVM:
        return self if self._proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- commands -------------------------------------------------------------------------

    def _send_line(self, line: str) -> None:
        assert self._sock is not None
        self._sock.settimeout(10)
        self._sock.sendall(line.encode() + b"\n")

    def exec(self, cmd: str, timeout: float = 60.0, *, check: bool = False) -> ExecResult:
        """Run ``cmd`` (a sh script, may span lines) in the guest; wait at most ``timeout`` s.

        Raises GuestTimeout (the command's process group is killed in the guest) when it runs
        too long, VMError when the guest is gone, and with ``check`` when rc is not 0.
        """
        if self._sock is None:
            raise VMError("guest is not running")
        cid = f"{self._nonce}.{next(self._seq)}"
        limit = max(1, math.ceil(timeout))
        code = base64.b64encode(cmd.encode()).decode()
        line = f"SBX {cid} {limit} {len(code)} {code}"
        self._send_line(line)
        begin = f"\x1e@@B:{cid}@@\n".encode()
        deadline = time.monotonic() + limit + 15  # the guest watchdog fires first
        try:
            resent = 0
            while begin not in self._rx:
                if _BAD in self._rx:
                    # The agent lost part of the line and ran nothing: send it again.
                    del self._rx[: self._rx.index(_BAD) + len(_BAD)]
                    resent += 1
                    if resent > 5:
                        raise VMError("guest command channel keeps mangling commands")
                    self._send_line(line)
                    continue
                self._recv(deadline, f"starting {cmd!r}")
            del self._rx[: self._rx.index(begin) + len(begin)]
            self.resends += resent
            while True:
                for m in _END.finditer(bytes(self._rx)):
                    if m.group(1).decode() == cid:
                        out = self._rx[: m.start()].decode(errors="replace")
                        del self._rx[: m.end()]
                        if m.group(3) == b"1":
                            raise GuestTimeout(
                                f"guest command timed out after {limit}s: {cmd}\n{out}", out)
                        result = ExecResult(int(m.group(2)), out)
                        return result.check(cmd) if check else result
                self._recv(deadline, f"running {cmd!r}")
        except GuestTimeout as exc:
            if not exc.output:
                exc.output = self._rx.decode(errors="replace")
            raise

    def dmesg(self, timeout: float = 30.0) -> str:
        """The guest kernel log (from the console file when the guest no longer answers)."""
        if self.alive and self._sock is not None:
            try:
                return self.exec("dmesg", timeout=timeout).output
            except VMError:
                pass
        return self.console()

    def console(self) -> str:
        """Everything the guest kernel (and /init) printed on ttyS0 so far."""
        if self._dir is None:
            return self._console_final or ""
        try:
            return (self._dir / "console.log").read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _qemu_log_text(self) -> str:
        if self._dir is None:
            return self._qemu_log_final or ""
        try:
            return (self._dir / "qemu.log").read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def failure_sections(self) -> list[tuple[str, str]]:
        """(title, text) pairs that explain a failed test: console, dmesg, QEMU's own log."""
        sections = [("guest console (ttyS0)", self.console()[-64000:] or "(empty)")]
        if self.alive:
            sections.append(("guest dmesg", self.dmesg(timeout=20)[-64000:]))
        qlog = "\n".join(line for line in self._qemu_log_text().splitlines()
                         if "waiting for connection" not in line).strip()
        if qlog:
            sections.append(("qemu log", qlog[-8000:]))
        return sections

    # -- helpers tests share --------------------------------------------------------------

    def wait_for(self, condition: str, timeout: float = 10.0, interval: float = 0.1) -> None:
        """Poll a guest shell condition (e.g. ``[ -b /dev/nvme0n1 ]``) until it holds."""
        tries = max(1, int(timeout / interval))
        script = (f"i=0; while ! {{ {condition} ; }} >/dev/null 2>&1; do "
                  f"i=$((i+1)); [ $i -ge {tries} ] && exit 1; sleep {interval}; done")
        r = self.exec(script, timeout=timeout + 10)
        if r.rc != 0:
            raise VMError(f"guest condition not met within {timeout}s: {condition}\n{r.output}")


def boot(cache_dir: Path | None = None, kernel: HostKernel = KERNEL_6_1,
         **kwargs: object) -> LinuxHostVM:
    """Build (or reuse) the image and start a guest; the caller stops it."""
    t0 = time.monotonic()
    image = build_image(cache_dir, log=sys.stderr, kernel=kernel)
    vm = LinuxHostVM(image, **kwargs)  # type: ignore[arg-type]
    vm.timings["image"] = time.monotonic() - t0
    return vm.start()


def _main(argv: list[str]) -> int:
    kernel = KERNEL_6_1
    if "--kernel" in argv:  # vm.py build|shell --kernel 6.12
        i = argv.index("--kernel")
        kernel = {k.name: k for k in (KERNEL_6_1, KERNEL_6_12)}[argv[i + 1]]
        del argv[i:i + 2]
    cmd = argv[0] if argv else "build"
    if cmd == "build":
        image = build_image(log=sys.stderr, kernel=kernel)
        print(f"kernel  {image.kernel}\ninitrd  {image.initrd}\nrelease {image.kernel_release}\n"
              f"package {image.kernel_package}\nbuilt in {image.build_seconds:.1f}s")
        return 0
    if cmd == "shell":
        with boot(kernel=kernel) as vm:
            print(f"booted in {vm.timings['boot']:.1f}s; one command per line, EOF to quit",
                  file=sys.stderr)
            for line in sys.stdin:
                if not line.strip():
                    continue
                try:
                    r = vm.exec(line, timeout=600)
                    sys.stdout.write(r.output)
                    print(f"[rc={r.rc}]", file=sys.stderr)
                except GuestTimeout as exc:
                    print(exc, file=sys.stderr)
        return 0
    print("usage: vm.py build|shell [--kernel 6.1|6.12]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
