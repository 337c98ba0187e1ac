"""The HTTP/JSON admin API: a route table over the control service, and its OpenAPI document.

Rules of this module:
- One table, :data:`ROUTES`, says everything about a route: method, path template, the query
  parameters and JSON body fields it accepts (name, type, required), the response schema, the
  handler. The request checks and ``GET /v1/openapi.json`` are both derived from it, so the
  document cannot drift from what is served.
- Requests are checked before the service sees them: an unknown path answers 404, a known path
  with another method 405 (with ``Allow``), a body that is not a JSON object, an unknown or
  missing field, a value of the wrong type, an unknown query parameter: 400. Nothing has been
  changed when a 4xx answer leaves.
- Errors are ``{"error": {"code": "...", "message": "..."}}``. The service's
  :class:`~sbstore.control.service.ControlError` codes map to statuses in :data:`STATUS_OF`
  (a value the service refuses as such, e.g. a size the pool cannot hold: 422; exists or
  the state forbids it: 409).
- On TCP every request needs ``Authorization: Bearer TOKEN`` (401 otherwise); the unix socket
  is protected by its file mode (0600) and needs none.
"""
from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import sbstore
from sbstore.collector import collector_paused
from sbstore.config import QosPolicy
from sbstore.control import dhchap
from sbstore.control.http import (
    HttpServer,
    Request,
    Response,
    error_response,
    json_response_sliced,
)
from sbstore.control.service import (
    ANA_STATE_CHOICES,
    ControlError,
    ControlService,
    ErrorCode,
)
from target.ana import STATE_NAMES

log = logging.getLogger("sbstore.control.api")

STATUS_OF = {
    ErrorCode.INVALID_ARGUMENT: 422,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.FAILED_PRECONDITION: 409,
    ErrorCode.BUSY: 409,
    ErrorCode.CANCELLED: 409,
    ErrorCode.INTERNAL: 500,
}


class BadRequest(Exception):
    """The request does not fit the route's schema (400)."""


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # string | integer | number | boolean | array (of strings)
    required: bool = False
    description: str = ""
    minimum: int | None = None
    maximum: int | None = None
    enum: tuple[str, ...] | None = None
    secret: bool = False  # never quoted back in an error message

    def schema(self) -> dict[str, Any]:
        s: dict[str, Any] = {"type": self.type}
        if self.type == "array":
            s["items"] = {"type": "string"}
        if self.description:
            s["description"] = self.description
        if self.minimum is not None:
            s["minimum"] = self.minimum
        if self.maximum is not None:
            s["maximum"] = self.maximum
        if self.enum:
            s["enum"] = list(self.enum)
        return s

    def check(self, value: Any, where: str) -> Any:
        ok = {"string": lambda v: isinstance(v, str),
              "integer": lambda v: type(v) is int,
              "number": lambda v: type(v) in (int, float),
              "boolean": lambda v: type(v) is bool,
              "array": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
              }[self.type](value)
        if not ok:
            kind = {"array": "an array of strings", "integer": "an integer",
                    "boolean": "true or false", "number": "a number",
                    "string": "a string"}[self.type]
            shown = "something else" if self.secret else json.dumps(value)[:40]
            raise BadRequest(f"{where} {self.name!r} must be {kind}, not {shown}")
        if self.type in ("integer", "number"):
            if self.minimum is not None and value < self.minimum:
                raise BadRequest(f"{where} {self.name!r} must be at least {self.minimum}")
            if self.maximum is not None and value > self.maximum:
                raise BadRequest(f"{where} {self.name!r} must be at most {self.maximum}")
        if self.enum and value not in self.enum:
            raise BadRequest(f"{where} {self.name!r} must be one of {', '.join(self.enum)}")
        return value

    def from_text(self, text: str) -> Any:
        """A query parameter's value, converted to this field's type."""
        if self.type == "integer":
            if not text.lstrip("-").isdigit():
                raise BadRequest(f"query parameter {self.name!r} must be an integer")
            return self.check(int(text), "query parameter")
        if self.type == "boolean":
            if text.lower() not in ("true", "false", "1", "0", ""):
                raise BadRequest(f"query parameter {self.name!r} must be true or false")
            return text.lower() in ("true", "1", "")
        return self.check(text, "query parameter")


@dataclass
class Call:
    service: ControlService
    params: dict[str, Any]
    query: dict[str, Any]
    body: dict[str, Any]
    stream: AsyncIterator[bytes] | None = None  # a streamed request body (Route.stream)
    # Cluster mode: the node's ClusterManager (sbstore.cluster.manager; not imported here, so
    # single-node mode loads nothing of the cluster), else None.
    cluster: Any = None


@dataclass
class Streamed:
    """A handler's answer sent as a stream of bytes (an export), with its operation's id."""

    chunks: AsyncIterator[bytes]
    operation: int


HandlerFn = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: HandlerFn
    summary: str
    tag: str
    response: str | None  # a component schema name; None: 204 No Content
    status: int = 200
    query: tuple[Field, ...] = ()
    body: tuple[Field, ...] | None = None  # None: the route takes no body
    path_types: tuple[tuple[str, str], ...] = ()  # path parameters that are not strings
    stream: str | None = None  # "request": the body is a stream; "response": the answer is

    @property
    def segments(self) -> list[str]:
        return self.path.strip("/").split("/")

    @property
    def operation_id(self) -> str:
        words = [s.strip("{}") for s in self.segments[1:]]
        return self.method.lower() + "".join(
            part.title() for w in words for part in re.split(r"[^A-Za-z0-9]+", w))


# --- field sets ---------------------------------------------------------------------------------

POOL_Q = Field("pool", "string", description="the pool (optional when there is one, or when "
                                             "only one pool has the name)")
FORCE_Q = Field("force", "boolean", description="do it even though the target is in use")
POLICY_FIELDS = tuple(
    Field(name, "number" if name == "burst_s" else "integer",
          description=desc, minimum=1 if name == "weight" else 0,
          maximum=1000 if name == "weight" else None)
    for name, desc in (
        ("iops", "I/O operations per second, reads and writes together (0: no limit)"),
        ("read_iops", "read operations per second (0: no limit)"),
        ("write_iops", "write operations per second (0: no limit)"),
        ("bps", "bytes per second, reads and writes together (0: no limit)"),
        ("read_bps", "bytes read per second (0: no limit)"),
        ("write_bps", "bytes written per second (0: no limit)"),
        ("burst_s", "the burst a limit allows, in seconds of its rate"),
        ("weight", "share when tenants compete, 1..1000 (default 100)")))
assert tuple(f.name for f in POLICY_FIELDS) == QosPolicy.field_names()


def _policy(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k in QosPolicy.field_names()}


# --- handlers -------------------------------------------------------------------------------

