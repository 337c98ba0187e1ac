"""DH-HMAC-CHAP through the control module, CLI only: a host added with a generated or given
secret, rotation without dropping the connected host, settings kept across a restart, and
secrets nowhere but where they must be (0600 state files; not in listings, logs, metrics,
or error messages)."""
from __future__ import annotations

import logging
import os
import re
import stat
import urllib.request
from pathlib import Path

import pytest

from target.auth.secret import DhchapSecret
from target.host.auth import AuthenticationFailed, HostAuth
from target.host.controller import Controller
from target.host.queue_client import CommandFailed
from target.nvme.spec import CommandSpecificStatus

from .conftest import HOST_A, HOST_B, NQN_1, DaemonThread, in_thread


async def _roundtrip(ctrl: Controller) -> None:
    bs = ctrl.block_size(1)
    await ctrl.write(1, 1, b"\x3c" * bs)
    assert bytes(await ctrl.read(1, 1, 1)) == b"\x3c" * bs


async def _connect(daemon: DaemonThread, auth: HostAuth | None) -> Controller:
    return await Controller.connect("127.0.0.1", daemon.port, NQN_1, hostnqn=HOST_A, auth=auth,
                                    timeout_s=10)


async def test_generate_connect_rotate_restart(daemon: DaemonThread, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    daemon.ok("volume", "create", "vol", "--size", "8M")
    daemon.ok("export", "create", NQN_1, "--volume", "vol")
    r = daemon.ok("host", "add", NQN_1, HOST_A, "--generate", "--generate-ctrl-key",
                  "--key-hash", "sha384", "--dhchap-dhgroup", "ffdhe3072,null", "--json").json
    host_key, ctrl_key = r["generated"]["dhchap_key"], r["generated"]["ctrl_key"]
    assert host_key.startswith("DHHC-1:02:") and ctrl_key.startswith("DHHC-1:02:")
    assert r["host_auth"][HOST_A]["dhgroups"] == ["ffdhe3072", "null"]
    secrets = [host_key, ctrl_key]

    auth = HostAuth(DhchapSecret.parse(host_key), DhchapSecret.parse(ctrl_key))
    async with await _connect(daemon, auth) as ctrl:
        assert ctrl.auth_outcome is not None and ctrl.auth_outcome.dhgroup_id == 2
        await _roundtrip(ctrl)
        with pytest.raises(CommandFailed) as info:  # no secret: refused
            await _connect(daemon, None)
        assert info.value.sc == CommandSpecificStatus.AUTH_REQUIRED

        # Rotation: a given secret, read from a file; the connected host stays.
        new = DhchapSecret.generate(1)
        key_file = tmp_path / "key"
        key_file.write_text(new.format() + "\n")
        out = (await in_thread(daemon.ok, "host", "set", NQN_1, HOST_A, "--dhchap-key",
                               f"@{key_file}")).out
        assert "connected hosts stay connected" in out and new.format() not in out
        secrets.append(new.format())
        await _roundtrip(ctrl)
        with pytest.raises(AuthenticationFailed):
            await _connect(daemon, HostAuth(auth.secret))
        async with await _connect(daemon, HostAuth(new)) as other:
            await _roundtrip(other)
        await ctrl.reauthenticate(HostAuth(new))  # the host picks up its new secret
        await _roundtrip(ctrl)

    # Listings, logs, metrics, state files.
    shown = daemon.ok("export", "show", NQN_1, "--json").out
    listing = daemon.ok("host", "list", NQN_1).out
    assert "dhchap: set" in listing
    with urllib.request.urlopen(daemon.metrics_url, timeout=10) as resp:
        metrics = resp.read().decode()
    counts = dict(re.findall(r'^sbstore_dhchap_authentications_total\{result="(\w+)"\} (\d+)$',
                             metrics, re.MULTILINE))
    assert int(counts["success"]) >= 6 and int(counts["failure"]) >= 1, counts
    logged = "\n".join(daemon.lines) + "\n".join(r.getMessage() for r in caplog.records)
    for secret in secrets:
        blob = secret.split(":")[2]
        for text in (shown, listing, metrics, logged):
            assert blob not in text and blob[:12] not in text
    state_dir = daemon.config.state_dir
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        path = state_dir / name
        if path.exists():
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, name

    # The settings survive a restart; removing them lets a host in without a secret.
    daemon.restart()
    with pytest.raises(CommandFailed):
        await _connect(daemon, None)
    async with await _connect(daemon, HostAuth(new)) as ctrl:
        await _roundtrip(ctrl)
    daemon.ok("host", "set", NQN_1, HOST_A, "--no-dhchap")
    async with await _connect(daemon, None) as ctrl:
        assert not ctrl.auth_required


def test_bad_secrets_are_refused_without_echo(daemon: DaemonThread) -> None:
    daemon.ok("export", "create", NQN_1)
    bad = "DHHC-1:01:" + DhchapSecret.generate(1).format().split(":")[2][:-6] + "AAAA:"
    r = daemon.cli("host", "add", NQN_1, HOST_B, "--dhchap-key", bad)
    assert r.rc != 0 and bad.split(":")[2] not in r.err + r.out
    r = daemon.cli("host", "add", NQN_1, HOST_B, "--ctrl-key", DhchapSecret.generate().format())
    assert r.rc == 2  # a controller secret alone
    same = DhchapSecret.generate().format()
    r = daemon.cli("host", "add", NQN_1, HOST_B, "--dhchap-key", same, "--ctrl-key", same)
    assert r.rc == 1 and same.split(":")[2] not in r.err
    r = daemon.cli("host", "add", NQN_1, HOST_B, "--generate", "--dhchap-hash", "md5")
    assert r.rc == 1
    assert daemon.ok("host", "list", NQN_1, "--json").json == []
    r = daemon.cli("host", "set", NQN_1, HOST_B, "--generate")
    assert r.rc == 1  # not a host of the export


def test_api_never_echoes_a_secret(daemon: DaemonThread) -> None:
    from sbstore.control.client import ApiError
    daemon.ok("export", "create", NQN_1)
    secret = DhchapSecret.generate(1).format()
    with daemon.client as c:
        for body in ({"host_nqn": HOST_B, "dhchap_key": [secret]},
                     {"host_nqn": HOST_B, "dhchap_key": secret[:-8] + "AAAAAAA:"},
                     {"host_nqn": HOST_B, "generate_key": True, "ctrl_key": {"k": secret}}):
            with pytest.raises(ApiError) as info:
                c.post(f"/v1/subsystems/{NQN_1}/hosts", body)
            assert info.value.status in (400, 422)
            assert secret.split(":")[2][:12] not in str(info.value.message)
        given = c.post(f"/v1/subsystems/{NQN_1}/hosts", {"host_nqn": HOST_B,
                                                          "dhchap_key": secret})
        assert "generated" not in given and secret.split(":")[2] not in str(given)


def test_cli_text_shows_a_generated_secret_once(daemon: DaemonThread) -> None:
    daemon.ok("export", "create", NQN_1)
    out = daemon.ok("host", "add", NQN_1, HOST_B, "--generate").out
    line = next(x for x in out.splitlines() if x.startswith("host secret (generated"))
    secret = line.rsplit(" ", 1)[1]
    assert DhchapSecret.parse(secret).transform == 1
    assert "DH-HMAC-CHAP: host; hashes sha256,sha384,sha512" in out
    assert secret not in daemon.ok("host", "list", NQN_1).out
    assert secret not in daemon.ok("export", "show", NQN_1).out
    assert secret not in daemon.ok("host", "set", NQN_1, HOST_B, "--dhchap-key", secret).out
