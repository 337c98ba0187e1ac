"""NVMe reservations of one namespace (one volume): registrants, the holder, the type, the
generation (Base 2.0 §8.19; the behaviour of Linux nvmet's pr.c where the spec leaves room).

Theory of operation.
- A registrant is a *host*, named by the Host Identifier it sent in Connect, not a
  controller: every controller of that host shares its registration and its reservation.
- :class:`Reservations` is sans-I/O: the command methods change the state or raise
  ``target.nvme.status`` errors (Reservation Conflict, Invalid Field) and return whether the
  state changed. The caller (target/io.py) then awaits ``on_change`` with a
  :class:`ReservationRecord` (the control service persists it) before it completes the command,
  so a completed command survives a restart.
- The I/O path pays for reservations only while one is *held*: each namespace that serves the
  volume has an attribute ``fence`` that is this object while a reservation is held and None
  otherwise; the read and write paths test that one attribute. :meth:`blocks_read` and
  :meth:`blocks_write` decide (the table of Base 2.0 Figure 490, "Command Behavior in the
  Presence of a Reservation").
- All-registrants types (5, 6): every registrant is a holder. ``holder`` still names one of
  them, so that the reservation outlives its acquirer while registrants remain (as nvmet).
- Persist Through Power Loss (PTPL): the state is kept in the control state at every change
  whatever PTPL is; at start the service restores it only when PTPL is set. PTPL starts set
  (the persistent state is this target's default, and RESCAP says PTPL is supported); a
  Register with CPTPL 10b clears it, 11b sets it.
- Notices (Reservation Notification log, 80h): a command that takes something from other
  hosts leaves (host id, ReservationNotice) pairs in ``notices`` for the caller to deliver to
  those hosts' controllers, as nvmet sends them: Registration Preempted to a host a preempt
  unregistered; Reservation Released to the other registrants when a registrants-only or
  all-registrants reservation ends or a preempt changes its type; Reservation Preempted to the
  other registrants when a Clear ends everything.
- Preempt and Abort is Preempt: commands already running are not aborted, which the spec
  allows a controller to do only as best effort anyway.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from target.nvme import status as st
from target.nvme.reservations import RegisteredHost, ReservationStatus
from target.nvme.spec import (
    CPTPL_CLEAR,
    CPTPL_NO_CHANGE,
    CPTPL_SET,
    AcquireAction,
    RegisterAction,
    ReleaseAction,
    ReservationNotice,
    ReservationType,
)

RT = ReservationType
ALL_REGISTRANTS_TYPES = frozenset({RT.WRITE_EXCLUSIVE_ALL_REGISTRANTS,
                                   RT.EXCLUSIVE_ACCESS_ALL_REGISTRANTS})
# Types under which registrants (not only the holder) may write and, for exclusive access,
# read.
REGISTRANTS_TYPES = frozenset({RT.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
                               RT.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY}) | ALL_REGISTRANTS_TYPES
EXCLUSIVE_ACCESS_TYPES = frozenset({RT.EXCLUSIVE_ACCESS, RT.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
                                    RT.EXCLUSIVE_ACCESS_ALL_REGISTRANTS})


@dataclass(frozen=True)
class ReservationRecord:
    """What is persisted: registrants in registration order as (host id, key)."""

    registrants: tuple[tuple[bytes, int], ...] = ()
    holder: bytes | None = None
    rtype: int = 0
    generation: int = 0
    ptpl: bool = True


class Fenced(Protocol):
    """A namespace: what :class:`Reservations` sets while a reservation is held."""

    fence: Reservations | None


ChangeHook = Callable[[ReservationRecord], Awaitable[None]]


@dataclass(eq=False)
class Reservations:
    """One volume's reservations (see the module docstring). ``registrants`` keeps the
    order of registration, which the report shows."""

    registrants: dict[bytes, int] = field(default_factory=dict)  # host id -> key, in order
    holder: bytes | None = None
    rtype: int = 0
    generation: int = 0
    ptpl: bool = True
    on_change: ChangeHook | None = None
    notices: list[tuple[bytes, ReservationNotice]] = field(default_factory=list)
    _fenced: list[Fenced] = field(default_factory=list)

    def take_notices(self) -> list[tuple[bytes, ReservationNotice]]:
        notices, self.notices = self.notices, []
        return notices

    def _notify_others(self, hostid: bytes, kind: ReservationNotice) -> None:
        self.notices.extend((other, kind) for other in self.registrants if other != hostid)

    @classmethod
    def from_record(cls, rec: ReservationRecord) -> Reservations:
        resv = cls(dict(rec.registrants), rec.holder, rec.rtype, rec.generation, rec.ptpl)
        if resv.holder is not None and (resv.holder not in resv.registrants
                                        or resv.rtype not in tuple(RT)):
            raise ValueError("a reservation record whose holder is not a registrant")
        if resv.holder is None:
            resv.rtype = 0
        return resv

    def record(self) -> ReservationRecord:
        return ReservationRecord(tuple(self.registrants.items()), self.holder, self.rtype,
                                 self.generation, self.ptpl)

    # --- the namespaces that serve this volume --------------------------------------------------
    def attach(self, ns: Fenced) -> None:
        self._fenced.append(ns)
        ns.fence = self if self.holder is not None else None

    def detach(self, ns: Fenced) -> None:
        if ns in self._fenced:
            self._fenced.remove(ns)
        ns.fence = None

    def _update_fences(self) -> None:
        fence = self if self.holder is not None else None
        for ns in self._fenced:
            ns.fence = fence

    # --- the I/O path (only called while a reservation is held) ---------------------------------
    def _holds(self, hostid: bytes) -> bool:
        if self.rtype in ALL_REGISTRANTS_TYPES:
            return hostid in self.registrants
        return hostid == self.holder

    def blocks_write(self, hostid: bytes) -> bool:
        """Whether a write-group command (Write, Write Zeroes, Dataset Management, Flush)
        from this host conflicts with the reservation."""
        if self.holder is None or hostid == self.holder:
            return False
        if self.rtype in REGISTRANTS_TYPES:
            return hostid not in self.registrants
        return True

    def blocks_read(self, hostid: bytes) -> bool:
        """Whether a Read from this host conflicts with the reservation."""
        if self.holder is None or self.rtype not in EXCLUSIVE_ACCESS_TYPES:
            return False
        return self.blocks_write(hostid)

    # --- Reservation Register -------------------------------------------------------------------
    def register(self, hostid: bytes, action: int, crkey: int, nrkey: int, *, iekey: bool,
                 cptpl: int) -> None:
        if cptpl not in (CPTPL_NO_CHANGE, CPTPL_CLEAR, CPTPL_SET):
            raise st.InvalidField(f"CPTPL {cptpl:#b} is reserved", error_loc=43)
        current = self.registrants.get(hostid)
        if action == RegisterAction.REGISTER:
            if current is not None:
                if current != nrkey:
                    raise st.ReservationConflict("host is registered with another key")
            else:
                self.registrants[hostid] = nrkey
        elif action == RegisterAction.UNREGISTER:
            if current is None or (not iekey and current != crkey):
                raise st.ReservationConflict("host is not registered with that key")
            self._unregister(hostid)
        elif action == RegisterAction.REPLACE:
            if current is None or (not iekey and current != crkey):
                raise st.ReservationConflict("host is not registered with that key")
            self.registrants[hostid] = nrkey
        else:
            raise st.InvalidField(f"register action {action}", error_loc=40)
        if cptpl != CPTPL_NO_CHANGE:
            self.ptpl = cptpl == CPTPL_SET
        self.generation = (self.generation + 1) & 0xFFFFFFFF

    def _unregister(self, hostid: bytes) -> None:
        del self.registrants[hostid]
        if hostid != self.holder:
            return
        if self.rtype in ALL_REGISTRANTS_TYPES and self.registrants:
            self.holder = next(iter(self.registrants))  # the reservation stays with the rest
            return
        if self.rtype in REGISTRANTS_TYPES:
            self._notify_others(hostid, ReservationNotice.RESERVATION_RELEASED)
        self._drop_reservation()

    def _drop_reservation(self) -> None:
        self.holder = None
        self.rtype = 0
        self._update_fences()

    def _set_holder(self, hostid: bytes, rtype: int) -> None:
        self.holder = hostid
        self.rtype = rtype
        self._update_fences()

    # --- Reservation Acquire --------------------------------------------------------------------
    def _check_key(self, hostid: bytes, crkey: int) -> None:
        if self.registrants.get(hostid) != crkey:
            raise st.ReservationConflict("host is not registered with that key")

    def acquire(self, hostid: bytes, action: int, rtype: int, crkey: int, prkey: int, *,
                iekey: bool) -> None:
        if iekey:  # Base 2.0: IEKEY is reserved in Acquire
            raise st.InvalidField("IEKEY is not used by Reservation Acquire", error_loc=40)
        if rtype not in tuple(RT):
            raise st.InvalidField(f"reservation type {rtype}", error_loc=41)
        if action not in tuple(AcquireAction):
            raise st.InvalidField(f"acquire action {action}", error_loc=40)
        self._check_key(hostid, crkey)
        if action == AcquireAction.ACQUIRE:
            if self.holder is None:
                self._set_holder(hostid, rtype)
            elif not self._holds(hostid) or self.rtype != rtype:
                raise st.ReservationConflict(
                    f"a type {self.rtype} reservation is held by another host")
            return  # Acquire does not change the generation
        self._preempt(hostid, rtype, prkey)
        self.generation = (self.generation + 1) & 0xFFFFFFFF

    def _preempt(self, hostid: bytes, rtype: int, prkey: int) -> None:
        if self.holder is None:
            self._remove_by_key(prkey, hostid, spare_preemptor=False, must_match=True)
        elif self.rtype in ALL_REGISTRANTS_TYPES:
            if prkey == 0:  # everyone else goes; the preempting host holds the new one
                self._set_holder(hostid, rtype)
                for other in [h for h in self.registrants if h != hostid]:
                    del self.registrants[other]
                    self.notices.append((other, ReservationNotice.REGISTRATION_PREEMPTED))
            else:
                self._remove_by_key(prkey, hostid, spare_preemptor=False, must_match=True)
        elif self.holder == hostid:
            if rtype != self.rtype:
                self._notify_others(hostid, ReservationNotice.RESERVATION_RELEASED)
            self._set_holder(hostid, rtype)  # a holder changes the type in place
        elif prkey == self.registrants[self.holder]:
            changed = rtype != self.rtype
            self._set_holder(hostid, rtype)
            self._remove_by_key(prkey, hostid, spare_preemptor=True, must_match=False)
            if changed:
                self._notify_others(hostid, ReservationNotice.RESERVATION_RELEASED)
        elif prkey:
            self._remove_by_key(prkey, hostid, spare_preemptor=False, must_match=True)
        else:
            raise st.InvalidField("PRKEY 0 preempts only an all-registrants reservation",
                                  error_loc=24)

    def _remove_by_key(self, prkey: int, preemptor: bytes, *, spare_preemptor: bool,
                       must_match: bool) -> None:
        """Unregister every host registered with ``prkey`` (the preemptor too, unless
        spared); the others hear that their registration was preempted."""
        victims = [h for h, k in self.registrants.items()
                   if k == prkey and not (spare_preemptor and h == preemptor)]
        if must_match and not victims:
            raise st.ReservationConflict(f"no registrant holds key {prkey:#x}")
        for victim in victims:
            self._unregister(victim)
            if victim != preemptor:
                self.notices.append((victim, ReservationNotice.REGISTRATION_PREEMPTED))

    # --- Reservation Release --------------------------------------------------------------------
    def release(self, hostid: bytes, action: int, rtype: int, crkey: int, *,
                iekey: bool) -> None:
        if iekey:
            raise st.InvalidField("IEKEY is not used by Reservation Release", error_loc=40)
        if action not in tuple(ReleaseAction):
            raise st.InvalidField(f"release action {action}", error_loc=40)
        self._check_key(hostid, crkey)
        if action == ReleaseAction.CLEAR:
            self._notify_others(hostid, ReservationNotice.RESERVATION_PREEMPTED)
            self.registrants.clear()
            self._drop_reservation()
            self.generation = (self.generation + 1) & 0xFFFFFFFF
            return
        if self.holder is None or not self._holds(hostid):
            return  # nothing of this host's to release: success, no change
        if rtype != self.rtype:
            raise st.InvalidField(f"release of type {rtype}, the reservation is type "
                                  f"{self.rtype}", error_loc=41)
        if self.rtype in REGISTRANTS_TYPES:
            self._notify_others(hostid, ReservationNotice.RESERVATION_RELEASED)
        self._drop_reservation()

    # --- Reservation Report ---------------------------------------------------------------------
    def status(self) -> ReservationStatus:
        return ReservationStatus(
            self.generation, self.rtype if self.holder is not None else 0, self.ptpl,
            tuple(RegisteredHost(h, k, self.holder is not None and self._holds(h))
                  for h, k in self.registrants.items()))
