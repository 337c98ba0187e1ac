"""Bad input, table-driven: every CLI verb and API route given a missing, malformed or
conflicting argument answers with a clear message and a non-zero exit (CLI: 2 when the CLI
catches it, 1 when the daemon refuses) or a 4xx (API), and changes nothing: the API's whole
listing and every row of the state database are the same afterwards."""
from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sbstore.control.client import _UnixConnection, path
from tests.control.conftest import (
    HOST_A,
    HOST_B,
    NQN_1,
    NQN_2,
    DaemonThread,
    make_config,
)

NO_EXPORT = "nqn.2026-11.io.sbstore.test:none"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonThread]:
    """vol (exported as NQN_1 to HOST_A), snap of vol, clone of snap, tenant gold with a
    volume, a config listener."""
    import shutil
    import tempfile

    tmp = tmp_path_factory.mktemp("bad")
    socks = Path(tempfile.mkdtemp(prefix="sbs-"))
    d = DaemonThread(make_config(tmp, socks)).start()
    try:
        d.ok("tenant", "create", "gold")
        d.ok("volume", "create", "vol", "--size", "16M")
        d.ok("volume", "create", "goldvol", "--size", "4M", "--tenant", "gold")
        d.ok("snapshot", "create", "vol", "snap")
        d.ok("clone", "create", "snap", "clone")
        d.ok("export", "create", NQN_1, "--volume", "vol", "--host", HOST_A)
        yield d
    finally:
        d.stop()
        shutil.rmtree(socks, ignore_errors=True)


def view(d: DaemonThread) -> dict[str, Any]:
    with d.client as c:
        return {"volumes": c.get("/v1/volumes"), "snapshots": c.get("/v1/snapshots"),
                "exports": c.get("/v1/subsystems"), "listeners": c.get("/v1/listeners"),
                "tenants": c.get("/v1/tenants"), "pools": c.get("/v1/pools"),
                "state": d.state_dump()}


def busy_port(d: DaemonThread) -> str:
    return str(d.port)


