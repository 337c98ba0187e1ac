"""What the Linux NVMe host does, driven from the test process through a :class:`LinuxHostVM`.

Rules:
- Functions return what the guest said (``ExecResult`` and parsed JSON) and leave the verdict
  to the test, so each test asserts with its own message; they raise only when the guest
  itself misbehaves (VMError).
- Devices are found from sysfs by subsystem NQN, never assumed to be ``nvme0``: controller and
  namespace instance numbers grow with every connect, and with native multipath (the Debian
  kernel's default) the block device is named after the subsystem, not the controller.
- Every wait polls with a deadline (the block device appears a moment after ``nvme connect``).
- nvme-cli and fio write JSON to stdout and diagnostics to stderr: JSON commands keep stderr in
  a file and return it separately, so a warning cannot break the parse.
"""
from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from typing import Any

from .vm import ExecResult, LinuxHostVM, VMError


@dataclass(frozen=True)
class JsonResult:
    """A guest command whose stdout is JSON: rc, parsed stdout (None if not JSON), stderr."""

    rc: int
    data: Any
    stdout: str
    stderr: str

    def describe(self) -> str:
        return f"rc={self.rc}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


def run_json(vm: LinuxHostVM, cmd: str, timeout: float = 60.0) -> JsonResult:
    """Run ``cmd`` with stderr kept apart; parse its stdout as JSON."""
    r = vm.exec(f"{cmd} 2>/tmp/.json-stderr", timeout=timeout)
    err = vm.exec("cat /tmp/.json-stderr; rm -f /tmp/.json-stderr", timeout=30).output
    try:
        data = json.loads(r.output) if r.output.strip() else None
    except json.JSONDecodeError:
        data = None
    return JsonResult(r.rc, data, r.output, err)


@dataclass(frozen=True)
class Attached:
    """The controllers and namespace block devices the host has for one subsystem NQN."""

    controllers: tuple[str, ...]  # e.g. ("nvme0",)
    namespaces: tuple[str, ...]  # e.g. ("/dev/nvme0n1",)


def attached(vm: LinuxHostVM, subnqn: str) -> Attached:
    """Controllers and namespaces of ``subnqn`` from sysfs (multipath or not)."""
    q = shlex.quote(subnqn)
    script = f"""
for c in /sys/class/nvme/nvme*; do
  [ "$(cat "$c/subsysnqn" 2>/dev/null)" = {q} ] || continue
  echo "ctrl ${{c##*/}}"
  ls "$c" | grep -E '^nvme[0-9]+n[0-9]+$' | sed 's/^/ns /'
done
for s in /sys/class/nvme-subsystem/nvme-subsys*; do
  [ "$(cat "$s/subsysnqn" 2>/dev/null)" = {q} ] || continue
  ls "$s" | grep -E '^nvme[0-9]+n[0-9]+$' | sed 's/^/ns /'
done
true"""
    out = vm.exec(script, timeout=30).check("listing nvme devices").output
    ctrls: list[str] = []
    nss: list[str] = []
    for line in out.splitlines():
        kind, _, name = line.partition(" ")
        if kind == "ctrl" and name not in ctrls:
            ctrls.append(name)
        elif kind == "ns" and f"/dev/{name}" not in nss:
            nss.append(f"/dev/{name}")
    return Attached(tuple(ctrls), tuple(nss))


def wait_attached(vm: LinuxHostVM, subnqn: str, timeout: float = 15.0) -> Attached:
    """Poll until ``subnqn`` has a controller and a namespace block device node."""
    deadline = time.monotonic() + timeout
    while True:
        a = attached(vm, subnqn)
        if a.controllers and a.namespaces:
            dev = shlex.quote(a.namespaces[0])
            if vm.exec(f"[ -b {dev} ]", timeout=10).rc == 0:
                return a
        if time.monotonic() > deadline:
            raise VMError(f"no namespace block device for {subnqn} within {timeout}s: {a}")
        time.sleep(0.2)


