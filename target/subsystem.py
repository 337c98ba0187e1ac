"""What the target exports: subsystems, their namespaces and host ACLs, the listeners, and the
discovery subsystem at the well-known NQN.

Theory of operation. A :class:`Target` holds every :class:`Subsystem` (by NQN), every
:class:`Listener` (by port id) and the discovery subsystem. Controllers (target/controller.py)
register with the subsystem they were created in; this module only calls a few methods on them
(``namespace_changed``, ``discovery_changed``, ``delete``), so it never imports the controller.

Rules:
- The control module changes this model live. Every change tells the live controllers at once:
  adding or removing a namespace (or ``namespace_changed`` after a resize) fills each
  controller's Changed Namespace List and queues a Namespace Attribute Changed notice where the
  host enabled it; a change the discovery log shows (subsystems, listeners, host ACLs,
  reachability) bumps the discovery generation counter and notifies discovery controllers.
- Access is re-checked on every change: a controller whose host is no longer allowed, or whose
  listener no longer reaches its subsystem, is deleted (its connections closed). Revoking access
  therefore takes effect immediately, not at the next reconnect.
- Which subsystems a listener reaches: by default all on all; ``Subsystem.set_listeners`` narrows
  a subsystem to some port ids. The discovery subsystem is reachable on every listener.
- Nothing here does I/O or awaits; a namespace wraps a :class:`target.blockdev.BlockDevice`.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import uuid as uuid_mod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from target.blockdev import BlockDevice
from target.nvme.spec import (
    ADRFAM_IPV4,
    ADRFAM_IPV6,
    CNTLID_STATIC_MAX,
    DISCOVERY_NQN,
    NQN_MAX_LEN,
)

if TYPE_CHECKING:
    from target.controller import Controller

log = logging.getLogger(__name__)

MAX_NAMESPACES = 1024  # Identify NN: the largest NSID a subsystem hands out
MAX_IO_QUEUES = 128
TLS_MODES = ("off", "allowed", "required")


@dataclass(frozen=True, slots=True)
class Listener:
    """A transport address the target listens on (one NVMe subsystem port).

    Made by :meth:`Target.add_listener`, which assigns the port id; ``adrfam`` 0 is inferred
    from ``traddr``."""

    traddr: str
    trsvcid: str
    adrfam: int = 0
    portid: int = 0
    # NVMe/TCP TLS (TP 8011): "off", "allowed" (TLS or plain, the host's choice) or
    # "required"; the discovery log tells hosts (TREQ, TSAS sectype).
    tls: str = "off"

    def __post_init__(self) -> None:
        object.__setattr__(self, "trsvcid", str(self.trsvcid))
        if self.tls not in TLS_MODES:
            raise ValueError(f"tls {self.tls!r}: one of {', '.join(TLS_MODES)}")
        if self.adrfam == 0:
            object.__setattr__(self, "adrfam", _adrfam_of(self.traddr))

    @property
    def is_wildcard(self) -> bool:
        """0.0.0.0 or ::, which a host cannot connect to: the discovery log then shows the
        address the host reached us on."""
        try:
            return ipaddress.ip_address(self.traddr).is_unspecified
        except ValueError:
            return False


def _adrfam_value(adrfam: int | str | None) -> int:
    if adrfam is None:
        return 0
    if isinstance(adrfam, str):
        try:
            return {"ipv4": ADRFAM_IPV4, "ipv6": ADRFAM_IPV6}[adrfam.lower()]
        except KeyError:
            raise ValueError(f"adrfam {adrfam!r}: ipv4 or ipv6") from None
    return adrfam


def _adrfam_of(traddr: str) -> int:
    try:
        return ADRFAM_IPV6 if ipaddress.ip_address(traddr).version == 6 else ADRFAM_IPV4
    except ValueError:
        return ADRFAM_IPV4


class IoCounters:
    """Plain-int counters for SMART and metrics, kept per controller and per namespace.

    Every I/O command bumps one of them (a failed one bumps ``errors``), which keep-alive uses
    as proof of traffic."""

    __slots__ = ("errors", "other_cmds", "read_bytes", "reads", "write_bytes", "writes")

    def __init__(self) -> None:
        self.reads = 0
        self.writes = 0
        self.read_bytes = 0
        self.write_bytes = 0
        self.other_cmds = 0  # flush, write zeroes, dataset management
        self.errors = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class Namespace:
    """A block device exported under an NSID. ``nblocks`` is cached for the I/O path's range
    check and refreshed by :meth:`Subsystem.namespace_changed`; the device checks again."""

    __slots__ = (
        "block_size",
        "counters",
        "device",
        "eui64",
        "flow",
        "lba_shift",
        "nblocks",
        "nguid",
        "nsid",
        "uuid",
    )

    def __init__(self, nsid: int, device: BlockDevice) -> None:
        bs = device.block_size
        if bs < 512 or bs & (bs - 1):
            raise ValueError(f"block size {bs} is not a power of two >= 512")
        self.nsid = nsid
        self.device = device
        self.block_size = bs
        self.lba_shift = bs.bit_length() - 1
        self.nblocks = device.num_blocks
        self.counters = IoCounters()
        # The device's admission flow (target.admission), if it has one: whose queue its
        # commands wait in when the target's CPU is contended.
        self.flow: object | None = getattr(device, "admission_flow", None)
        # Identities stable per device uuid: the host matches paths and rejects duplicates by them.
        self.uuid: bytes = device.uuid.bytes
        self.nguid: bytes = self.uuid
        self.eui64: bytes = hashlib.blake2b(self.uuid, digest_size=8, person=b"sbstore-eui64").digest()

    def refresh(self) -> None:
        self.nblocks = self.device.num_blocks


def _check_nqn(nqn: str) -> None:
    raw = nqn.encode("utf-8")
    if not raw or len(raw) > NQN_MAX_LEN or "\0" in nqn:
        raise ValueError(f"invalid NQN {nqn!r}: 1..{NQN_MAX_LEN} bytes, no NUL")


class Subsystem:
    """An NVM subsystem: namespaces, a host ACL, the listeners that reach it, its controllers."""

    def __init__(self, nqn: str, serial: str = "", model: str = "sbstore",
                 allow_any_host: bool = True, allowed_hosts: Iterable[str] = (), *,
                 firmware: str = "0.1", max_namespaces: int = MAX_NAMESPACES,
                 max_io_queues: int = MAX_IO_QUEUES, listeners: Iterable[int] | None = None,
                 _discovery: bool = False) -> None:
        _check_nqn(nqn)
        if (nqn == DISCOVERY_NQN) != _discovery:
            raise ValueError(f"{DISCOVERY_NQN} is the discovery subsystem's NQN")
        if not serial:
            serial = hashlib.sha1(nqn.encode()).hexdigest()[:20]
        for name, value, size in (("serial", serial, 20), ("model", model, 40),
                                  ("firmware", firmware, 8)):
            if not value.isascii() or len(value) > size:
                raise ValueError(f"{name} must be ASCII, at most {size} characters")
        if not 1 <= max_namespaces <= 0xFFFFFFFE:
            raise ValueError("max_namespaces out of range")
        if not 1 <= max_io_queues <= 0xFFFE:
            raise ValueError("max_io_queues out of range")
        self.nqn = nqn
        self.serial = serial
        self.model = model
        self.firmware = firmware
        self.max_namespaces = 0 if _discovery else max_namespaces
        self.max_io_queues = 0 if _discovery else max_io_queues
        self.is_discovery = _discovery
        self._allow_any_host = allow_any_host
        self._allowed_hosts: set[str] = set(allowed_hosts)
        self._listener_ids: frozenset[int] | None = (
            None if listeners is None else frozenset(listeners))
        # The I/O path reads this dict on every command: keep it the same object for life.
        self._namespaces: dict[int, Namespace] = {}
        self._controllers: dict[int, Controller] = {}
        self._next_cntlid = 1
        self._target: Target | None = None

    def __repr__(self) -> str:
        return f"Subsystem({self.nqn!r}, namespaces={sorted(self._namespaces)})"

    # --- namespaces ---------------------------------------------------------------------------
    @property
    def namespaces(self) -> Mapping[int, Namespace]:
        """The live NSID -> Namespace map (read-only view of the same dict the I/O path uses)."""
        return self._namespaces

    def add_namespace(self, device: BlockDevice, nsid: int | None = None) -> int:
        """Export ``device``; returns its NSID (the lowest free one unless given)."""
        if self.is_discovery:
            raise ValueError("the discovery subsystem has no namespaces")
        if nsid is None:
            nsid = next((n for n in range(1, self.max_namespaces + 1)
                         if n not in self._namespaces), 0)
            if not nsid:
                raise ValueError(f"{self.nqn}: all {self.max_namespaces} NSIDs are in use")
        elif not 1 <= nsid <= self.max_namespaces:
            raise ValueError(f"NSID {nsid} outside 1..{self.max_namespaces}")
        elif nsid in self._namespaces:
            raise ValueError(f"{self.nqn}: NSID {nsid} is in use")
        self._namespaces[nsid] = Namespace(nsid, device)
        log.info("%s: namespace %d added (%d blocks of %d bytes)", self.nqn, nsid,
                 device.num_blocks, device.block_size)
        self._notify_namespace(nsid)
        return nsid

    def remove_namespace(self, nsid: int) -> None:
        if self._namespaces.pop(nsid, None) is None:
            raise KeyError(f"{self.nqn}: no namespace {nsid}")
        log.info("%s: namespace %d removed", self.nqn, nsid)
        self._notify_namespace(nsid)

    def namespace_changed(self, nsid: int) -> None:
        """Tell hosts that a namespace's attributes (its size) changed."""
        ns = self._namespaces.get(nsid)
        if ns is None:
            raise KeyError(f"{self.nqn}: no namespace {nsid}")
        ns.refresh()
        self._notify_namespace(nsid)

    def _notify_namespace(self, nsid: int) -> None:
        for ctrl in list(self._controllers.values()):
            ctrl.namespace_changed(nsid)

    # --- hosts ------------------------------------------------------------------------------
    @property
    def allow_any_host(self) -> bool:
        return self._allow_any_host

    @property
    def allowed_hosts(self) -> frozenset[str]:
        return frozenset(self._allowed_hosts)

    def set_allow_any_host(self, allow: bool) -> None:
        self._allow_any_host = allow
        self._access_changed()

    def set_host_acl(self, allow_any_host: bool, hosts: Iterable[str] = ()) -> None:
        """Replace the whole ACL at once (access is re-checked once, after the change)."""
        hosts = set(hosts)
        for hostnqn in hosts:
            _check_nqn(hostnqn)
        self._allow_any_host = allow_any_host
        self._allowed_hosts = hosts
        self._access_changed()

    def add_host(self, hostnqn: str) -> None:
        _check_nqn(hostnqn)
        self._allowed_hosts.add(hostnqn)
        self._access_changed()

    def remove_host(self, hostnqn: str) -> None:
        self._allowed_hosts.discard(hostnqn)
        self._access_changed()

    def host_allowed(self, hostnqn: str) -> bool:
        return self.is_discovery or self._allow_any_host or hostnqn in self._allowed_hosts

    # --- listeners --------------------------------------------------------------------------
    @property
    def listener_ids(self) -> frozenset[int] | None:
        """Port ids this subsystem is reachable on; None: every listener."""
        return self._listener_ids

    def set_listeners(self, portids: Iterable[int] | None) -> None:
        self._listener_ids = None if portids is None else frozenset(portids)
        self._access_changed()

    def reachable_on(self, listener: Listener) -> bool:
        return (self.is_discovery or self._listener_ids is None
                or listener.portid in self._listener_ids)

    def admits(self, hostnqn: str, listener: Listener) -> bool:
        return self.host_allowed(hostnqn) and self.reachable_on(listener)

    # --- controllers (called by target.controller) ---------------------------------------------
    @property
    def controllers(self) -> Mapping[int, Controller]:
        return self._controllers

    def allocate_cntlid(self, requested: int | None) -> int | None:
        """A free controller id: ``requested`` if given and free, else a rolling dynamic one
        (not the lowest free, so a host never sees a just-deleted id again at once). None: no
        id is free, or the requested one is taken."""
        if requested is not None:
            return None if requested in self._controllers else requested
        for _ in range(CNTLID_STATIC_MAX):
            cntlid = self._next_cntlid
            self._next_cntlid = cntlid % CNTLID_STATIC_MAX + 1
            if cntlid not in self._controllers:
                return cntlid
        return None

    def register_controller(self, ctrl: Controller) -> None:
        if ctrl.cntlid in self._controllers:
            raise ValueError(f"cntlid {ctrl.cntlid} in use")
        self._controllers[ctrl.cntlid] = ctrl

    def unregister_controller(self, ctrl: Controller) -> None:
        if self._controllers.get(ctrl.cntlid) is ctrl:
            del self._controllers[ctrl.cntlid]

    def _access_changed(self) -> None:
        if self._target is not None:
            self._target.discovery_changed()

    def revalidate(self, reason: str) -> None:
        """Delete the controllers this subsystem would no longer admit."""
        for ctrl in list(self._controllers.values()):
            if not self.admits(ctrl.hostnqn, ctrl.listener):
                ctrl.delete(reason)


