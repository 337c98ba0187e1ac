"""The sans-I/O HTTP response parser: whole, byte by byte, at every split; malformed input
raises HttpParseError and nothing makes it loop or wait (it has no I/O to wait on)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sbstore.cluster.http_response import HttpParseError, HttpResponse, ResponseParser

pytestmark = pytest.mark.timeout(120)


def sized(body: bytes, status: int = 200) -> bytes:
    return (f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def chunked(pieces: list[bytes], trailers: bool = False) -> bytes:
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for piece in pieces:
        if piece:
            out += f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n"
    out += b"0\r\n"
    if trailers:
        out += b"Grpc-Trailer-Content-Type: application/grpc\r\n"
    return out + b"\r\n"


def feed_in_pieces(data: bytes, cuts: list[int], eof: bool = False) -> HttpResponse | None:
    parser = ResponseParser()
    previous = 0
    result = None
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        parser.feed(data[previous:cut])
        previous = cut
        result = parser.result()
        if result is not None:
            return result
    if eof:
        parser.feed_eof()
        return parser.result()
    return result


def test_etcd_error_answer_with_trailer() -> None:
    body = b'{"error":"etcdserver: requested lease not found","code":5}'
    data = (b"HTTP/1.1 404 Not Found\r\nTrailer: Grpc-Trailer-Content-Type\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(body):x}\r\n".encode() + body
            + b"\r\n0\r\nGrpc-Trailer-Content-Type: application/grpc\r\n\r\n")
    response = feed_in_pieces(data, [])
    assert response is not None and response.status == 404 and response.body == body
    assert response.headers["transfer-encoding"] == "chunked"


def test_byte_by_byte_is_incomplete_until_the_last_byte() -> None:
    data = sized(b'{"a": 1}')
    parser = ResponseParser()
    for i in range(len(data) - 1):
        parser.feed(data[i:i + 1])
        assert parser.result() is None
    parser.feed(data[-1:])
    result = parser.result()
    assert result is not None and result.body == b'{"a": 1}'


def test_body_framed_by_close() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\n\r\npartial")
    assert parser.result() is None
    parser.feed_eof()
    result = parser.result()
    assert result is not None and result.body == b"partial"


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    b"HTTP/1.1 200",
])
def test_eof_before_the_end_raises(data: bytes) -> None:
    parser = ResponseParser()
    parser.feed(data)
    parser.feed_eof()
    with pytest.raises(HttpParseError):
        parser.result()


@pytest.mark.parametrize("data", [
    b"SSH-2.0-OpenSSH\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n",
])
def test_malformed_raises(data: bytes) -> None:
    parser = ResponseParser()
    parser.feed(data)
    with pytest.raises(HttpParseError):
        parser.result()


def test_endless_head_is_refused() -> None:
    parser = ResponseParser()
    with pytest.raises(HttpParseError):
        for _ in range(100):  # 100 KiB of a head that never ends: refused past 64 KiB
            parser.feed(b"X" * 1024)
            parser.result()


@given(body=st.binary(max_size=300), cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_content_length_any_split(body: bytes, cuts: list[int]) -> None:
    response = feed_in_pieces(sized(body, 201), cuts)
    assert response is not None and response.status == 201 and response.body == body


@given(pieces=st.lists(st.binary(max_size=40), max_size=6), trailers=st.booleans(),
       cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_chunked_any_split(pieces: list[bytes], trailers: bool, cuts: list[int]) -> None:
    response = feed_in_pieces(chunked(pieces, trailers), cuts)
    assert response is not None and response.body == b"".join(pieces)


@given(data=st.one_of(
    st.binary(max_size=400),
    st.builds(lambda head, tail: head + tail,
              st.sampled_from([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                               b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
                               b"HTTP/1.1 404 X\r\n"]),
              st.binary(max_size=200))),
    cuts=st.lists(st.integers(0, 10_000), max_size=4))
def test_arbitrary_bytes_end_in_a_response_or_an_error(data: bytes, cuts: list[int]) -> None:
    """After EOF the parser must decide: a response, or HttpParseError; never 'more, please'."""
    try:
        response = feed_in_pieces(data, cuts, eof=True)
    except HttpParseError:
        return
    assert response is not None