# (argv, exit status, a fragment of the message). Callables get the daemon.
CLI_CASES: list[tuple[list[Any], int, str]] = [
    (["frobnicate"], 2, "invalid choice"),
    (["volume"], 2, "required"),
    (["volume", "frob"], 2, "invalid choice"),
    (["volume", "create", "x"], 2, "--size"),
    (["volume", "create", "--size", "4M"], 2, "name"),
    (["volume", "create", "x", "--size", "ten"], 2, "is not a size"),
    (["volume", "create", "x", "--size", "0"], 2, "must be positive"),
    (["volume", "create", "x", "--size", "1000"], 1, "multiple of 4096"),
    (["volume", "create", "x", "--size", "1P"], 1, "exceeds"),
    (["volume", "create", "vol", "--size", "4M"], 1, "already exists"),
    (["volume", "create", "a/b", "--size", "4M"], 1, "slashes"),
    (["volume", "create", "x", "--size", "4M", "--block-size", "1024"], 2, "invalid choice"),
    (["volume", "create", "x", "--size", "4M", "--tenant", "nobody"], 1, "no tenant named"),
    (["volume", "create", "x", "--size", "4M", "--pool", "nope"], 1, "no pool named 'nope'"),
    (["volume", "show", "nope"], 1, "no volume named 'nope'"),
    (["volume", "resize", "vol", "--size", "4M"], 1, "shrinking"),
    (["volume", "resize", "snap", "--size", "64M"], 1, "snapshot"),
    (["volume", "resize", "vol"], 2, "--size"),
    (["volume", "rename", "vol", "snap"], 1, "already exists"),
    (["volume", "rename", "vol"], 2, "new_name"),
    (["volume", "delete", "vol"], 1, f"exported by {NQN_1}"),
    (["volume", "delete", "snap"], 1, "is a snapshot"),
    (["volume", "delete", "nope"], 1, "no volume named"),
    (["volume", "set", "vol"], 1, "nothing to change"),
    (["volume", "set", "vol", "--weight", "0"], 1, "'weight' must be at least 1"),
    (["volume", "set", "vol", "--iops", "-5"], 2, "must not be negative"),
    (["volume", "set", "vol", "--clear-limits", "--iops", "5"], 1, "not both"),
    (["volume", "set", "vol", "--tenant", "nobody"], 1, "no tenant named"),
    (["snapshot", "create", "vol"], 2, "name"),
    (["snapshot", "create", "snap", "s2"], 1, "is a snapshot"),
    (["snapshot", "create", "nope", "s2"], 1, "no volume named 'nope'"),
    (["snapshot", "create", "vol", "clone"], 1, "already exists"),
    (["snapshot", "delete", "vol"], 1, "is a volume"),
    (["snapshot", "revert", "vol", "snap"], 1, "--force"),
    (["snapshot", "revert", "clone", "vol"], 1, "not a snapshot"),
    (["snapshot", "show", "vol"], 1, "not a snapshot"),
    (["clone", "create", "vol", "c2"], 1, "not a snapshot"),
    (["clone", "create", "snap", "clone"], 1, "already exists"),
    (["clone", "create", "snap", "c2", "--tenant", "nobody"], 1, "no tenant named"),
    (["clone", "inflate", "snap"], 1, "snapshot"),
    (["export", "create", "not-an-nqn"], 1, "is not an NQN"),
    (["export", "create", "nqn.2014-08.org.nvmexpress.discovery"], 1, "discovery"),
    (["export", "create", NQN_1], 1, "exists"),
    (["export", "create", NQN_2, "--host", HOST_A, "--allow-any-host"], 2, "not allowed with"),
    (["export", "create", NQN_2, "--volume", "nope"], 1, "no volume named 'nope'"),
    (["export", "create", NQN_2, "--volume", "vol", "--volume", "vol"], 1, "twice"),
    (["export", "create", NQN_2, "--host", "nqn bad"], 1, "not an NQN"),
    (["export", "create", NQN_2, "--host", HOST_A, "--host", HOST_A], 1, "twice"),
    (["export", "create", NQN_2, "--model", "m" * 41], 1, "model"),
    (["export", "add-volume", NQN_1, "vol"], 1, "already namespace 1"),
    (["export", "add-volume", NQN_1, "clone", "--nsid", "1"], 1, "already has a namespace 1"),
    (["export", "add-volume", NQN_1, "clone", "--nsid", "0"], 1, "nsid"),
    (["export", "add-volume", NQN_1, "clone", "--nsid", "2000"], 1, "nsid"),
    (["export", "add-volume", NQN_1, "clone", "--nsid", "x"], 2, "invalid int"),
    (["export", "add-volume", NO_EXPORT, "clone"], 1, "no export"),
    (["export", "add-volume", NQN_1, "nope"], 1, "no volume named"),
    (["export", "remove-volume", NQN_1], 2, "one of them"),
    (["export", "remove-volume", NQN_1, "vol", "--nsid", "1"], 2, "one of them"),
    (["export", "remove-volume", NQN_1, "--nsid", "9"], 1, "no namespace 9"),
    (["export", "remove-volume", NQN_1, "clone"], 1, "is not exported by"),
    (["export", "delete", NQN_1], 1, "--force"),
    (["export", "delete", NO_EXPORT], 1, "no export"),
    (["export", "show", NO_EXPORT], 1, "no export"),
    (["export", "set", NQN_1], 2, "required"),
    (["export", "set", NQN_1, "--allow-any-host"], 1, "lists hosts"),
    (["export", "set", NQN_1, "--allow-any-host", "--no-allow-any-host"], 2, "not allowed"),
    (["host", "add", NQN_1, HOST_A], 1, "already"),
    (["host", "add", NQN_1, "nqn bad"], 1, "not an NQN"),
    (["host", "add", NQN_1], 2, "hostnqn"),
    (["host", "add", NO_EXPORT, HOST_B], 1, "no export"),
    (["host", "remove", NQN_1, HOST_B], 1, "is not among"),
    (["host", "list", NO_EXPORT], 1, "no export"),
    (["listener", "add", "--port", "4420"], 2, "one of the arguments"),
    (["listener", "add", "--address", "1.2.3.4.5"], 1, "not an IP address"),
    (["listener", "add", "--address", "127.0.0.1", "--interface", "lo"], 2, "not allowed"),
    (["listener", "add", "--address", "127.0.0.1", "--port", "70000"], 2, "out of range"),
    (["listener", "add", "--interface", "nosuchif0"], 1, "no network interface"),
    (["listener", "add", "--interface", "a/b"], 1, "not an interface name"),
    (["listener", "add", "--address", "127.0.0.1", "--port", busy_port], 1, "cannot listen"),
    (["listener", "add", "--address", "192.0.2.1"], 1, "cannot listen"),
    (["listener", "remove", "1"], 1, "config file"),
    (["listener", "remove", "99"], 1, "no listener 99"),
    (["listener", "remove", "x"], 2, "invalid int"),
    (["tenant", "create", "default"], 1, "exists"),
    (["tenant", "create", "bad name"], 1, "tenant name"),
    (["tenant", "create", "t", "--weight", "1001"], 1, "weight"),
    (["tenant", "create", "t", "--burst-s", "nan"], 2, "finite number"),
    (["tenant", "create", "t", "--bps", "fast"], 2, "is not a size"),
    (["tenant", "set", "gold"], 2, "nothing to change"),
    (["tenant", "set", "nobody", "--iops", "1"], 1, "no tenant named"),
    (["tenant", "delete", "default"], 1, "cannot be deleted"),
    (["tenant", "delete", "gold"], 1, "still has 1 volume"),
    (["tenant", "show", "nobody"], 1, "no tenant named"),
    (["tenant", "delete", "nobody"], 1, "no tenant named"),
    (["--url", "ftp://x", "volume", "list"], 2, "http://HOST:PORT"),
]