class Target:
    """All subsystems, listeners and the discovery subsystem; the discovery generation counter.

    ``keep_alive_slack``: the fraction of KATO a silent host is given on top of KATO.
    Parameters that the transport must agree with: ``max_data_transfer`` (MDTS, bytes; the TCP
    queue's ``max_data_len``) and ``incapsule_data_size`` (IOCCSZ; the TCP queue's
    ``max_incapsule_data``)."""

    def __init__(self, *, model: str = "sbstore", firmware: str = "0.1",
                 discovery_serial: str = "", max_data_transfer: int = 1 << 20,
                 incapsule_data_size: int = 8192, queue_entries: int = 1024,
                 discovery_kato_ms: int = 120_000, keep_alive_slack: float = 0.5) -> None:
        if max_data_transfer < 4096 or max_data_transfer & (max_data_transfer - 1):
            raise ValueError("max_data_transfer must be a power of two >= 4096")
        if incapsule_data_size < 0 or incapsule_data_size % 16:
            raise ValueError("incapsule_data_size must be a multiple of 16")
        if not 2 <= queue_entries <= 65536:
            raise ValueError("queue_entries must be 2..65536")
        if not 0 <= keep_alive_slack <= 10:
            raise ValueError("keep_alive_slack is a fraction of KATO, 0..10")
        self.model = model
        self.firmware = firmware
        self.max_data_transfer = max_data_transfer
        self.incapsule_data_size = incapsule_data_size
        self.queue_entries = queue_entries
        self.discovery_kato_ms = discovery_kato_ms
        # A controller is dropped after KATO x (1 + slack) without traffic. Linux 6.1 asks for
        # KATO 5 s with no grace of its own and sends Keep Alive every KATO/2; a loaded host (or
        # a TCG guest, where keep-alive round trips of 3 s were seen) can be seconds late.
        self.keep_alive_slack = keep_alive_slack
        self.discovery = Subsystem(DISCOVERY_NQN, discovery_serial, model, firmware=firmware,
                                   _discovery=True)
        self.discovery._target = self
        self._subsystems: dict[str, Subsystem] = {}
        self._listeners: dict[int, Listener] = {}
        self.genctr = 0

    # --- subsystems -------------------------------------------------------------------------
    @property
    def subsystems(self) -> Mapping[str, Subsystem]:
        return self._subsystems

    def add_subsystem(self, subsystem: Subsystem) -> Subsystem:
        if subsystem.is_discovery:
            raise ValueError("the discovery subsystem exists already")
        if subsystem.nqn in self._subsystems:
            raise ValueError(f"subsystem {subsystem.nqn} exists")
        if subsystem._target is not None:
            raise ValueError(f"subsystem {subsystem.nqn} belongs to another target")
        subsystem._target = self
        self._subsystems[subsystem.nqn] = subsystem
        log.info("subsystem %s added", subsystem.nqn)
        self.discovery_changed()
        return subsystem

    def remove_subsystem(self, nqn: str) -> None:
        """Remove a subsystem; its controllers are deleted and their connections closed."""
        subsystem = self._subsystems.pop(nqn)
        for ctrl in list(subsystem.controllers.values()):
            ctrl.delete("subsystem removed")
        subsystem._target = None
        log.info("subsystem %s removed", nqn)
        self.discovery_changed()

    def find_subsystem(self, nqn: str) -> Subsystem | None:
        """The subsystem named ``nqn``, the discovery subsystem included."""
        if nqn == DISCOVERY_NQN:
            return self.discovery
        return self._subsystems.get(nqn)

    # --- listeners --------------------------------------------------------------------------
    @property
    def listeners(self) -> Mapping[int, Listener]:
        return self._listeners

    def add_listener(self, traddr: str, trsvcid: str | int, adrfam: int | str | None = None,
                     portid: int | None = None, tls: str = "off") -> Listener:
        """Register a listener; returns it (port id assigned when None). ``adrfam``: 1/"ipv4",
        2/"ipv6", or None to infer it from ``traddr``; ``tls``: one of TLS_MODES."""
        if portid is None or portid == 0:
            portid = max(self._listeners, default=0) + 1
        listener = Listener(traddr, str(trsvcid), _adrfam_value(adrfam), portid, tls)
        if not 1 <= portid <= 0xFFFF:
            raise ValueError("portid must be 1..65535")
        if portid in self._listeners:
            raise ValueError(f"port id {portid} in use")
        if any((x.traddr, x.trsvcid) == (listener.traddr, listener.trsvcid)
               for x in self._listeners.values()):
            raise ValueError(f"{listener.traddr}:{listener.trsvcid} is registered")
        self._listeners[portid] = listener
        self.discovery_changed()
        return listener

    def remove_listener(self, listener: Listener | int) -> None:
        """Unregister a listener (or its port id); controllers that connected through it are
        deleted."""
        portid = listener if isinstance(listener, int) else listener.portid
        removed = self._listeners.pop(portid)
        for ctrl in list(self.controllers()):
            if ctrl.listener == removed:
                ctrl.delete("listener removed")
        self.discovery_changed()

    # --- controllers ------------------------------------------------------------------------
    def controllers(self) -> Iterator[Controller]:
        yield from self.discovery.controllers.values()
        for subsystem in self._subsystems.values():
            yield from subsystem.controllers.values()

    def discovery_changed(self) -> None:
        """The discovery log may read differently: bump the generation counter, delete the
        controllers no longer admitted, and notify discovery controllers."""
        self.genctr += 1
        for subsystem in self._subsystems.values():
            subsystem.revalidate("access revoked")
        for ctrl in list(self.discovery.controllers.values()):
            ctrl.discovery_changed()


def new_host_nqn() -> str:
    """A UUID-based host NQN (Base 2.0 §4.5), as ``nvme gen-hostnqn`` makes."""
    return f"nqn.2014-08.org.nvmexpress:uuid:{uuid_mod.uuid4()}"
