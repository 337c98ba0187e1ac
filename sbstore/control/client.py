"""A small blocking client of the admin API (the CLI's only way to the daemon; tests, scripts).

Rules of this module:
- Stdlib only (``http.client`` over a unix socket or TCP); it never imports the service, the
  store or the target, so the CLI starts fast and cannot reach around the API.
- Where the daemon is, in order: the ``socket``/``url`` given; ``$SBSTORE_SOCKET``;
  ``$SBSTORE_URL`` (TCP, with the token from ``$SBSTORE_TOKEN`` or the file named by
  ``$SBSTORE_TOKEN_FILE``); else the first existing of :data:`DEFAULT_SOCKET` (the system
  daemon's, ``/run/sbstore/api.sock``) and the demo's default (``~/.local/state/sbstore/
  api.sock``); else :data:`DEFAULT_SOCKET`.
- An answer of 4xx/5xx raises :class:`ApiError` with the API's code and message; no answer
  raises :class:`Unreachable` naming where it looked.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, urlencode, urlsplit

from sbstore.config import DEFAULT_API_SOCKET, default_state_dir

DEFAULT_SOCKET = DEFAULT_API_SOCKET
DEFAULT_TIMEOUT_S = 600.0  # an inflate copies data: minutes


class ApiError(Exception):
    """The daemon refused or failed a request."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Unreachable(Exception):
    """No daemon answered where the client looked."""


