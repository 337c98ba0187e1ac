"""Listeners by node in cluster mode: every node's listeners seen from any node, and listeners
added to (or removed from) a named node through etcd (docs/cluster.md, "Keys").

Rules of this module:
- What a node listens on is what it publishes in ``nodes/<node>`` (``listener_info``: id,
  source, where, state, bound addresses), so the cluster-wide listing reads only etcd.
- ``listeners/<node>/<where>`` asks ``<node>`` for a listener (``where``: ``a-ADDRESS-PORT``
  or ``i-INTERFACE-PORT``). That node opens it through the control service (as ``sbstore
  listener add`` on it would, so it is also kept in its state database); when the key is
  deleted while the node watches, the node closes the listener it opened for it. A listener
  the node has from its config or a local ``listener add`` is not the cluster's: it is shown,
  never removed through etcd.
- Listeners stay a node's own: ANA, ids and restore at start are as in single-node mode.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from sbstore.cluster.etcd import Compare, EtcdClient, EtcdError, Op
from sbstore.cluster.keys import BadRecord, Keys
from sbstore.control.service import ControlError, ControlService, ErrorCode, invalid

log = logging.getLogger("sbstore.cluster.listeners")

ADD_WAIT_S = 5.0  # how long an add waits for the node to publish the new listener
PUBLISHED = ("id", "source", "address", "interface", "port", "state")


@dataclass(frozen=True)
class ListenerSpec:
    """``listeners/<node>/<where>``: a listener an admin asked ``node`` for."""

    node: str
    port: int
    address: str | None = None
    interface: str | None = None

    @property
    def where(self) -> str:
        return f"a-{self.address}-{self.port}" if self.address is not None \
            else f"i-{self.interface}-{self.port}"

    def matches(self, info: dict[str, Any]) -> bool:
        return (info.get("address"), info.get("interface"), info.get("port")) == (
            self.address, self.interface, self.port)

    def to_json(self) -> str:
        return json.dumps({"node": self.node, "port": self.port, "address": self.address,
                           "interface": self.interface})

    @classmethod
    def from_json(cls, data: Any, key: str) -> ListenerSpec:
        if not isinstance(data, dict) or not isinstance(data.get("node"), str) \
                or type(data.get("port")) is not int \
                or (data.get("address") is None) == (data.get("interface") is None) \
                or not all(isinstance(data.get(f), (str, type(None)))
                           for f in ("address", "interface")):
            raise BadRecord(f"{key}: not a listener record (node, port, address or interface)")
        return cls(data["node"], data["port"], data.get("address"), data.get("interface"))


def published(service: ControlService) -> list[dict[str, Any]]:
    """What this node publishes about its listeners (no ANA: it changes with roles)."""
    return [{**{k: x[k] for k in PUBLISHED},
             "bound": [f"{b['address']}:{b['port']}" for b in x["bound"]]}
            for x in service.list_listeners()]


class ListenerAdmin:
    """The listener API in cluster mode, on any node (``view``: ClusterAdmin.view)."""

    def __init__(self, client: EtcdClient, keys: Keys, view: Any, node: str) -> None:
        self.client = client
        self.keys = keys
        self._view = view
        self.node = node

    async def list_all(self) -> list[dict[str, Any]]:
        """Every live node's listeners, each with its ``node`` (and ``cluster``: asked for
        through etcd)."""
        view = await self._view()
        out = []
        for name, info in sorted(view.nodes.items()):
            wanted = [s for (n, _), s in view.listeners.items() if n == name]
            for x in info.listener_info:
                out.append({"node": name, **x,
                            "cluster": any(s.matches(x) for s in wanted)})
        return out

    async def add(self, node: str, *, port: int, address: str | None = None,
                  interface: str | None = None) -> dict[str, Any]:
        if (address is None) == (interface is None):
            raise invalid("give an address or an interface (one of them)")
        if address is not None:
            try:
                address = ipaddress.ip_address(address).compressed
            except ValueError:
                raise invalid(f"{address!r} is not an IP address") from None
        elif not isinstance(interface, str) or not interface.isprintable() \
                or "/" in interface or len(interface) > 15:
            raise invalid(f"{interface!r} is not an interface name")
        view = await self._view()
        if node not in view.nodes:
            raise ControlError(ErrorCode.FAILED_PRECONDITION, f"node {node!r} is not live "
                               f"(live: {', '.join(sorted(view.nodes)) or 'none'})")
        spec = ListenerSpec(node, port, address, interface)
        if any(spec.matches(x) for x in view.nodes[node].listener_info):
            raise ControlError(ErrorCode.ALREADY_EXISTS, f"node {node} listens there already")
        key = self.keys.listener(node, spec.where)
        try:
            result = await self.client.txn([Compare.create_revision(key, "==", 0)],
                                           [Op.put(key, spec.to_json())])
        except EtcdError as exc:
            raise _unavailable(exc) from None
        if not result.succeeded:
            raise ControlError(ErrorCode.ALREADY_EXISTS, f"node {node} was asked for that "
                               f"listener already")
        deadline = time.monotonic() + ADD_WAIT_S
        while time.monotonic() < deadline:  # bounded: the node opens it at its next pass
            info = (await self._view()).nodes.get(node)
            found = [x for x in info.listener_info if spec.matches(x)] if info else []
            if found:
                return {"node": node, **found[0], "cluster": True}
            await asyncio.sleep(0.1)
        return {"node": node, "port": port, "address": address, "interface": interface,
                "state": "requested", "cluster": True}

    async def remove(self, node: str, listener_id: int) -> None:
        view = await self._view()
        info = view.nodes.get(node)
        x = next((x for x in info.listener_info if x["id"] == listener_id), None) \
            if info else None
        spec = next((s for (n, _), s in view.listeners.items()
                     if n == node and x is not None and s.matches(x)), None)
        if spec is None:
            raise ControlError(ErrorCode.NOT_FOUND, f"node {node} has no listener "
                               f"{listener_id} added through the cluster (one from its config "
                               f"or a local 'listener add' is removed on that node)")
        try:
            await self.client.delete(self.keys.listener(node, spec.where))
        except EtcdError as exc:
            raise _unavailable(exc) from None


def _unavailable(exc: EtcdError) -> ControlError:
    return ControlError(ErrorCode.FAILED_PRECONDITION, f"the cluster's etcd is unreachable or "
                        f"refused the change: {exc}")


class ListenerSync:
    """The node side: open the listeners etcd asks this node for; close those whose key
    went away while this node watched."""

    def __init__(self, service: ControlService) -> None:
        self.service = service
        self.known: dict[str, ListenerSpec] = {}  # where -> spec, seen in etcd

    async def reconcile(self, wanted: dict[str, ListenerSpec]) -> None:
        local = self.service.list_listeners()
        for where, spec in sorted(wanted.items()):
            if not any(spec.matches(x) for x in local):
                await self.service.add_listener(port=spec.port, address=spec.address,
                                                interface=spec.interface)
                log.info("cluster: listener %s opened here", where)
        gone = {w: s for w, s in self.known.items() if w not in wanted}
        self.known = dict(wanted)
        for where, spec in sorted(gone.items()):
            for x in local:
                if spec.matches(x) and x["source"] == "api":
                    await self.service.remove_listener(x["id"])
                    log.info("cluster: listener %s (id %d) closed here", where, x["id"])
