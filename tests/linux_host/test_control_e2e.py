"""End to end through the control module: the daemon from a config file, driven by the CLI
only, and the real Linux NVMe/TCP host (kernel 6.1 in a QEMU guest) using what it exports.

One daemon (``python3 -m sbstore serve --config FILE`` on the host: a 2 GiB pool file created
by ``create_size``, a listener on 127.0.0.1, the API on a unix socket) and one guest serve the
whole module. Each test is one step of what an operator and a host do, in order, and names the
step when it fails; a step that needs an earlier one fails at once with "precondition" when
that one did not pass, rather than failing obscurely.

1. the daemon serves from its config;
2. CLI: a volume, exported to exactly one host NQN;
3. the host connects with that NQN, makes an ext4 filesystem, writes files, unmounts;
4. CLI: snapshot, clone of the snapshot, the clone added to the same export: the host sees
   the new namespace without reconnecting (Namespace Attribute Changed event + rescan);
5. the clone reads back what the volume held (raw bytes, fsck, the files);
6. a host with another NQN is refused at Connect;
7. the discovery log is filtered per host;
8. SIGTERM, start again: the CLI shows the same volumes, snapshot, clone and export;
9. the host's controller reconnects by itself and both namespaces read back the same bytes;
   writing to the clone then leaves the volume alone (copy on write through the host); a file
   written, deleted and fstrim'd gives its space back (du of the pool file, NUSE); the snapshot
   both came from is deleted and neither changes; a group snapshot of the volume and the clone
   is taken and deleted as a group; the clone shrunk with --force: the host sees its new size
   without reconnecting;
10. CLI: everything removed again, nothing left allocated in the pool, nor on its file;
    `sbstore check` of the pool file is clean.

The test must be able to fail: every comparison is against hashes taken in the guest of data
it wrote itself (8 MiB from /dev/urandom), raw reads use O_DIRECT (not the page cache), and the
restart is a real stop of the process (exit status checked) and a start from the state files.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from . import nvme_host as nh
from .sbstore_process import SbstoreDaemon, free_port, write_config
from .vm import HOST_FROM_GUEST, LinuxHostVM, VMError

pytestmark = pytest.mark.linux_host

MiB = 1 << 20
SUBNQN = "nqn.2026-11.io.sbstore:e2e-control"
POOL = "e2e"
VOLUME = "vm1"
SNAPSHOT = "vm1-snap"
CLONE = "vm1-clone"
VOLUME_MIB = 64
BLOCK_SIZE = 4096
RANDOM_MIB = 8
MOUNT = "/mnt/e2e"
# The guest's identities: the allowed host, and another one that must be refused.
HOST_ID = str(uuid.uuid4())
HOSTNQN = f"nqn.2014-08.org.nvmexpress:uuid:{HOST_ID}"
OTHER_ID = str(uuid.uuid4())
OTHER_HOSTNQN = f"nqn.2014-08.org.nvmexpress:uuid:{OTHER_ID}"
# The host retries every second after the target goes away and gives up after 30 s; the
# restart step waits at most RECONNECT_WAIT for the controller to be live again.
CTRL_LOSS_TMO = 30
RECONNECT_DELAY = 1
RECONNECT_WAIT = 20.0
LOSS_WAIT = 10.0  # for the host to notice the daemon stopped


@dataclass
class Flow:
    """What the steps hand to each other: the guest, the daemon, and what was seen so far."""

    vm: LinuxHostVM
    daemon: SbstoreDaemon
    passed: set[str] = field(default_factory=set)
    uuids: dict[str, str] = field(default_factory=dict)  # volume/snapshot name -> uuid
    ctrl: str = ""  # the host's controller for SUBNQN, e.g. "nvme0"
    devices: dict[int, str] = field(default_factory=dict)  # nsid -> /dev/nvmeXnY
    device_sha: str = ""  # sha256 of the whole original namespace after the filesystem
    file_sha: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    listing: dict[str, Any] = field(default_factory=dict)  # CLI listings before the restart

    def need(self, *steps: str) -> None:
        missing = [s for s in steps if s not in self.passed]
        if missing:
            pytest.fail(f"precondition: step(s) {', '.join(missing)} did not pass", pytrace=False)

    def cli(self, *args: str) -> Any:
        """Run a CLI command that must succeed; its parsed --json answer."""
        return self.daemon.cli(*args).ok(f"sbstore {' '.join(args)}")

    def connect(self, hostnqn: str, hostid: str) -> Any:
        cmd = nh.connect_args(HOST_FROM_GUEST, self.daemon.port, SUBNQN, hostnqn=hostnqn,
                              hostid=hostid, ctrl_loss_tmo=CTRL_LOSS_TMO,
                              reconnect_delay=RECONNECT_DELAY)
        return self.vm.exec(cmd, timeout=60)


def _timed(label: str, t0: float) -> None:
    print(f"{label}: {time.monotonic() - t0:.1f}s")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SbstoreDaemon]:
    d = tmp_path_factory.mktemp("control-e2e")
    port = free_port()
    config = write_config(d / "sbstore.toml", state_dir=d / "state", pool_path=d / "e2e.pool",
                          pool_size="2G", api_socket=d / "api.sock", nvme_port=port,
                          pool_name=POOL)
    server = SbstoreDaemon(config, d / "api.sock", port, d / "daemon.log")
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        output = server.output()
        server.stop()
        pytest.fail(f"sbstore serve --config did not come up: {exc}\n--- daemon output ---\n"
                    f"{output}", pytrace=False)
    print(f"daemon up in {server.start_seconds:.1f}s")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def flow(linux_host: LinuxHostVM, daemon: SbstoreDaemon) -> Iterator[Flow]:
    f = Flow(linux_host, daemon)
    yield f
    if linux_host.alive:
        try:
            linux_host.exec(f"umount {MOUNT} 2>/dev/null; true", timeout=30)
            if nh.attached(linux_host, SUBNQN).controllers:
                nh.disconnect(linux_host, SUBNQN)
                nh.wait_detached(linux_host, SUBNQN)
        except VMError:
            pass  # the guest is stopped next anyway


def _uuid_of(vm: LinuxHostVM, dev: str) -> str:
    """The namespace's UUID as the kernel reports it (sysfs ``uuid``: NS UUID, else NGUID)."""
    name = dev.rsplit("/", 1)[1]
    return vm.exec(f"cat /sys/block/{name}/uuid", timeout=30).output.strip()


