"""This node's lease in etcd, its registration under ``{prefix}/nodes/``, and the *lease clock*
(docs/cluster.md, "Roles and the rules that keep data safe").

Rules of this module:
- One :class:`NodeSession` per daemon. :meth:`NodeSession.start` grants a lease and writes
  ``{prefix}/nodes/{node}`` attached to it, refusing (:class:`NodeNameInUse`) when the key is
  held by another live lease: a second daemon configured with the same node name.
- The lease clock: etcd cannot expire a lease before (the time its last successful keepalive,
  or its grant, was *sent*) + TTL, because etcd restarts the TTL when it *receives* the
  request, later. :meth:`NodeSession.may_acknowledge` is true only until that time + TTL -
  margin (margin = min(1 s, TTL/4), for clock drift and scheduling), so a node cut off from
  etcd stops acknowledging replicated writes before another node can be elected in its place.
- A keepalive task renews the lease every TTL/3 s. When etcd says the lease is gone (it was
  unreachable for longer than the TTL), the session grants a new lease, registers again, and
  runs the ``on_new_lease`` callbacks in a task of their own (the manager re-campaigns there),
  so a slow callback never delays the next keepalive.
- Losing and regaining etcd is logged once each, with a reminder at most every
  ``_STILL_LOST_LOG_S`` while it lasts, not once per keepalive attempt.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sbstore.cluster.etcd import Compare, EtcdClient, EtcdError, LeaseExpired, Op

log = logging.getLogger(__name__)

_STILL_LOST_LOG_S = 30.0
_REGISTER_TRIES = 3  # an unleased stale key can change under us; past this, give up this turn

NewLeaseCallback = Callable[[], Awaitable[None]]


class NodeNameInUse(Exception):
    """Another live session holds this node's key: two daemons with one node name."""


