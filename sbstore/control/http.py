"""A small HTTP/1.1 server for the admin API: a sans-I/O request parser and an asyncio loop.

Theory of operation (the h11 model, DESIGN.md): :class:`RequestParser` is fed bytes and hands
out complete :class:`Request` objects, or raises :class:`HttpError` carrying the status to
answer; it knows no sockets. :class:`HttpServer` is a thin loop around it: read, feed, call the
handler for each request, write the response, keep the connection or close it.

What is accepted (RFC 9112, narrowed to what the API needs):
- Request line ``METHOD SP origin-form SP HTTP/1.x``; empty lines before it are skipped.
  Another version answers 505, a target not starting with ``/`` 400.
- Header lines ``name: value`` ended by CRLF; a name must be a token, no space before the
  colon, no line folding; values may not hold control characters. An HTTP/1.1 request needs
  ``Host``. The head (request line + headers) is at most ``max_header_bytes`` (431 beyond).
- Bodies by ``Content-Length`` only, at most ``max_body_bytes`` (413 beyond). A request with
  ``Transfer-Encoding`` or a POST/PUT/PATCH without ``Content-Length`` answers 411. Two
  different ``Content-Length`` values answer 400.
- Except streamed bodies: a request the ``stream_body`` predicate picks (an import) may send
  any length, by ``Content-Length`` or ``Transfer-Encoding: chunked``; the handler reads it
  piece by piece from ``Request.stream`` (:class:`BodyStream`, never more than one read in
  memory) and the connection closes after the answer. A response may be streamed too
  (``Response.stream``, an export): sent chunked, each piece written and drained before the
  next is asked for; a failure midway closes the connection without the last chunk, which
  the client sees as a body cut short.
- Keep-alive: HTTP/1.1 keeps the connection unless ``Connection: close``; HTTP/1.0 closes it
  unless ``Connection: keep-alive``. Pipelined requests are answered in order.
- After any :class:`HttpError` the connection is answered and closed: the parser cannot know
  where the next request starts.
- Bounded: a connection idle for ``idle_timeout_s`` is closed; a request must arrive whole
  within ``request_timeout_s`` (408); at most ``max_connections`` at once (more are closed).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs

from sbstore.slices import yield_to_io

log = logging.getLogger("sbstore.control.http")

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 1 << 20
MAX_HEADERS = 100
_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_VERSION_RE = re.compile(rb"HTTP/(\d)\.(\d)")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

ERROR_CODES = {
    400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT", 409: "CONFLICT", 411: "LENGTH_REQUIRED",
    413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE", 422: "INVALID_ARGUMENT",
    431: "HEADERS_TOO_LARGE", 500: "INTERNAL", 503: "UNAVAILABLE",
    505: "HTTP_VERSION_NOT_SUPPORTED",
}


class HttpError(Exception):
    """A request the server refuses: ``status`` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    target: str  # as sent: path and query
    path: str  # before '?', still percent-encoded
    query: dict[str, list[str]]
    version: tuple[int, int]
    headers: dict[str, str]  # names lower-cased
    body: bytes = b""
    keep_alive: bool = True
    stream: AsyncIterator[bytes] | None = None  # a streamed body (see the module's rules)
    body_length: int | None = None  # a streamed body's Content-Length (None: chunked)

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False
    stream: AsyncIterator[bytes] | None = None  # sent chunked instead of ``body``


def json_response(status: int, value: object, headers: list[tuple[str, str]] | None = None
                  ) -> Response:
    # No indent: json's C encoder is used only without one (1,000 volumes: 7 ms, not 25-50).
    body = json.dumps(value).encode() + b"\n"
    return Response(status, body, headers=headers or [])


JSON_SLICE_ITEMS = 128


async def json_response_sliced(status: int, value: object) -> Response:
    """:func:`json_response`, but a long list is encoded :data:`JSON_SLICE_ITEMS` items at a
    time with a yield to the loop in between (the same JSON, a line per item)."""
    if not isinstance(value, list) or len(value) <= JSON_SLICE_ITEMS:
        return json_response(status, value)
    parts = []
    for i in range(0, len(value), JSON_SLICE_ITEMS):
        parts.append(",\n".join(json.dumps(v) for v in value[i:i + JSON_SLICE_ITEMS]))
        await yield_to_io()
    return Response(status, ("[" + ",\n".join(parts) + "]\n").encode())


def error_response(status: int, message: str, code: str | None = None,
                   headers: list[tuple[str, str]] | None = None) -> Response:
    return json_response(status, {"error": {"code": code or ERROR_CODES.get(status, "ERROR"),
                                            "message": message}}, headers)


