"""Tenants in cluster mode: ``tenants/<name>`` holds a tenant's QoS policy, and every node
applies it to its own state and QoS queues (docs/cluster.md, "Keys").

Rules of this module:
- The admin side (:class:`TenantAdmin`) validates and writes etcd only; the node side
  (:class:`TenantSync`) changes the local state only through the control service's own tenant
  operations, so the QoS queues hear of a change exactly as they do in single-node mode.
- The ``default`` tenant always exists. It has a record only once an admin sets its policy;
  until then each node keeps its own default policy (a cluster that never set it behaves as
  its nodes did before).
- A tenant used by a replicated volume cannot be deleted. Creating a volume rewrites its
  tenant's record unchanged in the same txn (``touch``), and deleting a tenant is guarded by
  the record's revision, so a volume created meanwhile makes the delete fail instead of
  leaving a volume under a tenant that no longer exists.
- The node side deletes a local tenant only when etcd dropped it while this node watched (a
  local tenant etcd never listed is not the cluster's business), and the control service
  refuses that while a local volume still uses it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sbstore.cluster.etcd import Compare, EtcdClient, EtcdError, KeyValue, Op
from sbstore.cluster.keys import BadRecord, Keys, VolumeSpec
from sbstore.config import QosPolicy, check_name
# _policy_from: the one place a policy request is checked and merged, used as the API uses it
from sbstore.control.service import ControlError, ControlService, ErrorCode, _policy_from, invalid
from sbstore.control.state import DEFAULT_TENANT

log = logging.getLogger("sbstore.cluster.tenants")

WRITE_TRIES = 5  # read-modify-write rounds lost to concurrent changes before giving up


@dataclass(frozen=True)
class TenantSpec:
    """``tenants/<name>``: ``{"name", "policy": {iops, ..., burst_s, weight}}``."""

    name: str
    policy: QosPolicy

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "policy": self.policy.as_dict()})

    @classmethod
    def from_json(cls, data: Any, key: str) -> TenantSpec:
        if not isinstance(data, dict) or not isinstance(data.get("name"), str) \
                or not isinstance(data.get("policy"), dict):
            raise BadRecord(f"{key}: not a tenant record (name, policy)")
        try:
            return cls(data["name"], QosPolicy(**data["policy"]))
        except (TypeError, ValueError) as exc:
            raise BadRecord(f"{key}: bad policy: {exc}") from None


def _unavailable(exc: EtcdError) -> ControlError:
    return ControlError(ErrorCode.FAILED_PRECONDITION, f"the cluster's etcd is unreachable or "
                        f"refused the change: {exc}")


class TenantAdmin:
    """The tenant API in cluster mode, on any node. ``local`` is this node's control service:
    what it has applied is shown beside etcd's record (``here``)."""

    def __init__(self, client: EtcdClient, keys: Keys, view: Any,
                 local: ControlService | None = None) -> None:
        self.client = client
        self.keys = keys
        self._view = view  # async () -> ClusterView (ClusterAdmin.view)
        self.local = local

    async def list_all(self) -> list[dict[str, Any]]:
        view = await self._view()
        names = set(view.tenants) | {DEFAULT_TENANT}
        return [self._info(name, view) for name in sorted(names)]

    async def show(self, name: str) -> dict[str, Any]:
        view = await self._view()
        if name != DEFAULT_TENANT and name not in view.tenants:
            raise ControlError(ErrorCode.NOT_FOUND, f"no tenant named {name!r}")
        return self._info(name, view)

    async def create(self, name: str, policy: Mapping[str, Any]) -> dict[str, Any]:
        name = self._name(name)
        spec = TenantSpec(name, _policy_from(policy))
        key = self.keys.tenant(name)
        if name == DEFAULT_TENANT:
            raise ControlError(ErrorCode.ALREADY_EXISTS, f"tenant {name!r} exists")
        result = await self._txn([Compare.create_revision(key, "==", 0)],
                                 [Op.put(key, spec.to_json())])
        if not result.succeeded:
            raise ControlError(ErrorCode.ALREADY_EXISTS, f"tenant {name!r} exists")
        return self._info(name, await self._view())

    async def set(self, name: str, policy: Mapping[str, Any]) -> dict[str, Any]:
        if not policy:
            raise invalid("nothing to change: give at least one policy field (iops, "
                          "read_iops, write_iops, bps, read_bps, write_bps, burst_s, weight)")
        key = self.keys.tenant(name)
        for _ in range(WRITE_TRIES):
            kv = await self._get(key)
            if kv is None and name != DEFAULT_TENANT:
                raise ControlError(ErrorCode.NOT_FOUND, f"no tenant named {name!r}")
            # default without a record: the fields given, over the built-in defaults
            base = TenantSpec.from_json(kv.json(), key).policy if kv else None
            spec = TenantSpec(name, _policy_from(policy, base))
            guard = Compare.mod_revision(key, "==", kv.mod_revision) if kv \
                else Compare.create_revision(key, "==", 0)
            if (await self._txn([guard], [Op.put(key, spec.to_json())])).succeeded:
                return self._info(name, await self._view())
        raise ControlError(ErrorCode.BUSY, f"tenant {name!r} kept changing; try again")

    async def delete(self, name: str) -> None:
        if name == DEFAULT_TENANT:
            raise ControlError(ErrorCode.FAILED_PRECONDITION,
                               "the default tenant cannot be deleted")
        key = self.keys.tenant(name)
        for _ in range(WRITE_TRIES):
            view = await self._view()
            kv = await self._get(key)
            if kv is None:
                raise ControlError(ErrorCode.NOT_FOUND, f"no tenant named {name!r}")
            users = self._volumes(name, view)
            if users:
                shown = ", ".join(users[:5]) + (" ..." if len(users) > 5 else "")
                raise ControlError(ErrorCode.FAILED_PRECONDITION,
                                   f"tenant {name!r} is used by {len(users)} replicated "
                                   f"volume(s) ({shown}): move them (sbstore volume set VOL "
                                   f"--tenant OTHER) or delete them first")
            if (await self._txn([Compare.mod_revision(key, "==", kv.mod_revision)],
                                [Op.delete(key)])).succeeded:
                return
        raise ControlError(ErrorCode.BUSY, f"tenant {name!r} kept changing; try again")

    async def touch(self, name: str) -> tuple[list[Compare], list[Op]]:
        """The guard and the op a txn that puts a volume under tenant ``name`` adds: the
        tenant exists now and is rewritten unchanged (so a concurrent delete fails)."""
        if name == DEFAULT_TENANT:
            return [], []
        key = self.keys.tenant(name)
        kv = await self._get(key)
        if kv is None:
            raise ControlError(ErrorCode.NOT_FOUND, f"no tenant named {name!r} (create it "
                               f"first: sbstore tenant create {name})")
        return [Compare.mod_revision(key, "==", kv.mod_revision)], [Op.put(key, kv.value)]

    async def move_volume(self, volume: str, tenant: str) -> dict[str, Any]:
        """Put a replicated volume (every copy) under another tenant."""
        tenant = self._name(tenant)
        vkey = self.keys.volume(volume)
        for _ in range(WRITE_TRIES):
            kv = await self._get(vkey)
            if kv is None:
                raise ControlError(ErrorCode.NOT_FOUND, f"no replicated volume {volume!r}")
            spec = VolumeSpec.from_json(kv.json(), vkey)
            guard, touch = await self.touch(tenant)
            new = dataclasses.replace(spec, tenant=tenant)
            if (await self._txn([Compare.mod_revision(vkey, "==", kv.mod_revision), *guard],
                                [Op.put(vkey, new.to_json()), *touch])).succeeded:
                return {"name": volume, "tenant": tenant, "replicas": list(new.replicas),
                        "uuid": new.uuid, "size_bytes": new.size_bytes}
        raise ControlError(ErrorCode.BUSY, f"volume {volume!r} kept changing; try again")

    def _info(self, name: str, view: Any) -> dict[str, Any]:
        spec = view.tenants.get(name)
        here = None
        if self.local is not None:
            try:
                here = self.local.show_tenant(name)
            except ControlError:
                pass  # not applied on this node (yet)
        return {"name": name,
                "policy": spec.policy.as_dict() if spec else
                (here["policy"] if here and name == DEFAULT_TENANT else QosPolicy().as_dict()),
                "volumes": self._volumes(name, view), "here": here}

    @staticmethod
    def _volumes(name: str, view: Any) -> list[str]:
        return sorted(v.name for v in view.volumes.values() if v.tenant == name)

    @staticmethod
    def _name(name: object) -> str:
        try:
            return check_name("tenant", name)
        except ValueError as exc:
            raise invalid(str(exc)) from None

    async def _get(self, key: str) -> KeyValue | None:
        try:
            return await self.client.get(key)
        except EtcdError as exc:
            raise _unavailable(exc) from None

    async def _txn(self, compare: list[Compare], ops: list[Op]) -> Any:
        try:
            return await self.client.txn(compare, ops)
        except EtcdError as exc:
            raise _unavailable(exc) from None