def _no_errors_logged(daemon: SbstoreDaemon) -> None:
    bad = [line for line in daemon.output().splitlines()
           if "Traceback" in line or " ERROR " in line or " CRITICAL " in line]
    assert not bad, "the daemon logged errors:\n" + "\n".join(bad)


def _files_sha(vm: LinuxHostVM) -> dict[str, str]:
    r = vm.exec(f"cd {MOUNT} && sha256sum random.bin hello.txt dir/hello-copy.txt", timeout=60)
    r.check("hashing the files")
    out: dict[str, str] = {}
    for line in r.output.splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[1]] = parts[0]
    return out


# --- 1. the daemon ------------------------------------------------------------------------


def test_daemon_serves_from_config(flow: Flow) -> None:
    status = flow.cli("status")
    pools = {p["name"]: p for p in status["pools"]}
    assert set(pools) == {POOL}, f"pools: {status['pools']}"
    assert 1 << 30 < pools[POOL]["capacity_bytes"] <= 2 << 30, f"pool: {pools[POOL]}"
    counts = status["status"]
    assert (counts["volumes"], counts["exports"], counts["listeners"]) == (0, 0, 1), counts
    listeners = flow.cli("listener", "list")
    assert len(listeners) == 1, f"listeners: {listeners}"
    assert str(flow.daemon.port) in str(listeners[0]), (
        f"the config's listener is not on port {flow.daemon.port}: {listeners}")
    flow.passed.add("daemon")


# --- 2. a volume exported to one host -----------------------------------------------------