class RequestParser:
    """Bytes in, :class:`Request` out. ``feed(data)``; then ``next_request()`` until None."""

    def __init__(self, max_header_bytes: int = MAX_HEADER_BYTES,
                 max_body_bytes: int = MAX_BODY_BYTES,
                 stream_body: Callable[[Request], bool] | None = None) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.stream_body = stream_body
        self._buf = bytearray()
        self._head: Request | None = None  # parsed head waiting for its body
        self._body_len = 0
        self._failed: HttpError | None = None

    @property
    def pending(self) -> bool:
        """Part of a request has arrived (so a timeout is the client's fault: 408)."""
        return bool(self._buf.strip(b"\r\n")) or self._head is not None

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_request(self) -> Request | None:
        if self._failed is not None:
            raise self._failed
        try:
            return self._next()
        except HttpError as exc:
            self._failed = exc
            raise

    def _next(self) -> Request | None:
        if self._head is None:
            # Robustness (RFC 9112 §2.2): skip empty lines before a request line.
            while self._buf[:2] == b"\r\n":
                del self._buf[:2]
            end = self._buf.find(b"\r\n\r\n", 0, self.max_header_bytes + 4)
            if end < 0:
                if len(self._buf) > self.max_header_bytes:
                    raise HttpError(431, f"the request head is larger than "
                                         f"{self.max_header_bytes} bytes")
                return None
            head = bytes(self._buf[:end])
            del self._buf[:end + 4]
            self._head, self._body_len = self._parse_head(head)
            if self._body_len < 0:  # a streamed body: the caller reads it (take_buffered)
                request, self._head, self._body_len = self._head, None, 0
                return request
        if len(self._buf) < self._body_len:
            return None
        request = self._head
        request.body = bytes(self._buf[:self._body_len])
        del self._buf[:self._body_len]
        self._head = None
        self._body_len = 0
        return request

    def _parse_head(self, head: bytes) -> tuple[Request, int]:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not all(parts):
            raise HttpError(400, "malformed request line (expected 'METHOD /path HTTP/1.1')")
        method_b, target_b, version_b = parts
        if not _TOKEN_RE.fullmatch(method_b):
            raise HttpError(400, "malformed method in the request line")
        m = _VERSION_RE.fullmatch(version_b)
        if not m:
            raise HttpError(400, "malformed HTTP version in the request line")
        version = (int(m.group(1)), int(m.group(2)))
        if version[0] != 1:
            raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are served")
        if not target_b.startswith(b"/") or re.search(rb"[\x00-\x20\x7f-\xff]", target_b):
            raise HttpError(400, "the request target must be a path starting with '/'")
        target = target_b.decode("ascii")
        path, _, query_text = target.partition("?")
        try:
            query = parse_qs(query_text, keep_blank_values=True, strict_parsing=False,
                             errors="strict", max_num_fields=64)
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "malformed query string") from None
        headers: dict[str, str] = {}
        if len(lines) - 1 > MAX_HEADERS:
            raise HttpError(431, f"more than {MAX_HEADERS} header fields")
        lengths: set[bytes] = set()
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN_RE.fullmatch(name):
                raise HttpError(400, "malformed header line (expected 'Name: value'; no "
                                     "space before the colon, no folding)")
            value = value.strip(b" \t")
            if _BAD_VALUE_RE.search(value):
                raise HttpError(400, "a header value holds a control character")
            key = name.decode("ascii").lower()
            text = value.decode("latin-1")
            if key == "content-length":
                lengths.add(value)
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep_alive = ("close" not in connection if version >= (1, 1)
                      else "keep-alive" in connection)
        if version >= (1, 1) and "host" not in headers:
            raise HttpError(400, "an HTTP/1.1 request needs a Host header")
        method = method_b.decode("ascii")
        request = Request(method, target, path, query, version, headers, keep_alive=keep_alive)
        if self.stream_body is not None and self.stream_body(request):
            return self._streamed(request, lengths)
        if "transfer-encoding" in headers:
            raise HttpError(411, "send the body with a Content-Length (Transfer-Encoding is "
                                 "not accepted)")
        if not lengths:
            if method in BODY_METHODS:
                raise HttpError(411, f"a {method} request needs a Content-Length header")
            return request, 0
        values = {v.strip() for raw in lengths for v in raw.split(b",")}
        if len(values) != 1:
            raise HttpError(400, "conflicting Content-Length values")
        (length_b,) = values
        if not length_b.isdigit() or len(length_b) > 18:
            raise HttpError(400, "Content-Length is not a number of bytes")
        length = int(length_b)
        if length > self.max_body_bytes:
            raise HttpError(413, f"the body is larger than {self.max_body_bytes} bytes")
        return request, length


    def _streamed(self, request: Request, lengths: set[bytes]) -> tuple[Request, int]:
        """A request whose body its handler reads as a stream: chunked, or any length."""
        request.keep_alive = False
        te = request.headers.get("transfer-encoding")
        if te is not None:
            if te.strip().lower() != "chunked" or lengths:
                raise HttpError(400, "a streamed body is sent with Content-Length or with "
                                     "Transfer-Encoding: chunked (alone)")
            return request, -1
        values = {v.strip() for raw in lengths for v in raw.split(b",")}
        if len(values) != 1:
            raise HttpError(411 if not values else 400, "send the body with a Content-Length "
                            "or Transfer-Encoding: chunked")
        (length_b,) = values
        if not length_b.isdigit() or len(length_b) > 18:
            raise HttpError(400, "Content-Length is not a number of bytes")
        request.body_length = int(length_b)
        return request, -1

    def take_buffered(self) -> bytes:
        """Bytes received past the last request's head (a streamed body's start)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data


class ChunkedDecoder:
    """Sans-I/O ``Transfer-Encoding: chunked`` (RFC 9112 §7.1): ``feed(data)`` returns the
    payload bytes it completes; ``done`` once the last chunk and trailer section arrived.
    Chunk extensions and trailer fields are skipped; a size line is at most 1 KiB."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._left = -1  # payload bytes left in the current chunk (-1: a size line is next)
        self._crlf = False  # the CRLF after a chunk's data is next
        self._trailer = False
        self.done = False

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while not self.done:
            if self._left > 0:
                if not self._buf:
                    break
                piece = bytes(self._buf[:self._left])
                del self._buf[:len(piece)]
                self._left -= len(piece)
                out.append(piece)
                if self._left == 0:
                    self._crlf = True
                continue
            if self._crlf:
                if len(self._buf) < 2:
                    break
                if self._buf[:2] != b"\r\n":
                    raise HttpError(400, "a chunk's data is not followed by CRLF")
                del self._buf[:2]
                self._crlf = False
                self._left = -1
                continue
            end = self._buf.find(b"\r\n", 0, 1026)
            if end < 0:
                if len(self._buf) > 1024:
                    raise HttpError(400, "a chunk size line is too long")
                break
            line = bytes(self._buf[:end])
            del self._buf[:end + 2]
            if self._trailer:
                if not line:
                    self.done = True
                continue
            size_b = line.split(b";", 1)[0].strip()
            if not size_b or len(size_b) > 15 or not all(c in b"0123456789abcdefABCDEF"
                                                         for c in size_b):
                raise HttpError(400, "malformed chunk size")
            size = int(size_b, 16)
            if size == 0:
                self._trailer = True
            else:
                self._left = size
        return out

    def leftover(self) -> bytes:
        return bytes(self._buf)


