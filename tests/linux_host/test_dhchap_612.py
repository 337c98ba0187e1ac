"""DH-HMAC-CHAP with the real Linux host: Debian 13's 6.12 kernel (built with NVMe in-band
authentication) and nvme-cli 2.3 in a QEMU guest, against the sbstore daemon driven by its
CLI. One guest boot and one daemon serve the module; each test is one step, in order, and a
step whose precondition did not pass fails at once saying so.

1. CLI: an export, and the guest's host NQN added with secrets sbstore generates (outside
   the guest, as the reference notes: nvme gen-dhchap-key prints nothing inside it);
2. a connect without a secret, and one with a wrong secret, are refused;
3. the right secret connects with two I/O queues (every queue authenticates), I/O runs and
   a fio verify job (two jobs, one per guest CPU) completes with no error; disconnect;
4. bidirectional: the host secret and the controller secret connect, I/O runs;
5. rotation: ``sbstore host set`` gives a new host secret while the host is connected; the
   host stays connected and keeps doing I/O, then re-authenticates with the new secret
   (written to sysfs ``dhchap_secret``, the host's own re-authentication) and is still live;
6. after a disconnect the old secret is refused and the new one connects; a wrong controller
   secret is refused by the host (the controller cannot prove itself);
7. SHA-512 with a larger group, ffdhe3072, when the export asks for them. (ffdhe8192 works
   with our own initiator, tests/integration/test_auth.py; the guest kernel's own ffdhe8192
   arithmetic under TCG takes longer than a minute per connect.)
8. the discovery controller (the daemon runs with ``[target] discovery_auth = true``): this
   host must authenticate there too, while a host holding no secret discovers as before.

The daemon's log must never show a secret.
"""
from __future__ import annotations

import shlex
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from target.auth.secret import DhchapSecret
from target.nvme.spec import DISCOVERY_NQN

from . import nvme_host as nh
from .sbstore_process import SbstoreDaemon, free_port, write_config
from .vm import HOST_FROM_GUEST, LinuxHostVM, VMError

pytestmark = pytest.mark.linux_host

SUBNQN = "nqn.2026-11.io.sbstore:dhchap-612"
HOST_ID = str(uuid.uuid4())
HOSTNQN = f"nqn.2014-08.org.nvmexpress:uuid:{HOST_ID}"
VOLUME_MIB = 32


