"""Each node's own range of NVMe controller ids (docs/cluster.md, "Controller ids").

Every node serving a replicated volume's export presents the same subsystem NQN, so to a host
the nodes' controllers are controllers of one subsystem, and their ids must differ: Linux
refuses a path whose controller id another path of the subsystem has ("Duplicate cntlid ...,
rejecting"). Linux nvmet solves the same problem with ``cntlid_min``/``cntlid_max`` per
subsystem; here each node claims a *slot* in etcd once, and the slot is its range.

Rules of this module:
- A slot is claimed with one txn that creates ``{prefix}/cntlid/<slot>`` (owner: the node) only
  if it does not exist, so two nodes never hold one slot. A node that holds one already (its
  key names it) keeps it.
- The slot is kept in the state directory too, so a node restarted while etcd is unreachable
  still serves with its own range; the file is written before the slot is used.
- Slots are never given back: a node that leaves keeps its range reserved (there are
  ``SLOTS``; a cluster has far fewer nodes).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from sbstore.cluster.etcd import Compare, EtcdClient, Op

CNTLID_MAX = 0xFFEF  # the largest controller id a dynamic controller model may use
SLOTS = 16
SLOT_SIZE = CNTLID_MAX // SLOTS  # 4094 ids each


class NoFreeSlot(Exception):
    """Every controller-id slot of the cluster is held by another node."""


def cntlid_range(slot: int) -> tuple[int, int]:
    """The controller ids of slot ``slot``: a closed range within 1..CNTLID_MAX."""
    if not 0 <= slot < SLOTS:
        raise ValueError(f"controller-id slot {slot}: 0..{SLOTS - 1}")
    lo = slot * SLOT_SIZE + 1
    return lo, lo + SLOT_SIZE - 1


def _key(prefix: str, slot: int) -> str:
    return f"{prefix.rstrip('/')}/cntlid/{slot}"


def read_cached(path: Path, node: str) -> int | None:
    """The slot this node recorded in its state directory, if any (and if it is this node's)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    slot = data.get("slot") if isinstance(data, dict) else None
    if data.get("node") != node or type(slot) is not int or not 0 <= slot < SLOTS:
        return None
    return slot


def write_cached(path: Path, node: str, slot: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"node": node, "slot": slot}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


async def claim_slot(client: EtcdClient, prefix: str, node: str) -> int:
    """This node's slot: the one etcd says it holds, else the lowest free one, claimed."""
    held, _ = await client.get_prefix(f"{prefix.rstrip('/')}/cntlid/")
    taken: set[int] = set()
    for kv in held:
        try:
            slot = int(kv.key.rsplit("/", 1)[1])
        except ValueError:
            continue
        if kv.value.decode(errors="replace") == node:
            return slot
        taken.add(slot)
    for slot in range(SLOTS):
        if slot in taken:
            continue
        key = _key(prefix, slot)
        result = await client.txn([Compare.create_revision(key, "==", 0)], [Op.put(key, node)],
                                  [Op.get(key)])
        if result.succeeded:
            return slot
        # Lost a race for it (or a retried request already made it ours): look at its owner.
        owner = result.responses[0] if result.responses else []
        if owner and owner[0].value.decode(errors="replace") == node:
            return slot
    raise NoFreeSlot(f"all {SLOTS} controller-id slots under {prefix}/cntlid/ are held by "
                     f"other nodes")