class NodeSession:
    def __init__(self, client: EtcdClient, node: str, *, prefix: str = "/sbstore", ttl: int = 5,
                 info: Callable[[], dict[str, Any]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl < 2:
            raise ValueError(f"lease ttl {ttl}: etcd's smallest is 2 s")
        if not node or "/" in node:
            raise ValueError(f"node name {node!r}: non-empty, without '/'")
        self.node = node
        self.prefix = prefix.rstrip("/")
        self.key = f"{self.prefix}/nodes/{node}"
        self.ttl = ttl
        self.margin = min(1.0, ttl / 4)
        self._client = client
        self._info = info or dict
        self._clock = clock
        self._lease_id: int | None = None
        self._acknowledge_until = float("-inf")
        self._callbacks: list[NewLeaseCallback] = []
        self._task: asyncio.Task[None] | None = None
        self._callback_tasks: set[asyncio.Task[None]] = set()
        self._lost_since: float | None = None
        self._last_lost_log = 0.0

    # -- public -----------------------------------------------------------------------------

    @property
    def lease_id(self) -> int | None:
        """The lease this node's keys hang on; None before start, after stop, and between
        losing a lease and registering again."""
        return self._lease_id

    def may_acknowledge(self) -> bool:
        """True while etcd certainly still holds this node's lease (the lease clock)."""
        return self._lease_id is not None and self._clock() < self._acknowledge_until

    def valid_for(self) -> float:
        """Seconds for which :meth:`may_acknowledge` stays true without another keepalive."""
        if self._lease_id is None:
            return 0.0
        return max(0.0, self._acknowledge_until - self._clock())

    def on_new_lease(self, callback: NewLeaseCallback) -> None:
        """``await callback()`` after each re-registration under a new lease (not at start)."""
        self._callbacks.append(callback)

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"node session {self.node!r} already started")
        await self._register()
        self._task = asyncio.create_task(self._keep_alive(), name=f"etcd lease of {self.node}")

    async def stop(self) -> None:
        """Stops the keepalive task and revokes the lease (best effort: a lease etcd cannot be
        told about ends by itself within the TTL)."""
        tasks = [t for t in (self._task, *self._callback_tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("node session %s: a task failed while stopping", self.node)
        self._task = None
        self._callback_tasks.clear()
        lease, self._lease_id = self._lease_id, None
        if lease is not None:
            try:
                await self._client.lease_revoke(lease)
            except EtcdError as e:
                log.warning("node %s: could not revoke lease %x at stop (%s); it ends within "
                            "%d s", self.node, lease, e, self.ttl)

    async def refresh_info(self) -> None:
        """Rewrites the node key with a fresh ``info()``. Without a lease it does nothing: the
        keepalive task writes fresh info when it registers again."""
        lease = self._lease_id
        if lease is None:
            return
        try:
            await self._client.put(self.key, self._value(), lease=lease)
        except LeaseExpired:
            log.info("node %s: lease gone while refreshing info; re-registration follows",
                     self.node)

    async def live_nodes(self) -> dict[str, dict[str, Any]]:
        return await live_nodes(self._client, self.prefix)

    # -- registration -----------------------------------------------------------------------

    def _value(self) -> str:
        return json.dumps({**self._info(), "node": self.node})

    async def _register(self) -> None:
        sent = self._clock()
        lease = await self._client.lease_grant(self.ttl)
        try:
            await self._claim_key(lease)
        except BaseException:
            try:
                await self._client.lease_revoke(lease)
            except EtcdError:
                pass  # it ends by itself within the TTL
            raise
        self._lease_id = lease
        self._acknowledge_until = sent + self.ttl - self.margin

    async def _claim_key(self, lease: int) -> None:
        """Puts the node key under ``lease`` unless another live lease holds it. A key with no
        lease (written by hand, or by a tool) is taken over."""
        for _ in range(_REGISTER_TRIES):
            claim = await self._client.txn([Compare.create_revision(self.key, "==", 0)],
                                           [Op.put(self.key, self._value(), lease)],
                                           [Op.get(self.key)])
            if claim.succeeded:
                return
            if not claim.responses[0]:
                continue  # deleted between the compare and the get: try again
            held = claim.responses[0][0]
            if held.lease not in (0, lease):
                raise NodeNameInUse(
                    f"node name {self.node!r} is already registered in etcd ({self.key}, lease "
                    f"{held.lease:x}): is another daemon running with the same [cluster] node? "
                    f"(a daemon that just died holds it for at most {self.ttl} s more)")
            takeover = await self._client.txn(
                [Compare.mod_revision(self.key, "==", held.mod_revision)],
                [Op.put(self.key, self._value(), lease)])
            if takeover.succeeded:
                return
        raise EtcdError(f"node key {self.key} kept changing while registering")

    # -- keepalive --------------------------------------------------------------------------

    async def _keep_alive(self) -> None:
        """Runs until stop() cancels it; each turn is bounded by the client's timeout."""
        loop = asyncio.get_running_loop()
        interval = self.ttl / 3
        next_turn = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_turn - loop.time()))
            next_turn = loop.time() + interval
            try:
                if self._lease_id is None:
                    await self._register_again()
                else:
                    await self._renew(self._lease_id)
                self._note_reachable()
            except LeaseExpired:
                log.warning("node %s: etcd says lease %x is gone; registering under a new one",
                            self.node, self._lease_id or 0)
                self._lease_id = None
                next_turn = loop.time()  # at once, not a turn later
            except (EtcdError, NodeNameInUse) as e:  # EtcdUnavailable among them
                self._note_unreachable(e)

    async def _renew(self, lease: int) -> None:
        sent = self._clock()
        ttl = await self._client.lease_keepalive(lease)
        if self._lease_id == lease:
            until = sent + min(ttl, self.ttl) - self.margin
            self._acknowledge_until = max(self._acknowledge_until, until)

    async def _register_again(self) -> None:
        await self._register()
        log.warning("node %s: registered again under lease %x", self.node, self._lease_id or 0)
        if self._callbacks:
            task = asyncio.create_task(self._run_callbacks(), name=f"new lease of {self.node}")
            self._callback_tasks.add(task)
            task.add_done_callback(self._callback_tasks.discard)

    async def _run_callbacks(self) -> None:
        for callback in list(self._callbacks):
            try:
                await callback()
            except Exception:
                log.exception("node %s: an on_new_lease callback failed", self.node)

    def _note_unreachable(self, error: Exception) -> None:
        now = self._clock()
        if self._lost_since is None:
            self._lost_since = self._last_lost_log = now
            log.warning("node %s: cannot renew its lease in etcd (%s); may acknowledge writes "
                        "for %.1f s more",
                        self.node, error, self.valid_for())
        elif now - self._last_lost_log >= _STILL_LOST_LOG_S:
            self._last_lost_log = now
            log.warning("node %s: still no lease renewal from etcd after %.0f s (%s)",
                        self.node, now - self._lost_since, error)

    def _note_reachable(self) -> None:
        if self._lost_since is not None:
            log.warning("node %s: lease renewed again after %.1f s", self.node,
                        self._clock() - self._lost_since)
            self._lost_since = None


async def live_nodes(client: EtcdClient, prefix: str = "/sbstore") -> dict[str, dict[str, Any]]:
    """Every registered node's info, by node name (a node whose lease lapsed is absent)."""
    base = f"{prefix.rstrip('/')}/nodes/"
    kvs, _ = await client.get_prefix(base)
    return {kv.key[len(base):]: kv.json() for kv in kvs}