def test_cli_creates_a_volume_exported_to_one_host(flow: Flow) -> None:
    flow.need("daemon")
    vol = flow.cli("volume", "create", VOLUME, "--size", f"{VOLUME_MIB}M",
                   "--block-size", str(BLOCK_SIZE))
    assert (vol["name"], vol["size_bytes"], vol["block_size"], vol["pool"]) == (
        VOLUME, VOLUME_MIB * MiB, BLOCK_SIZE, POOL), vol
    flow.uuids[VOLUME] = vol["uuid"]
    export = flow.cli("export", "create", SUBNQN, "--volume", VOLUME, "--host", HOSTNQN)
    assert export["nqn"] == SUBNQN, export
    assert export["hosts"] == [HOSTNQN] and export["allow_any_host"] is False, export
    ns = [(n["nsid"], n["volume"], n["state"]) for n in export["namespaces"]]
    assert ns == [(1, VOLUME, "serving")], f"namespaces: {export['namespaces']}"
    shown = flow.cli("export", "show", SUBNQN)
    assert shown["hosts"] == [HOSTNQN], shown
    hosts = flow.cli("host", "list", SUBNQN)
    assert HOSTNQN in str(hosts) and OTHER_HOSTNQN not in str(hosts), f"host list: {hosts}"
    flow.passed.add("export")


# --- 3. the host writes a filesystem ------------------------------------------------------


def test_host_connects_and_writes_a_filesystem(flow: Flow) -> None:
    flow.need("export")
    vm = flow.vm
    t0 = time.monotonic()
    r = flow.connect(HOSTNQN, HOST_ID)
    assert r.rc == 0, f"nvme connect as {HOSTNQN} failed (rc={r.rc}):\n{r.output}"
    attached = nh.wait_attached(vm, SUBNQN, timeout=20)
    assert len(attached.controllers) == 1, f"expected one controller: {attached}"
    flow.ctrl = attached.controllers[0]
    dev = nh.wait_namespace(vm, SUBNQN, 1, timeout=20)
    flow.devices[1] = dev
    _timed("connect", t0)
    assert _uuid_of(vm, dev) == flow.uuids[VOLUME], (
        f"{dev}'s UUID is not the volume's {flow.uuids[VOLUME]}")
    size = vm.exec(f"blockdev --getsize64 {dev}; blockdev --getss {dev}", timeout=30).output
    assert size.split() == [str(VOLUME_MIB * MiB), str(BLOCK_SIZE)], f"{dev} size/sector: {size}"

    t0 = time.monotonic()
    q = shlex.quote(dev)
    script = f"""set -e
mkfs.ext4 -q -F -L e2e {q}
mkdir -p {MOUNT}
mount -t ext4 {q} {MOUNT}
head -c {RANDOM_MIB * MiB} /dev/urandom > {MOUNT}/random.bin
printf 'written by the sbstore control e2e test as %s\\n' {shlex.quote(HOSTNQN)} \
  > {MOUNT}/hello.txt
mkdir {MOUNT}/dir
cp {MOUNT}/hello.txt {MOUNT}/dir/hello-copy.txt
sync
"""
    r = vm.exec(script, timeout=180)
    assert r.rc == 0, f"mkfs/mount/write failed (rc={r.rc}):\n{r.output}"
    flow.file_sha = _files_sha(vm)
    assert len(flow.file_sha) == 3, f"file hashes: {flow.file_sha}"
    r = vm.exec(f"umount {MOUNT}", timeout=120)
    assert r.rc == 0, f"umount failed (rc={r.rc}):\n{r.output}"
    _timed("mkfs + write + unmount", t0)
    t0 = time.monotonic()
    flow.device_sha = nh.sha256_device(vm, dev, VOLUME_MIB)
    _timed(f"hash {VOLUME_MIB} MiB", t0)
    flow.passed.add("filesystem")


# --- 4. snapshot, clone, live namespace add -----------------------------------------------


def test_clone_is_exported_live_to_the_connected_host(flow: Flow) -> None:
    flow.need("filesystem")
    vm = flow.vm
    snap = flow.cli("snapshot", "create", VOLUME, SNAPSHOT)
    assert snap["kind"] == "snapshot" and snap["read_only"] is True, snap
    flow.uuids[SNAPSHOT] = snap["uuid"]
    clone = flow.cli("clone", "create", SNAPSHOT, CLONE)
    assert clone["kind"] == "volume" and clone["parent"] == SNAPSHOT, clone
    assert clone["size_bytes"] == VOLUME_MIB * MiB, clone
    flow.uuids[CLONE] = clone["uuid"]
    added = flow.cli("export", "add-volume", SUBNQN, CLONE)
    t0 = time.monotonic()
    nsids = [n["nsid"] for n in added["namespaces"] if n["volume"] == CLONE]
    assert nsids == [2], f"the clone should be namespace 2: {added}"
    try:
        dev = nh.wait_namespace(vm, SUBNQN, 2, timeout=20)
    except VMError as exc:
        pytest.fail(f"the host did not see namespace 2 without reconnecting: {exc}")
    _timed("namespace 2 appeared", t0)
    flow.devices[2] = dev
    attached = nh.attached(vm, SUBNQN)
    assert attached.controllers == (flow.ctrl,), f"controllers changed: {attached}"
    assert nh.controller_state(vm, flow.ctrl) == "live"
    log = vm.dmesg()
    assert "reconnect" not in log.lower(), f"the host reconnected:\n{log[-3000:]}"
    assert _uuid_of(vm, dev) == flow.uuids[CLONE], f"{dev}'s UUID is not the clone's"
    flow.passed.add("clone")