def wait_detached(vm: LinuxHostVM, subnqn: str, timeout: float = 15.0) -> Attached:
    """Poll until the host has no controller for ``subnqn``; return what is left (empty)."""
    deadline = time.monotonic() + timeout
    while True:
        a = attached(vm, subnqn)
        if not a.controllers and not a.namespaces:
            return a
        if time.monotonic() > deadline:
            return a
        time.sleep(0.2)


def connect_args(traddr: str, trsvcid: int, subnqn: str, *, hdr_digest: bool = False,
                 data_digest: bool = False, ctrl_loss_tmo: int | None = 15,
                 hostnqn: str | None = None, hostid: str | None = None,
                 reconnect_delay: int | None = None) -> str:
    """The ``nvme connect`` command line for a TCP target.

    ``ctrl_loss_tmo`` (default 600 s in Linux) is shortened so that when a target dies, the
    host gives up and fails I/O within seconds instead of leaving fio and nvme-cli blocked.
    ``hostnqn``/``hostid`` default to the guest's /etc/nvme files (random per boot);
    ``reconnect_delay`` (Linux default 10 s) is how long the host waits between reconnects.
    """
    args = ["nvme", "connect", "-t", "tcp", "-a", traddr, "-s", str(trsvcid), "-n", subnqn]
    args += _host_identity(hostnqn, hostid)
    if ctrl_loss_tmo is not None:
        args.append(f"--ctrl-loss-tmo={ctrl_loss_tmo}")
    if reconnect_delay is not None:
        args.append(f"--reconnect-delay={reconnect_delay}")
    if hdr_digest:
        args.append("--hdr-digest")
    if data_digest:
        args.append("--data-digest")
    return shlex.join(args)


def connect_raw(vm: LinuxHostVM, traddr: str, trsvcid: int, subnqn: str, *, hostnqn: str,
                hostid: str, timeout: float = 60.0) -> ExecResult:
    """Ask the kernel for a controller directly (write the options to /dev/nvme-fabrics).

    What ``nvme connect`` does, minus nvme-cli's own check: nvme-cli 2.3 answers "already
    connected" without asking the kernel when any controller has the same address and
    subsystem, whatever its host NQN (``--duplicate-connect`` does not skip that check). The
    kernel's own duplicate check includes the host NQN, so this reaches the target's Connect.
    rc 0: a controller was created (find it with :func:`attached`).
    """
    opts = (f"transport=tcp,traddr={traddr},trsvcid={trsvcid},nqn={subnqn},"
            f"hostnqn={hostnqn},hostid={hostid}")
    return vm.exec(f"printf %s {shlex.quote(opts)} > /dev/nvme-fabrics", timeout=timeout)


def _host_identity(hostnqn: str | None, hostid: str | None) -> list[str]:
    args = []
    if hostnqn is not None:
        args.append(f"--hostnqn={hostnqn}")
    if hostid is not None:
        args.append(f"--hostid={hostid}")
    return args


def discover(vm: LinuxHostVM, traddr: str, trsvcid: int, timeout: float = 60.0, *,
             hostnqn: str | None = None, hostid: str | None = None) -> JsonResult:
    """``nvme discover -o json``, as the guest's own host NQN unless ``hostnqn`` is given."""
    ident = "".join(" " + shlex.quote(a) for a in _host_identity(hostnqn, hostid))
    return run_json(vm, f"nvme discover -t tcp -a {shlex.quote(traddr)} -s {trsvcid}{ident} "
                        f"-o json", timeout=timeout)


def discovery_records(result: JsonResult) -> list[dict[str, Any]]:
    if not isinstance(result.data, dict):
        return []
    records = result.data.get("records", [])
    return [r for r in records if isinstance(r, dict)]


def disconnect(vm: LinuxHostVM, subnqn: str, timeout: float = 60.0) -> ExecResult:
    return vm.exec(f"nvme disconnect -n {shlex.quote(subnqn)}", timeout=timeout)


