"""DH-HMAC-CHAP on cluster exports: a host's secrets live in ``hostkeys/<nqn>/<hostnqn>`` and
every node serving the export applies them, so the host authenticates on every path.

Why a key per host rather than a field of ``exports/<nqn>``: the export record is shown
everywhere (``cluster status``, export listings, the admin's answers), and a separate kind of
key is what keeps the secrets out of all of those by construction rather than by every
renderer remembering to strip them; a rotation rewrites one host's key without racing with
host-list changes on the export; and etcd's own access control grants by key prefix, so a
deployment can give ``hostkeys/`` to the daemons' etcd user only.

Rules of this module:
- The value is the control module's :class:`HostAuthRecord` (the secrets in DHHC-1 text, the
  hash and group names); it is checked as it is parsed, and errors never quote a secret.
- What leaves this module for people is :func:`sbstore.control.dhchap.public_view`: whether a
  secret is set and its transform hash, never the secret. A secret generated on request is
  returned once, by that request (as in single-node mode).
- A host's key is written in the same txn as the export's host list (added together, removed
  together): a node that sees the host allowed sees its secret in the same read, and adds
  both at once through the control service, so no node ever admits the host without it.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from sbstore.cluster.etcd import Compare, EtcdError, Op
from sbstore.cluster.keys import BadRecord
from sbstore.control import dhchap
from sbstore.control.service import ControlError, ControlService, ErrorCode, check_nqn, invalid
from sbstore.control.state import HostAuthRecord
from target.auth.secret import SecretError

log = logging.getLogger("sbstore.cluster.hostkeys")

WRITE_TRIES = 5
HostKeys = Mapping[tuple[str, str], HostAuthRecord]  # (nqn, host) -> record


def to_json(rec: HostAuthRecord) -> str:
    return json.dumps({"nqn": rec.subsystem, "host": rec.host_nqn, "dhchap_key": rec.dhchap_key,
                       "ctrl_key": rec.ctrl_key, "hashes": list(rec.hashes),
                       "dhgroups": list(rec.dhgroups)})


def from_json(data: Any, key: str) -> HostAuthRecord:
    fields = ("nqn", "host", "dhchap_key")
    if not isinstance(data, dict) or not all(isinstance(data.get(f), str) for f in fields) \
            or not isinstance(data.get("ctrl_key"), (str, type(None))) \
            or not all(isinstance(data.get(f), list) for f in ("hashes", "dhgroups")):
        raise BadRecord(f"{key}: not a host key record")
    rec = HostAuthRecord(data["nqn"], data["host"], data["dhchap_key"], data["ctrl_key"],
                         tuple(data["hashes"]), tuple(data["dhgroups"]))
    try:
        dhchap.credentials(rec)  # parses both secrets and every name
    except (SecretError, KeyError, TypeError):
        raise BadRecord(f"{key}: a secret, hash or group name is not valid") from None
    return rec


def auth_request(rec: HostAuthRecord | None) -> dhchap.AuthRequest | None:
    """The control service's request that sets exactly ``rec``'s settings on a node."""
    if rec is None:
        return None
    ctrl = dhchap.SecretRequest(rec.ctrl_key) if rec.ctrl_key is not None else None
    return dhchap.AuthRequest(dhchap.SecretRequest(rec.dhchap_key), ctrl, list(rec.hashes),
                              list(rec.dhgroups))


def public(keys: HostKeys, nqn: str) -> dict[str, Any]:
    """The export's ``host_auth`` as listings show it (no secrets)."""
    return {host: dhchap.public_view(rec) for (n, host), rec in sorted(keys.items()) if n == nqn}


def build(nqn: str, host: str, auth: dhchap.AuthRequest) -> tuple[HostAuthRecord,
                                                                   dict[str, str]]:
    """A checked record (and the secrets generated for it, to return once)."""
    try:
        return dhchap.build_record(nqn, host, auth.host, auth.ctrl, auth.hashes, auth.dhgroups)
    except dhchap.DhchapSettingsError as exc:
        raise invalid(str(exc)) from None


class HostKeyAdmin:
    """The host routes on a cluster export, on any node (``admin``: the ClusterAdmin)."""

    def __init__(self, admin: Any) -> None:
        self.admin = admin
        self.keys = admin.keys

    async def add_host(self, nqn: str, host: str,
                       auth: dhchap.AuthRequest | None) -> dict[str, Any]:
        check_nqn(host, "host NQN")
        if auth is None:
            return dict(await self.admin.change_export(nqn, add_host=host))
        rec, generated = build(nqn, host, auth)
        info = await self.admin.change_export(
            nqn, add_host=host, extra_ops=[Op.put(self.keys.hostkey(nqn, host), to_json(rec))])
        return _with_generated(info, generated)

    async def set_host(self, nqn: str, host: str, auth: dhchap.AuthRequest | None,
                       *, remove_auth: bool = False) -> dict[str, Any]:
        """Set (rotate) or remove a host's secrets; every node serving the export follows.
        Connected hosts stay connected: the new secret counts at their next authentication."""
        if (auth is None) == (not remove_auth):
            raise invalid("give new DH-HMAC-CHAP settings or remove them (one of the two)")
        rec, generated = build(nqn, host, auth) if auth is not None else (None, {})
        ekey, hkey = self.keys.export(nqn), self.keys.hostkey(nqn, host)
        for _ in range(WRITE_TRIES):
            view = await self.admin.view()
            export = view.exports.get(nqn)
            kv = await self.admin._get(ekey)
            if export is None or kv is None:
                raise ControlError(ErrorCode.NOT_FOUND, f"no cluster export {nqn!r}")
            if host not in export.hosts:
                raise ControlError(ErrorCode.NOT_FOUND, f"{host} is not among {nqn}'s hosts")
            op = Op.put(hkey, to_json(rec)) if rec is not None else Op.delete(hkey)
            try:  # guarded by the export: the host is still allowed when the key is written
                result = await self.admin.client.txn(
                    [Compare.mod_revision(ekey, "==", kv.mod_revision)], [op])
            except EtcdError as exc:
                raise ControlError(ErrorCode.FAILED_PRECONDITION, f"the cluster's etcd is "
                                   f"unreachable or refused the change: {exc}") from None
            if result.succeeded:
                log.info("cluster export %s: DH-HMAC-CHAP settings of %s %s", nqn, host,
                         "removed" if rec is None else "set")
                info = self.admin._export_info(export, await self.admin.view())
                return _with_generated(info, generated)
        raise ControlError(ErrorCode.BUSY, f"export {nqn!r} kept changing; try again")


def _with_generated(info: dict[str, Any], generated: dict[str, str]) -> dict[str, Any]:
    return {**info, "generated": generated} if generated else info


async def sync(service: ControlService, nqn: str, hosts: tuple[str, ...],
               keys: HostKeys) -> None:
    """On a node serving ``nqn``: every allowed host's local secrets match etcd's (set,
    rotated or removed through the control service)."""
    local = {r.host_nqn: r for r in service.state.host_auth() if r.subsystem == nqn}
    for host in sorted(hosts):
        want, have = keys.get((nqn, host)), local.get(host)
        if want == have:
            continue
        if want is None:
            await service.set_host(nqn, host, None, remove_auth=True)
        else:
            await service.set_host(nqn, host, auth_request(want))
        log.info("cluster: export %s: DH-HMAC-CHAP settings of %s %s here", nqn, host,
                 "removed" if want is None else "applied")
