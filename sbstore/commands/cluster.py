"""``sbstore cluster status``: the cluster as any node sees it (cluster mode, docs/cluster.md)."""
from __future__ import annotations

import argparse
from typing import Any

from sbstore.commands._common import Subparsers, add_json, call, emit, human, table


def register(subparsers: Subparsers) -> None:
    cl = subparsers.add_parser("cluster", help="cluster mode: nodes and replicated volumes",
                               description="The cluster's nodes and replicated volumes, as "
                                           "the node asked sees them.")
    sub = cl.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("status", help="nodes (live, lease, peer address) and replicated "
                                      "volumes (primary, epoch, in sync, state)")
    add_json(p)
    p.set_defaults(func=run_status)


def status_text(s: dict[str, Any]) -> str:
    nodes = [(n["name"] + (" *" if n["self"] else ""), "live" if n["live"] else "DOWN",
              n["peer_address"], " ".join(n["listeners"]) or None,
              human(n["free_bytes"]) if n["free_bytes"] is not None else None,
              f"{n['lease_left_s']:.1f} s" if n["lease_left_s"] is not None else None)
             for n in s["nodes"]]
    vols = []
    for v in s["volumes"]:
        dirty = v.get("dirty_bytes") or {}
        vols.append((v["name"], human(v["size_bytes"]), v["state"], v["primary"], v["epoch"],
                     ",".join(v["replicas"]), ",".join(v["in_sync"]) or None,
                     " ".join(f"{k}:{human(b)}" for k, b in dirty.items()) or None,
                     " ".join(f"{k}:{human(b)}" for k, b in v["last_resync_bytes"].items())
                     or None))
    return (f"node {s['node']} (etcd revision {s['revision']})\n\n"
            + table(nodes, ("NODE", "STATE", "PEER", "LISTENERS", "FREE", "LEASE"),
                    right=("FREE",))
            + "\n\n"
            + table(vols, ("VOLUME", "SIZE", "STATE", "PRIMARY", "EPOCH", "REPLICAS",
                           "IN SYNC", "DIRTY", "LAST RESYNC"), right=("SIZE",)))


def run_status(args: argparse.Namespace) -> int:
    s = call(args, lambda c: c.get("/v1/cluster"))
    return emit(args, s, status_text)