class TenantSync:
    """The node side: make this node's tenants match etcd's, idempotently, before its
    replicas are created (a replica is created under its volume's tenant)."""

    def __init__(self, service: ControlService) -> None:
        self.service = service
        self.known: set[str] = set()  # tenants seen in etcd while this node watched

    async def reconcile(self, tenants: Mapping[str, TenantSpec]) -> None:
        local = {t["name"]: t["policy"] for t in self.service.list_tenants()}
        for name, spec in sorted(tenants.items()):
            want = spec.policy.as_dict()
            if name not in local:
                await self.service.create_tenant(name, want)
                log.info("cluster: tenant %s created here", name)
            elif local[name] != want:
                await self.service.set_tenant(name, want)
                log.info("cluster: tenant %s: policy changed here", name)
        self.known |= set(tenants)
        for name in sorted(self.known - set(tenants)):
            self.known.discard(name)
            if name in local and name != DEFAULT_TENANT:
                # refused (ControlError) while a local volume still uses it
                await self.service.delete_tenant(name)
                log.info("cluster: tenant %s deleted here", name)

    async def place(self, volume: str, pool: str, tenant: str) -> None:
        """Put this node's copy of a replicated volume under the volume's tenant."""
        if tenant not in {t["name"] for t in self.service.list_tenants()}:
            return  # not applied here yet (a bad record): the next pass tries again
        if self.service.show_volume(volume, pool)["tenant"] != tenant:
            await self.service.set_volume(volume, pool, tenant=tenant)
            log.info("cluster: volume %s: local copy moved to tenant %s", volume, tenant)
