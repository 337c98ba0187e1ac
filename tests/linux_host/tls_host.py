"""The Linux host's NVMe/TCP TLS tools inside the 6.12 guest: Debian 13's nvme-cli 2.13 (with
libnvme 1.13) and ``tlshd`` (ktls-utils 1.0), plus the kernel's AES-GCM modules kTLS needs.

Why a separate tree: trixie's binaries need trixie's libc, and the guest's own tools are the
machine's (Debian 12). So the trixie packages are unpacked under ``/trixie`` and run through
that tree's dynamic loader (``trixie_cmd``). Why extra modules: the guest image loads ``tls``,
but kTLS also needs ``gcm(aes)``; without ``gcm`` (and ``ghash-generic`` ...) tlshd completes
the handshake and then fails to hand the keys to the kernel ("The kernel does not support the
requested algorithm").

How: the packages come from trixie through the guest-image code's private apt configuration
(tests/linux_host/vm.py: ``PrivateApt``, ``CpioWriter``, ``KERNEL_6_12``, from branch
issue8-auth), are unpacked and written as a second cpio archive, which is appended to the
guest image's initramfs (the kernel unpacks concatenated archives in order). Both the
archive and the combined initramfs are cached by content.
"""
from __future__ import annotations

import dataclasses
import hashlib
import lzma
import os
import subprocess
import tempfile
from pathlib import Path

from . import vm

RECIPE = "1"
PACKAGES = (
    "nvme-cli", "libnvme1t64", "ktls-utils", "keyutils",
    # their libraries (the ld.so closure of nvme, tlshd and keyctl in trixie)
    "libc6", "libgcc-s1", "libatomic1", "libjson-c5", "libkeyutils1", "libssl3t64",
    "libglib2.0-0t64", "libgnutls30t64", "libnl-3-200", "libnl-genl-3-200", "libffi8",
    "libmount1", "libblkid1", "libpcre2-8-0", "libselinux1", "zlib1g", "libzstd1", "libgmp10",
    "libhogweed6t64", "libnettle8t64", "libidn2-0", "libp11-kit0", "libtasn1-6",
    "libunistring5",
)
# kTLS's AES-GCM, in load order (modinfo depends: gcm -> crypto_null; ghash-generic -> gf128mul).
KTLS_MODULES = ("crypto_null", "gf128mul", "ghash-generic", "gcm")
TREE = "/trixie"
LIBDIR = f"{TREE}/usr/lib/x86_64-linux-gnu"
TLSHD_CONF = b"[authenticate]\nkeyrings = .nvme\n"


def trixie_cmd(binary: str, args: str = "") -> str:
    """A guest shell command running trixie's ``binary`` (e.g. "usr/sbin/nvme")."""
    return f"{LIBDIR}/ld-linux-x86-64.so.2 --library-path {LIBDIR} {TREE}/{binary} {args}".strip()


def nvme(args: str) -> str:
    return trixie_cmd("usr/sbin/nvme", args)


def start_tlshd_cmd() -> str:
    """Load kTLS's ciphers and start tlshd in the background (its log: /tmp/tlshd.log)."""
    mods = " ".join(KTLS_MODULES)
    return (f"for m in {mods}; do grep -q \"^$(echo $m | tr - _) \" /proc/modules || "
            f"insmod {TREE}/modules/$m.ko || exit 1; done; "
            f"(setsid {trixie_cmd('usr/sbin/tlshd', '-c /etc/tlshd.conf')} "
            f"> /tmp/tlshd.log 2>&1 < /dev/null &); sleep 1; pidof ld-linux-x86-64.so.2 || "
            f"ps | grep -v grep | grep tlshd")


def _apt(cache: Path) -> vm.PrivateApt:
    apt = vm.PrivateApt(cache / "apt-trixie", "trixie")
    apt.update()
    return apt


