"""Where a new replicated volume's copies go: the live nodes with the most free space, one copy
per node (two copies on one node would not survive that node).

Pure: the caller passes the live nodes (from ``nodes/``) and gets names or
:class:`PlacementError` saying what is missing.
"""
from __future__ import annotations

from collections.abc import Mapping

from sbstore.cluster.keys import NodeInfo


class PlacementError(ValueError):
    """The volume cannot be placed as asked; the message says why."""


def place(replicas: int, nodes: Mapping[str, NodeInfo]) -> list[str]:
    """``replicas`` distinct live nodes, most free space first (ties by name, so the choice is
    stable). Volumes are thin, as in single-node mode: a node is not refused because its free
    space is below the volume's size (that is overcommitment, the admin's call); it is only
    ranked lower."""
    if replicas < 1:
        raise PlacementError("a volume needs at least one replica")
    usable = [n for n in nodes.values() if n.pools]
    if len(usable) < replicas:
        short = sorted(set(nodes) - {n.node for n in usable})
        why = f" ({', '.join(short)} have no pool)" if short else ""
        raise PlacementError(f"{replicas} replicas need {replicas} live nodes with a pool; "
                             f"{len(usable)} of the {len(nodes)} live node(s) have one{why}")
    ranked = sorted(usable, key=lambda n: (-_largest_pool_free(n), n.node))
    return [n.node for n in ranked[:replicas]]


def _largest_pool_free(node: NodeInfo) -> int:
    """A replica lives in one pool: the node's room is its emptiest pool's free space."""
    return max((int(p.get("free_bytes", 0)) for p in node.pools.values()), default=0)
