"""The daemon with NVMe/TCP TLS listeners from its config: PSKs from a keyring file only its
owner can read, hosts with the right PSK do I/O, plain TCP and wrong keys are refused, and no
key shows in the API, the logs or the state database."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from sbstore.config import ConfigError, ListenerConfig, TargetConfig, parse_config
from sbstore.daemon import DaemonError
from target.host import Controller, discover
from target.host.tls import HostTls
from target.nvme.spec import TCP_SECTYPE_TLS13, TREQ_REQUIRED
from target.tls import openssl
from target.tls.psk import ConfiguredPsk, PskHash, format_interchange
from tests.control.conftest import HOST_A, HOST_B, NQN_1, DaemonThread, make_config

KEY_A = ConfiguredPsk(PskHash.SHA256, bytes(range(1, 33)))
KEY_TEXT = format_interchange(KEY_A)
needs_openssl = pytest.mark.skipif(not openssl.AVAILABLE, reason=openssl.UNAVAILABLE_REASON)


def _keyring(tmp: Path, mode: int = 0o600) -> Path:
    path = tmp / "tls-psk"
    path.write_text(f"# host PSKs\n{HOST_A} {KEY_TEXT}\n")
    path.chmod(mode)
    return path


def _tls_config(tmp: Path, sock_dir: Path, keyring: Path):
    config = make_config(tmp, sock_dir, listeners=(ListenerConfig(0, "127.0.0.1", tls="required"),
                                                   ListenerConfig(0, "127.0.0.1")))
    return dataclasses.replace(config, target=TargetConfig(tls_keyring=keyring))


def test_config_keys() -> None:
    doc = {"state_dir": "/s", "target": {"tls_keyring": "keys"},
           "listeners": [{"address": "127.0.0.1", "tls": "required"},
                         {"address": "127.0.0.1", "port": 4421}]}
    c = parse_config(doc, source="t.toml", base_dir=Path("/etc/sbstore"))
    assert c.target.tls_keyring == Path("/etc/sbstore/keys")
    assert [lc.tls for lc in c.listeners] == ["required", "off"]
    for bad, words in [({"listeners": [{"address": "127.0.0.1", "tls": "on"}]}, "not one of"),
                       ({"target": {}, "listeners": [{"address": "127.0.0.1", "tls": "allowed"}]},
                        "tls_keyring")]:
        with pytest.raises(ConfigError, match=words):
            parse_config({"state_dir": "/s", **bad}, source="t.toml")


@needs_openssl
async def test_tls_listener_from_config(tmp_path: Path, sock_dir: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    daemon = DaemonThread(_tls_config(tmp_path, sock_dir, _keyring(tmp_path))).start()
    try:
        daemon.ok("volume", "create", "vol", "--size", "8M")
        daemon.ok("export", "create", NQN_1, "--volume", "vol", "--host", HOST_A, "--host", HOST_B)
        listed = daemon.listeners()
        assert [x["tls"] for x in listed] == ["required", "off"]
        tls_port = listed[0]["bound"][0]["port"]
        plain_port = listed[1]["bound"][0]["port"]

        async with await Controller.connect("127.0.0.1", tls_port, NQN_1, hostnqn=HOST_A,
                                            nr_io_queues=2, tls=HostTls(KEY_A)) as ctrl:
            await ctrl.write(1, 0, b"\x7e" * 4096)
            assert bytes(await ctrl.read(1, 0, 4096 // ctrl.block_size(1))) == b"\x7e" * 4096
        with pytest.raises(ConnectionError):
            await Controller.connect("127.0.0.1", tls_port, NQN_1, hostnqn=HOST_A, timeout_s=5)
        with pytest.raises(ConnectionError, match="TLS"):  # B has no key in the keyring
            await Controller.connect("127.0.0.1", tls_port, NQN_1, hostnqn=HOST_B,
                                     tls=HostTls(KEY_A), timeout_s=5)
        entries = await discover("127.0.0.1", plain_port, hostnqn=HOST_A)
        secure = [e for e in entries if int(e.trsvcid) == tls_port]
        assert secure and all((e.treq & 3, e.sectype) == (TREQ_REQUIRED, TCP_SECTYPE_TLS13)
                              for e in secure)

        # The key is nowhere but in the keyring file.
        secret_forms = (KEY_TEXT.split(":")[2], KEY_A.key.hex())
        shown = daemon.cli("listener", "list", "--json").out + repr(daemon.state_dump())
        shown += "\n".join(r.getMessage() for r in caplog.records) + "\n".join(daemon.lines)
        assert not any(form in shown for form in secret_forms)
    finally:
        daemon.stop()


def test_a_keyring_others_can_read_stops_the_start(tmp_path: Path, sock_dir: Path) -> None:
    daemon = DaemonThread(_tls_config(tmp_path, sock_dir, _keyring(tmp_path, 0o644)))
    with pytest.raises(DaemonError, match="chmod 600"):
        daemon.start()