def test_clone_reads_back_the_volume_data(flow: Flow) -> None:
    flow.need("clone")
    vm = flow.vm
    dev = flow.devices[2]
    t0 = time.monotonic()
    assert nh.sha256_device(vm, dev, VOLUME_MIB) == flow.device_sha, (
        "the clone's bytes differ from the volume's at snapshot time")
    r = vm.exec(f"fsck.ext4 -n -f {shlex.quote(dev)}", timeout=120)
    assert r.rc == 0, f"fsck.ext4 -n -f on the clone: rc={r.rc}\n{r.output}"
    r = vm.exec(f"mount -t ext4 -o ro {shlex.quote(dev)} {MOUNT}", timeout=60)
    assert r.rc == 0, f"mounting the clone read-only failed:\n{r.output}"
    try:
        assert _files_sha(vm) == flow.file_sha, "the clone's files differ"
    finally:
        vm.exec(f"umount {MOUNT}", timeout=60)
    _timed("clone verified", t0)
    flow.passed.add("clone-data")


# --- 6, 7. other hosts --------------------------------------------------------------------


def test_other_host_is_refused(flow: Flow) -> None:
    flow.need("export")
    vm = flow.vm
    r = flow.connect(OTHER_HOSTNQN, OTHER_ID)
    assert r.rc != 0, f"nvme connect as {OTHER_HOSTNQN} succeeded:\n{r.output}"
    # nvme-cli 2.3 may have answered "already connected" by itself (it matches address and
    # subsystem, not the host NQN), so ask the kernel directly: the target must refuse.
    raw = nh.connect_raw(vm, HOST_FROM_GUEST, flow.daemon.port, SUBNQN,
                         hostnqn=OTHER_HOSTNQN, hostid=OTHER_ID)
    attached = nh.attached(vm, SUBNQN)
    assert raw.rc != 0, f"the kernel connected as {OTHER_HOSTNQN}: {attached}\n{raw.output}"
    log = vm.dmesg()
    assert f"is not allowed, hostnqn: {OTHER_HOSTNQN}" in log, (
        f"dmesg does not show the Connect Invalid Host rejection (nvme connect said "
        f"{r.output.strip()!r}, the kernel {raw.output.strip()!r}):\n{log[-3000:]}")
    if flow.ctrl:
        assert attached.controllers == (flow.ctrl,), f"a controller was added: {attached}"
    flow.passed.add("refused")


def test_discovery_log_is_filtered_per_host(flow: Flow) -> None:
    flow.need("export")
    port = flow.daemon.port
    allowed = nh.discover(flow.vm, HOST_FROM_GUEST, port, hostnqn=HOSTNQN, hostid=HOST_ID)
    assert allowed.rc == 0, f"nvme discover as the allowed host failed: {allowed.describe()}"
    nqns = [r.get("subnqn") for r in nh.discovery_records(allowed)]
    assert SUBNQN in nqns, f"the allowed host does not see {SUBNQN}: {allowed.describe()}"
    other = nh.discover(flow.vm, HOST_FROM_GUEST, port, hostnqn=OTHER_HOSTNQN, hostid=OTHER_ID)
    nqns = [r.get("subnqn") for r in nh.discovery_records(other)]
    assert SUBNQN not in nqns, f"another host sees {SUBNQN}: {other.describe()}"
    flow.passed.add("discovery")


# --- 8, 9. restart ------------------------------------------------------------------------


