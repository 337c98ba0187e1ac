"""An asyncio etcd v3 client over etcd's JSON gateway (docs/cluster.md, "Parts").

Rules of this module:
- Stdlib only. Each call is one HTTP/1.1 POST of a JSON body to ``/v3/...`` on a fresh
  loopback-or-LAN TCP connection (``Connection: close``): nothing to go stale between calls,
  and a call's whole life fits inside one timeout. Keys and values travel base64; etcd's int64
  fields come back as JSON strings and fields at their default value are left out, so every
  field is read with a default.
- Every call is bounded by ``timeout`` seconds in all. Endpoints are tried in order, starting
  with the last one that answered; a refused, reset or silent endpoint moves the call to the
  next one, each attempt getting an equal share of the time left. When none answered, the call
  raises :class:`EtcdUnavailable` naming them all.
- Caveat of that failover: a write whose request reached an endpoint that then went silent may
  have been applied, and is sent again to the next one. Puts and deletes are idempotent; a
  campaign txn (``create_revision == 0``) can then report failure although it won, so callers
  read the key back (the manager does: the winner's epoch is the key's ``create_revision``).
- etcd's answers of an error (HTTP 4xx/5xx with ``{"error", "code"}``) raise :class:`EtcdError`,
  or :class:`LeaseExpired` when the lease named is gone; those do not move to another endpoint.
"""
from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sbstore.cluster.http_response import HttpParseError, HttpResponse, ResponseParser

_READ_SIZE = 64 * 1024
_GRPC_NOT_FOUND = 5


class EtcdError(Exception):
    """etcd refused a request, or answered something this client cannot read."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered within the timeout."""


class LeaseExpired(EtcdError):
    """etcd says the lease is gone (expired or revoked)."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    def json(self) -> Any:
        return json.loads(self.value)


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    # one per op of the branch taken: a get's is list[KeyValue], a put's the revision (int),
    # a delete's the number of keys deleted (int)
    responses: list[Any] = field(default_factory=list)


_COMPARE_RESULTS = {"==": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}


@dataclass(frozen=True)
class Compare:
    """One condition of a txn; build it with the constructors, which name etcd's targets."""

    body: dict[str, Any]

    @classmethod
    def _make(cls, key: str, op: str, target: str, field_name: str, value: Any) -> Compare:
        if op not in _COMPARE_RESULTS:
            raise ValueError(f"compare operator {op!r}: expected one of {sorted(_COMPARE_RESULTS)}")
        return cls({"key": _b64(key), "result": _COMPARE_RESULTS[op], "target": target,
                    field_name: value})

    @classmethod
    def create_revision(cls, key: str, op: str, revision: int) -> Compare:
        return cls._make(key, op, "CREATE", "create_revision", str(revision))

    @classmethod
    def mod_revision(cls, key: str, op: str, revision: int) -> Compare:
        return cls._make(key, op, "MOD", "mod_revision", str(revision))

    @classmethod
    def value(cls, key: str, op: str, value: bytes | str) -> Compare:
        return cls._make(key, op, "VALUE", "value", _b64(value))

    @classmethod
    def version(cls, key: str, op: str, version: int) -> Compare:
        return cls._make(key, op, "VERSION", "version", str(version))


@dataclass(frozen=True)
class Op:
    """One operation of a txn branch: :meth:`put`, :meth:`delete` or :meth:`get`."""

    body: dict[str, Any]

    @classmethod
    def put(cls, key: str, value: bytes | str, lease: int = 0) -> Op:
        request: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            request["lease"] = str(lease)
        return cls({"request_put": request})

    @classmethod
    def delete(cls, key: str) -> Op:
        return cls({"request_delete_range": {"key": _b64(key)}})

    @classmethod
    def get(cls, key: str) -> Op:
        return cls({"request_range": {"key": _b64(key)}})