@dataclass
class Flow:
    vm: LinuxHostVM
    daemon: SbstoreDaemon
    passed: set[str] = field(default_factory=set)
    secrets: dict[str, str] = field(default_factory=dict)

    def need(self, *steps: str) -> None:
        missing = [s for s in steps if s not in self.passed]
        if missing:
            pytest.fail(f"precondition: step(s) {missing} did not pass", pytrace=False)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SbstoreDaemon]:
    d = tmp_path_factory.mktemp("dhchap-612")
    port = free_port()
    config = write_config(d / "sbstore.toml", state_dir=d / "state", pool_path=d / "p.pool",
                          pool_size="256M", api_socket=d / "api.sock", nvme_port=port,
                          pool_name="p", extra="[target]\ndiscovery_auth = true\n")
    server = SbstoreDaemon(config, d / "api.sock", port, d / "daemon.log")
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        output = server.output()
        server.stop()
        pytest.fail(f"sbstore serve did not come up: {exc}\n{output}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def flow(linux_host_612: LinuxHostVM, daemon: SbstoreDaemon) -> Iterator[Flow]:
    f = Flow(linux_host_612, daemon)
    yield f
    if linux_host_612.alive:
        try:
            nh.disconnect(linux_host_612, SUBNQN)
        except VMError:
            pass


def _connect(f: Flow, secret: str | None, ctrl_secret: str | None = None,
             timeout: float = 60.0, io_queues: int | None = None) -> tuple[int, str]:
    args = nh.connect_args(HOST_FROM_GUEST, f.daemon.port, SUBNQN, hostnqn=HOSTNQN,
                           hostid=HOST_ID, ctrl_loss_tmo=5)
    if io_queues is not None:
        args += f" --nr-io-queues={io_queues}"
    if secret is not None:
        args += f" --dhchap-secret={shlex.quote(secret)}"
    if ctrl_secret is not None:
        args += f" --dhchap-ctrl-secret={shlex.quote(ctrl_secret)}"
    r = f.vm.exec(args, timeout=timeout)
    return r.rc, r.output


def _io(f: Flow, dev: str, seed: int) -> None:
    """Write 1 MiB with O_DIRECT and read it back, compared by hash in the guest."""
    q = shlex.quote(dev)
    script = (f"dd if=/dev/urandom of=/tmp/pat bs=64k count=16 2>/dev/null && "
              f"dd if=/tmp/pat of={q} bs=64k seek={seed * 16} oflag=direct 2>&1 && "
              f"a=$(sha256sum < /tmp/pat) && "
              f"b=$(dd if={q} bs=64k skip={seed * 16} count=16 iflag=direct 2>/dev/null"
              f" | sha256sum) && [ \"$a\" = \"$b\" ]")
    r = f.vm.exec(script, timeout=120)
    assert r.rc == 0, f"I/O through {dev} failed:\n{r.output}"


def _disconnect(f: Flow) -> None:
    nh.disconnect(f.vm, SUBNQN)
    left = nh.wait_detached(f.vm, SUBNQN)
    assert not left.controllers, f"still attached: {left}"


def _reauth_log(f: Flow, ctrl: str, timeout: float = 20.0) -> str:
    """The kernel's lines since the last "re-authenticating controller", once the admin
    queue and every I/O queue have answered (or the time is up)."""
    deadline = time.monotonic() + timeout
    marker = f"nvme {ctrl}: re-authenticating controller"
    since = ""
    while time.monotonic() < deadline:
        dmesg = f.vm.dmesg()
        if marker in dmesg:
            since = dmesg.rsplit(marker, 1)[1]
            if "qid 0: authenticated" in since or "failed" in since:
                f.vm.exec("sleep 1", timeout=10)  # the I/O queues follow the admin queue
                return f.vm.dmesg().rsplit(marker, 1)[1]
        time.sleep(0.5)
    return since


def test_1_export_with_generated_secrets(flow: Flow) -> None:
    d = flow.daemon
    d.cli("volume", "create", "v", "--size", f"{VOLUME_MIB}M").ok("volume create")
    d.cli("export", "create", SUBNQN, "--volume", "v").ok("export create")
    out = d.cli("host", "add", SUBNQN, HOSTNQN, "--generate", "--generate-ctrl-key",
                "--dhchap-dhgroup", "ffdhe2048,null").ok("host add")
    flow.secrets = {"host": out["generated"]["dhchap_key"],
                    "ctrl": out["generated"]["ctrl_key"]}
    listing = d.cli("export", "show", SUBNQN).ok("export show")
    assert listing["host_auth"][HOSTNQN]["dhchap"] == "set"
    assert flow.secrets["host"] not in str(listing)
    flow.passed.add("export")


def test_2_no_secret_and_wrong_secret_refused(flow: Flow) -> None:
    flow.need("export")
    rc, out = _connect(flow, None)
    assert rc != 0, f"connect without a secret succeeded:\n{out}"
    rc, out = _connect(flow, DhchapSecret.generate(1).format())
    assert rc != 0, f"connect with a wrong secret succeeded:\n{out}"
    assert not nh.attached(flow.vm, SUBNQN).controllers
    flow.passed.add("refused")


def test_3_right_secret_connects_and_does_io(flow: Flow) -> None:
    flow.need("export")
    rc, out = _connect(flow, flow.secrets["host"], io_queues=2)
    assert rc == 0, f"connect with the right secret failed:\n{out}"
    a = nh.wait_attached(flow.vm, SUBNQN)
    assert nh.io_queues(flow.vm, a.controllers[0]) == 2
    _io(flow, a.namespaces[0], 0)
    dmesg = flow.vm.dmesg()
    assert "authenticated with hash hmac(sha256) dhgroup ffdhe2048" in dmesg, dmesg[-3000:]
    t0 = time.monotonic()
    result = nh.fio_verify(flow.vm, "auth", a.namespaces[0])
    assert result.rc == 0 and result.job is not None and result.job.get("error") == 0, \
        result.describe()
    assert result.io_bytes("write") >= 8 << 20, result.describe()
    print(f"fio verify over DH-HMAC-CHAP: {result.summary()} ({time.monotonic() - t0:.1f}s)")
    _disconnect(flow)
    flow.passed.add("unidirectional")


def test_4_bidirectional(flow: Flow) -> None:
    flow.need("export")
    rc, out = _connect(flow, flow.secrets["host"], flow.secrets["ctrl"])
    assert rc == 0, f"bidirectional connect failed:\n{out}"
    a = nh.wait_attached(flow.vm, SUBNQN)
    _io(flow, a.namespaces[0], 1)
    assert "controller authenticated" in flow.vm.dmesg()
    flow.passed.add("bidirectional")


def test_5_rotation_keeps_the_host_then_it_reauthenticates(flow: Flow) -> None:
    flow.need("bidirectional")
    d = flow.daemon
    before = nh.attached(flow.vm, SUBNQN)
    new = DhchapSecret.generate(1).format()
    d.cli("host", "set", SUBNQN, HOSTNQN, "--dhchap-key", new, "--ctrl-key",
          flow.secrets["ctrl"], "--dhchap-dhgroup", "ffdhe2048,null").ok("host set")
    flow.secrets["old"], flow.secrets["host"] = flow.secrets["host"], new
    _io(flow, before.namespaces[0], 2)  # still connected, still serving
    ctrl = before.controllers[0]
    # The host's own re-authentication: a new secret in sysfs re-runs DH-HMAC-CHAP on every
    # queue of the live controller.
    r = flow.vm.exec(f"printf %s {shlex.quote(new)} > /sys/class/nvme/{ctrl}/dhchap_secret",
                     timeout=30)
    assert r.rc == 0, r.output
    since = _reauth_log(flow, ctrl)
    assert "authenticated with hash hmac(sha256) dhgroup ffdhe2048" in since, since
    assert "failed" not in since, since
    assert nh.controller_state(flow.vm, ctrl) == "live"
    _io(flow, before.namespaces[0], 3)
    after = nh.attached(flow.vm, SUBNQN)
    assert after.controllers == before.controllers
    _disconnect(flow)
    flow.passed.add("rotation")


def test_6_old_secret_refused_new_accepted_wrong_ctrl_refused(flow: Flow) -> None:
    flow.need("rotation")
    rc, out = _connect(flow, flow.secrets["old"])
    assert rc != 0, f"the rotated-out secret still connects:\n{out}"
    rc, out = _connect(flow, flow.secrets["host"], DhchapSecret.generate(1).format())
    assert rc != 0, f"a wrong controller secret was accepted by the host:\n{out}"
    assert "controller authentication failed" in flow.vm.dmesg()
    rc, out = _connect(flow, flow.secrets["host"], flow.secrets["ctrl"])
    assert rc == 0, f"the new secret does not connect:\n{out}"
    a = nh.wait_attached(flow.vm, SUBNQN)
    _io(flow, a.namespaces[0], 4)
    _disconnect(flow)
    log = flow.daemon.output()
    for secret in (flow.secrets["old"], flow.secrets["host"], flow.secrets["ctrl"]):
        assert secret.split(":")[2] not in log
    bad = [line for line in log.splitlines() if "Traceback" in line or " ERROR " in line]
    assert not bad, "\n".join(bad)


def test_7_sha512_and_ffdhe3072(flow: Flow) -> None:
    flow.need("rotation")
    flow.daemon.cli("host", "set", SUBNQN, HOSTNQN, "--dhchap-key", flow.secrets["host"],
                    "--dhchap-hash", "sha512", "--dhchap-dhgroup", "ffdhe3072").ok("host set")
    t0 = time.monotonic()
    rc, out = _connect(flow, flow.secrets["host"])
    assert rc == 0, f"connect with sha512 / ffdhe3072 failed:\n{out}"
    print(f"connect with sha512/ffdhe3072 took {time.monotonic() - t0:.1f}s")
    a = nh.wait_attached(flow.vm, SUBNQN)
    _io(flow, a.namespaces[0], 5)
    assert "authenticated with hash hmac(sha512) dhgroup ffdhe3072" in flow.vm.dmesg()
    _disconnect(flow)


def test_8_discovery_controller(flow: Flow) -> None:
    flow.need("export")
    port = flow.daemon.port
    refused = nh.discover(flow.vm, HOST_FROM_GUEST, port, hostnqn=HOSTNQN, hostid=HOST_ID)
    assert refused.rc != 0, f"discovery without the secret succeeded:\n{refused.describe()}"
    # nvme-cli 2.3's discover does not hand --dhchap-secret to the kernel (it fails with
    # ENOKEY, "qid 0: no key", whatever the target): ask the kernel for the discovery
    # controller directly, then read its log through it.
    opts = (f"transport=tcp,traddr={HOST_FROM_GUEST},trsvcid={port},nqn={DISCOVERY_NQN},"
            f"hostnqn={HOSTNQN},hostid={HOST_ID},dhchap_secret={flow.secrets['host']}")
    r = flow.vm.exec(f"printf %s {shlex.quote(opts)} > /dev/nvme-fabrics", timeout=60)
    assert r.rc == 0, f"discovery controller with the secret refused:\n{r.output}"
    ctrls = nh.attached(flow.vm, DISCOVERY_NQN).controllers
    assert ctrls, "no discovery controller after an accepted connect"
    try:
        ok = nh.run_json(flow.vm, f"nvme discover --device={ctrls[0]} -o json")
        subnqns = [rec.get("subnqn") for rec in nh.discovery_records(ok)]
        assert ok.rc == 0 and SUBNQN in subnqns, ok.describe()
    finally:
        flow.vm.exec(f"echo 1 > /sys/class/nvme/{ctrls[0]}/delete_controller 2>/dev/null; true",
                     timeout=30)
    other_id = str(uuid.uuid4())
    other = nh.discover(flow.vm, HOST_FROM_GUEST, port,
                        hostnqn=f"nqn.2014-08.org.nvmexpress:uuid:{other_id}", hostid=other_id)
    assert other.rc == 0, other.describe()
    assert SUBNQN not in [r.get("subnqn") for r in nh.discovery_records(other)]
