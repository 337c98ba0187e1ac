"""``sbstore host add|set|remove|list``: which host NQNs may connect to an export, and their
DH-HMAC-CHAP secrets.

A secret on the command line shows in ``ps``: ``--dhchap-key @FILE`` reads it from a file
instead (``@-``: standard input). A secret sbstore generates is printed once, by the command
that generated it; listings only say whether one is set.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from sbstore.cli import CommandError
from sbstore.commands._common import Subparsers, add_json, call, emit
from sbstore.control.client import path

_KEY_HASHES = ("none", "sha256", "sha384", "sha512")


def register(subparsers: Subparsers) -> None:
    host = subparsers.add_parser("host", help="allow or disallow hosts on an export",
                                 description="Host NQNs allowed to connect to an export, and "
                                 "their DH-HMAC-CHAP secrets. Removing one disconnects it at "
                                 "once; changing a secret does not (it is asked for at the "
                                 "host's next authentication).")
    sub = host.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("add", help="allow HOSTNQN to connect to NQN")
    _positionals(p)
    _dhchap_options(p)
    p.set_defaults(func=run_add)
    p = sub.add_parser("set", help="set (rotate) or remove HOSTNQN's DH-HMAC-CHAP secrets")
    _positionals(p)
    _dhchap_options(p)
    p.add_argument("--no-dhchap", action="store_true",
                   help="the host no longer authenticates")
    p.set_defaults(func=run_set)
    p = sub.add_parser("remove", help="disallow HOSTNQN (disconnects it)")
    _positionals(p)
    p.set_defaults(func=run_remove)
    p = sub.add_parser("list", help="the hosts allowed on NQN")
    p.add_argument("nqn")
    add_json(p)
    p.set_defaults(func=run_list)


def _positionals(p: argparse.ArgumentParser) -> None:
    p.add_argument("nqn", help="the export (subsystem NQN)")
    p.add_argument("host_nqn", metavar="hostnqn", help="the host's NQN (/etc/nvme/hostnqn)")
    add_json(p)


def _dhchap_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DH-HMAC-CHAP (in-band authentication)")
    key = g.add_mutually_exclusive_group()
    key.add_argument("--dhchap-key", metavar="KEY",
                     help="the host's secret, DHHC-1:hh:base64: as nvme gen-dhchap-key writes "
                     "(@FILE: read it from FILE, @-: from standard input)")
    key.add_argument("--generate", action="store_true",
                     help="sbstore generates the host's secret and prints it once")
    g.add_argument("--key-hash", choices=_KEY_HASHES, default=None,
                   help="transform hash of generated secrets (default sha256)")
    ctrl = g.add_mutually_exclusive_group()
    ctrl.add_argument("--ctrl-key", metavar="KEY",
                      help="the controller's secret, for bidirectional authentication "
                      "(@FILE as above)")
    ctrl.add_argument("--generate-ctrl-key", action="store_true",
                      help="sbstore generates the controller's secret and prints it once")
    g.add_argument("--dhchap-hash", metavar="LIST",
                   help="hash functions allowed, by preference: sha256,sha384,sha512")
    g.add_argument("--dhchap-dhgroup", metavar="LIST",
                   help="DH groups allowed, by preference: ffdhe2048,...,ffdhe8192,null")


def _read_secret(value: str | None) -> str | None:
    if value is None or not value.startswith("@"):
        return value
    try:
        if value == "@-":
            return sys.stdin.readline().strip()
        with open(value[1:], encoding="ascii") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read the secret from {value[1:]}: "
                           f"{exc.strerror if isinstance(exc, OSError) else 'not ASCII'}",
                           exit_code=2) from None


def _list(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _dhchap_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    key = _read_secret(args.dhchap_key)
    if key is not None:
        body["dhchap_key"] = key
    if args.generate:
        body["generate_key"] = True
    ctrl_key = _read_secret(args.ctrl_key)
    if ctrl_key is not None:
        body["ctrl_key"] = ctrl_key
    if args.generate_ctrl_key:
        body["generate_ctrl_key"] = True
    if args.key_hash is not None:
        body["key_hash"] = body["ctrl_key_hash"] = args.key_hash
    for option, field in (("dhchap_hash", "dhchap_hashes"), ("dhchap_dhgroup",
                                                              "dhchap_dhgroups")):
        names = _list(getattr(args, option))
        if names is not None:
            body[field] = names
    extra = ("ctrl_key", "generate_ctrl_key", "key_hash", "dhchap_hashes", "dhchap_dhgroups")
    if any(f in body for f in extra) and not ({"dhchap_key", "generate_key"} & set(body)):
        raise CommandError("give the host's secret too (--dhchap-key or --generate)",
                           exit_code=2)
    return body


def _summary(e: dict[str, Any], host_nqn: str, what: str) -> str:
    lines = [what]
    for field, label in (("dhchap_key", "host secret"), ("ctrl_key", "controller secret")):
        secret = e.get("generated", {}).get(field)
        if secret:
            lines.append(f"{label} (generated, shown once): {secret}")
    auth = e.get("host_auth", {}).get(host_nqn)
    if auth:
        lines.append("DH-HMAC-CHAP: " + ("bidirectional" if auth.get("ctrl_key") else
                                         "host") + f"; hashes {','.join(auth['hashes'])}; "
                     f"groups {','.join(auth['dhgroups'])}")
    return "\n".join(lines)


def run_add(args: argparse.Namespace) -> int:
    body = {"host_nqn": args.host_nqn, **_dhchap_body(args)}
    e = call(args, lambda c: c.post(path("v1", "subsystems", args.nqn, "hosts"), body))
    return emit(args, e, lambda v: _summary(v, args.host_nqn,
                                            f"{args.host_nqn} may connect to {args.nqn}"))


def run_set(args: argparse.Namespace) -> int:
    body = _dhchap_body(args)
    if args.no_dhchap:
        if body:
            raise CommandError("--no-dhchap takes no secrets", exit_code=2)
        body = {"remove_dhchap": True}
    elif not body:
        raise CommandError("give --dhchap-key KEY or --generate (or --no-dhchap)", exit_code=2)
    e = call(args, lambda c: c.patch(path("v1", "subsystems", args.nqn, "hosts",
                                          args.host_nqn), body))
    what = (f"{args.host_nqn} no longer authenticates to {args.nqn}" if args.no_dhchap else
            f"DH-HMAC-CHAP secrets of {args.host_nqn} on {args.nqn} set (connected hosts "
            "stay connected)")
    return emit(args, e, lambda v: _summary(v, args.host_nqn, what))


def run_remove(args: argparse.Namespace) -> int:
    e = call(args, lambda c: c.delete(path("v1", "subsystems", args.nqn, "hosts",
                                           args.host_nqn)))
    return emit(args, e, f"{args.host_nqn} may no longer connect to {args.nqn}")


def run_list(args: argparse.Namespace) -> int:
    info = call(args, lambda c: c.get(path("v1", "subsystems", args.nqn)))
    auth = info.get("host_auth", {})
    if getattr(args, "json", False):
        return emit(args, info["hosts"], "")

    def line(h: str) -> str:
        a = auth.get(h)
        if not a:
            return h
        return f"{h}  dhchap: set{' (bidirectional)' if a.get('ctrl_key') else ''}"
    return emit(args, info["hosts"], lambda hosts: "\n".join(line(h) for h in hosts) or "(none)")
