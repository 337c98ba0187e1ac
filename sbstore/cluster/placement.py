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


def place(replicas: int, size_bytes: int, nodes: Mapping[str, NodeInfo]) -> list[str]:
    """``replicas`` distinct nodes, most free space first (ties by name, so the choice is
    stable). A node whose pools cannot hold the whole volume is not chosen: volumes are thin,
    but a replica placed where it can never be filled would fail writes later."""
    if replicas < 1:
        raise PlacementError("a volume needs at least one replica")
    fit = [n for n in nodes.values() if _largest_pool_free(n) >= size_bytes]
    if len(fit) < replicas:
        short = sorted(set(nodes) - {n.node for n in fit})
        why = f" ({', '.join(short)} lack the space)" if short else ""
        raise PlacementError(f"{replicas} replicas need {replicas} live nodes with room for "
                             f"{size_bytes} bytes; {len(fit)} of the {len(nodes)} live node(s) "
                             f"have it{why}")
    ranked = sorted(fit, key=lambda n: (-_largest_pool_free(n), n.node))
    return [n.node for n in ranked[:replicas]]


def _largest_pool_free(node: NodeInfo) -> int:
    """A replica lives in one pool: the node's room is its emptiest pool's free space."""
    return max((int(p.get("free_bytes", 0)) for p in node.pools.values()), default=0)