async def _openapi(c: Call) -> Any:
    return openapi_document()


async def _status(c: Call) -> Any:
    return c.service.status()


async def _pools(c: Call) -> Any:
    return c.service.list_pools()


async def _pool(c: Call) -> Any:
    return c.service.pool_info(c.params["pool"])


async def _volumes(c: Call) -> Any:
    return await c.service.list_volumes_sliced(c.query.get("pool"), c.query.get("tenant"),
                                               c.query.get("kind"))


# --- cluster mode: replicated volumes and their exports live in etcd ---------------------------

def _need_cluster(c: Call) -> Any:
    if c.cluster is None:
        raise ControlError(ErrorCode.FAILED_PRECONDITION, "this daemon is not in cluster mode "
                           "(no [cluster] section in its config)")
    return c.cluster


async def _refuse_replicated(c: Call, name: str, what: str) -> None:
    """Operations that would act on one copy only are refused for a replicated volume."""
    if c.cluster is not None and await c.cluster.is_replicated(name):
        raise ControlError(ErrorCode.FAILED_PRECONDITION,
                           f"{name!r} is a replicated volume: {what} of replicated volumes is "
                           f"not supported yet in cluster mode")


async def _cluster(c: Call) -> Any:
    return await _need_cluster(c).status()


async def _cluster_replicas(c: Call) -> Any:
    return await _need_cluster(c).admin.change_replicas(
        c.params["name"], add=c.body.get("add"), remove=c.body.get("remove"))


async def _volume_create(c: Call) -> Any:
    b = c.body
    if "replicas" in b:
        return await _need_cluster(c).admin.create_volume(
            b["name"], b["size_bytes"], b["replicas"], block_size=b.get("block_size", 4096),
            tenant=b.get("tenant", "default"))
    return await c.service.create_volume(b["name"], b["size_bytes"], pool=b.get("pool"),
                                         block_size=b.get("block_size", 4096),
                                         tenant=b.get("tenant", "default"))


async def _volume(c: Call) -> Any:
    return c.service.show_volume(c.params["name"], c.query.get("pool"))


async def _volume_set(c: Call) -> Any:
    if c.cluster is not None and await c.cluster.is_replicated(c.params["name"]):
        if _policy(c.body) or c.body.get("clear_limits"):
            await _refuse_replicated(c, c.params["name"], "setting own limits")
        if c.body.get("tenant") is not None:  # every copy moves (sbstore.cluster.tenants)
            return await c.cluster.tenants.move_volume(c.params["name"], c.body["tenant"])
    return await c.service.set_volume(c.params["name"], c.query.get("pool"),
                                      tenant=c.body.get("tenant"),
                                      limits=_policy(c.body) or None,
                                      clear_limits=c.body.get("clear_limits", False))


async def _volume_delete(c: Call) -> Any:
    if c.cluster is not None and await c.cluster.is_replicated(c.params["name"]):
        await c.cluster.admin.delete_volume(c.params["name"], force=c.query.get("force", False))
        return
    await c.service.delete_volume(c.params["name"], c.query.get("pool"),
                                  force=c.query.get("force", False), kind="volume")


async def _volume_resize(c: Call) -> Any:
    if c.cluster is not None and await c.cluster.is_replicated(c.params["name"]):
        return await c.cluster.admin.resize_volume(c.params["name"], c.body["size_bytes"])
    return await c.service.resize_volume(c.params["name"], c.body["size_bytes"],
                                         c.query.get("pool"), force=c.body.get("force", False))


async def _volume_rename(c: Call) -> Any:
    await _refuse_replicated(c, c.params["name"], "renaming")
    return await c.service.rename_volume(c.params["name"], c.body["new_name"],
                                         c.query.get("pool"))


async def _volume_revert(c: Call) -> Any:
    await _refuse_replicated(c, c.params["name"], "reverting")
    return await c.service.revert_volume(c.params["name"], c.body["snapshot"],
                                         c.query.get("pool"), force=c.body.get("force", False))


async def _volume_inflate(c: Call) -> Any:
    return await c.service.inflate_volume(c.params["name"], c.query.get("pool"))


async def _snapshots(c: Call) -> Any:
    snaps = await c.service.list_volumes_sliced(c.query.get("pool"), kind="snapshot")
    volume = c.query.get("volume")
    if volume is None:
        return snaps
    info = c.service.show_volume(volume, c.query.get("pool"))
    history = []
    parent = info["parent"]
    by_name = {(s["pool"], s["name"]): s for s in snaps}
    while parent is not None and (info["pool"], parent) in by_name:
        snap = by_name[(info["pool"], parent)]
        history.append(snap)
        parent = snap["parent"]
    return history


async def _snapshot_create(c: Call) -> Any:
    if c.cluster is not None and await c.cluster.is_replicated(c.body["volume"]):
        return await c.cluster.admin.create_snapshot(c.body["volume"], c.body["name"])
    return await c.service.create_snapshot(c.body["volume"], c.body["name"], c.body.get("pool"))


async def _snapshot(c: Call) -> Any:
    info = c.service.show_volume(c.params["name"], c.query.get("pool"))
    if info["kind"] != "snapshot":
        raise ControlError(ErrorCode.NOT_FOUND, f"{c.params['name']!r} is a volume, not a "
                           f"snapshot")
    return info


async def _snapshot_delete(c: Call) -> Any:
    if c.cluster is not None and await c.cluster.is_cluster_snapshot(c.params["name"]):
        await c.cluster.admin.delete_snapshot(c.params["name"])
        return
    await c.service.delete_volume(c.params["name"], c.query.get("pool"),
                                  force=c.query.get("force", False), kind="snapshot")


async def _snapshot_groups(c: Call) -> Any:
    return c.service.list_snapshot_groups(c.query.get("pool"))


async def _snapshot_group_create(c: Call) -> Any:
    for name in c.body["volumes"]:
        await _refuse_replicated(c, name, "snapshotting")
    return await c.service.create_snapshot_group(c.body["name"], c.body["volumes"],
                                                 c.body.get("pool"))


async def _snapshot_group(c: Call) -> Any:
    return c.service.show_snapshot_group(c.params["name"], c.query.get("pool"))


async def _snapshot_group_delete(c: Call) -> Any:
    await c.service.delete_snapshot_group(c.params["name"], c.query.get("pool"),
                                          force=c.query.get("force", False))


async def _schedules(c: Call) -> Any:
    return c.service.list_schedules()


async def _schedule_add(c: Call) -> Any:
    b = c.body
    if b.get("volume") is not None:
        await _refuse_replicated(c, b["volume"], "a snapshot schedule")
    return await c.service.add_schedule(b["every"], b["keep"], volume=b.get("volume"),
                                        tenant=b.get("tenant"), pool=b.get("pool"))