def _without(items: list[dict[str, Any]], *volatile: str) -> list[dict[str, Any]]:
    return sorted(({k: v for k, v in i.items() if k not in volatile} for i in items),
                  key=lambda i: str(i.get("name") or i.get("nqn")))


def test_daemon_restarts_with_the_same_state(flow: Flow) -> None:
    flow.need("clone")
    before_volumes = _without(flow.cli("volume", "list", "--all"))
    before_exports = _without(flow.cli("export", "list"), "controllers")
    before_listeners = flow.cli("listener", "list")
    assert {v["name"] for v in before_volumes} == {VOLUME, SNAPSHOT, CLONE}, before_volumes
    t0 = time.monotonic()
    rc = flow.daemon.stop()
    assert rc == 0, f"the daemon exited with {rc} on SIGTERM"
    _no_errors_logged(flow.daemon)
    print(f"stopped in {flow.daemon.stop_seconds:.1f}s")
    # The host must notice the target is gone (its connection closed) before the daemon is
    # back, so that "live" in the next step means it reconnected.
    deadline = time.monotonic() + LOSS_WAIT
    while (state := nh.controller_state(flow.vm, flow.ctrl)) == "live":
        if time.monotonic() > deadline:
            pytest.fail(f"{flow.ctrl} still live {LOSS_WAIT}s after the daemon stopped: the "
                        f"host did not see its connection close")
        time.sleep(0.1)
    print(f"host controller {flow.ctrl} after the stop: {state}")
    try:
        flow.daemon.start()
    except (RuntimeError, OSError) as exc:
        pytest.fail(f"the daemon did not come back: {exc}")
    _timed(f"restarted (start {flow.daemon.start_seconds:.1f}s)", t0)
    after_volumes = _without(flow.cli("volume", "list", "--all"))
    after_exports = _without(flow.cli("export", "list"), "controllers")
    after_listeners = flow.cli("listener", "list")
    assert after_listeners == before_listeners, (
        f"listeners before the restart:\n{before_listeners}\nafter:\n{after_listeners}")
    assert after_volumes == before_volumes, (
        f"volumes before the restart:\n{before_volumes}\nafter:\n{after_volumes}")
    assert after_exports == before_exports, (
        f"exports before the restart:\n{before_exports}\nafter:\n{after_exports}")
    export = after_exports[0]
    assert export["hosts"] == [HOSTNQN], export
    ns = [(n["nsid"], n["volume"], n["state"]) for n in export["namespaces"]]
    assert ns == [(1, VOLUME, "serving"), (2, CLONE, "serving")], export
    flow.passed.add("restart")


def test_host_reconnects_and_reads_the_same_data(flow: Flow) -> None:
    flow.need("restart", "filesystem")
    vm = flow.vm
    t0 = time.monotonic()
    deadline = t0 + RECONNECT_WAIT
    states: list[str] = []
    while True:
        state = nh.controller_state(vm, flow.ctrl)
        if not states or states[-1] != state:
            states.append(state)
        if state == "live" or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert state == "live", (
        f"{flow.ctrl} not live {RECONNECT_WAIT}s after the restart; states seen: {states}")
    _timed(f"reconnected (states {states})", t0)
    log = vm.dmesg()
    assert "Successfully reconnected" in log, f"dmesg shows no reconnect:\n{log[-3000:]}"
    devices = nh.namespaces_by_nsid(vm, SUBNQN)
    assert devices == flow.devices, f"namespaces after the reconnect: {devices}, before: " \
                                    f"{flow.devices}"
    t0 = time.monotonic()
    for nsid, dev in sorted(devices.items()):
        assert nh.sha256_device(vm, dev, VOLUME_MIB) == flow.device_sha, (
            f"namespace {nsid} ({dev}) reads different bytes after the restart")
    _timed("both namespaces verified", t0)
    counts = flow.cli("status")["status"]
    assert counts["controllers"] == 1, f"the daemon's counts after the reconnect: {counts}"
    flow.passed.add("reconnect")


