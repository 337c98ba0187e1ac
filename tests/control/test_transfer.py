"""A volume moves between two real daemons as a full copy plus an increment, through the CLI
and the streamed API; what arrives reads (through our NVMe/TCP initiator) exactly what was
sent. A stream cut short or with one byte flipped is refused and leaves no volume behind;
operations show progress and can be cancelled."""
from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sbstore.control.client import ApiError, Client
from target.host import Controller
from tests.control.conftest import NQN_1, NQN_2, DaemonThread, in_thread, make_config

MiB = 1 << 20
SIZE = 8 * MiB


@pytest.fixture
def two(tmp_path: Path, sock_dir: Path) -> Iterator[tuple[DaemonThread, DaemonThread]]:
    """Two daemons, each with its own pool, state and socket."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (sock_dir / "a").mkdir()
    (sock_dir / "b").mkdir()
    a = DaemonThread(make_config(tmp_path / "a", sock_dir / "a", pool_size=256 * MiB)).start()
    try:
        b = DaemonThread(make_config(tmp_path / "b", sock_dir / "b",
                                     pool_size=256 * MiB)).start()
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


async def host_digest(d: DaemonThread, nqn: str, volume: str) -> str:
    """sha256 of every block of ``volume``, read by our initiator over NVMe/TCP."""
    await in_thread(d.ok, "export", "create", nqn, "--volume", volume, "--allow-any-host")
    try:
        async with await Controller.connect("127.0.0.1", d.port, nqn) as ctrl:
            bs = ctrl.block_size(1)
            n = ctrl.namespaces[1].nsze
            h = hashlib.sha256()
            step = (128 << 10) // bs
            for lba in range(0, n, step):
                h.update(await ctrl.read(1, lba, min(step, n - lba)))
            return h.hexdigest()
    finally:
        await in_thread(d.ok, "export", "delete", nqn, "--force")


async def test_full_copy_then_increment_read_identical_through_the_host(
        two: tuple[DaemonThread, DaemonThread], tmp_path: Path) -> None:
    a, b = two
    a.ok("volume", "create", "vm", "--size", "8M")
    a.ok("export", "create", NQN_1, "--volume", "vm", "--allow-any-host")
    async with await Controller.connect("127.0.0.1", a.port, NQN_1) as ctrl:
        bs = ctrl.block_size(1)
        for lba in range(0, 2 * MiB // bs, 32):
            await ctrl.write(1, lba, os.urandom(32 * bs))
        await ctrl.write(1, 1000, os.urandom(3 * bs))
        await ctrl.write(1, SIZE // bs - 1, b"\xee" * bs)
        await ctrl.flush(1)
        await in_thread(a.ok, "snapshot", "create", "vm", "mon")
        await ctrl.write(1, 10, os.urandom(5 * bs))  # changed
        await ctrl.write_zeroes(1, 1000, 3)  # zeroed
        await ctrl.write(1, 1500, os.urandom(bs))  # new
        await ctrl.flush(1)
        await in_thread(a.ok, "snapshot", "create", "vm", "tue")
    a.ok("export", "delete", NQN_1, "--force")

    diff = a.ok("snapshot", "diff", "mon", "tue", "--json").json
    assert diff["base"] == "mon" and diff["extents"] and diff["data_bytes"] < SIZE // 4
    full, inc = tmp_path / "mon.sbs", tmp_path / "tue.sbs"
    a.ok("volume", "export", "mon", "--to", str(full))
    a.ok("volume", "export", "tue", "--since", "mon", "--to", str(inc))
    assert inc.stat().st_size < full.stat().st_size

    got = b.ok("volume", "import", str(full), "vm", "--json").json
    assert got["name"] == "vm" and got["parent"] == "mon"
    assert b.ok("snapshot", "show", "mon", "--json").json["uuid"] == \
        a.ok("snapshot", "show", "mon", "--json").json["uuid"]
    assert await host_digest(b, NQN_2, "vm") == await host_digest(a, NQN_1, "mon")

    got = b.ok("volume", "import", str(inc), "vm", "--json").json
    assert got["parent"] == "tue"
    want = await host_digest(a, NQN_1, "tue")
    assert await host_digest(b, NQN_2, "vm") == want
    assert await host_digest(b, NQN_2, "tue") == want
    assert await host_digest(b, NQN_2, "mon") == await host_digest(a, NQN_1, "mon")

    # The operations that did it are listed, done, with their totals.
    ops = b.ok("operation", "list", "--json").json
    assert [(o["kind"], o["state"]) for o in ops] == [("import", "done")] * 2
    assert ops[0]["done"] == ops[0]["total"] > 0


async def test_cut_or_flipped_streams_are_refused_and_leave_nothing(
        two: tuple[DaemonThread, DaemonThread], tmp_path: Path) -> None:
    a, b = two
    a.ok("volume", "create", "vm", "--size", "4M")
    a.ok("export", "create", NQN_1, "--volume", "vm", "--allow-any-host")
    async with await Controller.connect("127.0.0.1", a.port, NQN_1) as ctrl:
        bs = ctrl.block_size(1)
        for lba in range(0, 2 * MiB // bs, 32):
            await ctrl.write(1, lba, os.urandom(32 * bs))
        await ctrl.flush(1)
    a.ok("snapshot", "create", "vm", "s1")
    whole = tmp_path / "s1.sbs"
    a.ok("volume", "export", "s1", "--to", str(whole))
    data = whole.read_bytes()
    bad = tmp_path / "bad.sbs"
    for cut in (data[:50], data[:len(data) // 2], data[:-1],
                data[:len(data) // 3] + bytes([data[len(data) // 3] ^ 1])
                + data[len(data) // 3 + 1:],
                data[:-10] + bytes([data[-10] ^ 0x80]) + data[-9:]):
        bad.write_bytes(cut)
        r = b.cli("volume", "import", str(bad), "vm", "--json")
        assert r.rc == 1 and r.error["code"] == "INVALID_ARGUMENT", r.err
        assert b.ok("volume", "list", "--all", "--json").json == []
    with b.client as c:
        assert c.get("/v1/pools")[0]["allocated_bytes"] == 0
    b.ok("volume", "import", str(whole), "vm")  # the intact stream still goes in


def test_streams_through_the_api_chunked(two: tuple[DaemonThread, DaemonThread]) -> None:
    a, b = two
    a.ok("volume", "create", "vm", "--size", "4M")
    a.ok("snapshot", "create", "vm", "s1")
    pieces: list[bytes] = []
    with a.client as c:
        headers = c.download("/v1/snapshots/s1/export", pieces.append)
        op = c.get(f"/v1/operations/{headers['x-sbstore-operation']}")
        assert op["kind"] == "export" and op["state"] == "done"
    with b.client as c:
        # Chunked (no length): as "sbstore volume import - NAME" sends stdin.
        v = c.upload("/v1/volumes/import", iter(pieces), name="copy")
        assert v["name"] == "copy" and v["parent"] == "s1"
        with pytest.raises(ApiError) as refused:  # the same snapshot twice in one pool
            c.upload("/v1/volumes/import", iter(pieces), name="copy2")
        assert refused.value.code == "ALREADY_EXISTS"
        with pytest.raises(ApiError) as refused:
            c.upload("/v1/volumes/import", iter([b"not a stream at all" * 1000]), name="x")
        assert refused.value.status == 422 and "magic" in refused.value.message


def test_a_cancelled_import_leaves_no_volume(two: tuple[DaemonThread, DaemonThread]) -> None:
    a, b = two
    a.ok("volume", "create", "vm", "--size", "4M")
    a.ok("snapshot", "create", "vm", "s1")
    stream: list[bytes] = []
    with a.client as c:
        c.download("/v1/snapshots/s1/export", stream.append)
    data = b"".join(stream)
    release = threading.Event()

    def slow() -> Iterator[bytes]:
        yield data[:len(data) // 2]
        release.wait(30)  # the import now waits for the rest
        yield data[len(data) // 2:]

    outcome: dict[str, BaseException] = {}

    def upload() -> None:
        with Client(b.socket) as c:
            try:
                c.upload("/v1/volumes/import", slow(), name="copy")
            except BaseException as exc:  # noqa: BLE001
                outcome["error"] = exc
    t = threading.Thread(target=upload)
    t.start()
    try:
        with b.client as c:
            for _ in range(200):
                ops = [o for o in c.get("/v1/operations") if o["state"] == "running"]
                if ops:
                    break
                threading.Event().wait(0.05)
            assert ops and ops[0]["kind"] == "import"
            b.ok("operation", "cancel", str(ops[0]["id"]))
            for _ in range(200):
                if c.get(f"/v1/operations/{ops[0]['id']}")["state"] != "running":
                    break
                threading.Event().wait(0.05)
            assert c.get(f"/v1/operations/{ops[0]['id']}")["state"] == "cancelled"
    finally:
        release.set()
        t.join(30)
    err = outcome.get("error")
    assert isinstance(err, ApiError) and err.code == "CANCELLED", err
    assert b.ok("volume", "list", "--all", "--json").json == []


def test_an_upload_cut_off_midway_leaves_no_volume(
        two: tuple[DaemonThread, DaemonThread]) -> None:
    import socket
    a, b = two
    a.ok("volume", "create", "vm", "--size", "4M")
    a.ok("snapshot", "create", "vm", "s1")
    stream: list[bytes] = []
    with a.client as c:
        c.download("/v1/snapshots/s1/export", stream.append)
    data = b"".join(stream)
    with socket.socket(socket.AF_UNIX) as s:  # a client that dies halfway through its body
        s.connect(b.socket)
        s.sendall(b"POST /v1/volumes/import?name=copy HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(data) + data[:len(data) // 2])
    with b.client as c:
        for _ in range(200):
            ops = c.get("/v1/operations")
            if ops and ops[0]["state"] != "running":
                break
            threading.Event().wait(0.05)
        assert ops[0]["kind"] == "import" and ops[0]["state"] == "failed", ops
    assert b.ok("volume", "list", "--all", "--json").json == []


def test_a_cancelled_export_ends_without_its_trailer(
        two: tuple[DaemonThread, DaemonThread], tmp_path: Path) -> None:
    from sbstore.control.client import Unreachable
    a, _ = two
    a.ok("volume", "create", "vm", "--size", "8M")
    a.ok("export", "create", NQN_1, "--volume", "vm", "--allow-any-host")

    async def fill() -> None:
        async with await Controller.connect("127.0.0.1", a.port, NQN_1) as ctrl:
            bs = ctrl.block_size(1)
            for lba in range(0, SIZE // bs, 32):
                await ctrl.write(1, lba, os.urandom(32 * bs))
            await ctrl.flush(1)
    import asyncio
    asyncio.run(fill())
    a.ok("snapshot", "create", "vm", "s1")
    got: list[bytes] = []

    def sink(piece: bytes) -> None:
        if not got:  # the first piece: cancel, then go on reading
            with a.client as c:
                (op,) = [o for o in c.get("/v1/operations") if o["state"] == "running"]
                c.delete(f"/v1/operations/{op['id']}")
        got.append(piece)
    with a.client as c, pytest.raises(Unreachable, match="ended before its end"):
        c.download("/v1/snapshots/s1/export", sink, piece=64 << 10)
    assert 0 < sum(map(len, got)) < SIZE
    with a.client as c:
        (op,) = c.get("/v1/operations")
        assert op["kind"] == "export" and op["state"] == "cancelled"


def test_export_piped_into_import(two: tuple[DaemonThread, DaemonThread]) -> None:
    """``sbstore volume export S --to - | sbstore volume import - NAME``, two real processes."""
    import subprocess
    import sys
    a, b = two
    a.ok("volume", "create", "vm", "--size", "4M")
    a.ok("snapshot", "create", "vm", "s1")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    exporter = subprocess.Popen([sys.executable, "-m", "sbstore", "--socket", a.socket,
                                 "volume", "export", "s1", "--to", "-"],
                                stdout=subprocess.PIPE, env=env)
    try:
        importer = subprocess.run([sys.executable, "-m", "sbstore", "--socket", b.socket,
                                   "volume", "import", "-", "copy", "--json"],
                                  stdin=exporter.stdout, capture_output=True, env=env,
                                  timeout=60)
    finally:
        assert exporter.stdout is not None
        exporter.stdout.close()
        assert exporter.wait(60) == 0
    assert importer.returncode == 0, importer.stderr
    assert b"copy" in importer.stdout
    assert b.ok("volume", "show", "copy", "--json").json["parent"] == "s1"