def test_cli_bad_input_changes_nothing(setup: DaemonThread) -> None:
    d = setup
    before = view(d)
    failures = []
    for argv, want_rc, fragment in CLI_CASES:
        args = [a(d) if callable(a) else a for a in argv]
        r = d.cli(*args)
        problem = None
        if r.rc != want_rc:
            problem = f"exit {r.rc}, wanted {want_rc}"
        elif fragment not in r.err:
            problem = f"message lacks {fragment!r}"
        elif r.out:
            problem = f"printed on stdout: {r.out!r}"
        if problem:
            failures.append(f"sbstore {' '.join(args)}: {problem}; stderr: {r.err.strip()}")
        # --json: the error as JSON on stderr, nothing on stdout.
        if want_rc == 1 and not problem:
            rj = d.cli(*args, "--json")
            if rj.rc != 1 or rj.out or fragment not in rj.error["message"]:
                failures.append(f"sbstore {' '.join(args)} --json: {rj}")
    assert not failures, "\n".join(failures)
    assert view(d) == before


def _raw(d: DaemonThread, method: str, target: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    conn = _UnixConnection(d.socket, 10)
    try:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, target, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else None
    finally:
        conn.close()


def _j(value: Any) -> bytes:
    return json.dumps(value).encode()


NS = path("v1", "subsystems", NQN_1, "namespaces")
API_CASES: list[tuple[str, str, bytes | None, int, str]] = [
    ("POST", "/v1/volumes", b"not json", 400, "not valid JSON"),
    ("POST", "/v1/volumes", _j([]), 400, "JSON object"),
    ("POST", "/v1/volumes", b"", 400, "'name' is required"),
    ("POST", "/v1/volumes", _j({"name": "x", "size_bytes": 4096, "extra": 1}), 400,
     "unknown field 'extra'"),
    ("POST", "/v1/volumes", _j({"name": "x", "size_bytes": True}), 400, "must be an integer"),
    ("POST", "/v1/volumes", _j({"name": "x", "size_bytes": "4M"}), 400, "must be an integer"),
    ("POST", "/v1/volumes", _j({"name": "x", "size_bytes": -1}), 400, "at least 1"),
    ("POST", "/v1/volumes", _j({"name": 5, "size_bytes": 4096}), 400, "must be a string"),
    ("POST", "/v1/volumes", _j({"name": "x", "size_bytes": 4096, "block_size": 1024}), 422,
     "512 or 4096"),
    ("POST", "/v1/volumes", _j({"name": "vol", "size_bytes": 4096}), 409, "already exists"),
    ("POST", "/v1/volumes", _j({"name": "x", "size_bytes": 4096, "pool": "zz"}), 404,
     "no pool named"),
    ("GET", "/v1/volumes?kind=blob", None, 400, "must be one of"),
    ("GET", "/v1/volumes?frob=1", None, 400, "unknown query parameter 'frob'"),
    ("GET", "/v1/volumes?pool=a&pool=b", None, 400, "given 2 times"),
    ("GET", "/v1/volumes/%FF%FE", None, 400, "UTF-8"),
    ("GET", "/v1/nothing", None, 404, "no such API path"),
    ("GET", "/v1/volumes/nope", None, 404, "no volume named"),
    ("PUT", "/v1/volumes", _j({}), 405, "not allowed"),
    ("DELETE", "/v1/volumes/vol", None, 409, "exported by"),
    ("DELETE", "/v1/volumes/vol?force=maybe", None, 400, "true or false"),
    ("POST", "/v1/volumes/vol/resize", _j({}), 400, "'size_bytes' is required"),
    ("POST", "/v1/volumes/vol/inflate", _j({"x": 1}), 400, "unknown field"),
    ("GET", "/v1/status", _j({"x": 1}), 400, "takes no body"),
    ("POST", "/v1/subsystems", _j({"nqn": "x"}), 422, "is not an NQN"),
    ("POST", "/v1/subsystems", _j({"volumes": ["vol"]}), 400, "'nqn' is required"),
    ("POST", "/v1/subsystems", _j({"nqn": NQN_2, "volumes": "vol"}), 400, "array of strings"),
    ("POST", "/v1/subsystems", _j({"nqn": NQN_2, "hosts": [HOST_A], "allow_any_host": True}),
     422, "not both"),
    ("PATCH", path("v1", "subsystems", NQN_1), _j({}), 400, "'allow_any_host' is required"),
    ("POST", NS, _j({"volume": "clone", "nsid": 0}), 400, "at least 1"),
    ("POST", NS, _j({"volume": "vol"}), 409, "already namespace 1"),
    ("DELETE", NS + "/abc", None, 400, "must be a number"),
    ("DELETE", NS, None, 400, "'volume' is required"),
    ("DELETE", NS + "?volume=clone", None, 404, "is not exported"),
    ("POST", path("v1", "subsystems", NQN_1, "hosts"), _j({"host_nqn": HOST_A}), 409,
     "already"),
    ("DELETE", path("v1", "subsystems", NQN_1, "hosts", HOST_B), None, 404, "is not among"),
    ("DELETE", "/v1/listeners/abc", None, 400, "must be a number"),
    ("DELETE", "/v1/listeners/1", None, 409, "config file"),
    ("POST", "/v1/listeners", _j({"address": "127.0.0.1", "interface": "lo", "port": 1}), 422,
     "one of them"),
    ("POST", "/v1/listeners", _j({"address": "127.0.0.1", "port": 99999}), 400,
     "at most 65535"),
    ("POST", "/v1/listeners", _j({"address": "127.0.0.1"}), 400, "'port' is required"),
    ("POST", "/v1/tenants", _j({"name": "t", "weight": 0}), 400, "at least 1"),
    ("POST", "/v1/tenants", _j({"name": "t", "burst_s": -1}), 400, "at least 0"),
    ("POST", "/v1/tenants", _j({"name": "t", "iops": 1.5}), 400, "must be an integer"),
    ("POST", "/v1/tenants", _j({"name": "t", "burst_s": 1e9}), 422, "burst_s"),
    ("PATCH", "/v1/tenants/gold", _j({}), 422, "nothing to change"),
    ("PATCH", "/v1/tenants/nobody", _j({"iops": 1}), 404, "no tenant"),
    ("DELETE", "/v1/tenants/gold", None, 409, "still has"),
    ("POST", "/v1/clones", _j({"snapshot": "vol", "name": "c9"}), 422, "not a snapshot"),
    ("POST", "/v1/snapshots", _j({"volume": "vol"}), 400, "'name' is required"),
    ("GET", "/v1/snapshots?volume=nope", None, 404, "no volume named"),
]


def test_api_bad_input_changes_nothing(setup: DaemonThread) -> None:
    d = setup
    before = view(d)
    failures = []
    for method, target, body, want, fragment in API_CASES:
        status, answer = _raw(d, method, target, body)
        err = (answer or {}).get("error", {}) if isinstance(answer, dict) else {}
        if status != want or fragment not in err.get("message", "") or not err.get("code"):
            failures.append(f"{method} {target} {body!r}: {status} {answer}")
    assert not failures, "\n".join(failures)
    status, answer = _raw(d, "POST", "/v1/volumes", _j({"name": "x", "size_bytes": 4096}),
                          {"Content-Type": "text/plain"})
    assert status == 400 and "application/json" in answer["error"]["message"]
    assert view(d) == before


def test_http_level_errors_keep_the_daemon_serving(setup: DaemonThread) -> None:
    """Broken HTTP on the socket: each gets its status, the daemon serves the next client."""
    d = setup
    cases = [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /v1/status HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /v1/status HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"POST /v1/volumes HTTP/1.1\r\nHost: x\r\n\r\n", 411),
        (b"POST /v1/volumes HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        (b"POST /v1/volumes HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"POST /v1/volumes HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
         + b"Content-Length: 2\r\n\r\n", 400),
        (b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"GET /v1/status HTTP/1.1\r\nHost: x\r\n Folded: y\r\n\r\n", 400),
        (b"GET v1/status HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ]
    for raw, want in cases:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(d.socket)
            s.sendall(raw)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        status_line, _, rest = data.partition(b"\r\n")
        assert status_line.split(b" ")[1] == str(want).encode(), (raw[:60], data[:200])
        body = json.loads(rest.partition(b"\r\n\r\n")[2])
        assert body["error"]["message"] and body["error"]["code"]
    assert d.ok("status", "--json").json["status"]["volumes"] == 3