async def _schedule_remove(c: Call) -> Any:
    await c.service.remove_schedule(c.params["id"])


async def _clone_create(c: Call) -> Any:
    if c.cluster is not None and not c.body.get("local") \
            and await c.cluster.is_cluster_snapshot(c.body["snapshot"]):
        # a replicated volume, its copies made of each holder's copy of the snapshot
        if c.body.get("pool") is not None:
            raise ControlError(ErrorCode.INVALID_ARGUMENT, "a clone of a replicated volume's "
                               "snapshot is replicated: each node places its copy in the pool "
                               "of its copy of the snapshot (give no pool, or clone this "
                               "node's copy alone with --local)")
        return await c.cluster.admin.create_clone(c.body["snapshot"], c.body["name"],
                                                  tenant=c.body.get("tenant"))
    return await c.service.create_clone(c.body["snapshot"], c.body["name"], c.body.get("pool"),
                                        tenant=c.body.get("tenant"))


async def _snapshot_diff(c: Call) -> Any:
    return await c.service.diff_snapshots(c.params["name"], c.query.get("base"),
                                          c.query.get("pool"))


async def _snapshot_export(c: Call) -> Any:
    op, chunks = await c.service.export_snapshot(c.params["name"], c.query.get("since"),
                                                 c.query.get("pool"))
    return Streamed(chunks, op.id)


async def _volume_import(c: Call) -> Any:
    assert c.stream is not None
    return await c.service.import_volume(c.query["name"], c.stream, pool=c.query.get("pool"),
                                         tenant=c.query.get("tenant"),
                                         force=c.query.get("force", False))


async def _operations(c: Call) -> Any:
    return c.service.list_operations()


async def _operation(c: Call) -> Any:
    return c.service.show_operation(c.params["id"])


async def _operation_cancel(c: Call) -> Any:
    return c.service.cancel_operation(c.params["id"])


async def _subsystems(c: Call) -> Any:
    return await c.service.list_exports_sliced()


async def _subsystem_create(c: Call) -> Any:
    b = c.body
    if c.cluster is not None:
        replicated = [await c.cluster.is_replicated(v) for v in b.get("volumes", [])]
        if any(replicated):
            if not all(replicated) or "pool" in b or "model" in b or "serial" in b:
                raise ControlError(ErrorCode.INVALID_ARGUMENT,
                                   "an export of replicated volumes serves only replicated "
                                   "volumes, and takes no pool, model or serial (every node "
                                   "derives the same ones)")
            return await c.cluster.admin.create_export(
                b["nqn"], b["volumes"], hosts=b.get("hosts", []),
                allow_any_host=b.get("allow_any_host", False))
    kwargs = {k: b[k] for k in ("model", "serial") if k in b}
    return await c.service.create_export(b["nqn"], volumes=b.get("volumes", []),
                                         hosts=b.get("hosts", []),
                                         allow_any_host=b.get("allow_any_host", False),
                                         pool=b.get("pool"), **kwargs)


async def _subsystem(c: Call) -> Any:
    return c.service.show_export(c.params["nqn"])


async def _refuse_cluster_export(c: Call, what: str) -> None:
    if c.cluster is not None and await c.cluster.is_cluster_export(c.params["nqn"]):
        raise ControlError(ErrorCode.FAILED_PRECONDITION,
                           f"{c.params['nqn']} is a cluster export: {what} is not supported "
                           f"yet in cluster mode")


async def _subsystem_set(c: Call) -> Any:
    if c.cluster is not None and await c.cluster.is_cluster_export(c.params["nqn"]):
        return await c.cluster.admin.change_export(
            c.params["nqn"], allow_any_host=c.body["allow_any_host"])
    return await c.service.set_export(c.params["nqn"], allow_any_host=c.body["allow_any_host"])


async def _subsystem_delete(c: Call) -> Any:
    if c.cluster is not None and await c.cluster.is_cluster_export(c.params["nqn"]):
        await c.cluster.admin.delete_export(c.params["nqn"], force=c.query.get("force", False))
        return
    await c.service.delete_export(c.params["nqn"], force=c.query.get("force", False))


async def _namespaces(c: Call) -> Any:
    return c.service.show_export(c.params["nqn"])["namespaces"]


async def _namespace_add(c: Call) -> Any:
    await _refuse_cluster_export(c, "adding a namespace")
    return await c.service.add_namespace(c.params["nqn"], c.body["volume"],
                                         pool=c.body.get("pool"), nsid=c.body.get("nsid"))


async def _namespace_remove(c: Call) -> Any:
    await _refuse_cluster_export(c, "removing a namespace")
    return await c.service.remove_namespace(c.params["nqn"], nsid=c.params["nsid"])


async def _namespace_remove_by_volume(c: Call) -> Any:
    await _refuse_cluster_export(c, "removing a namespace")
    if "volume" not in c.query:
        raise BadRequest("query parameter 'volume' is required (or DELETE "
                         ".../namespaces/{nsid})")
    return await c.service.remove_namespace(c.params["nqn"], volume=c.query["volume"],
                                            pool=c.query.get("pool"))


async def _hosts(c: Call) -> Any:
    return c.service.show_export(c.params["nqn"])["hosts"]


def _auth_request(body: dict[str, Any]) -> dhchap.AuthRequest | None:
    try:
        return dhchap.parse_request(body)
    except dhchap.DhchapSettingsError as e:
        raise BadRequest(str(e)) from None


async def _host_add(c: Call) -> Any:
    if c.cluster is not None and await c.cluster.is_cluster_export(c.params["nqn"]):
        return await c.cluster.hostkeys.add_host(c.params["nqn"], c.body["host_nqn"],
                                                 _auth_request(c.body))
    return await c.service.add_host(c.params["nqn"], c.body["host_nqn"],
                                    _auth_request(c.body))


async def _host_set(c: Call) -> Any:
    if c.cluster is not None and await c.cluster.is_cluster_export(c.params["nqn"]):
        return await c.cluster.hostkeys.set_host(
            c.params["nqn"], c.params["host_nqn"], _auth_request(c.body),
            remove_auth=c.body.get("remove_dhchap", False))
    return await c.service.set_host(c.params["nqn"], c.params["host_nqn"],
                                    _auth_request(c.body),
                                    remove_auth=c.body.get("remove_dhchap", False))


async def _host_remove(c: Call) -> Any:
    if c.cluster is not None and await c.cluster.is_cluster_export(c.params["nqn"]):
        return await c.cluster.admin.change_export(c.params["nqn"],
                                                   remove_host=c.params["host_nqn"])
    return await c.service.remove_host(c.params["nqn"], c.params["host_nqn"])


# Cluster mode: every node's listeners, and listeners asked of a node through etcd
# (sbstore.cluster.listeners); without ``node`` a listener is this node's own, as ever.