def find_socket(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("SBSTORE_SOCKET")
    if env:
        return Path(env)
    for candidate in (DEFAULT_SOCKET, default_state_dir() / "api.sock"):
        if candidate.exists():
            return candidate
    return DEFAULT_SOCKET


def path(*segments: object) -> str:
    """``path("v1", "volumes", name)`` -> ``/v1/volumes/NAME`` with each segment quoted."""
    return "/" + "/".join(quote(str(s), safe="") for s in segments)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Client:
    """``Client(socket_path=...)`` or ``Client(url="http://host:port", token=...)``."""

    def __init__(self, socket_path: str | os.PathLike[str] | None = None, *,
                 url: str | None = None, token: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        url = url or (None if socket_path or os.environ.get("SBSTORE_SOCKET")
                      else os.environ.get("SBSTORE_URL"))
        self.timeout_s = timeout_s
        self.url = url
        self.socket_path: Path | None = None
        if url:
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"{url!r}: expected http://HOST:PORT")
            self._host, self._port = parts.hostname, parts.port or 80
            if token is None:
                token = os.environ.get("SBSTORE_TOKEN")
            if token is None and os.environ.get("SBSTORE_TOKEN_FILE"):
                token = read_token(os.environ["SBSTORE_TOKEN_FILE"])
        else:
            self.socket_path = find_socket(socket_path)
        self.token = token
        self._conn: http.client.HTTPConnection | None = None

    @property
    def where(self) -> str:
        return self.url if self.url else str(self.socket_path)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.socket_path is not None:
                self._conn = _UnixConnection(str(self.socket_path), self.timeout_s)
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port,
                                                        timeout=self.timeout_s)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, target: str, body: Any = None,
                query: dict[str, Any] | None = None) -> Any:
        """Send one request; the decoded JSON answer (None for 204). ApiError, Unreachable."""
        if query:
            items = {k: ("true" if v is True else "false" if v is False else v)
                     for k, v in query.items() if v is not None}
            if items:
                target += "?" + urlencode(items)
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif method in ("POST", "PUT", "PATCH"):
            payload = b""
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, target, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                # A kept-alive connection the server closed meanwhile: retry once, fresh.
                self.close()
                if attempt:
                    raise Unreachable(f"the sbstore daemon at {self.where} closed the "
                                      f"connection") from None
                continue
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                self.close()
                raise Unreachable(f"cannot reach the sbstore daemon at {self.where} "
                                  f"({exc.strerror or exc}): is it running? Point at it with "
                                  f"--socket PATH or $SBSTORE_SOCKET") from None
            except PermissionError:
                self.close()
                raise Unreachable(f"no permission to use {self.where}: run as the daemon's "
                                  f"user (root for the system daemon)") from None
            except TimeoutError:
                self.close()
                raise Unreachable(f"the sbstore daemon at {self.where} did not answer within "
                                  f"{self.timeout_s:g} s") from None
            except OSError as exc:
                self.close()
                raise Unreachable(f"cannot reach the sbstore daemon at {self.where}: "
                                  f"{exc.strerror or exc}") from None
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            break
        if response.status == 204 or not data:
            if response.status >= 400:
                raise ApiError(response.status, "ERROR", f"HTTP {response.status}")
            return None
        try:
            decoded = json.loads(data)
        except ValueError:
            raise ApiError(response.status, "BAD_RESPONSE",
                           f"the daemon answered HTTP {response.status} with something that "
                           f"is not JSON") from None
        if response.status >= 400:
            err = decoded.get("error", {}) if isinstance(decoded, dict) else {}
            raise ApiError(response.status, str(err.get("code", "ERROR")),
                           str(err.get("message", f"HTTP {response.status}")))
        return decoded

    def get(self, target: str, **query: Any) -> Any:
        return self.request("GET", target, query=query)

    # --- streams (export, import): never the whole body in memory ----------------------------

    def download(self, target: str, sink: Callable[[bytes], object], *,
                 piece: int = 1 << 20, **query: Any) -> dict[str, str]:
        """GET a streamed answer, handing each piece to ``sink``; returns the answer's
        headers. ApiError if refused; Unreachable if the body ends before its end (the
        daemon failed or stopped midway: what ``sink`` got is incomplete)."""
        conn = self._stream_connection()
        try:
            try:
                conn.request("GET", _with_query(target, query), headers=self._headers())
                response = conn.getresponse()
                if response.status >= 400:
                    _raise_for(response.status, response.read())
                while True:
                    data = response.read(piece)
                    if not data:
                        break
                    sink(data)
            except http.client.IncompleteRead:
                raise Unreachable(f"the stream from {self.where} ended before its end (the "
                                  f"daemon failed or stopped midway)") from None
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise Unreachable(f"cannot reach the sbstore daemon at {self.where} "
                                  f"({exc.strerror or exc})") from None
            except (TimeoutError, ConnectionError) as exc:
                raise Unreachable(f"the stream from {self.where} broke: {exc}") from None
            return {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()

    def upload(self, target: str, chunks: Iterable[bytes], *, length: int | None = None,
               **query: Any) -> Any:
        """POST a streamed body (chunked, or with ``length``); the decoded JSON answer. A
        daemon that refuses early (and stops reading) still gets its answer heard."""
        conn = self._stream_connection()
        headers = self._headers()
        headers["Content-Type"] = "application/octet-stream"
        if length is not None:
            headers["Content-Length"] = str(length)
        try:
            try:
                conn.request("POST", _with_query(target, query), body=iter(chunks),
                             headers=headers, encode_chunked=length is None)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon answered before reading it all: read why
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise Unreachable(f"cannot reach the sbstore daemon at {self.where} "
                                  f"({exc.strerror or exc})") from None
            try:
                response = conn.getresponse()
                data = response.read()
            except (ConnectionError, http.client.HTTPException, TimeoutError) as exc:
                raise Unreachable(f"the sbstore daemon at {self.where} gave no answer to the "
                                  f"upload ({exc})") from None
            if response.status >= 400:
                _raise_for(response.status, data)
            return json.loads(data) if data else None
        finally:
            conn.close()

    def _stream_connection(self) -> http.client.HTTPConnection:
        """A connection of its own (a stream closes it), not the kept-alive one."""
        if self.socket_path is not None:
            return _UnixConnection(str(self.socket_path), self.timeout_s)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def post(self, target: str, body: Any = None, **query: Any) -> Any:
        return self.request("POST", target, body if body is not None else {}, query)

    def patch(self, target: str, body: Any, **query: Any) -> Any:
        return self.request("PATCH", target, body, query)

    def delete(self, target: str, **query: Any) -> Any:
        return self.request("DELETE", target, query=query)


def _with_query(target: str, query: dict[str, Any]) -> str:
    items = {k: ("true" if v is True else "false" if v is False else v)
             for k, v in query.items() if v is not None}
    return target + ("?" + urlencode(items) if items else "")


def _raise_for(status: int, data: bytes) -> None:
    try:
        decoded = json.loads(data)
    except ValueError:
        raise ApiError(status, "ERROR", f"HTTP {status}") from None
    err = decoded.get("error", {}) if isinstance(decoded, dict) else {}
    raise ApiError(status, str(err.get("code", "ERROR")),
                   str(err.get("message", f"HTTP {status}")))


def read_token(token_file: str | os.PathLike[str]) -> str:
    """The bearer token in a file (first line, stripped); ValueError if empty."""
    text = Path(token_file).read_text().strip()
    if not text:
        raise ValueError(f"{token_file} holds no token")
    return text.splitlines()[0].strip()
