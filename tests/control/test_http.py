"""The HTTP/1.1 request parser (sans-I/O, fed by hand and fuzzed) and the server loop on a real
socket: keep-alive, pipelining, limits."""
from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sbstore.control.http import (
    HttpError,
    HttpServer,
    Request,
    RequestParser,
    Response,
    json_response,
)

GOOD = (b"POST /v1/volumes?pool=p%31 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 11\r\n\r\n{\"a\": \"b\"}\n")


def parse_all(data: bytes, **kw: int) -> list[Request]:
    p = RequestParser(**kw)
    p.feed(data)
    out = []
    while (r := p.next_request()) is not None:
        out.append(r)
    return out


def test_a_request_whole_and_byte_by_byte() -> None:
    [r] = parse_all(GOOD)
    assert (r.method, r.path, r.query, r.version, r.body) == \
        ("POST", "/v1/volumes", {"pool": ["p1"]}, (1, 1), b'{"a": "b"}\n')
    assert r.header("content-type") == "application/json" and r.keep_alive
    p = RequestParser()
    for i in range(len(GOOD)):
        assert p.next_request() is None
        p.feed(GOOD[i:i + 1])
    assert p.next_request() == r
    assert p.next_request() is None and not p.pending


def test_pipelined_requests_and_connection_semantics() -> None:
    rs = parse_all(b"\r\nGET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                   b"GET /b HTTP/1.0\r\n\r\nGET /c HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                   + GOOD)
    assert [(r.path, r.keep_alive) for r in rs] == [("/a", False), ("/b", False),
                                                    ("/c", True), ("/v1/volumes", True)]


@pytest.mark.parametrize("raw,status", [
    (b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
    (b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/1.x\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/3.0\r\nHost: x\r\n\r\n", 505),
    (b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\x01y\r\n\r\n", 400),
    (b"GET /?a=%ff HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"PATCH / HTTP/1.1\r\nHost: x\r\n\r\n", 411),
    (b"PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"Host: x\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 600 + b"\r\n\r\n", 431),
])
def test_malformed_requests(raw: bytes, status: int) -> None:
    with pytest.raises(HttpError) as refused:
        parse_all(raw, max_header_bytes=512, max_body_bytes=1024)
    assert refused.value.status == status and refused.value.message
    # Once failed, the parser stays failed: the stream cannot be resynchronised.
    p = RequestParser(max_header_bytes=512, max_body_bytes=1024)
    p.feed(raw)
    for _ in range(2):
        with pytest.raises(HttpError):
            p.next_request()


def test_same_content_length_twice_is_fine() -> None:
    [r] = parse_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2"
                    b"\r\n\r\nok")
    assert r.body == b"ok"


HEAD_PARTS = st.sampled_from([
    b"GET", b"POST", b"PUT", b" ", b"/", b"/v1/volumes", b"?", b"a=1", b"&", b"%", b"%41",
    b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b"\r\n", b"\n", b"\r", b":", b"Host", b"Host: x",
    b"Content-Length", b"Content-Length: 3", b"Content-Length: 99999999999999999999",
    b"Transfer-Encoding: chunked", b"Connection: close", b"\x00", b"\xff", b"\t", b"abc"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(HEAD_PARTS, st.binary(max_size=40)), max_size=40),
       st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_fuzz_never_an_unhandled_exception(pieces: list[bytes], cuts: list[int]) -> None:
    """Any bytes, cut anywhere: requests or an HttpError, never another exception; the parser
    never holds more than the limits allow and never loops without consuming input."""
    data = b"".join(pieces)
    p = RequestParser(max_header_bytes=256, max_body_bytes=128)
    pos = 0
    steps = 0
    for cut in cuts * (len(data) // max(1, sum(cuts)) + 1):
        chunk = data[pos:pos + cut]
        pos += cut
        p.feed(chunk)
        try:
            while (r := p.next_request()) is not None:
                assert r.method and r.path.startswith("/")
                assert r.version in ((1, 0), (1, 1)) and len(r.body) <= 128
                steps += 1
                assert steps < 1000
        except HttpError as exc:
            assert 400 <= exc.status < 600 and exc.message
            return
        if pos >= len(data):
            break


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_raw_bytes(data: bytes) -> None:
    p = RequestParser(max_header_bytes=128, max_body_bytes=64)
    p.feed(data)
    try:
        for _ in range(100):
            if p.next_request() is None:
                break
    except HttpError as exc:
        assert 400 <= exc.status < 600


# --- the server loop on a real socket -----------------------------------------------------------

async def _echo(request: Request) -> Response:
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    return json_response(200, {"path": request.path, "body": request.body.decode()})


async def _exchange(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


async def test_server_keep_alive_pipelining_and_handler_failure(tmp_path) -> None:
    server = HttpServer(_echo, idle_timeout_s=5, request_timeout_s=5)
    host, port = await server.start_tcp("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
                     b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        answers = [await _exchange(reader) for _ in range(4)]
        assert [a[0] for a in answers] == [200, 200, 500, 200]
        assert json.loads(answers[1][2]) == {"path": "/two", "body": "hi"}
        assert json.loads(answers[2][2])["error"]["code"] == "INTERNAL"
        assert answers[0][1]["connection"] == "keep-alive"
        assert answers[3][1]["connection"] == "close"
        assert await reader.read() == b""  # closed after Connection: close
        writer.close()
    finally:
        await server.close()


async def test_server_times_out_a_slow_request(tmp_path) -> None:
    server = HttpServer(_echo, idle_timeout_s=0.5, request_timeout_s=0.3)
    host, port = await server.start_tcp("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /slow HTTP/1.1\r\nHo")
        status, _, _ = await asyncio.wait_for(_exchange(reader), 5)
        assert status == 408
        writer.close()
        # An idle connection is closed without an answer.
        reader, writer = await asyncio.open_connection(host, port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await server.close()


async def test_unix_socket_mode_and_stale_socket(tmp_path) -> None:
    import os
    import stat

    sock = tmp_path / "s.sock"
    first = HttpServer(_echo)
    await first.start_unix(sock)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    second = HttpServer(_echo)
    with pytest.raises(OSError, match="another sbstore daemon"):
        await second.start_unix(sock)
    await first.close()
    assert not sock.exists()
    # A socket file nobody listens on (a crashed daemon's) is replaced.
    import socket as socket_mod
    s = socket_mod.socket(socket_mod.AF_UNIX)
    s.bind(str(sock))
    s.close()
    await second.start_unix(sock)
    await second.close()
    (tmp_path / "plain").write_text("x")
    with pytest.raises(OSError, match="not a socket"):
        await HttpServer(_echo).start_unix(tmp_path / "plain")