def detach_quietly(vm: LinuxHostVM, subnqn: str) -> None:
    """A fixture's teardown: stop any fio, disconnect ``subnqn`` and wait until it is gone;
    a guest that died or broke meanwhile is left as it is (the test reports that)."""
    if not vm.alive:
        return
    try:
        vm.exec("pkill -9 fio; true", timeout=30)
        disconnect(vm, subnqn)
        wait_detached(vm, subnqn)
    except VMError:
        pass


@dataclass(frozen=True)
class FioResult:
    rc: int
    output: str  # fio's stdout/stderr (errors, verify failures)
    job: dict[str, Any] | None  # jobs[0] of the JSON report

    def describe(self) -> str:
        brief = ""
        if self.job is not None:
            brief = json.dumps({k: self.job.get(k) for k in ("jobname", "error")}) + "\n"
            for d in ("read", "write"):
                side = self.job.get(d, {})
                brief += (f"{d}: io_bytes={side.get('io_bytes')} iops={side.get('iops')} "
                          f"bw_KiB/s={side.get('bw')}\n")
        return f"rc={self.rc}\n{brief}--- fio output ---\n{self.output}"

    def summary(self) -> str:
        """One line: bytes, IOPS and bandwidth per direction that did I/O."""
        if self.job is None:
            return f"rc={self.rc}, no report"
        parts = []
        for d in ("write", "read"):
            side = self.job.get(d, {})
            if side.get("io_bytes"):
                parts.append(f"{d} {side['io_bytes'] >> 20} MiB {side.get('iops', 0):.0f} IOPS "
                             f"{side.get('bw', 0) / 1024:.1f} MiB/s")
        return f"{self.job.get('jobname')}: " + "; ".join(parts)

    def io_bytes(self, direction: str) -> int:
        if self.job is None:
            return 0
        return int(self.job.get(direction, {}).get("io_bytes", 0))


def fio(vm: LinuxHostVM, name: str, filename: str, timeout: float = 180.0,
        **options: str | int) -> FioResult:
    """Run one fio job (libaio, O_DIRECT unless overridden) and return its JSON report.

    Options are fio's, with ``_`` for ``-`` not needed (fio uses ``_``): ``rw="randwrite"``.
    """
    opts: dict[str, str | int] = {"ioengine": "libaio", "direct": 1}
    opts.update(options)
    report = f"/tmp/fio-{name}.json"
    args = ["fio", f"--name={name}", f"--filename={filename}", "--output-format=json",
            f"--output={report}"] + [f"--{k}={v}" for k, v in opts.items()]
    r = vm.exec(shlex.join(args), timeout=timeout)
    raw = vm.exec(f"cat {report} 2>/dev/null; rm -f {report}", timeout=30).output
    job = None
    try:
        # fio may print notes before the JSON object in the report file.
        data = json.loads(raw[raw.index("{"):]) if "{" in raw else None
        if isinstance(data, dict) and data.get("jobs"):
            job = data["jobs"][0]
    except json.JSONDecodeError:
        pass
    return FioResult(r.rc, r.output if job is not None else r.output + raw, job)


def fio_start(vm: LinuxHostVM, name: str, filename: str, **options: str | int) -> None:
    """Start one fio job (as :func:`fio`) in the background of the guest and return at once.

    The agent runs one command at a time, so a job that must run while the test does other
    things in the guest is started in a session of its own, its report and exit status going
    to files that :func:`fio_wait` collects."""
    opts: dict[str, str | int] = {"ioengine": "libaio", "direct": 1}
    opts.update(options)
    args = ["fio", f"--name={name}", f"--filename={filename}", "--output-format=json",
            f"--output=/tmp/fio-{name}.json"] + [f"--{k}={v}" for k, v in opts.items()]
    job = f"{shlex.join(args)} > /tmp/fio-{name}.out 2>&1; echo $? > /tmp/fio-{name}.rc"
    vm.exec(f"rm -f /tmp/fio-{name}.*; setsid sh -c {shlex.quote(job)} "
            f"< /dev/null > /dev/null 2>&1 &", timeout=30).check(f"starting fio {name}")