def test_writes_to_the_clone_leave_the_volume_alone(flow: Flow) -> None:
    flow.need("reconnect")
    vm = flow.vm
    clone, volume = shlex.quote(flow.devices[2]), flow.devices[1]
    offset_mib, length_mib = 16, 4
    r = vm.exec(f"""set -e
head -c {length_mib * MiB} /dev/urandom > /tmp/patch.bin
dd if=/tmp/patch.bin of={clone} bs=1M seek={offset_mib} oflag=direct conv=fsync 2>/dev/null
sha256sum < /tmp/patch.bin
set -o pipefail
dd if={clone} bs=1M skip={offset_mib} count={length_mib} iflag=direct 2>/dev/null | sha256sum
rm -f /tmp/patch.bin""", timeout=120)
    assert r.rc == 0, f"writing to the clone failed (rc={r.rc}):\n{r.output}"
    written, read = (line.split()[0] for line in r.output.split("\n") if line.strip())
    assert read == written, "the clone does not read back what was just written to it"
    assert nh.sha256_device(vm, volume, VOLUME_MIB) == flow.device_sha, (
        "writing to the clone changed the volume it was cloned from")
    flow.passed.add("clone-cow")


def _pool_medium_bytes(flow: Flow) -> int:
    """What the pool file occupies on the host's file system (``du``)."""
    return os.stat(flow.cli("status")["pools"][0]["path"]).st_blocks * 512


def _nuse(vm: LinuxHostVM, dev: str) -> int:
    r = vm.exec(f"nvme id-ns {shlex.quote(dev)} | grep -i '^nuse'", timeout=30)
    assert r.rc == 0, f"nvme id-ns failed:\n{r.output}"
    return int(r.output.split(":")[1].strip(), 0)


def test_fstrim_gives_the_space_back(flow: Flow) -> None:
    """The host writes a file on the clone's ext4, deletes it and runs fstrim: the pool file's
    allocated size (du) drops by about the file's size, and NUSE in Identify Namespace with it.
    (40 MiB: the mechanism is the same at any size, and the guest writes at ~13 MB/s.)"""
    flow.need("clone-cow")
    vm = flow.vm
    clone = shlex.quote(flow.devices[2])
    file_mib = 40
    r = vm.exec(f"""set -e
mount -t ext4 {clone} {MOUNT}
head -c {file_mib * MiB} /dev/urandom > {MOUNT}/big.bin
sync""", timeout=180)
    assert r.rc == 0, f"writing the file failed (rc={r.rc}):\n{r.output}"
    try:
        flow.cli("status")  # (any request: the pool has committed within its timer)
        time.sleep(1.5)
        du_full, nuse_full = _pool_medium_bytes(flow), _nuse(vm, flow.devices[2])
        r = vm.exec(f"rm {MOUNT}/big.bin && sync && fstrim -v {MOUNT}", timeout=120)
        assert r.rc == 0, f"rm + fstrim failed (rc={r.rc}):\n{r.output}"
    finally:
        vm.exec(f"umount {MOUNT}", timeout=60)
    want = (file_mib - 4) * MiB
    deadline = time.monotonic() + 15  # the pool's commit timer, then the punches
    while _pool_medium_bytes(flow) > du_full - want and time.monotonic() < deadline:
        time.sleep(0.5)
    du_trimmed = _pool_medium_bytes(flow)
    assert du_full - du_trimmed >= want, (
        f"du of the pool file went from {du_full >> 20} to {du_trimmed >> 20} MiB after fstrim")
    nuse_trimmed = _nuse(vm, flow.devices[2])
    assert (nuse_full - nuse_trimmed) * BLOCK_SIZE >= want, (nuse_full, nuse_trimmed)
    flow.passed.add("fstrim")


def test_snapshot_with_two_children_is_deleted(flow: Flow) -> None:
    """The snapshot both the volume and the clone came from is deleted while the host has
    both attached: each reads the same bytes as before (hashes in the guest, O_DIRECT), and
    both now stand without a parent."""
    flow.need("clone-cow")
    vm = flow.vm
    before = {nsid: nh.sha256_device(vm, flow.devices[nsid], VOLUME_MIB) for nsid in (1, 2)}
    flow.cli("snapshot", "delete", SNAPSHOT)
    after = {nsid: nh.sha256_device(vm, flow.devices[nsid], VOLUME_MIB) for nsid in (1, 2)}
    assert after == before, "deleting the snapshot changed what its children read"
    parents = {v["name"]: v["parent"] for v in flow.cli("volume", "list", "--all")}
    assert parents == {VOLUME: None, CLONE: None}, parents
    flow.passed.add("snapshot-delete")


