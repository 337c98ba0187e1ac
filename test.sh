#!/usr/bin/env bash
# The test command (README): installs what the suite needs on a fresh Debian machine, then runs it.
# Extra arguments go to pytest, e.g. ./test.sh -m "not linux_host" -x
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages: QEMU and the guest's tools for the Linux-host tests (the guest image is built
# from these and the Debian cloud kernel), iproute2 for network-namespace tests, systemd for
# `systemd-analyze verify` of the units; openssl (its `kdf` command) and libssl3 for NVMe/TCP TLS
# (the target drives libssl through ctypes; tests check PSK derivations against `openssl kdf`).
# etcd-server: the coordinator of cluster mode (tests/cluster start their own etcd on loopback).
# gcc and libc6-dev build perf/native_load.py's C load engine (tests/perf/test_native_load.py).
packages=(qemu-system-x86 busybox-static nvme-cli fio kmod e2fsprogs util-linux iproute2 systemd
          openssl libssl3 etcd-server gcc libc6-dev)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The 6.12 guest kernel (tests/linux_host, DH-HMAC-CHAP) comes from Debian 13 (trixie) through a
# private apt configuration; its Release file is checked with the archive keyring, whose trixie
# keys arrived in a Debian 12 point release: make sure they are there.
if [ ! -e /usr/share/keyrings/debian-archive-trixie-stable.gpg ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends debian-archive-keyring
fi

python3 -m pip install -q -e '.[test]'
exec python3 -m pytest "$@"