def _download(cache: Path, dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    have = sorted(dest.glob("*.deb"))
    if len(have) >= len(PACKAGES):
        return have
    with tempfile.TemporaryDirectory(dir=dest, prefix=".dl-") as tmp:
        os.chmod(tmp, 0o777)  # readable by apt's sandbox user
        # status=/dev/null: the machine's installed (Debian 12) versions are not candidates.
        subprocess.run(["apt-get", "download", "-q", *_apt(cache).options(),
                        "-o", "Dir::State::status=/dev/null", *PACKAGES],
                       cwd=tmp, check=True, capture_output=True, timeout=600)
        for p in Path(tmp).glob("*.deb"):
            os.replace(p, dest / p.name)
    return sorted(dest.glob("*.deb"))


def _kernel_deb(cache: Path, image: vm.GuestImage) -> Path:
    name, version = image.kernel_package.split("=", 1)
    return vm.fetch_kernel_deb(vm.KernelPackage(name, version), cache / "debs",
                               _apt(cache).options())


def _write_overlay(out: Path, debs: list[Path], kernel_deb: Path, release: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root, kroot = Path(tmp) / "root", Path(tmp) / "kernel"
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=120)
        subprocess.run(["dpkg-deb", "-x", str(kernel_deb), str(kroot)], check=True, timeout=300)
        moddir = kroot / "usr" / "lib" / "modules" / release
        part = out.with_suffix(".part")
        with open(part, "wb") as raw:
            cpio = vm.CpioWriter(raw)
            cpio.directory(TREE.lstrip("/"))
            for dirpath, dirs, files in os.walk(root):
                dirs.sort()
                rel = os.path.relpath(dirpath, root)
                for name in [*dirs, *sorted(files)]:
                    src = os.path.join(dirpath, name)
                    dst = os.path.normpath(os.path.join(TREE.lstrip("/"), rel, name))
                    if os.path.islink(src):
                        cpio.symlink(dst, os.readlink(src))
                    elif os.path.isdir(src):
                        cpio.directory(dst)
                    else:
                        cpio.file(dst, src)
            cpio.directory(f"{TREE.lstrip('/')}/modules")
            for mod in KTLS_MODULES:
                found = list(moddir.rglob(f"{mod}.ko*"))
                if len(found) != 1:
                    raise vm.VMError(f"kernel module {mod} not found once in {kernel_deb.name}")
                data = found[0].read_bytes()
                if found[0].suffix == ".xz":
                    data = lzma.decompress(data)
                cpio.data(f"{TREE.lstrip('/')}/modules/{mod}.ko", data)
            cpio.data("etc/tlshd.conf", TLSHD_CONF)
            cpio.close()
        os.replace(part, out)


def tls_image(base: vm.GuestImage, cache_dir: Path | None = None) -> vm.GuestImage:
    """``base`` (the 6.12 guest) with trixie's nvme-cli, tlshd and kTLS's ciphers added."""
    cache = Path(cache_dir) if cache_dir else vm.default_cache_dir()
    work = cache / "tls-tools"
    debs = _download(cache, work / "debs")
    kernel_deb = _kernel_deb(cache, base)
    key = hashlib.sha256("\n".join([RECIPE, *KTLS_MODULES, kernel_deb.name, TLSHD_CONF.decode(),
                                    *(d.name for d in debs)]).encode()).hexdigest()[:16]
    overlay = work / f"overlay-{key}.cpio"
    if not overlay.exists():
        _write_overlay(overlay, debs, kernel_deb, base.kernel_release)
    combined = work / f"initrd-{base.key}-{key}.cpio"
    if not combined.exists():
        part = combined.with_suffix(".part")
        with open(part, "wb") as out:
            for src in (base.initrd, overlay):
                with open(src, "rb") as f:
                    while chunk := f.read(1 << 20):
                        out.write(chunk)
                out.write(b"\0" * (-out.tell() % 512))  # archives start 512-aligned
        os.replace(part, combined)
    return dataclasses.replace(base, initrd=combined, key=f"{base.key}+tls-{key}")