def _sectors(vm: LinuxHostVM, dev: str) -> int:
    name = dev.rsplit("/", 1)[1]
    return int(vm.exec(f"cat /sys/block/{name}/size", timeout=30).output.strip())


def test_group_snapshot_and_shrink_seen_by_the_host(flow: Flow) -> None:
    """CLI: a group snapshot of the volume and the clone (one instant), deleted as a group;
    then the clone shrunk with --force: the connected host sees the new size (the Namespace
    Attribute Changed event makes it rescan) and the part that stays reads the same."""
    flow.need("reconnect")
    vm = flow.vm
    group = flow.cli("snapshot", "create", "--group", "e2e", VOLUME, CLONE)
    assert [s["name"] for s in group["snapshots"]] == [f"{VOLUME}@e2e", f"{CLONE}@e2e"]
    assert [g["name"] for g in flow.cli("snapshot", "groups")] == ["e2e"]
    flow.cli("snapshot", "delete", "--group", "e2e")
    assert flow.cli("snapshot", "groups") == []
    clone = flow.devices[2]
    keep_mib = VOLUME_MIB // 2
    head = f"dd if={shlex.quote(clone)} bs=1M count={keep_mib} iflag=direct 2>/dev/null"
    before = vm.exec(f"set -o pipefail; {head} | sha256sum", timeout=120)
    assert before.rc == 0, before.output
    assert _sectors(vm, clone) == VOLUME_MIB * MiB // 512
    refused = flow.daemon.cli("volume", "resize", CLONE, "--size", f"{keep_mib}M")
    assert refused.rc == 1, "shrinking without --force was not refused"
    flow.cli("volume", "resize", CLONE, "--size", f"{keep_mib}M", "--force")
    deadline = time.monotonic() + 15
    while _sectors(vm, clone) != keep_mib * MiB // 512 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _sectors(vm, clone) == keep_mib * MiB // 512, "the host did not see the shrink"
    after = vm.exec(f"set -o pipefail; {head} | sha256sum", timeout=120)
    assert after.rc == 0 and after.output == before.output, "the kept part changed"
    flow.passed.add("shrink")


# --- 10. clean up ---------------------------------------------------------------------------


def test_cleanup_through_the_cli(flow: Flow) -> None:
    flow.need("export")
    vm = flow.vm
    if nh.attached(vm, SUBNQN).controllers:
        r = nh.disconnect(vm, SUBNQN)
        assert r.rc == 0, f"nvme disconnect failed (rc={r.rc}): {r.output}"
        left = nh.wait_detached(vm, SUBNQN)
        assert left == nh.Attached((), ()), f"still attached after disconnect: {left}"
    names = {v["name"] for v in flow.cli("volume", "list", "--all")}
    if CLONE in names:
        flow.cli("export", "remove-volume", SUBNQN, CLONE)
    flow.cli("export", "delete", SUBNQN, "--force")
    assert flow.cli("export", "list") == [], "exports left"
    for name in (CLONE, VOLUME):
        if name in names:
            flow.cli("volume", "delete", name, "--force")
    if SNAPSHOT in names:
        flow.cli("snapshot", "delete", SNAPSHOT)
    assert flow.cli("volume", "list", "--all") == [], "volumes left"
    status = flow.cli("status")
    counts = status["status"]
    assert (counts["volumes"], counts["snapshots"], counts["exports"]) == (0, 0, 0), counts
    pool = status["pools"][0]
    assert pool["allocated_bytes"] == 0, f"clusters still allocated after deleting all: {pool}"
    # ... and the file holds no more than its metadata: the data went back to the file system.
    deadline = time.monotonic() + 15
    while _pool_medium_bytes(flow) > pool["metadata_bytes"] + 4 * MiB and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    assert _pool_medium_bytes(flow) <= pool["metadata_bytes"] + 4 * MiB, (
        f"the pool file still holds {_pool_medium_bytes(flow) >> 20} MiB with nothing in it")
    pool_path = status["pools"][0]["path"]
    rc = flow.daemon.stop()
    assert rc == 0, f"the daemon exited with {rc} on SIGTERM"
    _no_errors_logged(flow.daemon)
    checked = subprocess.run([sys.executable, "-m", "sbstore", "check", pool_path],
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0 and "clean" in checked.stdout, checked.stdout + checked.stderr