class EtcdClient:
    """See the module docstring. Safe to share between tasks: calls hold no shared connection."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 2.0) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self._endpoints = [_parse_endpoint(e) for e in endpoints]
        self._names = list(endpoints)
        self._timeout = timeout
        self._preferred = 0  # index of the endpoint that answered last

    # -- keys -------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        reply = await self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = _kvs(reply)
        return kvs[0] if kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        reply = await self._call("/v3/kv/range", {
            "key": _b64(prefix), "range_end": _b64(_prefix_end(prefix.encode())),
            "sort_order": "ASCEND", "sort_target": "KEY"})
        return sorted(_kvs(reply), key=lambda kv: kv.key), _revision(reply)

    async def put(self, key: str, value: bytes | str, *, lease: int = 0) -> int:
        reply = await self._call("/v3/kv/put", Op.put(key, value, lease).body["request_put"])
        return _revision(reply)

    async def delete(self, key: str) -> int:
        reply = await self._call("/v3/kv/deleterange", {"key": _b64(key)})
        return int(reply.get("deleted", 0))

    async def delete_prefix(self, prefix: str) -> int:
        reply = await self._call("/v3/kv/deleterange", {
            "key": _b64(prefix), "range_end": _b64(_prefix_end(prefix.encode()))})
        return int(reply.get("deleted", 0))

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> TxnResult:
        reply = await self._call("/v3/kv/txn", {
            "compare": [c.body for c in compare], "success": [o.body for o in success],
            "failure": [o.body for o in failure]})
        return TxnResult(succeeded=bool(reply.get("succeeded", False)),
                         revision=_revision(reply),
                         responses=[_op_response(r) for r in reply.get("responses", [])])

    # -- leases -----------------------------------------------------------------------------

    async def lease_grant(self, ttl: int) -> int:
        reply = await self._call("/v3/lease/grant", {"TTL": str(ttl)})
        if reply.get("error"):
            raise EtcdError(f"lease grant refused: {reply['error']}")
        return int(reply["ID"])

    async def lease_keepalive(self, lease_id: int) -> int:
        reply = await self._call("/v3/lease/keepalive", {"ID": str(lease_id)})
        # the gateway serves this streaming call as one message: {"result": {...}}, or, for an
        # error inside the stream, HTTP 200 with {"error": {"grpc_code", "message", ...}}
        error = reply.get("error")
        if isinstance(error, dict):
            message = str(error.get("message", error))
            if "lease not found" in message:
                raise LeaseExpired(message)
            raise EtcdError(f"lease keepalive of {lease_id} failed: {message}")
        result = reply.get("result", reply)
        ttl = int(result.get("TTL", 0))
        if ttl <= 0:
            raise LeaseExpired(f"etcd lease {lease_id} is gone")
        return ttl

    async def lease_revoke(self, lease_id: int) -> None:
        """Revokes the lease, deleting its keys; a lease already gone is not an error."""
        try:
            await self._call("/v3/lease/revoke", {"ID": str(lease_id)})
        except LeaseExpired:
            pass

    async def close(self) -> None:
        """Nothing stays open between calls; kept so owners can treat the client as a resource."""

    # -- transport --------------------------------------------------------------------------

    async def _call(self, path: str, request: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(request).encode()
        deadline = time.monotonic() + self._timeout
        count = len(self._endpoints)
        failures: list[str] = []
        for attempt in range(count):
            index = (self._preferred + attempt) % count
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                failures.append(f"{self._names[index]}: not tried, out of time")
                continue
            host, port = self._endpoints[index]
            try:
                response = await asyncio.wait_for(
                    _post(host, port, path, body), remaining / (count - attempt))
            except (OSError, asyncio.TimeoutError, HttpParseError) as e:
                failures.append(f"{self._names[index]}: {_describe(e)}")
                continue
            self._preferred = index
            return _decode(path, response)
        raise EtcdUnavailable(f"no etcd endpoint answered {path} within {self._timeout:g}s: "
                              + "; ".join(failures))


async def _post(host: str, port: int, path: str, body: bytes) -> HttpResponse:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        parser = ResponseParser()
        while True:  # bounded by the caller's wait_for and the parser's size limits
            data = await reader.read(_READ_SIZE)
            if not data:
                parser.feed_eof()
            else:
                parser.feed(data)
            response = parser.result()
            if response is not None:
                return response
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass  # a reset while closing changes nothing for the answer already read


def _decode(path: str, response: HttpResponse) -> dict[str, Any]:
    try:
        reply = json.loads(response.body) if response.body else {}
    except ValueError:
        raise EtcdError(f"etcd answered {path} with {response.status} and a body that is not "
                        f"JSON: {response.body[:200]!r}") from None
    if not isinstance(reply, dict):
        raise EtcdError(f"etcd answered {path} with JSON that is not an object: {reply!r:.200}")
    if response.status != 200:
        message = str(reply.get("message") or reply.get("error") or response.reason)
        if reply.get("code") == _GRPC_NOT_FOUND and "lease not found" in message:
            raise LeaseExpired(message)
        raise EtcdError(f"etcd refused {path} ({response.status}): {message}")
    return reply


def _describe(error: BaseException) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {error}"


def _parse_endpoint(endpoint: str) -> tuple[str, int]:
    parts = urlsplit(endpoint)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"etcd endpoint {endpoint!r}: expected http://host:port")
    return parts.hostname, parts.port or 2379


def _b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key after every key starting with ``prefix`` (etcd's range_end)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\0"  # etcd: range_end "\0" means every key >= key
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def _revision(reply: dict[str, Any]) -> int:
    return int(reply.get("header", {}).get("revision", 0))


def _kvs(reply: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=base64.b64decode(kv.get("key", "")).decode(),
                     value=base64.b64decode(kv.get("value", "")),
                     create_revision=int(kv.get("create_revision", 0)),
                     mod_revision=int(kv.get("mod_revision", 0)),
                     version=int(kv.get("version", 0)),
                     lease=int(kv.get("lease", 0)))
            for kv in reply.get("kvs", [])]


def _op_response(response: dict[str, Any]) -> Any:
    if "response_range" in response:
        return _kvs(response["response_range"])
    if "response_put" in response:
        return _revision(response["response_put"])
    if "response_delete_range" in response:
        return int(response["response_delete_range"].get("deleted", 0))
    return response  # a nested txn: left as etcd gave it