async def _listeners(c: Call) -> Any:
    if c.query.get("all_nodes"):
        return await _need_cluster(c).listeners.list_all()
    return c.service.list_listeners()


async def _listener_add(c: Call) -> Any:
    if c.body.get("node") is not None:
        return await _need_cluster(c).listeners.add(
            c.body["node"], port=c.body["port"], address=c.body.get("address"),
            interface=c.body.get("interface"))
    return await c.service.add_listener(port=c.body["port"], address=c.body.get("address"),
                                        interface=c.body.get("interface"))


async def _listener_remove(c: Call) -> Any:
    if c.query.get("node") is not None:
        await _need_cluster(c).listeners.remove(c.query["node"], c.params["id"])
        return
    await c.service.remove_listener(c.params["id"])


async def _listener_set(c: Call) -> Any:
    return await c.service.set_listener_ana(c.params["id"], c.body["ana_state"],
                                            c.body.get("export"))


# Cluster mode: tenants live in etcd (sbstore.cluster.tenants); every node applies them.

async def _tenants(c: Call) -> Any:
    if c.cluster is not None:
        return await c.cluster.tenants.list_all()
    return c.service.list_tenants()


async def _tenant_create(c: Call) -> Any:
    if c.cluster is not None:
        return await c.cluster.tenants.create(c.body["name"], _policy(c.body))
    return await c.service.create_tenant(c.body["name"], _policy(c.body))


async def _tenant(c: Call) -> Any:
    if c.cluster is not None:
        return await c.cluster.tenants.show(c.params["name"])
    return c.service.show_tenant(c.params["name"])


async def _tenant_set(c: Call) -> Any:
    if c.cluster is not None:
        return await c.cluster.tenants.set(c.params["name"], _policy(c.body))
    return await c.service.set_tenant(c.params["name"], _policy(c.body))


async def _tenant_delete(c: Call) -> Any:
    if c.cluster is not None:
        await c.cluster.tenants.delete(c.params["name"])
        return
    await c.service.delete_tenant(c.params["name"])


