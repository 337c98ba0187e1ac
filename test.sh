#!/usr/bin/env bash
# The test command (README): installs what the suite needs on a fresh Debian machine, then runs it.
# Extra arguments go to pytest, e.g. ./test.sh -m "not linux_host" -x
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
for pair in qemu-system-x86_64:qemu-system-x86 busybox:busybox-static nvme:nvme-cli fio:fio \
            depmod:kmod mke2fs:e2fsprogs blkdiscard:util-linux ip:iproute2; do
  cmd=${pair%%:*} pkg=${pair##*:}
  command -v "$cmd" >/dev/null 2>&1 || [[ -x /sbin/$cmd || -x /usr/sbin/$cmd ]] || need_apt+=("$pkg")
done
# busybox-static specifically (the guest's /init must be a static binary).
[[ -x /bin/busybox ]] && file -L /bin/busybox 2>/dev/null | grep -q static || need_apt+=(busybox-static)
if ((${#need_apt[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${need_apt[@]}" file
fi

python3 -m pip install -q -e '.[test]'
exec python3 -m pytest "$@"