def fio_wait(vm: LinuxHostVM, name: str, timeout: float) -> FioResult:
    """Wait (polling) for a job :func:`fio_start` started; its report. A job still running at
    the deadline is killed and reported with rc -1."""
    deadline = time.monotonic() + timeout
    rc = -1
    while time.monotonic() < deadline:
        r = vm.exec(f"cat /tmp/fio-{name}.rc 2>/dev/null", timeout=30)
        if r.output.strip().lstrip("-").isdigit():
            rc = int(r.output.strip())
            break
        time.sleep(0.5)
    else:
        vm.exec("pkill -9 fio; true", timeout=30)
    raw = vm.exec(f"cat /tmp/fio-{name}.json 2>/dev/null", timeout=30).output
    out = vm.exec(f"cat /tmp/fio-{name}.out 2>/dev/null; rm -f /tmp/fio-{name}.*",
                  timeout=30).output
    job = None
    try:
        data = json.loads(raw[raw.index("{"):]) if "{" in raw else None
        if isinstance(data, dict) and data.get("jobs"):
            job = data["jobs"][0]
    except json.JSONDecodeError:
        pass
    return FioResult(rc, out if job is not None else out + raw, job)


@dataclass(frozen=True)
class PathInfo:
    """One controller of a subsystem as native multipath sees it: a path."""

    ctrl: str  # e.g. "nvme1"
    trsvcid: int  # the target port it connects to
    state: str  # controller state: live, connecting, resetting, ...
    ana_state: str  # of its namespace path device (optimized, inaccessible, ...); "" if none
    written_sectors: int  # 512-byte sectors written through this path (its stat)


def paths(vm: LinuxHostVM, subnqn: str) -> dict[int, PathInfo]:
    """The subsystem's paths by target port, from sysfs: each controller's address and state,
    and its hidden per-path namespace device (``nvmeXcYnZ``: ``ana_state``, ``stat``)."""
    q = shlex.quote(subnqn)
    script = f"""
for c in /sys/class/nvme/nvme*; do
  [ "$(cat "$c/subsysnqn" 2>/dev/null)" = {q} ] || continue
  p=$(ls -d "$c"/nvme*c*n* 2>/dev/null | head -n 1)
  ana=""; w=0
  if [ -n "$p" ]; then
    ana=$(cat "$p/ana_state" 2>/dev/null)
    w=$(awk '{{print $7}}' "$p/stat" 2>/dev/null)
  fi
  echo "path ${{c##*/}} $(cat "$c/state") ${{ana:--}} ${{w:-0}} $(cat "$c/address" | tr -d ' ')"
done
true"""
    out = vm.exec(script, timeout=30).check("listing nvme paths").output
    found: dict[int, PathInfo] = {}
    for line in out.splitlines():
        parts = line.split(" ", 5)
        if len(parts) != 6 or parts[0] != "path":
            continue
        _, ctrl, state, ana, written, address = parts
        fields = dict(kv.split("=", 1) for kv in address.split(",") if "=" in kv)
        port = int(fields.get("trsvcid", "0") or 0)
        found[port] = PathInfo(ctrl, port, state, "" if ana == "-" else ana,
                               int(written) if written.isdigit() else 0)
    return found


def wait_paths(vm: LinuxHostVM, subnqn: str, ready: Any, what: str,
               timeout: float = 20.0) -> dict[int, PathInfo]:
    """Poll :func:`paths` until ``ready(paths)`` holds (VMError naming ``what`` if not)."""
    deadline = time.monotonic() + timeout
    while True:
        found = paths(vm, subnqn)
        if ready(found):
            return found
        if time.monotonic() > deadline:
            raise VMError(f"{what}: not within {timeout}s; paths: {found}")
        time.sleep(0.2)


@dataclass(frozen=True)
class ListedPath:
    """One path of a subsystem as ``nvme list-subsys`` prints it."""

    ctrl: str  # "nvme1"
    trsvcid: int
    state: str  # "live", "connecting", ...