NQN_DESC = "an NVMe Qualified Name, e.g. nqn.2026-11.io.example:vol1"
_KEY_HASHES = tuple(dhchap.TRANSFORM_NAMES)
_DHCHAP_FIELDS = (
    Field("dhchap_key", "string", description="the host's secret, DHHC-1:hh:base64: (as "
          "nvme gen-dhchap-key writes)", secret=True),
    Field("generate_key", "boolean", description="sbstore generates the host's secret"),
    Field("key_hash", "string", description="transform hash of a generated secret",
          enum=_KEY_HASHES),
    Field("ctrl_key", "string", description="the controller's secret, for bidirectional "
          "authentication", secret=True),
    Field("generate_ctrl_key", "boolean", description="sbstore generates the controller's "
          "secret"),
    Field("ctrl_key_hash", "string", description="transform hash of a generated controller "
          "secret", enum=_KEY_HASHES),
    Field("dhchap_hashes", "array", description="hash functions allowed, in order of "
          "preference (sha256, sha384, sha512)"),
    Field("dhchap_dhgroups", "array", description="DH groups allowed, in order of preference "
          "(null, ffdhe2048 ... ffdhe8192)"),
)
ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/openapi.json", _openapi, "This document", "meta", "OpenAPI"),
    Route("GET", "/v1/status", _status, "The daemon's version, uptime and counts", "meta",
          "Status"),
    Route("GET", "/v1/cluster", _cluster, "Cluster mode: nodes (live, lease, peer address) "
          "and replicated volumes (replicas, primary, epoch, in-sync set, state, dirty and "
          "resync bytes)", "cluster", "ClusterStatus"),
    Route("POST", "/v1/cluster/volumes/{name}/replicas", _cluster_replicas,
          "Cluster mode: add a replica on a live node (it gets a full copy, then counts as in "
          "sync) and/or remove one (its node deletes its copy); both: replace a lost node",
          "cluster", "ClusterVolume",
          body=(Field("add", "string", description="a live node to hold a new replica"),
                Field("remove", "string", description="a node to take the replica off"))),
    Route("GET", "/v1/pools", _pools, "List pools with their capacity", "pools", "PoolList"),
    Route("GET", "/v1/pools/{pool}", _pool, "One pool", "pools", "Pool"),
    Route("GET", "/v1/volumes", _volumes, "List volumes (and snapshots: kind=snapshot)",
          "volumes", "VolumeList",
          query=(POOL_Q, Field("tenant", "string", description="only this tenant's"),
                 Field("kind", "string", enum=("volume", "snapshot"),
                       description="only volumes or only snapshots"))),
    Route("POST", "/v1/volumes", _volume_create, "Create a thin volume", "volumes", "Volume",
          201, body=(Field("name", "string", True, "unique within its pool"),
                     Field("size_bytes", "integer", True, "a multiple of block_size",
                           minimum=1),
                     Field("pool", "string"),
                     Field("block_size", "integer", description="512 or 4096 (default)"),
                     Field("tenant", "string", description="default: 'default'"),
                     Field("replicas", "integer", description="cluster mode: a replicated "
                           "volume with this many copies on distinct nodes (placed by free "
                           "space)", minimum=1, maximum=5))),
    Route("GET", "/v1/volumes/{name}", _volume, "One volume or snapshot", "volumes", "Volume",
          query=(POOL_Q,)),
    Route("PATCH", "/v1/volumes/{name}", _volume_set,
          "Move a volume to a tenant, set (merge) or clear its own limits", "volumes",
          "Volume", query=(POOL_Q,),
          body=(Field("tenant", "string"),
                Field("clear_limits", "boolean", description="drop the volume's own limits"),
                *POLICY_FIELDS)),
    Route("DELETE", "/v1/volumes/{name}", _volume_delete,
          "Delete a volume (exported: only with force=true, which removes it from its "
          "exports first)", "volumes", None, 204, query=(POOL_Q, FORCE_Q)),
    Route("POST", "/v1/volumes/{name}/resize", _volume_resize,
          "Grow a volume, or shrink it with force (connected hosts are told)", "volumes",
          "Volume", query=(POOL_Q,),
          body=(Field("size_bytes", "integer", True, minimum=1),
                Field("force", "boolean", description="allow shrinking: the data past the "
                      "new end is discarded"))),
    Route("POST", "/v1/volumes/{name}/rename", _volume_rename, "Rename a volume or snapshot",
          "volumes", "Volume", query=(POOL_Q,), body=(Field("new_name", "string", True),)),
    Route("POST", "/v1/volumes/{name}/revert", _volume_revert,
          "Revert a volume to a snapshot in its history (exported: only with force)",
          "snapshots", "Volume", query=(POOL_Q,),
          body=(Field("snapshot", "string", True), Field("force", "boolean"))),
    Route("POST", "/v1/volumes/{name}/inflate", _volume_inflate,
          "Copy every shared cluster so the volume (a clone) no longer depends on snapshots",
          "clones", "Volume", query=(POOL_Q,), body=()),
    Route("GET", "/v1/snapshots", _snapshots,
          "List snapshots (volume=V: those in V's history, newest first)", "snapshots",
          "VolumeList", query=(POOL_Q, Field("volume", "string"))),
    Route("POST", "/v1/snapshots", _snapshot_create, "Snapshot a volume (read-only, instant)",
          "snapshots", "Volume", 201,
          body=(Field("volume", "string", True), Field("name", "string", True),
                Field("pool", "string"))),
    Route("GET", "/v1/snapshots/{name}", _snapshot, "One snapshot", "snapshots", "Volume",
          query=(POOL_Q,)),
    Route("DELETE", "/v1/snapshots/{name}", _snapshot_delete,
          "Delete a snapshot (one child: folded into it; several: refused)", "snapshots", None,
          204, query=(POOL_Q, FORCE_Q)),
    Route("GET", "/v1/snapshot-groups", _snapshot_groups,
          "List snapshot groups (volumes snapshotted at one instant)", "snapshots",
          "SnapshotGroupList", query=(POOL_Q,)),
    Route("POST", "/v1/snapshot-groups", _snapshot_group_create,
          "Snapshot several volumes of one pool at one instant (one commit): volume V gets "
          "the snapshot V@NAME", "snapshots", "SnapshotGroup", 201,
          body=(Field("name", "string", True, "the group's name, unique within its pool"),
                Field("volumes", "array", True, "the volumes, all in one pool"),
                Field("pool", "string"))),
    Route("GET", "/v1/snapshot-groups/{name}", _snapshot_group, "One snapshot group",
          "snapshots", "SnapshotGroup", query=(POOL_Q,)),
    Route("DELETE", "/v1/snapshot-groups/{name}", _snapshot_group_delete,
          "Delete every snapshot of a group (exported ones: only with force=true)",
          "snapshots", None, 204, query=(POOL_Q, FORCE_Q)),
    Route("GET", "/v1/schedules", _schedules,
          "List snapshot schedules (what they snapshot, how often, how many they keep)",
          "snapshots", "ScheduleList"),
    Route("POST", "/v1/schedules", _schedule_add,
          "Snapshot a volume, or every volume of a tenant, every interval, keeping the newest "
          "ones (per volume); snapshots are named VOLUME@auto-<UTC time>", "snapshots",
          "Schedule", 201,
          body=(Field("every", "string", True, "the interval: 30m, 1h, 1d, 1w (at least 1m); "
                      "runs on its UTC boundaries"),
                Field("keep", "integer", True, "how many of its snapshots to keep per volume",
                      minimum=1),
                Field("volume", "string", description="the volume (or give tenant)"),
                Field("tenant", "string", description="every volume of this tenant"),
                Field("pool", "string"))),
    Route("DELETE", "/v1/schedules/{id}", _schedule_remove,
          "Remove a snapshot schedule (the snapshots it took stay)", "snapshots", None, 204,
          path_types=(("id", "integer"),)),
    Route("POST", "/v1/clones", _clone_create, "Clone a snapshot into a writable volume",
          "clones", "Volume", 201,
          body=(Field("snapshot", "string", True), Field("name", "string", True),
                Field("pool", "string"),
                Field("tenant", "string", description="default: the snapshot's tenant"),
                Field("local", "boolean", description=(
                    "cluster mode: a plain local volume cloned from this node's copy of a "
                    "replicated volume's snapshot (to inspect one copy); without it such a "
                    "clone is a replicated volume")))),
    Route("GET", "/v1/snapshots/{name}/diff", _snapshot_diff,
          "Extents where the snapshot differs from base (from the maps, no data read)",
          "snapshots", "Diff", query=(POOL_Q, Field("base", "string", description=(
              "the older snapshot (default: none, every mapped extent)")))),
    Route("GET", "/v1/snapshots/{name}/export", _snapshot_export,
          "The snapshot as an export stream (docs/stream-format.md), sent chunked; "
          "since=BASE: only what changed from snapshot BASE", "snapshots", "Stream",
          query=(POOL_Q, Field("since", "string", description="the base of an increment")),
          stream="response"),
    Route("POST", "/v1/volumes/import", _volume_import,
          "Import an export stream (the body, chunked or with a length) as volume name (an "
          "increment: into it); a truncated or corrupted stream leaves nothing behind",
          "volumes", "Volume", 201,
          query=(Field("name", "string", True), POOL_Q,
                 Field("tenant", "string", description="a new volume's tenant"),
                 Field("force", "boolean", description="an increment into an exported "
                       "volume")),
          stream="request"),
    Route("GET", "/v1/operations", _operations,
          "Long operations (inflate, export, import), running and recently finished",
          "operations", "OperationList"),
    Route("GET", "/v1/operations/{id}", _operation, "One operation's progress", "operations",
          "Operation", path_types=(("id", "integer"),)),
    Route("DELETE", "/v1/operations/{id}", _operation_cancel,
          "Cancel a running operation (an import leaves no volume; an inflate leaves the clone "
          "valid, partly inflated)", "operations", "Operation",
          path_types=(("id", "integer"),)),
    Route("GET", "/v1/subsystems", _subsystems, "List exports (NVMe subsystems)", "exports",
          "SubsystemList"),
    Route("POST", "/v1/subsystems", _subsystem_create,
          "Export volumes to hosts as a new subsystem", "exports", "Subsystem", 201,
          body=(Field("nqn", "string", True, NQN_DESC),
                Field("volumes", "array", description="volume names, namespaces 1, 2, ..."),
                Field("hosts", "array", description="host NQNs allowed to connect"),
                Field("allow_any_host", "boolean", description="admit every host"),
                Field("pool", "string", description="the pool of the volumes"),
                Field("model", "string"), Field("serial", "string"))),
    Route("GET", "/v1/subsystems/{nqn}", _subsystem, "One export", "exports", "Subsystem"),
    Route("PATCH", "/v1/subsystems/{nqn}", _subsystem_set, "Allow any host, or only the listed",
          "exports", "Subsystem", body=(Field("allow_any_host", "boolean", True),)),
    Route("DELETE", "/v1/subsystems/{nqn}", _subsystem_delete,
          "Delete an export (with namespaces: only with force=true); its hosts are "
          "disconnected", "exports", None, 204, query=(FORCE_Q,)),
    Route("GET", "/v1/subsystems/{nqn}/namespaces", _namespaces, "An export's namespaces",
          "exports", "NamespaceList"),
    Route("POST", "/v1/subsystems/{nqn}/namespaces", _namespace_add,
          "Add a volume as a namespace; connected hosts get an asynchronous event",
          "exports", "Subsystem", 201,
          body=(Field("volume", "string", True), Field("pool", "string"),
                Field("nsid", "integer", description="default: the lowest free",
                      minimum=1, maximum=1024))),
    Route("DELETE", "/v1/subsystems/{nqn}/namespaces", _namespace_remove_by_volume,
          "Remove the namespace of volume=V; connected hosts get an asynchronous event",
          "exports", "Subsystem", query=(Field("volume", "string"), POOL_Q)),
    Route("DELETE", "/v1/subsystems/{nqn}/namespaces/{nsid}", _namespace_remove,
          "Remove a namespace; connected hosts get an asynchronous event", "exports",
          "Subsystem", path_types=(("nsid", "integer"),)),
    Route("GET", "/v1/subsystems/{nqn}/hosts", _hosts, "Host NQNs allowed on an export",
          "exports", "HostList"),
    Route("POST", "/v1/subsystems/{nqn}/hosts", _host_add,
          "Allow a host, optionally with DH-HMAC-CHAP (a generated secret is returned once, "
          "under 'generated')", "exports", "Subsystem", 201,
          body=(Field("host_nqn", "string", True, NQN_DESC), *_DHCHAP_FIELDS)),
    Route("PATCH", "/v1/subsystems/{nqn}/hosts/{host_nqn}", _host_set,
          "Set (rotate) or remove a host's DH-HMAC-CHAP secrets; connected hosts stay "
          "connected", "exports", "Subsystem",
          body=(*_DHCHAP_FIELDS, Field("remove_dhchap", "boolean",
                                       description="the host no longer authenticates"))),
    Route("DELETE", "/v1/subsystems/{nqn}/hosts/{host_nqn}", _host_remove,
          "Disallow a host (its connections to the export are closed)", "exports",
          "Subsystem"),
    Route("GET", "/v1/listeners", _listeners, "List NVMe/TCP listeners", "listeners",
          "ListenerList", query=(Field("all_nodes", "boolean", description="cluster mode: "
                                       "every live node's, each with its node"),)),
    Route("POST", "/v1/listeners", _listener_add,
          "Listen on an address, or on every address of an interface (followed)",
          "listeners", "Listener", 201,
          body=(Field("address", "string", description="an IP address"),
                Field("interface", "string", description="an interface name, e.g. eth0"),
                Field("port", "integer", True, minimum=0, maximum=65535),
                Field("node", "string", description="cluster mode: ask this node for it "
                      "(through etcd)"))),
    Route("PATCH", "/v1/listeners/{id}", _listener_set,
          "Set the ANA state hosts see through this listener (a path), for every export or "
          "for one; connected hosts get an ANA change event", "listeners", "Listener",
          body=(Field("ana_state", "string", True,
                      "default removes the setting: an export then follows the listener's "
                      "state, a listener is optimized", enum=ANA_STATE_CHOICES),
                Field("export", "string", description="an export's NQN (default: every "
                      "export without a state of its own)")),
          path_types=(("id", "integer"),)),
    Route("DELETE", "/v1/listeners/{id}", _listener_remove,
          "Stop a listener (its hosts are disconnected)", "listeners", None, 204,
          query=(Field("node", "string", description="cluster mode: a listener asked of "
                       "this node through etcd"),),
          path_types=(("id", "integer"),)),
    Route("GET", "/v1/tenants", _tenants, "List tenants and their policies", "tenants",
          "TenantList"),
    Route("POST", "/v1/tenants", _tenant_create, "Create a tenant", "tenants", "Tenant", 201,
          body=(Field("name", "string", True), *POLICY_FIELDS)),
    Route("GET", "/v1/tenants/{name}", _tenant, "One tenant", "tenants", "Tenant"),
    Route("PATCH", "/v1/tenants/{name}", _tenant_set, "Change (merge) a tenant's policy",
          "tenants", "Tenant", body=POLICY_FIELDS),
    Route("DELETE", "/v1/tenants/{name}", _tenant_delete,
          "Delete a tenant that has no volumes", "tenants", None, 204),
)


