"""NVMe/TCP listeners as the control module keeps them: by address or by interface name.

Rules of this module:
- A listener is a :class:`~sbstore.control.state.ListenerRecord` (id, address or interface,
  port) plus what is bound for it now. An address listener binds one socket whose NVMe port
  id (``portid``) is the listener's id, so it is stable across restarts.
- An interface listener binds one socket per listenable address of the interface (see
  :mod:`sbstore.control.netif`) and follows the interface with an
  :class:`~sbstore.control.netif.InterfaceWatcher`: an address that appears is bound, one that
  goes away is unbound (its controllers are deleted, as when any listener goes). These sockets
  take port ids from :data:`INTERFACE_PORTID_BASE` up, handed out as the addresses appear.
- Failing to bind one address of an interface (it went away again, the port is taken) is
  logged and shown in the listener's ``errors``; the others keep serving.
- ANA: a listener is a path. Its ANA settings (a state for every export, and states for
  single exports, which win) apply to every port it has bound, at once and to each port bound
  later (an interface's new address); the target forgets a port's states when it is unbound.
- Forced states (:meth:`ListenerSet.force_ana`) are another owner's: cluster mode shows each
  replicated export optimized on its primary's listeners and inaccessible elsewhere, decided by
  etcd's leases, never by what the state database says. A forced state wins over every
  listener's own setting for that export, applies to ports bound later, and is never stored.
- Nothing here persists: the service decides what is stored.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sbstore.control.netif import InterfaceWatcher
from sbstore.control.state import ListenerRecord
from target.ana import state_name
from target.nvme.spec import AnaState
from target.server import TargetServer
from target.subsystem import Listener

log = logging.getLogger("sbstore.control.listeners")

INTERFACE_PORTID_BASE = 0x8000  # port ids of an interface's addresses: 32768..65535
MAX_LISTENER_ID = INTERFACE_PORTID_BASE - 1


@dataclass
class LiveListener:
    record: ListenerRecord
    bound: dict[str, Listener] = field(default_factory=dict)  # address -> target listener
    errors: dict[str, str] = field(default_factory=dict)  # address -> why it is not bound
    watcher: InterfaceWatcher | None = None
    # ANA settings: export NQN (None: every export without its own) -> state.
    ana: dict[str | None, AnaState] = field(default_factory=dict)

    def info(self, forced: dict[str, AnaState] | None = None) -> dict[str, Any]:
        rec = self.record
        ana: dict[str | None, AnaState] = dict(self.ana)
        ana.update(forced or {})
        bound = [{"address": a, "port": int(x.trsvcid), "portid": x.portid}
                 for a, x in sorted(self.bound.items())]
        if self.errors:
            state = "error"
        elif bound:
            state = "listening"
        else:
            state = "waiting for an address" if rec.interface else "not listening"
        return {"id": rec.id, "source": rec.source, "address": rec.address,
                "interface": rec.interface, "port": rec.port, "tls": rec.tls, "state": state,
                "bound": bound,
                "errors": [{"address": a, "error": e} for a, e in sorted(self.errors.items())],
                "ana_state": state_name(ana.get(None, AnaState.OPTIMIZED)),
                "ana_exports": {nqn: state_name(st) for nqn, st in sorted(
                    (k, v) for k, v in ana.items() if k is not None)}}


class ListenerSet:
    """The live listeners of one target server, by listener id."""

    def __init__(self, server: TargetServer) -> None:
        self.server = server
        self.live: dict[int, LiveListener] = {}
        self.forced: dict[str, AnaState] = {}  # export NQN -> state on every listener

    def __contains__(self, listener_id: int) -> bool:
        return listener_id in self.live

    def _free_interface_portid(self) -> int:
        used = set(self.server.target.listeners)
        for portid in range(INTERFACE_PORTID_BASE, 0x10000):
            if portid not in used:
                return portid
        raise OSError("every NVMe port id is in use")

    async def _bind(self, live: LiveListener, address: str, port: int, portid: int) -> Listener:
        if portid in self.server.target.listeners:
            # TargetServer.listen would bind first and then fail to register: refuse before.
            raise ValueError(f"NVMe port id {portid} is in use")
        try:
            listener = await self.server.listen(address, port, portid=portid,
                                                tls=live.record.tls)
        except (OSError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            live.errors[address] = why
            raise
        live.errors.pop(address, None)
        live.bound[address] = listener
        for nqn, state in live.ana.items():
            if nqn not in self.forced:
                self.server.target.set_ana_state(listener.portid, state, nqn=nqn)
        for nqn, state in self.forced.items():
            self.server.target.set_ana_state(listener.portid, state, nqn=nqn)
        log.info("listening on %s:%s (port id %d, listener %d)", listener.traddr,
                 listener.trsvcid, listener.portid, live.record.id)
        return listener

    async def open(self, record: ListenerRecord,
                   ana: dict[str | None, AnaState] | None = None) -> LiveListener:
        """Bind a listener, showing the ANA states ``ana`` (see :meth:`set_ana`). An address
        listener that cannot bind raises OSError (nothing is kept); an interface listener is
        kept even when no address is bound yet."""
        if record.id in self.live:
            raise ValueError(f"listener {record.id} is open")
        live = LiveListener(record, ana=dict(ana or {}))
        if record.address is not None:
            await self._bind(live, record.address, record.port, record.id)
            self.live[record.id] = live
            return live
        assert record.interface is not None
        watcher = InterfaceWatcher(record.interface,
                                   lambda added, removed: self._follow(live, added, removed))
        addresses = await watcher.start()
        live.watcher = watcher
        self.live[record.id] = live
        for address in sorted(addresses):
            try:
                await self._bind(live, address, record.port, self._free_interface_portid())
            except (OSError, ValueError) as exc:
                log.warning("listener %d: cannot listen on %s port %d (interface %s): %s",
                            record.id, address, record.port, record.interface, exc)
        return live

    async def _follow(self, live: LiveListener, added: set[str], removed: set[str]) -> None:
        if self.live.get(live.record.id) is not live:
            return  # closed meanwhile
        for address in sorted(removed):
            live.errors.pop(address, None)
            listener = live.bound.pop(address, None)
            if listener is not None:
                log.info("listener %d: %s left interface %s: no longer listening on it",
                         live.record.id, address, live.record.interface)
                await self.server.stop_listening(listener)
        for address in sorted(added):
            if address in live.bound:
                continue
            try:
                await self._bind(live, address, live.record.port, self._free_interface_portid())
            except (OSError, ValueError) as exc:
                log.warning("listener %d: cannot listen on new address %s port %d: %s",
                            live.record.id, address, live.record.port, exc)

    def set_ana(self, listener_id: int, export: str | None, state: AnaState | None) -> None:
        """What listener ``listener_id`` shows for ``export`` (None: for every export without a
        setting of its own); ``state`` None removes the setting. Hosts connected through it
        see the change at once (an ANA change notice)."""
        live = self.live[listener_id]
        if state is None:
            live.ana.pop(export, None)
        else:
            live.ana[export] = state
        if export is not None and export in self.forced:
            return  # stored as the listener's own, shown once the export is not forced
        for listener in live.bound.values():
            self.server.target.set_ana_state(listener.portid, state, nqn=export)

    def force_ana(self, nqn: str, state: AnaState | None) -> None:
        """Show ``state`` for export ``nqn`` on every listener, now and on ports bound later,
        whatever the listeners' own settings; None gives the export back to them."""
        if state is None:
            if self.forced.pop(nqn, None) is None:
                return
        elif self.forced.get(nqn) == state:
            return
        else:
            self.forced[nqn] = state
        for live in self.live.values():
            shown = state if state is not None else live.ana.get(nqn)
            for listener in live.bound.values():
                self.server.target.set_ana_state(listener.portid, shown, nqn=nqn)

    def forget_export(self, nqn: str) -> None:
        """An export is gone: its ANA settings go with it."""
        for listener_id, live in self.live.items():
            if nqn in live.ana:
                self.set_ana(listener_id, nqn, None)

    async def close(self, listener_id: int) -> None:
        live = self.live.pop(listener_id)
        if live.watcher is not None:
            await live.watcher.close()
        for listener in list(live.bound.values()):
            await self.server.stop_listening(listener)
        live.bound.clear()

    async def close_all(self) -> None:
        for listener_id in list(self.live):
            try:
                await self.close(listener_id)
            except Exception:  # shutting down: close the others
                log.exception("closing listener %d failed", listener_id)

    def info(self) -> list[dict[str, Any]]:
        return [self.live[i].info(self.forced) for i in sorted(self.live)]
