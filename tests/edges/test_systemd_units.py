"""systemd/: the units pass ``systemd-analyze verify`` without a warning, their sandboxing scores
as systemd's own audit says, and the example config is valid TOML with the expected sections.

``verify`` checks that ExecStart's program exists, so the units are copied to a temporary
directory with ExecStart pointing at the installed ``sbstore`` script (``shutil.which``) or, when
it is not installed, at ``python -m sbstore``. Where ``systemd-analyze`` is missing (a fresh
Debian 12 container), the test installs the ``systemd`` package with apt-get (we are root, as in
CI) or fails saying what to install: it never skips.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
INSTALLED_PATH = "/usr/local/bin/sbstore"


@pytest.fixture(scope="module")
def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail("systemd-analyze is missing: install the 'systemd' package "
                    "(apt-get install systemd) to verify the units")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", "systemd"]):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900,
                             check=False)
        if res.returncode:
            pytest.fail(f"systemd-analyze is missing and `{' '.join(cmd)}` failed "
                        f"({res.returncode}): {res.stderr.strip()[-2000:]}")
    found = shutil.which("systemd-analyze")
    if not found:
        pytest.fail("installed the 'systemd' package but systemd-analyze is still not on PATH")
    return found


def sbstore_command() -> str:
    script = shutil.which("sbstore")
    return script if script else f"{sys.executable} -m sbstore"


def staged(tmp_path: Path, unit: str, as_name: str | None = None, extra: str = "") -> Path:
    """The unit copied into tmp_path, ExecStart pointing at this machine's sbstore."""
    text = (UNITS / unit).read_text()
    assert INSTALLED_PATH in text
    text = text.replace(INSTALLED_PATH, sbstore_command()) + extra
    dest = tmp_path / (as_name or unit)
    dest.write_text(text)
    return dest


def verify(analyze: str, unit: Path) -> tuple[int, list[str]]:
    """Exit status and the output lines that concern ``unit`` (warnings name the file or the
    unit; anything else is the environment talking)."""
    res = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                         text=True, timeout=120, cwd=unit.parent, check=False)
    lines = (res.stdout + res.stderr).splitlines()
    return res.returncode, [x for x in lines if unit.name in x or str(unit.parent) in x]


def exposure(analyze: str, unit: Path) -> tuple[float, str]:
    res = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(unit)],
                         capture_output=True, text=True, timeout=120, cwd=unit.parent,
                         check=False)
    out = res.stdout + res.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert m, out
    return float(m.group(1)), out


def test_daemon_unit_verifies_clean(analyze: str, tmp_path: Path) -> None:
    unit = staged(tmp_path, "sbstore.service")
    rc, complaints = verify(analyze, unit)
    assert (rc, complaints) == (0, [])


def test_check_template_verifies_clean(analyze: str, tmp_path: Path) -> None:
    unit = staged(tmp_path, "sbstore-check@.service",
                  as_name="sbstore-check@var-lib-sbstore-pool0.img.service")
    rc, complaints = verify(analyze, unit)
    assert (rc, complaints) == (0, [])


def test_verify_does_complain(analyze: str, tmp_path: Path) -> None:
    """The check above can fail: a misspelt directive is reported."""
    unit = staged(tmp_path, "sbstore.service", extra="\n[Service]\nRestartt=always\n")
    rc, complaints = verify(analyze, unit)
    assert any("Restartt" in x for x in complaints), complaints
    missing = staged(tmp_path, "sbstore.service", as_name="missing.service")
    missing.write_text(missing.read_text().replace(sbstore_command(), "/nonexistent/sbstore"))
    rc, complaints = verify(analyze, missing)
    assert rc != 0 and any("not executable" in x for x in complaints), complaints


def test_daemon_unit_directives(tmp_path: Path) -> None:
    text = (UNITS / "sbstore.service").read_text()
    directives = {line.split("=", 1)[0] + "=" + line.split("=", 1)[1]
                  for line in text.splitlines() if "=" in line and not line.startswith("#")}
    for wanted in ("Type=notify", "NotifyAccess=main", "Restart=on-failure",
                   "ExecStart=/usr/local/bin/sbstore serve --config /etc/sbstore/sbstore.toml",
                   "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                   "NoNewPrivileges=yes", "StateDirectory=sbstore", "RuntimeDirectory=sbstore",
                   "DevicePolicy=closed", "DeviceAllow=block-blkext rw", "CapabilityBoundingSet=",
                   "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK"):
        assert wanted in directives, wanted
    assert any(d.startswith("WatchdogSec=") for d in directives)
    assert any(d.startswith("LimitNOFILE=") for d in directives)


def test_sandboxing_exposure(analyze: str, tmp_path: Path) -> None:
    """systemd's own audit: the daemon is 'OK' (< 3.0; what remains is root, the network and
    the block devices it exists to use), the offline check lower still."""
    score, out = exposure(analyze, staged(tmp_path, "sbstore.service"))
    print(f"sbstore.service exposure {score}")
    assert score <= 2.5, out
    for line in ("✓ NoNewPrivileges=", "✓ CapabilityBoundingSet=~CAP_SYS_ADMIN",
                 "✓ ProtectSystem=", "✓ SystemCallFilter=~@mount"):
        assert line in out, line
    check = staged(tmp_path, "sbstore-check@.service",
                   as_name="sbstore-check@dev-nvme0n1.service")
    check_score, out = exposure(analyze, check)
    print(f"sbstore-check@.service exposure {check_score}")
    assert check_score <= 2.0, out


def test_example_config() -> None:
    with open(UNITS / "sbstore.toml", "rb") as f:
        config = tomllib.load(f)
    assert config["state_dir"] == "/var/lib/sbstore"
    assert config["api"]["socket"].startswith("/run/sbstore/")  # RuntimeDirectory=sbstore
    host, _, port = config["metrics"]["listen"].rpartition(":")
    assert host == "127.0.0.1" and int(port) == 9420
    assert all({"name", "path"} <= set(p) for p in config["pools"])
    for listener in config["listeners"]:
        assert ("address" in listener) != ("interface" in listener)
        assert 0 < listener["port"] < 65536