# --- dispatch -----------------------------------------------------------------------------------

def _match(route: Route, segments: list[str]) -> dict[str, str] | None:
    pattern = route.segments
    if len(pattern) != len(segments):
        return None
    params = {}
    for want, got in zip(pattern, segments, strict=True):
        if want.startswith("{"):
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params


def _decode_segments(path: str) -> list[str]:
    raw = path.strip("/").split("/")
    out = []
    for seg in raw:
        try:
            text = unquote(seg, errors="strict")
        except UnicodeDecodeError:
            raise BadRequest("the path is not valid UTF-8 once decoded") from None
        if not text:
            raise BadRequest("empty path segment")
        out.append(text)
    return out


def _check_query(route: Route, query: dict[str, list[str]]) -> dict[str, Any]:
    known = {f.name: f for f in route.query}
    out = {}
    for name, values in query.items():
        if name not in known:
            allowed = ", ".join(known) or "none"
            raise BadRequest(f"unknown query parameter {name!r} (accepted: {allowed})")
        if len(values) != 1:
            raise BadRequest(f"query parameter {name!r} is given {len(values)} times")
        out[name] = known[name].from_text(values[0])
    return out


def _check_body(route: Route, request: Request) -> dict[str, Any]:
    if route.body is None:
        if request.body.strip():
            raise BadRequest(f"{route.method} {route.path} takes no body")
        return {}
    ctype = (request.header("content-type") or "application/json").split(";")[0].strip()
    if request.body.strip() and ctype.lower() != "application/json":
        raise BadRequest(f"the body must be application/json, not {ctype}")
    if not request.body.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    known = {f.name: f for f in route.body}
    for name, value in data.items():
        if name not in known:
            raise BadRequest(f"unknown field {name!r} (accepted: "
                             f"{', '.join(known) or 'none'})")
        if value is None and not known[name].required:
            continue
        known[name].check(value, "field")
    for f in route.body:
        if f.required and data.get(f.name) is None:
            raise BadRequest(f"field {f.name!r} is required")
    return {k: v for k, v in data.items() if v is not None}