@dataclass(frozen=True)
class ListedSubsystems:
    subsystems: tuple[tuple[ListedPath, ...], ...]  # the paths of each subsystem of that NQN
    raw: JsonResult


def list_subsys(vm: LinuxHostVM, subnqn: str, nvme: str = "nvme") -> ListedSubsystems:
    """``nvme list-subsys -o json`` (``nvme``: the nvme-cli to run): the subsystems named
    ``subnqn`` and their paths. The JSON is walked for objects with "NQN" and "Paths" (2.x
    nests them under a host entry, whose layout moved between versions); a subsystem listed
    under several host entries counts once (by its "Name")."""
    raw = run_json(vm, f"{nvme} list-subsys -o json")
    found: dict[str, tuple[ListedPath, ...]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for x in node:
                walk(x)
        elif isinstance(node, dict):
            if node.get("NQN") == subnqn and isinstance(node.get("Paths"), list):
                listed = []
                for p in node["Paths"]:
                    fields = dict(kv.split("=", 1) for kv in str(p.get("Address", "")).split(",")
                                  if "=" in kv)
                    port = fields.get("trsvcid", "0").strip()
                    listed.append(ListedPath(str(p.get("Name")),
                                             int(port) if port.isdigit() else 0,
                                             str(p.get("State"))))
                found[str(node.get("Name"))] = tuple(listed)
            for v in node.values():
                walk(v)

    walk(raw.data)
    return ListedSubsystems(tuple(found.values()), raw)


def nonzero_bytes(vm: LinuxHostVM, dev: str, offset: int, length: int,
                  timeout: float = 60.0) -> int:
    """How many bytes in [offset, offset+length) of ``dev`` are not zero (O_DIRECT reads)."""
    mib = 1 << 20
    if offset % mib or length % mib:
        raise ValueError("offset and length must be whole MiB")
    r = vm.exec(f"dd if={shlex.quote(dev)} bs=1M skip={offset // mib} count={length // mib} "
                f"iflag=direct 2>/dev/null | tr -d '\\000' | wc -c", timeout=timeout)
    r.check("reading back")
    return int(r.output.strip())


def namespaces_by_nsid(vm: LinuxHostVM, subnqn: str) -> dict[int, str]:
    """NSID -> block device of ``subnqn``'s namespaces (from each device's sysfs ``nsid``)."""
    out: dict[int, str] = {}
    for dev in attached(vm, subnqn).namespaces:
        name = dev.rsplit("/", 1)[1]
        r = vm.exec(f"cat /sys/block/{shlex.quote(name)}/nsid", timeout=30)
        if r.rc == 0 and r.output.strip().isdigit():
            out[int(r.output.strip())] = dev
    return out


def wait_namespace(vm: LinuxHostVM, subnqn: str, nsid: int, timeout: float = 15.0) -> str:
    """Poll until ``subnqn`` has a block device for ``nsid``; return its path (VMError if not
    within ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        dev = namespaces_by_nsid(vm, subnqn).get(nsid)
        if dev is not None and vm.exec(f"[ -b {shlex.quote(dev)} ]", timeout=10).rc == 0:
            return dev
        if time.monotonic() > deadline:
            raise VMError(f"no block device for nsid {nsid} of {subnqn} within {timeout}s: "
                          f"{attached(vm, subnqn)}")
        time.sleep(0.2)


def controller_state(vm: LinuxHostVM, ctrl: str) -> str:
    """``/sys/class/nvme/CTRL/state`` (live, connecting, resetting, deleting...), or ``gone``."""
    r = vm.exec(f"cat /sys/class/nvme/{shlex.quote(ctrl)}/state 2>/dev/null", timeout=30)
    return r.output.strip() if r.rc == 0 and r.output.strip() else "gone"


def io_queues(vm: LinuxHostVM, ctrl: str) -> int:
    """How many I/O queues controller ``ctrl`` has: sysfs ``queue_count`` less the admin
    queue (each one is its own TCP connection to the target)."""
    r = vm.exec(f"cat /sys/class/nvme/{shlex.quote(ctrl)}/queue_count", timeout=30)
    r.check(f"queue_count of {ctrl}")
    return int(r.output.strip()) - 1


def fio_verify(vm: LinuxHostVM, name: str, dev: str, *, jobs: int = 2, mib_per_job: int = 4,
               timeout: float = 180.0) -> FioResult:
    """Random 4k writes with crc32c verify, ``jobs`` jobs on their own ``mib_per_job`` MiB
    regions at once (so the I/O comes from both guest CPUs, and so over several I/O queues);
    the report is the group's (``jobs[0]`` with ``group_reporting``)."""
    return fio(vm, name, dev, timeout=timeout, rw="randwrite", bs="4k", size=f"{mib_per_job}M",
               offset_increment=f"{mib_per_job}M", numjobs=jobs, group_reporting=1,
               iodepth=4, verify="crc32c", verify_fatal=1)


def sha256_device(vm: LinuxHostVM, dev: str, mib: int, timeout: float = 120.0) -> str:
    """sha256 of the first ``mib`` MiB of ``dev``, read with O_DIRECT (not the page cache)."""
    r = vm.exec(f"set -o pipefail; dd if={shlex.quote(dev)} bs=1M count={mib} iflag=direct "
                f"2>/dev/null | sha256sum", timeout=timeout)
    r.check(f"hashing {dev}")
    digest = r.output.split()[0] if r.output.split() else ""
    if len(digest) != 64:
        raise VMError(f"sha256sum of {dev} printed {r.output!r}")
    return digest


# ---------------------------------------------------------------------------------------------
# The guest's own kernel target (nvmet), a reference independent of sbstore.


@dataclass(frozen=True)
class KernelTarget:
    subnqn: str
    traddr: str
    trsvcid: int
    backing_file: str


def setup_kernel_target(vm: LinuxHostVM, subnqn: str, *, size_mib: int = 128,
                        traddr: str = "127.0.0.1", trsvcid: int = 4420,
                        port_id: int = 1) -> KernelTarget:
    """A kernel nvmet subsystem with one file namespace on tmpfs, listening on TCP.

    tmpfs has no O_DIRECT, so the namespace needs ``buffered_io`` = 1 (else enable fails -22).
    """
    backing = f"/tmp/nvmet-{port_id}.img"
    sub = f"/sys/kernel/config/nvmet/subsystems/{subnqn}"
    port = f"/sys/kernel/config/nvmet/ports/{port_id}"
    script = f"""set -e
truncate -s {size_mib}M {backing}
mkdir {sub}
echo 1 > {sub}/attr_allow_any_host
mkdir {sub}/namespaces/1
printf %s {backing} > {sub}/namespaces/1/device_path
echo 1 > {sub}/namespaces/1/buffered_io
echo 1 > {sub}/namespaces/1/enable
mkdir {port}
echo tcp > {port}/addr_trtype
echo ipv4 > {port}/addr_adrfam
echo {traddr} > {port}/addr_traddr
echo {trsvcid} > {port}/addr_trsvcid
ln -s {sub} {port}/subsystems/{subnqn}
"""
    vm.exec(script, timeout=60).check("kernel nvmet setup")
    return KernelTarget(subnqn, traddr, trsvcid, backing)


def teardown_kernel_target(vm: LinuxHostVM, target: KernelTarget, port_id: int = 1) -> None:
    sub = f"/sys/kernel/config/nvmet/subsystems/{target.subnqn}"
    port = f"/sys/kernel/config/nvmet/ports/{port_id}"
    vm.exec(f"""rm -f {port}/subsystems/{target.subnqn}
rmdir {port} 2>/dev/null
echo 0 > {sub}/namespaces/1/enable 2>/dev/null
rmdir {sub}/namespaces/1 {sub} 2>/dev/null
rm -f {target.backing_file}
true""", timeout=60)
