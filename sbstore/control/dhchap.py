"""A host's DH-HMAC-CHAP settings as the control module takes, stores and shows them.

Rules:
- In: a secret in the DHHC-1 text form (``nvme gen-dhchap-key``'s) or ``generate`` (sbstore
  makes one, with the transform hash asked for), for the host and optionally for the
  controller (bidirectional authentication); hash functions and DH groups by name, in order
  of preference. Everything is checked here, before anything is stored.
- Out: what listings show is :func:`public_view`: whether a secret is set and its transform
  hash id, never the secret nor anything derived from it. The secret is returned once, by the request that
  generated it (the admin must hand it to the host); a secret given by the admin is never
  echoed back.
- Errors name the field, never the value.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sbstore.control.state import HostAuthRecord
from target.auth.responder import DEFAULT_DHGROUPS, DEFAULT_HASHES, HostCredentials
from target.auth.secret import DhchapSecret, SecretError
from target.nvme.dhchap import DHGROUP_NAME, HASH_NAME

HASH_IDS = {name: hid for hid, name in HASH_NAME.items()}
DHGROUP_IDS = {name: gid for gid, name in DHGROUP_NAME.items()}
DEFAULT_HASH_NAMES = tuple(HASH_NAME[h] for h in DEFAULT_HASHES)
DEFAULT_DHGROUP_NAMES = tuple(DHGROUP_NAME[g] for g in DEFAULT_DHGROUPS)
TRANSFORM_NAMES = {"none": 0, "sha256": 1, "sha384": 2, "sha512": 3}


class DhchapSettingsError(ValueError):
    """A request's DH-HMAC-CHAP fields are wrong (the message names the field only)."""


@dataclass(frozen=True, repr=False)
class SecretRequest:
    """One secret as asked for: given (``text``), or to be generated with ``transform``."""

    text: str | None = None
    generate: bool = False
    transform: str = "sha256"

    def __repr__(self) -> str:
        return (f"SecretRequest({'given' if self.text is not None else 'none'}, "
                f"generate={self.generate}, transform={self.transform!r})")

    def resolve(self, field: str) -> tuple[DhchapSecret, bool]:
        """(the secret, whether it was generated here)."""
        if self.generate == (self.text is not None):
            raise DhchapSettingsError(f"{field}: give a DHHC-1 secret or ask to generate one "
                                      "(exactly one of the two)")
        if self.text is not None:
            try:
                return DhchapSecret.parse(self.text), False
            except SecretError as e:
                raise DhchapSettingsError(f"{field}: {e}") from None
        if self.transform not in TRANSFORM_NAMES:
            raise DhchapSettingsError(f"{field}: transform hash must be one of "
                                      f"{', '.join(TRANSFORM_NAMES)}")
        return DhchapSecret.generate(TRANSFORM_NAMES[self.transform]), True


def _names(values: Any, known: dict[str, int], field: str,
           default: tuple[str, ...]) -> tuple[str, ...]:
    if values is None:
        return default
    if isinstance(values, str):
        values = [v.strip() for v in values.split(",")]
    if not isinstance(values, (list, tuple)) or not values \
            or not all(isinstance(v, str) for v in values):
        raise DhchapSettingsError(f"{field}: a non-empty list of names")
    bad = [v for v in values if v not in known]
    if bad or len(set(values)) != len(values):
        raise DhchapSettingsError(f"{field}: each of {', '.join(known)}, at most once")
    return tuple(values)


def build_record(subsystem: str, host_nqn: str, host: SecretRequest,
                 ctrl: SecretRequest | None, hashes: Any = None,
                 dhgroups: Any = None) -> tuple[HostAuthRecord, dict[str, str]]:
    """A validated record, and the secrets generated here (to return once) by field name."""
    host_secret, host_generated = host.resolve("dhchap_key")
    generated = {"dhchap_key": host_secret.format()} if host_generated else {}
    ctrl_text = None
    if ctrl is not None:
        ctrl_secret, ctrl_generated = ctrl.resolve("ctrl_key")
        if ctrl_secret == host_secret:
            raise DhchapSettingsError("ctrl_key: must differ from the host's secret")
        ctrl_text = ctrl_secret.format()
        if ctrl_generated:
            generated["ctrl_key"] = ctrl_text
    rec = HostAuthRecord(subsystem, host_nqn, host_secret.format(), ctrl_text,
                         _names(hashes, HASH_IDS, "dhchap_hashes", DEFAULT_HASH_NAMES),
                         _names(dhgroups, DHGROUP_IDS, "dhchap_dhgroups",
                                DEFAULT_DHGROUP_NAMES))
    return rec, generated


def credentials(rec: HostAuthRecord) -> HostCredentials:
    """What the target holds for the host (records were checked when stored)."""
    return HostCredentials(
        DhchapSecret.parse(rec.dhchap_key),
        DhchapSecret.parse(rec.ctrl_key) if rec.ctrl_key is not None else None,
        tuple(HASH_IDS[h] for h in rec.hashes), tuple(DHGROUP_IDS[g] for g in rec.dhgroups))


def public_view(rec: HostAuthRecord) -> dict[str, Any]:
    """What listings show: no secret, only whether one is set and how to tell it apart."""
    host = DhchapSecret.parse(rec.dhchap_key)
    view: dict[str, Any] = {"dhchap": "set", "key_hash": host.transform,
                            "ctrl_key": None, "hashes": list(rec.hashes),
                            "dhgroups": list(rec.dhgroups)}
    if rec.ctrl_key is not None:
        view["ctrl_key"] = {"dhchap": "set",
                            "key_hash": DhchapSecret.parse(rec.ctrl_key).transform}
    return view


# The API's body fields (POST .../hosts and PATCH .../hosts/{host}).
REQUEST_FIELDS = ("dhchap_key", "generate_key", "key_hash", "ctrl_key", "generate_ctrl_key",
                  "ctrl_key_hash", "dhchap_hashes", "dhchap_dhgroups")


@dataclass(frozen=True, repr=False)
class AuthRequest:
    host: SecretRequest
    ctrl: SecretRequest | None
    hashes: Any
    dhgroups: Any

    def __repr__(self) -> str:
        return "AuthRequest(...)"


def parse_request(body: dict[str, Any]) -> AuthRequest | None:
    """The DH-HMAC-CHAP part of a request body; None when it has none."""
    if not any(body.get(f) not in (None, False) for f in REQUEST_FIELDS):
        return None
    for f in ("dhchap_key", "ctrl_key", "key_hash", "ctrl_key_hash"):
        if body.get(f) is not None and not isinstance(body[f], str):
            raise DhchapSettingsError(f"{f}: a string")
    for f in ("generate_key", "generate_ctrl_key"):
        if not isinstance(body.get(f, False), bool):
            raise DhchapSettingsError(f"{f}: true or false")
    host = SecretRequest(body.get("dhchap_key"), body.get("generate_key", False),
                         body.get("key_hash") or "sha256")
    ctrl = None
    if body.get("ctrl_key") is not None or body.get("generate_ctrl_key"):
        ctrl = SecretRequest(body.get("ctrl_key"), body.get("generate_ctrl_key", False),
                             body.get("ctrl_key_hash") or "sha256")
    return AuthRequest(host, ctrl, body.get("dhchap_hashes"), body.get("dhchap_dhgroups"))