class Api:
    """Routes requests to the service. ``await api.handle(request)`` -> Response."""

    def __init__(self, service: ControlService, *, token: str | None = None,
                 cluster: Any = None) -> None:
        self.service = service
        self.token = token
        self.cluster = cluster

    async def handle(self, request: Request, *, need_token: bool = False) -> Response:
        if request.method != "GET":
            return await self._handle(request, need_token)
        # A GET's answer (a listing of 1,000 volumes) is built and encoded across loop turns:
        # no collection while it lives (sbstore.collector), from the handler to the encoding.
        with collector_paused():
            return await self._handle(request, need_token)

    async def _handle(self, request: Request, need_token: bool) -> Response:
        if need_token and not self._authorized(request):
            return error_response(401, "this API needs 'Authorization: Bearer TOKEN' (the "
                                       "token is in the daemon's [api] token_file)",
                                  headers=[("WWW-Authenticate", 'Bearer realm="sbstore"')])
        try:
            segments = _decode_segments(request.path)
            matched = [(r, p) for r in ROUTES if (p := _match(r, segments)) is not None]
            if not matched:
                return error_response(404, f"no such API path: {request.path} (see GET "
                                           f"/v1/openapi.json)")
            for route, params in matched:
                if route.method == request.method:
                    break
            else:
                allowed = ", ".join(sorted({r.method for r, _ in matched}))
                return error_response(405, f"{request.method} is not allowed on "
                                           f"{request.path} (allowed: {allowed})",
                                      headers=[("Allow", allowed)])
            for name, kind in route.path_types:
                if kind == "integer":
                    if not params[name].isdigit() or len(params[name]) > 10:
                        raise BadRequest(f"{name} in the path must be a number")
                    params[name] = int(params[name])  # type: ignore[assignment]
            for field_ in route.query:
                if field_.required and field_.name not in request.query:
                    raise BadRequest(f"query parameter {field_.name!r} is required")
            body = {} if route.stream == "request" else _check_body(route, request)
            call = Call(self.service, dict(params), _check_query(route, request.query), body,
                        request.stream if route.stream == "request" else None, self.cluster)
            result = await route.handler(call)
        except BadRequest as exc:
            return error_response(400, str(exc), "INVALID_ARGUMENT")
        except ControlError as exc:
            if exc.code is ErrorCode.INTERNAL:
                log.error("%s %s: %s", request.method, request.path, exc.message)
            return error_response(STATUS_OF[exc.code], exc.message, exc.code.value)
        if route.response is None:
            return Response(204)
        if isinstance(result, Streamed):
            return Response(route.status, content_type="application/octet-stream",
                            headers=[("X-Sbstore-Operation", str(result.operation))],
                            stream=result.chunks)
        return await json_response_sliced(route.status, result)

    def streams_body(self, request: Request) -> bool:
        """Is ``request`` one whose body its route reads as a stream (an import)?"""
        try:
            segments = _decode_segments(request.path)
        except BadRequest:
            return False
        return any(r.stream == "request" and r.method == request.method
                   and _match(r, segments) is not None for r in ROUTES)

    def _authorized(self, request: Request) -> bool:
        if not self.token:
            return False
        header = request.header("authorization") or ""
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                  self.token.encode())


class ApiServer:
    """The API on a unix socket and/or TCP (TCP needs the token)."""

    def __init__(self, service: ControlService, *, token: str | None = None,
                 cluster: Any = None) -> None:
        self.api = Api(service, token=token, cluster=cluster)
        self._unix = HttpServer(self.api.handle, stream_body=self.api.streams_body)
        self._tcp = HttpServer(lambda r: self.api.handle(r, need_token=True),
                               stream_body=self.api.streams_body)
        self.socket_path: str | None = None
        self.tcp_address: tuple[str, int] | None = None

    async def start(self, *, socket_path: str | None = None,
                    tcp: tuple[str, int] | None = None) -> None:
        if socket_path is not None:
            await self._unix.start_unix(socket_path)
            self.socket_path = socket_path
        if tcp is not None:
            if not self.api.token:
                raise ValueError("the API on TCP needs a token")
            self.tcp_address = await self._tcp.start_tcp(*tcp)

    async def close(self) -> None:
        await self._unix.close()
        await self._tcp.close()


# --- OpenAPI ------------------------------------------------------------------------------------

def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required)}


_S, _I, _B, _N = ({"type": "string"}, {"type": "integer"}, {"type": "boolean"},
                  {"type": "number"})
