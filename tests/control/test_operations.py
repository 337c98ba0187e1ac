"""The operation registry (states, cancel, bounded history), the chunked-body decoder the
streamed API uses (fuzzed), and an inflate seen as an operation through the daemon."""
from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbstore.control.http import ChunkedDecoder, HttpError
from sbstore.control.operations import (
    Operation,
    OperationCancelled,
    OperationRegistry,
    OperationState,
)
from tests.control.conftest import DaemonThread


async def test_run_records_how_an_operation_ended() -> None:
    reg = OperationRegistry(keep_finished=2)

    async def ok(op: Operation) -> int:
        op.progress(5, 10)
        return 7
    op = reg.start("inflate", "p1", "c1", unit="clusters")
    assert await reg.run(op, ok) == 7
    assert op.state is OperationState.DONE and op.info()["percent"] == 50.0

    async def bad(op: Operation) -> None:
        raise ValueError("broken")
    op = reg.start("import", "p1", "v")
    with pytest.raises(ValueError):
        await reg.run(op, bad)
    assert op.state is OperationState.FAILED and op.error == "broken"

    started = asyncio.Event()

    async def slow(op: Operation) -> None:
        started.set()
        await asyncio.sleep(30)
    op = reg.start("import", "p1", "w")
    runner = asyncio.create_task(reg.run(op, slow))
    await started.wait()
    assert reg.cancel(op.id) is op and op.cancel_requested
    with pytest.raises(OperationCancelled):
        await runner
    assert op.state is OperationState.CANCELLED
    assert [o.id for o in reg.list()] == [2, 3]  # only the last two finished are kept
    assert reg.cancel(99) is None


def chunked(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces if p) + \
        b"0\r\nTrailer: x\r\n\r\n"


@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(1, 50))
@settings(max_examples=200)
def test_chunked_bodies_decode_in_any_split(pieces: list[bytes], step: int) -> None:
    wire = chunked(pieces) + b"NEXT"
    d = ChunkedDecoder()
    out = b""
    for i in range(0, len(wire), step):
        out += b"".join(d.feed(wire[i:i + step]))
        if d.done:
            break
    assert d.done and out == b"".join(pieces)


@given(st.binary(max_size=200), st.integers(1, 20))
@settings(max_examples=300)
def test_chunked_garbage_is_refused_or_decoded_never_crashes(data: bytes, step: int) -> None:
    d = ChunkedDecoder()
    try:
        for i in range(0, len(data), step):
            d.feed(data[i:i + step])
    except HttpError as exc:
        assert exc.status == 400


def test_an_inflate_is_an_operation(daemon: DaemonThread) -> None:
    daemon.ok("volume", "create", "v", "--size", "8M")
    daemon.ok("snapshot", "create", "v", "s")
    daemon.ok("clone", "create", "s", "c")
    daemon.ok("clone", "inflate", "c", "--no-progress")
    (op,) = daemon.ok("operation", "list", "--json").json
    assert (op["kind"], op["target"], op["state"], op["unit"]) == \
        ("inflate", "c", "done", "clusters")
    assert op["done"] == op["total"] > 0
    shown = daemon.ok("operation", "show", str(op["id"])).out
    assert "inflate c: 100.0%" in shown
    r = daemon.cli("operation", "cancel", "999", "--json")
    assert r.rc == 1 and r.error["code"] == "NOT_FOUND"
    assert "already done" in daemon.ok("operation", "cancel", str(op["id"])).out
