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
- ANA (target/ana.py): the target's :class:`~target.ana.AnaTable` says which state each path
  (listener port) shows for each ANA group. Each subsystem keeps, per port that controllers
  reached it through, a *path view*: the live NSID -> Namespace dict of the namespaces that path
  serves. The I/O path looks namespaces up there, so ANA costs it nothing; a miss is told apart
  (Invalid Namespace or an ANA path status) only then. A change of state rebuilds the views in
  place, bumps the ANA log's change count and queues an ANA change notice on the controllers of
  the ports whose states changed.
- Nothing here does I/O or awaits; a namespace wraps a :class:`target.blockdev.BlockDevice`.
- Authentication: a host for which the subsystem holds :class:`HostCredentials` must pass
  DH-HMAC-CHAP on every queue (target/auth). Changing or removing a host's credentials does
  not touch its live controllers (key rotation without dropping hosts): the new secret is
  asked for at the next authentication (a new queue, or the host re-authenticating). The
  discovery controller asks for it only when ``Target.discovery_auth`` is on, and then from
  hosts that hold a secret on some subsystem, accepting any of them.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import uuid as uuid_mod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from target.ana import (
    DEFAULT_ANAGRPID,
    SERVING_STATES,
    AnaTable,
    check_grpid,
    path_error,
)
from target.auth.responder import HostCredentials, Offload, run_inline
from target.blockdev import BlockDevice, DirectRead, DirectWrite
from target.nvme import status as st
from target.nvme.logpages import AnaGroupDescriptor
from target.nvme.spec import (
    ADRFAM_IPV4,
    ADRFAM_IPV6,
    CNTLID_STATIC_MAX,
    DISCOVERY_NQN,
    NQN_MAX_LEN,
    AnaState,
)
from target.reservation import Reservations

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
        "anagrpid",
        "block_size",
        "counters",
        "device",
        "eui64",
        "fence",
        "flow",
        "lba_shift",
        "nblocks",
        "nguid",
        "nsid",
        "read_direct",
        "reservations",
        "uuid",
        "write_direct",
    )

    def __init__(self, nsid: int, device: BlockDevice,
                 anagrpid: int = DEFAULT_ANAGRPID,
                 reservations: Reservations | None = None) -> None:
        bs = device.block_size
        if bs < 512 or bs & (bs - 1):
            raise ValueError(f"block size {bs} is not a power of two >= 512")
        self.nsid = nsid
        self.device = device
        self.anagrpid = check_grpid(anagrpid)
        self.block_size = bs
        self.lba_shift = bs.bit_length() - 1
        self.nblocks = device.num_blocks
        self.counters = IoCounters()
        # The device's admission flow (target.admission), if it has one: whose queue its
        # commands wait in when the target's CPU is contended.
        self.flow: object | None = getattr(device, "admission_flow", None)
        # The device's optional direct read and write (target.blockdev), looked up once.
        self.read_direct: DirectRead | None = getattr(device, "read_direct", None)
        self.write_direct: DirectWrite | None = getattr(device, "write_direct", None)
        # Identities stable per device uuid: the host matches paths and rejects duplicates by them.
        self.uuid: bytes = device.uuid.bytes
        self.nguid: bytes = self.uuid
        self.eui64: bytes = hashlib.blake2b(self.uuid, digest_size=8, person=b"sbstore-eui64").digest()
        # Reservations (target/reservation.py): shared by every namespace of the same volume
        # when the control service passes one in. ``fence`` is it while a reservation is held,
        # else None: the one attribute the I/O path tests.
        self.fence: Reservations | None = None
        self.reservations = reservations if reservations is not None else Reservations()
        self.reservations.attach(self)

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
        self._credentials: dict[str, HostCredentials] = {}
        self._listener_ids: frozenset[int] | None = (
            None if listeners is None else frozenset(listeners))
        # The I/O path reads this dict on every command: keep it the same object for life.
        self._namespaces: dict[int, Namespace] = {}
        self._controllers: dict[int, Controller] = {}
        self._next_cntlid = 1
        # Dynamic controller ids come from this range. Several targets serving one subsystem
        # (a replicated volume's nodes) need disjoint ranges: a Linux host refuses a second
        # path whose controller id it already has in the subsystem ("Duplicate cntlid").
        self._cntlid_range = (1, CNTLID_STATIC_MAX)
        self._target: Target | None = None
        # ANA, per port id: the namespaces that path serves (the I/O path's dict: the same
        # object for life, rebuilt in place) and the state of each group on it.
        self._path_views: dict[int, dict[int, Namespace]] = {}
        self._path_states: dict[int, dict[int, AnaState]] = {}
        self._group_chgcnt: dict[tuple[int, int], int] = {}  # (portid, grpid) -> last change
        self.ana_chgcnt = 0  # the ANA log's change count

    def __repr__(self) -> str:
        return f"Subsystem({self.nqn!r}, namespaces={sorted(self._namespaces)})"

    # --- namespaces ---------------------------------------------------------------------------
    @property
    def namespaces(self) -> Mapping[int, Namespace]:
        """The live NSID -> Namespace map (read-only view of the same dict the I/O path uses)."""
        return self._namespaces

    def add_namespace(self, device: BlockDevice, nsid: int | None = None, *,
                      anagrpid: int = DEFAULT_ANAGRPID,
                      reservations: Reservations | None = None) -> int:
        """Export ``device`` in ANA group ``anagrpid``; returns its NSID (the lowest free one
        unless given). ``reservations``: the volume's reservation state (a fresh one if
        None), which every namespace of the same volume should share."""
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
        self._namespaces[nsid] = Namespace(nsid, device, anagrpid, reservations)
        self.refresh_ana()
        log.info("%s: namespace %d added (%d blocks of %d bytes)", self.nqn, nsid,
                 device.num_blocks, device.block_size)
        self._notify_namespace(nsid)
        return nsid

    def remove_namespace(self, nsid: int) -> None:
        ns = self._namespaces.pop(nsid, None)
        if ns is None:
            raise KeyError(f"{self.nqn}: no namespace {nsid}")
        ns.reservations.detach(ns)
        log.info("%s: namespace %d removed", self.nqn, nsid)
        self.refresh_ana()
        self._notify_namespace(nsid)

    def namespace_changed(self, nsid: int) -> None:
        """Tell hosts that a namespace's attributes (its size) changed."""
        ns = self._namespaces.get(nsid)
        if ns is None:
            raise KeyError(f"{self.nqn}: no namespace {nsid}")
        ns.refresh()
        self._notify_namespace(nsid)

    def reservation_notice(self, nsid: int, hostid: bytes, kind: int) -> None:
        """Queue a Reservation Notification (log 80h) on every controller of host ``hostid``."""
        for ctrl in list(self._controllers.values()):
            if ctrl.hostid == hostid:
                ctrl.reservation_notice(kind, nsid)

    def _notify_namespace(self, nsid: int) -> None:
        for ctrl in list(self._controllers.values()):
            ctrl.namespace_changed(nsid)

    # --- ANA (see the module docstring and target/ana.py) ------------------------------------
    def ana_state(self, portid: int, grpid: int) -> AnaState:
        target = self._target
        return AnaState.OPTIMIZED if target is None else target.ana.state(portid, self.nqn,
                                                                          grpid)

    def ana_groups(self) -> dict[int, list[int]]:
        """ANA group id -> its NSIDs (ascending), for the groups that hold namespaces."""
        groups: dict[int, list[int]] = {}
        for nsid in sorted(self._namespaces):
            groups.setdefault(self._namespaces[nsid].anagrpid, []).append(nsid)
        return groups

    def ana_descriptors(self, portid: int) -> list[AnaGroupDescriptor]:
        """The ANA log's group descriptors as a controller on ``portid`` sees them."""
        self.path_view(portid)
        return [AnaGroupDescriptor(grpid, self.ana_state(portid, grpid),
                                   self._group_chgcnt.get((portid, grpid), 0), tuple(nsids))
                for grpid, nsids in sorted(self.ana_groups().items())]

    def path_view(self, portid: int) -> Mapping[int, Namespace]:
        """The live NSID -> Namespace dict of the namespaces port ``portid`` serves I/O for."""
        view = self._path_views.get(portid)
        if view is None:
            view = self._path_views[portid] = {}
            self._path_states[portid] = self._rebuild_view(portid, view)
        return view

    def path_error(self, portid: int, nsid: int) -> st.NvmeError:
        """Why an I/O command for ``nsid`` found no namespace in the port's path view."""
        ns = self._namespaces.get(nsid)
        if ns is None:
            return st.InvalidNamespace(f"no namespace {nsid}", error_loc=4)
        state = self.ana_state(portid, ns.anagrpid)
        if state in SERVING_STATES:  # not expected: the views are rebuilt on every change
            return st.AnaTransition(f"namespace {nsid}: path view out of date")
        return path_error(state, f"namespace {nsid} (ANA group {ns.anagrpid}) is "
                                 f"{state.name.lower()} through port {portid}")

    def _rebuild_view(self, portid: int, view: dict[int, Namespace]) -> dict[int, AnaState]:
        states = {grpid: self.ana_state(portid, grpid) for grpid in
                  {ns.anagrpid for ns in self._namespaces.values()}}
        view.clear()
        view.update((nsid, ns) for nsid, ns in self._namespaces.items()
                    if states[ns.anagrpid] in SERVING_STATES)
        return states

    def refresh_ana(self) -> None:
        """Re-read the ANA states of every known path (after a table or namespace change):
        rebuild the path views, bump the change count if the log reads differently, and queue
        an ANA change notice on the controllers of the ports where a group changed state."""
        changed_ports = set()
        log_changed = False
        for portid, view in self._path_views.items():
            old = self._path_states[portid]
            new = self._rebuild_view(portid, view)
            if new == old:
                continue
            self._path_states[portid] = new
            log_changed = True
            moved = [g for g in new if g in old and new[g] != old[g]]
            if moved:
                changed_ports.add(portid)
                for grpid in moved:
                    log.info("%s: ANA group %d on port %d: %s -> %s", self.nqn, grpid, portid,
                             old[grpid].name, new[grpid].name)
                    self._group_chgcnt[(portid, grpid)] = self.ana_chgcnt + 1
        if log_changed:
            self.ana_chgcnt += 1
        for ctrl in list(self._controllers.values()):
            if ctrl.listener.portid in changed_ports:
                ctrl.ana_changed()

    def forget_port(self, portid: int) -> None:
        """The port's listener is gone (its controllers are deleted already)."""
        self._path_views.pop(portid, None)
        self._path_states.pop(portid, None)
        for key in [k for k in self._group_chgcnt if k[0] == portid]:
            del self._group_chgcnt[key]

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

    def set_host_credentials(self, hostnqn: str, credentials: HostCredentials | None) -> None:
        """Require DH-HMAC-CHAP from ``hostnqn`` with these credentials (None: no longer).
        Live controllers stay: the next authentication uses what is set now."""
        _check_nqn(hostnqn)
        if credentials is None:
            self._credentials.pop(hostnqn, None)
        else:
            self._credentials[hostnqn] = credentials

    def host_credentials(self, hostnqn: str) -> HostCredentials | None:
        return self._credentials.get(hostnqn)

    @property
    def hosts_with_credentials(self) -> frozenset[str]:
        return frozenset(self._credentials)

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
        lo, hi = self._cntlid_range
        for _ in range(hi - lo + 1):
            cntlid = self._next_cntlid
            self._next_cntlid = lo + (cntlid - lo + 1) % (hi - lo + 1)
            if cntlid not in self._controllers:
                return cntlid
        return None

    @property
    def cntlid_range(self) -> tuple[int, int]:
        return self._cntlid_range

    def set_cntlid_range(self, lo: int, hi: int) -> None:
        """Allocate dynamic controller ids from ``lo..hi`` from now on (controllers that
        exist keep theirs)."""
        if not 1 <= lo <= hi <= CNTLID_STATIC_MAX:
            raise ValueError(f"controller id range {lo}..{hi} is not within "
                             f"1..{CNTLID_STATIC_MAX}")
        self._cntlid_range = (lo, hi)
        if not lo <= self._next_cntlid <= hi:
            self._next_cntlid = lo

    def register_controller(self, ctrl: Controller) -> None:
        if ctrl.cntlid in self._controllers:
            raise ValueError(f"cntlid {ctrl.cntlid} in use")
        self._controllers[ctrl.cntlid] = ctrl
        if not self.is_discovery:
            self.path_view(ctrl.listener.portid)  # so that a state change reaches it

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
        # DH-HMAC-CHAP: whether the discovery controller asks hosts that hold a secret to
        # authenticate, and how slow computations (modular exponentiations) are run: the
        # server points ``offload`` at a worker thread so that the event loop keeps serving.
        self.discovery_auth = False
        self.offload: Offload = run_inline
        self.dhchap_successes = 0  # DH-HMAC-CHAP transactions, per queue (metrics)
        self.dhchap_failures = 0
        self.discovery = Subsystem(DISCOVERY_NQN, discovery_serial, model, firmware=firmware,
                                   _discovery=True)
        self.discovery._target = self
        self._subsystems: dict[str, Subsystem] = {}
        self._listeners: dict[int, Listener] = {}
        self.genctr = 0
        self.ana = AnaTable()

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
        subsystem.refresh_ana()  # the target's ANA table may name it already
        log.info("subsystem %s added", subsystem.nqn)
        self.discovery_changed()
        return subsystem

    def remove_subsystem(self, nqn: str) -> None:
        """Remove a subsystem; its controllers are deleted and their connections closed."""
        subsystem = self._subsystems.pop(nqn)
        for ctrl in list(subsystem.controllers.values()):
            ctrl.delete("subsystem removed")
        for ns in subsystem.namespaces.values():
            ns.reservations.detach(ns)  # the volume's reservations outlive this export
        subsystem._target = None
        log.info("subsystem %s removed", nqn)
        self.discovery_changed()

    def find_subsystem(self, nqn: str) -> Subsystem | None:
        """The subsystem named ``nqn``, the discovery subsystem included."""
        if nqn == DISCOVERY_NQN:
            return self.discovery
        return self._subsystems.get(nqn)

    def count_authentication(self, ok: bool) -> None:
        if ok:
            self.dhchap_successes += 1
        else:
            self.dhchap_failures += 1

    def credentials_for(self, subsystem: Subsystem, hostnqn: str) -> list[HostCredentials]:
        """The credentials a host connecting to ``subsystem`` may authenticate with (empty:
        it need not authenticate)."""
        if not subsystem.is_discovery:
            creds = subsystem.host_credentials(hostnqn)
            return [] if creds is None else [creds]
        if not self.discovery_auth:
            return []
        found: list[HostCredentials] = []
        for sub in self._subsystems.values():
            creds = sub.host_credentials(hostnqn)
            if creds is not None and creds not in found:
                found.append(creds)
        return found

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
        # Port ids come back (an interface's addresses): a new listener starts optimized.
        self.ana.forget_port(portid)
        for subsystem in self._subsystems.values():
            subsystem.forget_port(portid)
        self.discovery_changed()

    # --- ANA --------------------------------------------------------------------------------
    def set_ana_state(self, portid: int, state: AnaState | None, *, nqn: str | None = None,
                      grpid: int | None = None) -> None:
        """Set the ANA state of a path: every group of every subsystem on port ``portid``, or
        of subsystem ``nqn``, or of its group ``grpid`` (the most specific setting wins; None
        removes a setting). Live controllers see the change at once (target/ana.py)."""
        if self.ana.set(portid, state, nqn=nqn, grpid=grpid):
            for subsystem in ([self._subsystems[nqn]] if nqn in self._subsystems
                              else [] if nqn is not None else self._subsystems.values()):
                subsystem.refresh_ana()

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