_NULLABLE_S = {"type": "string", "nullable": True}
_NULLABLE_I = {"type": "integer", "nullable": True}
_POLICY = _obj({f.name: f.schema() for f in POLICY_FIELDS})
SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _obj({"code": {"type": "string", "enum": [
        *[c.value for c in ErrorCode], "BAD_REQUEST", "UNAUTHENTICATED", "NOT_FOUND",
        "METHOD_NOT_ALLOWED", "LENGTH_REQUIRED", "PAYLOAD_TOO_LARGE", "HEADERS_TOO_LARGE"]},
        "message": _S}, ("code", "message"))}, ("error",)),
    "OpenAPI": {"type": "object", "description": "this document"},
    "Status": _obj({k: _I for k in ("pools", "volumes", "snapshots", "exports", "namespaces",
                                    "listeners", "tenants", "connections", "controllers")}
                   | {"version": _S, "uptime_s": _N}),
    "Pool": _obj({"name": _S, "path": _S, "uuid": _S, "cluster_size": _I,
                  "capacity_bytes": _I, "allocated_bytes": _I, "free_bytes": _I,
                  "metadata_bytes": _I, "metadata_used_bytes": _I, "volumes": _I,
                  "snapshots": _I, "generation": _I, "io_engine": _S, "io_reason": _S,
                  "io_direct": {"type": "boolean"},
                  "io_stats": {"type": "object", "additionalProperties": _I,
                               "description": "the data I/O engine's counters (reads, "
                               "writes, submit_calls, inflight, ...)"}}),
    "Policy": _POLICY,
    "Volume": _obj({"name": _S, "pool": _S, "id": _I, "uuid": _S,
                    "kind": {"type": "string", "enum": ["volume", "snapshot"]},
                    "size_bytes": _I, "block_size": _I, "allocated_bytes": _I,
                    "parent": _NULLABLE_S, "children": {"type": "array", "items": _S},
                    "created": _S, "read_only": _B, "tenant": _S,
                    "limits": {"allOf": [{"$ref": "#/components/schemas/Policy"}],
                               "nullable": True},
                    "exports": {"type": "array",
                                "items": _obj({"nqn": _S, "nsid": _I})},
                    "group": {"type": "string", "nullable": True,
                              "description": "the snapshot group it was taken in"}}),
    "Schedule": _obj({"id": _I, "every": _S, "every_s": _I, "keep": _I, "pool": _NULLABLE_S,
                      "volume": _NULLABLE_S, "tenant": _NULLABLE_S, "last_run": _NULLABLE_S,
                      "snapshots": {"type": "array", "items": _S,
                                    "description": "the snapshots it took and keeps"}}),
    "SnapshotGroup": _obj({"name": _S, "pool": _S, "created": _S,
                           "snapshots": {"type": "array",
                                         "items": {"$ref": "#/components/schemas/Volume"}}}),
    "Namespace": _obj({"nsid": _I, "pool": _S, "uuid": _S, "volume": _NULLABLE_S,
                       "size_bytes": _NULLABLE_I, "block_size": _NULLABLE_I,
                       "read_only": {"type": "boolean", "nullable": True},
                       "state": {"type": "string", "enum": ["serving", "missing"]}}),
    "Subsystem": _obj({"nqn": _S, "serial": _S, "model": _S, "allow_any_host": _B,
                       "hosts": {"type": "array", "items": _S},
                       "host_auth": {"type": "object", "description": (
                           "per host NQN: DH-HMAC-CHAP settings (never the secrets)"),
                           "additionalProperties": {"type": "object"}},
                       "generated": {"type": "object", "description": (
                           "secrets generated by this request, shown this once"),
                           "additionalProperties": _S},
                       "namespaces": {"type": "array",
                                      "items": {"$ref": "#/components/schemas/Namespace"}},
                       "controllers": _I}),
    "Listener": _obj({"id": _I, "source": {"type": "string", "enum": ["config", "api"]},
                      "address": _NULLABLE_S, "interface": _NULLABLE_S, "port": _I,
                      "state": _S,
                      "bound": {"type": "array", "items": _obj(
                          {"address": _S, "port": _I, "portid": _I})},
                      "errors": {"type": "array", "items": _obj(
                          {"address": _S, "error": _S})},
                      "ana_state": {"type": "string", "enum": list(STATE_NAMES),
                                    "description": "the ANA state shown for every export "
                                                   "without one of its own"},
                      "ana_exports": {"type": "object", "additionalProperties": _S,
                                      "description": "export NQN -> its ANA state here"}}),
    "Tenant": _obj({"name": _S, "policy": {"$ref": "#/components/schemas/Policy"},
                    "volumes": {"type": "array", "items": _S,
                                "description": "pool/name of each volume"}}),
    "HostList": {"type": "array", "items": _S},
    "ClusterVolume": _obj({
        "name": _S, "uuid": _S, "size_bytes": _I, "block_size": _I, "tenant": _S,
        "replicas": {"type": "array", "items": _S}, "primary": _NULLABLE_S,
        "epoch": _NULLABLE_I, "in_sync": {"type": "array", "items": _S},
        "state": {"type": "string", "enum": ["healthy", "degraded", "resyncing", "no primary"]},
        "exports": {"type": "array", "items": _S},
        "dirty_bytes": {"type": "object", "nullable": True, "additionalProperties": _I,
                        "description": "per missing replica (known on the primary)"},
        "resyncing": {"type": "array", "items": _S},
        "last_resync_bytes": {"type": "object", "additionalProperties": _I}}),
    "ClusterStatus": _obj({
        "node": _S, "revision": _I,
        "nodes": {"type": "array", "items": _obj({
            "name": _S, "live": _B, "self": _B, "peer_address": _NULLABLE_S,
            "listeners": {"type": "array", "items": _S}, "free_bytes": _NULLABLE_I,
            "lease_left_s": {"type": "number", "nullable": True}})},
        "volumes": {"type": "array", "items": {"$ref": "#/components/schemas/ClusterVolume"}},
        "exports": {"type": "array", "items": {"type": "object"}},
        "local": {"type": "object", "description": "this node's replicas: role, epoch, pool, "
                                                   "resync_bytes_total"}}),
    "Diff": _obj({"pool": _S, "snapshot": _S, "base": _NULLABLE_S, "size_bytes": _I,
                  "data_bytes": _I, "zero_bytes": _I,
                  "extents": {"type": "array", "items": _obj(
                      {"offset": _I, "length": _I,
                       "kind": {"type": "string", "enum": ["data", "zero"]}})}}),
    "Stream": {"type": "string", "format": "binary",
               "description": "an export stream (docs/stream-format.md)"},
    "Operation": _obj({"id": _I, "kind": {"type": "string",
                                          "enum": ["inflate", "export", "import"]},
                       "pool": _S, "target": _S,
                       "state": {"type": "string",
                                 "enum": ["running", "done", "failed", "cancelled"]},
                       "unit": {"type": "string", "enum": ["bytes", "clusters"]},
                       "done": _I, "total": _NULLABLE_I,
                       "percent": {"type": "number", "nullable": True},
                       "started": _S, "finished": _NULLABLE_S, "elapsed_s": _N,
                       "error": _NULLABLE_S, "cancel_requested": _B}),
}
for _name in ("Pool", "Volume", "Subsystem", "Namespace", "Listener", "Tenant", "Operation",
              "SnapshotGroup", "Schedule"):
    SCHEMAS[f"{_name}List"] = {"type": "array", "items": {"$ref": f"#/components/schemas/{_name}"}}
_ERROR_STATUSES = {"400": "malformed request", "404": "not found", "409": "conflicts with the "
                   "state", "422": "refused value", "500": "internal error"}


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in ROUTES:
        op: dict[str, Any] = {"summary": route.summary, "operationId": route.operation_id,
                              "tags": [route.tag]}
        params = []
        types = dict(route.path_types)
        for seg in route.segments:
            if seg.startswith("{"):
                name = seg[1:-1]
                params.append({"name": name, "in": "path", "required": True,
                               "schema": {"type": types.get(name, "string")}})
        for f in route.query:
            params.append({"name": f.name, "in": "query", "required": f.required,
                           "schema": f.schema()})
        if params:
            op["parameters"] = params
        if route.body:
            op["requestBody"] = {"required": any(f.required for f in route.body), "content": {
                "application/json": {"schema": {
                    "type": "object", "additionalProperties": False,
                    "properties": {f.name: f.schema() for f in route.body},
                    "required": [f.name for f in route.body if f.required]}}}}
        if route.stream == "request":
            op["requestBody"] = {"required": True, "content": {"application/octet-stream": {
                "schema": {"$ref": "#/components/schemas/Stream"}}}}
        responses: dict[str, Any] = {}
        if route.stream == "response":
            responses[str(route.status)] = {"description": "the stream, chunked", "content": {
                "application/octet-stream": {"schema": {
                    "$ref": f"#/components/schemas/{route.response}"}}}}
        elif route.response is None:
            responses[str(route.status)] = {"description": "done"}
        else:
            responses[str(route.status)] = {"description": "OK", "content": {
                "application/json": {"schema": {
                    "$ref": f"#/components/schemas/{route.response}"}}}}
        for status, desc in _ERROR_STATUSES.items():
            responses[status] = {"description": desc, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}}
        op["responses"] = responses
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "sbstore admin API", "version": sbstore.__version__,
                 "description": "Pools, volumes, snapshots, clones, exports (NVMe subsystems) "
                                "with their namespaces and allowed hosts, listeners and "
                                "tenants of one sbstore daemon. Errors: {\"error\": {\"code\","
                                " \"message\"}}."},
        "servers": [{"url": "http://localhost"}],
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "required on TCP; the unix socket needs none"}}},
    }