class BodyStream:
    """A request body read as it arrives: ``async for piece in stream``. Raises
    ConnectionError if the client stops sending before the body's end."""

    def __init__(self, first: bytes, reader: asyncio.StreamReader, length: int | None,
                 timeout_s: float, read_size: int = 1 << 20) -> None:
        self._first = first
        self._reader = reader
        self._left = length
        self._chunked = ChunkedDecoder() if length is None else None
        self._timeout_s = timeout_s
        self._read_size = read_size
        self.received = 0
        self.complete = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[bytes]:
        data = self._first
        self._first = b""
        while True:
            if data:
                for piece in self._decode(data):
                    self.received += len(piece)
                    yield piece
            if self.complete:
                return
            want = self._read_size if self._left is None else min(self._read_size, self._left)
            try:
                data = await asyncio.wait_for(self._reader.read(want), self._timeout_s)
            except TimeoutError:
                raise ConnectionError("the request body stopped arriving") from None
            if not data:
                raise ConnectionError("the client closed the connection before the end of "
                                      "the body")

    def _decode(self, data: bytes) -> list[bytes]:
        if self._chunked is not None:
            pieces = self._chunked.feed(data)
            self.complete = self._chunked.done
            return pieces
        assert self._left is not None
        piece = data[:self._left]
        self._left -= len(piece)
        self.complete = self._left == 0
        return [piece] if piece else []


