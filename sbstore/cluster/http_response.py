"""An HTTP/1.1 response parser, sans-I/O, for the etcd client (``etcd.py``).

Rules of this module:
- No sockets, no asyncio, no clock: bytes go in through :meth:`ResponseParser.feed` (and
  :meth:`ResponseParser.feed_eof` when the peer closed), a complete :class:`HttpResponse` comes
  out of :meth:`ResponseParser.result`, ``None`` while more bytes are needed.
- Bodies framed by ``Content-Length``, by ``Transfer-Encoding: chunked`` (with trailers, which
  etcd's gateway sends after errors), or by the end of the connection when neither is given.
- Anything malformed or larger than the limits raises :class:`HttpParseError`, so a broken or
  hostile peer can make the caller fail, never hang or grow memory without bound.

Theory of operation: every ``result()`` re-parses the buffer from its start. The responses
this serves are small JSON documents arriving in a few reads, so the simplicity is worth more
than avoiding the rescan; the size limits bound the rescan's cost.
"""
from __future__ import annotations

from dataclasses import dataclass

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
_MAX_CHUNK_LINE = 1024


class HttpParseError(Exception):
    """The bytes received are not an HTTP/1.1 response this parser accepts."""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    reason: str
    headers: dict[str, str]  # names lower-cased; a repeated header keeps its last value
    body: bytes


class ResponseParser:
    """Collects the bytes of one response; see the module docstring."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._eof = False

    def feed(self, data: bytes) -> None:
        if self._eof:
            raise HttpParseError("data after the end of the connection")
        self._buf += data
        if len(self._buf) > MAX_HEAD_BYTES + MAX_BODY_BYTES + 64 * 1024:
            raise HttpParseError("response larger than the limit")

    def feed_eof(self) -> None:
        self._eof = True

    def result(self) -> HttpResponse | None:
        """The response once complete; ``None`` if more bytes are needed; raises
        :class:`HttpParseError` if malformed, or if the connection ended before the end."""
        parsed = _parse(bytes(self._buf), self._eof)
        if parsed is None and self._eof:
            raise HttpParseError("connection closed before the response was complete")
        return parsed


def _parse(buf: bytes, eof: bool) -> HttpResponse | None:
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        if len(buf) > MAX_HEAD_BYTES:
            raise HttpParseError("response head larger than the limit")
        return None
    if head_end > MAX_HEAD_BYTES:
        raise HttpParseError("response head larger than the limit")
    status, reason, headers = _parse_head(buf[:head_end])
    rest = buf[head_end + 4:]
    if status in (204, 304) or 100 <= status < 200:
        return HttpResponse(status, reason, headers, b"")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _parse_chunked(rest)
    elif "content-length" in headers:
        body = _parse_sized(rest, headers["content-length"])
    else:
        body = rest if eof else None  # framed by the end of the connection
    if body is None:
        return None
    return HttpResponse(status, reason, headers, body)


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    text = head.decode("latin-1")  # every byte decodes: header values are opaque here
    lines = text.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise HttpParseError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    if len(parts[1]) != 3 or not parts[1].isdigit():
        raise HttpParseError(f"bad status code: {parts[1][:20]!r}")
    status = int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or any(c in name for c in " \t"):
            raise HttpParseError(f"bad header line: {line[:80]!r}")
        headers[name.lower()] = value.strip()
    return status, reason, headers


def _parse_sized(rest: bytes, length_text: str) -> bytes | None:
    if not length_text.isdigit() or len(length_text) > 12:
        raise HttpParseError(f"bad Content-Length: {length_text[:20]!r}")
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise HttpParseError("Content-Length larger than the limit")
    if len(rest) < length:
        return None
    return rest[:length]


def _parse_chunked(rest: bytes) -> bytes | None:
    """RFC 9112 §7.1: hex size [;extensions] CRLF data CRLF ..., a zero-size chunk, trailer
    lines, and an empty line."""
    body = bytearray()
    pos = 0
    while True:  # each turn consumes at least one size line, so it ends with the buffer
        line_end = rest.find(b"\r\n", pos)
        if line_end < 0:
            if len(rest) - pos > _MAX_CHUNK_LINE:
                raise HttpParseError("chunk size line too long")
            return None
        if line_end - pos > _MAX_CHUNK_LINE:
            raise HttpParseError("chunk size line too long")
        size_text = rest[pos:line_end].split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 16 or any(
                c not in b"0123456789abcdefABCDEF" for c in size_text):
            raise HttpParseError(f"bad chunk size: {size_text[:20]!r}")
        size = int(size_text, 16)
        pos = line_end + 2
        if size == 0:
            return _skip_trailers(rest, pos, bytes(body))
        if len(body) + size > MAX_BODY_BYTES:
            raise HttpParseError("chunked body larger than the limit")
        if len(rest) < pos + size + 2:
            return None
        if rest[pos + size:pos + size + 2] != b"\r\n":
            raise HttpParseError("chunk not followed by CRLF")
        body += rest[pos:pos + size]
        pos += size + 2


def _skip_trailers(rest: bytes, pos: int, body: bytes) -> bytes | None:
    while True:  # each turn consumes one line of a finite buffer
        line_end = rest.find(b"\r\n", pos)
        if line_end < 0:
            if len(rest) - pos > MAX_HEAD_BYTES:
                raise HttpParseError("trailers larger than the limit")
            return None
        if line_end == pos:
            return body
        if b":" not in rest[pos:line_end]:
            raise HttpParseError("bad trailer line")
        pos = line_end + 2