def render_response(response: Response, keep_alive: bool) -> bytes:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Unknown"
    length = (("Transfer-Encoding", "chunked") if response.stream is not None
              else ("Content-Length", str(len(response.body))))
    lines = [f"HTTP/1.1 {response.status} {reason}",
             f"Content-Type: {response.content_type}",
             f"{length[0]}: {length[1]}",
             f"Connection: {'keep-alive' if keep_alive else 'close'}"]
    lines += [f"{k}: {v}" for k, v in response.headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    """Serves ``handler`` on unix sockets and/or TCP. ``handler(request) -> Response``; an
    exception from it answers 500 (and is logged)."""

    def __init__(self, handler: Handler, *, max_header_bytes: int = MAX_HEADER_BYTES,
                 max_body_bytes: int = MAX_BODY_BYTES, idle_timeout_s: float = 60.0,
                 request_timeout_s: float = 30.0, max_connections: int = 64,
                 stream_body: Callable[[Request], bool] | None = None) -> None:
        self.handler = handler
        self.stream_body = stream_body
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.idle_timeout_s = idle_timeout_s
        self.request_timeout_s = request_timeout_s
        self.max_connections = max_connections
        self._servers: list[asyncio.AbstractServer] = []
        self._unix_paths: list[Path] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start_unix(self, path: str | os.PathLike[str], mode: int = 0o600) -> None:
        """Listen on a unix socket at ``path`` (a stale socket file is replaced; a live one,
        whose daemon still answers, is an OSError). The socket gets ``mode``."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists() or p.is_symlink():
            if not stat.S_ISSOCK(p.lstat().st_mode):
                raise OSError(f"{p} exists and is not a socket")
            if _socket_answers(p):
                raise OSError(f"{p} is in use: another sbstore daemon is running")
            p.unlink()
        old_umask = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(self._accept, path=str(p))
        finally:
            os.umask(old_umask)
        os.chmod(p, mode)
        self._servers.append(server)
        self._unix_paths.append(p)

    async def start_tcp(self, host: str, port: int) -> tuple[str, int]:
        """Listen on TCP; returns the bound address (port 0: the kernel's choice)."""
        server = await asyncio.start_server(self._accept, host, port, reuse_address=True)
        self._servers.append(server)
        name = server.sockets[0].getsockname()
        return name[0], name[1]

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 5)
            except TimeoutError:
                pass
        self._servers.clear()
        for p in self._unix_paths:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        self._unix_paths.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= self.max_connections:
            writer.write(render_response(error_response(503, "too many API connections"),
                                         False))
            writer.close()
            return
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # one connection's failure must not stop the server
            log.exception("API connection failed")
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = RequestParser(self.max_header_bytes, self.max_body_bytes, self.stream_body)
        while True:
            try:
                request = parser.next_request()
            except HttpError as exc:
                writer.write(render_response(error_response(exc.status, exc.message), False))
                await writer.drain()
                return
            if request is None:
                timeout = self.request_timeout_s if parser.pending else self.idle_timeout_s
                try:
                    data = await asyncio.wait_for(reader.read(65536), timeout)
                except TimeoutError:
                    if parser.pending:
                        writer.write(render_response(
                            error_response(408, "the request did not arrive in time"), False))
                        await writer.drain()
                    return
                if not data:
                    return
                parser.feed(data)
                continue
            body: BodyStream | None = None
            if request.keep_alive is False and self.stream_body is not None and \
                    self.stream_body(request):
                body = BodyStream(parser.take_buffered(), reader, request.body_length,
                                  self.request_timeout_s)
                request.stream = aiter(body)
            try:
                response = await self.handler(request)
            except ConnectionError:
                raise  # the client went away (a streamed body cut off): nobody to answer
            except Exception:  # answered as 500
                log.exception("API handler failed on %s %s", request.method, request.target)
                response = error_response(500, "internal error; the daemon's log has the "
                                               "details")
            keep = request.keep_alive and not response.close and response.stream is None
            writer.write(render_response(response, keep))
            if response.stream is not None:
                await self._send_stream(response.stream, writer)
            await writer.drain()
            if not keep:
                return

    async def _send_stream(self, stream: AsyncIterator[bytes],
                           writer: asyncio.StreamWriter) -> None:
        """Send a streamed body chunked, piece by piece (drained before the next is made). A
        failure midway closes the connection without the last chunk: the client sees the
        body cut short, never a short body that looks whole."""
        try:
            async for piece in stream:
                if piece:
                    writer.write(b"%x\r\n" % len(piece))
                    writer.write(piece)
                    writer.write(b"\r\n")
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - the status line is gone; log and cut
            log.warning("streamed answer stopped: %s", exc)
            raise ConnectionAbortedError(str(exc)) from exc
        finally:
            # Its cleanup runs now, not whenever the garbage collector gets to it.
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        writer.write(b"0\r\n\r\n")


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True
