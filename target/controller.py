"""NVMe controllers and the per-connection :class:`QueueSession` the server drives (sans-I/O:
nothing here touches a socket or a clock; time comes in as ``now``).

Theory of operation (after Linux drivers/nvme/target/core.c).
- One :class:`QueueSession` per TCP connection = one NVMe queue. Until a Connect arrives, the
  only command it accepts is Connect (anything else: Command Sequence Error). A Connect on qid 0
  creates a :class:`Controller` for (subsystem, host); a Connect on qid 1..N joins an existing
  controller's I/O queue set.
- ``handle_command`` is an attribute, not a method: the session rebinds it at each state change
  (unconnected -> admin queue / I/O queue -> closed), so every command pays for one dispatch,
  and the I/O queue's hot path (target/io.py) runs with no extra await or state test.
- Each command is parse -> validate -> execute; handlers raise ``target.nvme.status`` errors and
  the session turns each into the completion's status (with DNR) in one place, logging it in the
  controller's Error Information log.
- The controller registers (CAP, VS, CC, CSTS) are reached by Property Get/Set. Writes to CC move
  the controller through a transition table (:data:`CC_TRANSITIONS`): enable, reset (EN 1->0:
  I/O queues closed, features back to defaults), shutdown (SHST complete at once). Anything not in
  the table only records CC.
- Keep-alive: KATO from Connect (ms; 0 disables it, except that a discovery controller then gets
  the target's discovery KATO). The admin session reports the controller's deadline in
  ``next_deadline()``; on expiry ``handle_timer`` deletes the controller and every one of its
  sessions gets ``on_close``. Keep Alive restarts the timer; so does any other command on any of
  the controller's queues (traffic based keep-alive, TBKAS, checked lazily at the deadline so the
  I/O path does no timer work). A silent controller goes once KATO x (1 + the target's
  ``keep_alive_slack``, default 0.5) has passed since its last command, and at most one more
  such period later (the lazy check).
- Asynchronous events: an Asynchronous Event Request returns None and completes later through
  the admin session's ``on_async_response``. At most AERL+1 (4) are outstanding. An event is
  sent once, then masked until the host reads its log page without RAE (Base 2.0 §5.2). The
  notices: Namespace Attribute Changed (log 04h), ANA Change (log 0Ch; the subsystem calls
  ``ana_changed`` when a group's state on this controller's port changed) and, on discovery
  controllers, Discovery Log Changed (log 70h); each only if enabled in Asynchronous Event
  Configuration.
- Disconnect of an I/O queue completes, detaches the queue from its controller, and then asks to
  close through the timer: ``next_deadline()`` returns the time of the Disconnect and
  ``handle_timer`` calls ``on_close``, so the server sends the completion first.
- In-band authentication (DH-HMAC-CHAP, target/auth/responder.py), as nvmet: when the
  subsystem holds credentials for the host, the Connect response sets AUTHREQ.ATR and the
  queue gets a :class:`Responder`. Until it has authenticated, the queue takes only fabrics
  commands (Property Get/Set, Authentication Send/Receive, Disconnect); anything else fails
  with Authentication Required (SCT 1h, SC 91h, DNR). An I/O queue runs a gate handler until
  then, and is bound to the I/O path only once authenticated, so the hot path pays nothing.
  A failed authentication (Failure1 read by the host, or Failure2 sent by it) deletes the
  controller once the completion is out, like nvmet's fatal error.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from target import admin, fabrics
from target.admin import AERL, ERROR_LOG_ENTRIES
from target.auth.responder import KeyPairs, Responder
from target.io import IoQueue, data_status_error
from target.nvme import status as st
from target.nvme.logpages import CHANGED_NS_LIST_MAX, ErrorLogEntry
from target.nvme.reservations import ReservationNotification
from target.nvme.spec import (
    AEC_ANA_CHANGE,
    AEC_DISCOVERY_CHANGE,
    AEC_NS_ATTRIBUTE,
    CAP_CQR,
    CAP_CSS_NVM,
    CAP_TO_SHIFT,
    CC_AMS_MASK,
    CC_AMS_SHIFT,
    CC_CSS_MASK,
    CC_CSS_SHIFT,
    CC_EN,
    CC_IOCQES_SHIFT,
    CC_IOSQES_SHIFT,
    CC_MPS_MASK,
    CC_MPS_SHIFT,
    CC_QES_MASK,
    CC_SHN_MASK,
    CC_SHN_SHIFT,
    CONNECT_AUTHREQ_ATR,
    CONNECT_CATTR_DISABLE_SQFLOW,
    CSTS_CFS,
    CSTS_RDY,
    CSTS_SHST_SHIFT,
    IOCQES,
    IOSQES,
    NVME_VS_1_3,
    SHST_COMPLETE,
    SQHD_DISABLED,
    AsyncEventIoCommandSet,
    AsyncEventNotice,
    AsyncEventType,
    FabricsType,
    LogPageId,
)
from target.nvme.structs import pull_sqe
from target.response import Done, Response, completion
from target.subsystem import IoCounters, Listener, Subsystem, Target

if TYPE_CHECKING:
    from target.fabrics import ConnectCommand

__all__ = ["CC_TRANSITIONS", "CcEvent", "Controller", "CtrlState", "QueueSession", "Response"]

log = logging.getLogger(__name__)

CAP_TO_500MS = 15  # CAP.TO: worst-case time to become ready, 500 ms units


def _aen(event_type: int, info: int, lid: int) -> int:
    """Completion dword 0 of an Asynchronous Event Request (Base 2.0 Figure 150)."""
    return event_type | info << 8 | lid << 16


AEN_NS_CHANGED = _aen(AsyncEventType.NOTICE, AsyncEventNotice.NAMESPACE_ATTRIBUTE_CHANGED,
                      LogPageId.CHANGED_NAMESPACE_LIST)
AEN_ANA_CHANGED = _aen(AsyncEventType.NOTICE, AsyncEventNotice.ANA_CHANGE, LogPageId.ANA)
AEN_RESERVATION = _aen(AsyncEventType.IO_COMMAND_SET,
                       AsyncEventIoCommandSet.RESERVATION_LOG_AVAILABLE,
                       LogPageId.RESERVATION_NOTIFICATION)
RESERVATION_LOG_MAX = 255  # notices kept per controller (Number of Available Log Pages)
AEN_DISCOVERY_CHANGED = _aen(AsyncEventType.NOTICE, AsyncEventNotice.DISCOVERY_LOG_CHANGED,
                             LogPageId.DISCOVERY)


class CtrlState(enum.Enum):
    DISABLED = "disabled"  # CC.EN 0, CSTS.RDY 0
    READY = "ready"  # CC.EN 1, CSTS.RDY 1: admin commands run, I/O queues may connect
    SHUTDOWN = "shutdown"  # CC.SHN written: CSTS.SHST complete
    FAILED = "failed"  # enabled with a configuration we cannot honour: CSTS.CFS


class CcEvent(enum.Enum):
    ENABLE = "enable"  # CC.EN 0 -> 1
    DISABLE = "disable"  # CC.EN 1 -> 0 (controller reset)
    SHUTDOWN = "shutdown"  # CC.SHN 00 -> non-zero


# (state, event) -> (action method, next state). Anything not here changes only CC. An action
# may return a different next state (enabling with a bad CC fails the controller).
CC_TRANSITIONS: dict[tuple[CtrlState, CcEvent], tuple[str, CtrlState]] = {
    (CtrlState.DISABLED, CcEvent.ENABLE): ("_enable", CtrlState.READY),
    (CtrlState.SHUTDOWN, CcEvent.ENABLE): ("_enable", CtrlState.READY),
    (CtrlState.READY, CcEvent.DISABLE): ("_reset", CtrlState.DISABLED),
    (CtrlState.SHUTDOWN, CcEvent.DISABLE): ("_reset", CtrlState.DISABLED),
    (CtrlState.FAILED, CcEvent.DISABLE): ("_reset", CtrlState.DISABLED),
    (CtrlState.READY, CcEvent.SHUTDOWN): ("_shutdown", CtrlState.SHUTDOWN),
    (CtrlState.DISABLED, CcEvent.SHUTDOWN): ("_shutdown", CtrlState.SHUTDOWN),
}


def _shn(cc: int) -> int:
    return (cc >> CC_SHN_SHIFT) & CC_SHN_MASK


class Controller:
    """One controller: (subsystem, host) bound by an admin Connect, plus its I/O queues."""

    def __init__(self, target: Target, subsystem: Subsystem, cntlid: int, *, hostnqn: str,
                 hostid: bytes, kato_ms: int, listener: Listener, now: float) -> None:
        self.target = target
        self.subsystem = subsystem
        self.cntlid = cntlid
        self.hostnqn = hostnqn
        self.hostid = hostid
        self.listener = listener
        self.is_discovery = subsystem.is_discovery
        self.mqes = target.queue_entries - 1
        # CAP: MQES, CQR, TO, CSS NVM; MPSMIN = MPSMAX = 0 (4 KiB pages).
        self.cap = self.mqes | CAP_CQR | CAP_TO_500MS << CAP_TO_SHIFT | CAP_CSS_NVM
        self.vs = NVME_VS_1_3
        self.cc = 0
        self.state = CtrlState.DISABLED
        self.mdts_bytes = target.max_data_transfer
        self.sessions: dict[int, QueueSession] = {}
        self.deleted = False
        self.counters = IoCounters()
        self.media_errors = 0
        self.admin_cmds = 0
        self.errors: deque[ErrorLogEntry] = deque(maxlen=ERROR_LOG_ENTRIES)
        self.error_count = 0
        self.changed_nsids: set[int] = set()
        self.changed_overflow = False
        # Reservation Notification log (80h): the oldest first; the oldest go when full (the
        # host sees the gap in the counts).
        self.reservation_log: deque[ReservationNotification] = deque(
            maxlen=RESERVATION_LOG_MAX)
        self.reservation_log_count = 0
        self._aer_cids: deque[int] = deque()
        self._aen_pending: deque[int] = deque()
        self._aen_masked: set[int] = set()  # log page ids whose event the host has not read
        if not kato_ms and self.is_discovery:
            kato_ms = target.discovery_kato_ms
        self.kato_ms = kato_ms
        self._ka_deadline: float | None = None
        self._traffic: tuple[int, ...] = ()
        self.key_pairs = KeyPairs()  # DH-HMAC-CHAP exponentials shared by the queues
        self._init_features()
        self._restart_keep_alive(now)

    def __repr__(self) -> str:
        return (f"Controller({self.subsystem.nqn!r}, cntlid={self.cntlid}, "
                f"host={self.hostnqn!r}, {self.state.value})")

    # --- features (defaults also restored by a controller reset) ------------------------------
    def _init_features(self) -> None:
        self.aec = 0  # Asynchronous Event Configuration
        self.write_cache = True  # Volatile Write Cache enabled (WCE)
        self.features: dict[int, int] = {}  # plain stored values (admin.py knows which)
        self.temp_thresholds: dict[tuple[int, int], int] = {}
        self.io_queues_allowed = self.subsystem.max_io_queues

    # --- registers ----------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.state is CtrlState.READY

    @property
    def csts(self) -> int:
        if self.state is CtrlState.READY:
            return CSTS_RDY
        if self.state is CtrlState.SHUTDOWN:
            return (CSTS_RDY if self.cc & CC_EN else 0) | SHST_COMPLETE << CSTS_SHST_SHIFT
        if self.state is CtrlState.FAILED:
            return CSTS_CFS
        return 0

    def set_cc(self, value: int, now: float) -> None:
        old, self.cc = self.cc, value
        if (old ^ value) & CC_EN:
            event = CcEvent.ENABLE if value & CC_EN else CcEvent.DISABLE
        elif _shn(value) and not _shn(old):
            event = CcEvent.SHUTDOWN
        else:
            return
        row = CC_TRANSITIONS.get((self.state, event))
        if row is None:
            return
        action, next_state = row
        override: CtrlState | None = getattr(self, action)(value, now)
        new_state = override or next_state
        log.info("%r: CC %#x -> %s", self, value, new_state.value)
        self.state = new_state

    def _enable(self, cc: int, now: float) -> CtrlState | None:
        css = (cc >> CC_CSS_SHIFT) & CC_CSS_MASK
        mps = (cc >> CC_MPS_SHIFT) & CC_MPS_MASK
        ams = (cc >> CC_AMS_SHIFT) & CC_AMS_MASK
        iosqes = (cc >> CC_IOSQES_SHIFT) & CC_QES_MASK
        iocqes = (cc >> CC_IOCQES_SHIFT) & CC_QES_MASK
        if self.is_discovery:  # no I/O queues: entry sizes may be left 0
            qes_ok = iosqes in (0, IOSQES) and iocqes in (0, IOCQES)
        else:
            qes_ok = iosqes == IOSQES and iocqes == IOCQES
        if css != 0 or mps != 0 or ams != 0 or not qes_ok:
            log.warning("%r: enabled with unsupported CC %#x: controller fatal status", self, cc)
            return CtrlState.FAILED
        return None

    def _reset(self, cc: int, now: float) -> CtrlState | None:
        self._close_io_queues("controller reset")
        self._fail_aers()
        self._aen_pending.clear()
        self._aen_masked.clear()
        self._init_features()
        return None

    def _shutdown(self, cc: int, now: float) -> CtrlState | None:
        return None  # nothing is cached here: shutdown completes at once

    # --- queues -------------------------------------------------------------------------------
    def attach(self, session: QueueSession, qid: int) -> None:
        self.sessions[qid] = session

    def detach(self, qid: int, session: QueueSession) -> None:
        if self.sessions.get(qid) is session:
            del self.sessions[qid]

    @property
    def io_queue_count(self) -> int:
        return sum(1 for qid in self.sessions if qid)

    def _close_io_queues(self, reason: str) -> None:
        for qid, session in list(self.sessions.items()):
            if qid:
                session.close(reason)

    # --- keep-alive ---------------------------------------------------------------------------
    def _traffic_mark(self) -> tuple[int, ...]:
        c = self.counters
        return (self.admin_cmds, c.reads, c.writes, c.other_cmds, c.errors)

    def _restart_keep_alive(self, now: float) -> None:
        self._ka_deadline = (now + self.kato_ms / 1000 * (1 + self.target.keep_alive_slack)
                             if self.kato_ms else None)
        self._traffic = self._traffic_mark()

    def keep_alive(self, now: float) -> None:
        self._restart_keep_alive(now)

    def set_kato(self, kato_ms: int, now: float) -> None:
        self.kato_ms = kato_ms
        self._restart_keep_alive(now)

    def next_deadline(self) -> float | None:
        return self._ka_deadline

    def keep_alive_expired(self, now: float) -> bool:
        """True once KATO has passed with no command on any queue of this controller."""
        if self._ka_deadline is None or now < self._ka_deadline:
            return False
        if self._traffic_mark() != self._traffic:
            self._restart_keep_alive(now)
            return False
        return True

    # --- asynchronous events ------------------------------------------------------------------
    def add_aer(self, cid: int) -> Done | None:
        """An Asynchronous Event Request: completes now if an event waits, else later."""
        if self._aen_pending:
            return Done(self._aen_pending.popleft())
        if len(self._aer_cids) > AERL:
            raise st.AsyncEventLimitExceeded(f"more than {AERL + 1} outstanding AERs")
        self._aer_cids.append(cid)
        return None

    @property
    def outstanding_aers(self) -> int:
        return len(self._aer_cids)

    def _queue_event(self, dw0: int, lid: int) -> None:
        if lid in self._aen_masked:
            return  # reported already; the host sees this change when it reads the log
        self._aen_masked.add(lid)
        session = self.sessions.get(0)
        if self._aer_cids and session is not None and session.on_async_response is not None:
            session.complete_async(self._aer_cids.popleft(), dw0)
        else:
            self._aen_pending.append(dw0)

    def _fail_aers(self) -> None:
        session = self.sessions.get(0)
        while self._aer_cids:
            cid = self._aer_cids.popleft()
            if session is not None and session.on_async_response is not None:
                session.complete_async(cid, 0, st.AbortSqDeleted().status)

    def namespace_changed(self, nsid: int) -> None:
        """Called by the subsystem when a namespace is added, removed or resized."""
        if self.is_discovery or self.deleted:
            return
        if len(self.changed_nsids) >= CHANGED_NS_LIST_MAX and nsid not in self.changed_nsids:
            self.changed_overflow = True
        else:
            self.changed_nsids.add(nsid)
        if self.aec & AEC_NS_ATTRIBUTE:
            self._queue_event(AEN_NS_CHANGED, LogPageId.CHANGED_NAMESPACE_LIST)

    def ana_changed(self) -> None:
        """Called by the subsystem when an ANA group changed state on this controller's path."""
        if not self.is_discovery and not self.deleted and self.aec & AEC_ANA_CHANGE:
            self._queue_event(AEN_ANA_CHANGED, LogPageId.ANA)

    def discovery_changed(self) -> None:
        """Called by the target when the discovery log may read differently."""
        if self.is_discovery and not self.deleted and self.aec & AEC_DISCOVERY_CHANGE:
            self._queue_event(AEN_DISCOVERY_CHANGED, LogPageId.DISCOVERY)

    def reservation_notice(self, kind: int, nsid: int) -> None:
        """Called by the subsystem when a reservation command took something from this
        controller's host. The event is always enabled (the Reservation Notification Mask
        feature is not implemented: nothing is masked)."""
        if self.is_discovery or self.deleted:
            return
        self.reservation_log_count = (self.reservation_log_count + 1) & (2**64 - 1) or 1
        self.reservation_log.append(ReservationNotification(self.reservation_log_count, kind,
                                                            nsid))
        self._queue_event(AEN_RESERVATION, LogPageId.RESERVATION_NOTIFICATION)

    def next_reservation_notification(self) -> ReservationNotification:
        """Get Log Page 80h: the oldest notice, taken off the log, with how many remain (an
        empty log reads as zeroes)."""
        if not self.reservation_log:
            return ReservationNotification(0, 0, 0)
        entry = self.reservation_log.popleft()
        return dataclasses.replace(entry, available=len(self.reservation_log))

    def log_page_read(self, lid: int, rae: bool) -> None:
        """A Get Log Page completed: without RAE it clears the event (and the changed list)."""
        if rae:
            return
        self._aen_masked.discard(lid)
        if lid == LogPageId.CHANGED_NAMESPACE_LIST:
            self.changed_nsids.clear()
            self.changed_overflow = False

    # --- errors -------------------------------------------------------------------------------
    def record_error(self, sqid: int, cid: int, status: int, error_loc: int | None,
                     nsid: int = 0, lba: int = 0) -> None:
        self.error_count += 1
        self.errors.appendleft(ErrorLogEntry(self.error_count, sqid, cid, status,
                                             0xFFFF if error_loc is None else error_loc,
                                             lba, nsid))

    # --- lifetime -----------------------------------------------------------------------------
    def delete(self, reason: str) -> None:
        """Free the controller; every one of its sessions gets ``on_close``."""
        if self.deleted:
            return
        self.deleted = True
        log.info("%r deleted: %s", self, reason)
        self.subsystem.unregister_controller(self)
        self._aer_cids.clear()
        sessions = list(self.sessions.values())
        self.sessions.clear()
        for session in sessions:
            session.controller_gone(reason)


CommandHandler = Callable[[bytes, "memoryview | None", int, float], Awaitable["Response | None"]]
# IoQueue.start_direct: (sqe, data, done) -> started
DirectStart = Callable[[bytes, "memoryview | None", Callable[[Response], None]], bool]

_CID = struct.Struct("<H")


def _no_flow(sqe: bytes) -> None:
    return None


def _cid_of(sqe: bytes) -> int:
    return _CID.unpack_from(sqe, 2)[0] if len(sqe) >= 4 else 0


class QueueSession:
    """One TCP connection = one NVMe queue (see the module docstring for the contract)."""

    def __init__(self, target: Target, listener: Listener, *,
                 local_traddr: str | None = None) -> None:
        self.target = target
        self.listener = listener
        # The address the host reached us on: shown in the discovery log for wildcard listeners.
        self.local_traddr = local_traddr
        self.controller: Controller | None = None
        self.qid = -1
        self.sqhd = 0
        self.sq_entries = 1  # SQHD wraps at this; 1 keeps it 0 (flow control disabled)
        self.allow_success_flag = False
        self.on_async_response: Callable[[Response], None] | None = None
        self.on_close: Callable[[], None] | None = None
        # Reports a refused Connect (the reason); None: logged here. Anyone who reaches a
        # listener can provoke one per connection, so the server rate-limits them.
        self.on_connect_refused: Callable[[st.NvmeError], None] | None = None
        self.closed = False
        self._detached = False
        self._close_at: float | None = None
        self._delete_ctrl_at_close = False  # a failed authentication drops the controller
        self.auth: Responder | None = None
        self._auth_gate = False  # the Connect asked for authentication: refuse until then
        self._io: IoQueue | None = None
        self.handle_command: CommandHandler = self._handle_unconnected
        # (hostnqn, subnqn) of the PSK identity this connection's TLS session was opened
        # with, or None for plain TCP (target.tls.connection sets it).
        self.tls_peer: tuple[str, str] | None = None
        # The admission flow of a command (target.admission); admin queues have none.
        self.flow_of: Callable[[bytes], tuple[object, int] | None] = _no_flow
        # IoQueue.start_direct while I/O commands go to IoQueue.handle (connected and, if
        # asked for, authenticated), else None: the server tries it before handle_command.
        self.start_direct: DirectStart | None = None

    def __repr__(self) -> str:
        return f"QueueSession(qid={self.qid}, ctrl={self.controller!r}, closed={self.closed})"

    # --- timers and teardown ------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        if self.closed:
            return None
        deadline = self._close_at
        ctrl = self.controller
        if ctrl is not None and self.qid == 0 and not self._detached:
            ka = ctrl.next_deadline()
            if ka is not None and (deadline is None or ka < deadline):
                deadline = ka
        return deadline

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        if self._close_at is not None and now >= self._close_at:
            ctrl = self.controller
            if self._delete_ctrl_at_close and ctrl is not None:
                ctrl.delete("authentication failed")
                self.close("authentication failed")
            else:
                self.close("Disconnect")
            return
        ctrl = self.controller
        if ctrl is not None and self.qid == 0 and not self._detached \
                and ctrl.keep_alive_expired(now):
            log.warning("%r: keep-alive timeout (KATO %d ms)", ctrl, ctrl.kato_ms)
            ctrl.delete("keep-alive timeout")

    def connection_lost(self) -> None:
        """The server: the TCP connection is gone. Losing the admin queue deletes the
        controller (its I/O queues get ``on_close``); losing an I/O queue frees its qid."""
        if self.closed:
            return
        self._mark_closed()
        self._detach("connection lost")

    def close(self, reason: str) -> None:
        """Close this connection from the target side (``on_close`` is called)."""
        if self.closed:
            return
        self._mark_closed()
        self._detach(reason)
        self._notify_close()

    def controller_gone(self, reason: str) -> None:
        """Called by :meth:`Controller.delete`."""
        self._detached = True
        if self.closed:
            return
        self._mark_closed()
        self._notify_close()

    def disconnect(self, now: float) -> None:
        """An I/O queue's Disconnect: leave the controller now, close once answered."""
        self._detach("Disconnect")
        self.handle_command = self._handle_closed
        self.start_direct = None
        self._close_at = now

    def _detach(self, reason: str) -> None:
        ctrl = self.controller
        if ctrl is None or self._detached:
            return
        self._detached = True
        if self.qid == 0:
            ctrl.delete(reason)
        else:
            ctrl.detach(self.qid, self)

    def _mark_closed(self) -> None:
        self.closed = True
        self._close_at = None
        self.handle_command = self._handle_closed
        self.start_direct = None

    def _notify_close(self) -> None:
        callback = self.on_close
        if callback is not None:
            try:
                callback()
            except Exception:
                log.exception("on_close callback failed")

    # --- completions --------------------------------------------------------------------------
    def complete_async(self, cid: int, dw0: int, status: int = 0) -> None:
        """Complete an earlier command (an AER) through ``on_async_response``."""
        callback = self.on_async_response
        if callback is not None and not self.closed:
            callback(Response(completion(cid, max(self.qid, 0), self.sqhd, status, dw0), None))

    def fail(self, cid: int, sqhd: int, error: st.NvmeError, *, nsid: int = 0,
             lba: int = 0) -> Response:
        """The one place an NVMe error becomes a completion (and an Error log entry)."""
        status = error.status
        ctrl = self.controller
        if ctrl is not None and not self._detached:
            ctrl.record_error(max(self.qid, 0), cid, status, error.error_loc, nsid, lba)
        return Response(completion(cid, max(self.qid, 0), sqhd, status,
                                   getattr(error, "dw0", 0)), None)

    def _done(self, cid: int, sqhd: int, done: Done) -> Response:
        return Response(completion(cid, self.qid, sqhd, 0, done.dw0, done.dw1), done.data)

    # --- command handlers (bound to handle_command by state) -----------------------------------
    async def _handle_closed(self, sqe: bytes, data: memoryview | None, data_status: int,
                             now: float) -> Response | None:
        return Response(completion(_cid_of(sqe), max(self.qid, 0), self.sqhd,
                                   st.AbortSqDeleted().status), None)

    async def _handle_unconnected(self, sqe: bytes, data: memoryview | None, data_status: int,
                                  now: float) -> Response | None:
        cid = _cid_of(sqe)
        try:
            if data_status:
                raise data_status_error(data_status)
            if len(sqe) < 64 or sqe[0] != 0x7F or sqe[4] != FabricsType.CONNECT:
                raise st.CommandSequenceError("the first command on a queue must be Connect")
            cmd = fabrics.pull_connect(sqe, data)
            fabrics.check_secure_channel(self.listener, self.tls_peer, cmd)
            if cmd.qid == 0:
                return self._connect_admin(cmd, cid, now)
            return self._connect_io(cmd, cid, now)
        except st.NvmeError as e:
            if self.on_connect_refused is not None:
                self.on_connect_refused(e)
            else:
                log.info("Connect refused: %s", e)
            return self.fail(cid, 0, e)
        except Exception:
            log.exception("Connect failed")
            return self.fail(cid, 0, st.InternalError())

    def _bind(self, ctrl: Controller, cmd: ConnectCommand) -> int:
        """Join ``ctrl`` as queue ``cmd.qid``; returns the Connect response's SQHD."""
        self.controller = ctrl
        self.qid = cmd.qid
        ctrl.attach(self, cmd.qid)
        if cmd.cattr & CONNECT_CATTR_DISABLE_SQFLOW:
            self.sq_entries, self.sqhd = 1, 0
            return SQHD_DISABLED
        self.sq_entries = cmd.sqsize + 1
        self.sqhd = 1 % self.sq_entries  # the Connect itself was entry 0
        return self.sqhd

    def _connect_admin(self, cmd: ConnectCommand, cid: int, now: float) -> Response:
        subsystem, requested = fabrics.admit_admin(self.target, self.listener, cmd)
        cntlid = subsystem.allocate_cntlid(requested)
        if cntlid is None:
            raise st.ConnectControllerBusy(
                f"controller id {requested} is in use" if requested is not None
                else f"{subsystem.nqn} has no free controller id")
        ctrl = Controller(self.target, subsystem, cntlid, hostnqn=cmd.hostnqn,
                          hostid=cmd.hostid, kato_ms=cmd.kato_ms, listener=self.listener,
                          now=now)
        subsystem.register_controller(ctrl)
        sqhd = self._bind(ctrl, cmd)
        self.handle_command = self._handle_admin
        atr = self._require_auth(ctrl)
        log.info("%r created for %s (KATO %d ms%s)", ctrl, self.listener.traddr, ctrl.kato_ms,
                 ", DH-HMAC-CHAP" if atr else "")
        return Response(completion(cid, 0, sqhd, 0, cntlid | atr), None)

    def _require_auth(self, ctrl: Controller, *, gate: bool = True) -> int:
        """Give this queue a Responder if the host must authenticate; the Connect
        response's AUTHREQ bits. ``gate``: refuse other commands until it has (False for a
        queue admitted without authentication that the host authenticates later)."""
        target, subsystem, hostnqn = self.target, ctrl.subsystem, ctrl.hostnqn
        if not target.credentials_for(subsystem, hostnqn):
            return 0
        self._auth_gate = gate
        self.auth = Responder(qid=self.qid, subnqn=subsystem.nqn, hostnqn=hostnqn,
                              credentials=lambda: target.credentials_for(subsystem, hostnqn),
                              key_pairs=ctrl.key_pairs, offload=target.offload)
        self.auth.on_outcome = target.count_authentication
        return CONNECT_AUTHREQ_ATR

    def _connect_io(self, cmd: ConnectCommand, cid: int, now: float) -> Response:
        ctrl = fabrics.find_io_controller(self.target, self.listener, cmd)
        sqhd = self._bind(ctrl, cmd)
        self.allow_success_flag = bool(cmd.cattr & CONNECT_CATTR_DISABLE_SQFLOW)
        io = self._io = IoQueue(self, ctrl)
        atr = self._require_auth(ctrl)
        self.handle_command = self._handle_io_unauthenticated if atr else io.handle
        self.start_direct = None if atr else io.start_direct
        self.flow_of = io.flow_of
        log.debug("%r: I/O queue %d connected (%d entries)", ctrl, cmd.qid, cmd.sqsize + 1)
        return Response(completion(cid, cmd.qid, sqhd, 0, ctrl.cntlid | atr), None)

    async def _handle_io_unauthenticated(self, sqe: bytes, data: memoryview | None,
                                         data_status: int, now: float) -> Response | None:
        """An I/O queue's commands until it has authenticated: Authentication Send/Receive
        and Disconnect go through; anything else is refused (Authentication Required)."""
        io = self._io
        assert io is not None
        if (len(sqe) >= 64 and sqe[0] == 0x7F and sqe[4] == FabricsType.DISCONNECT) \
                or self.auth is None or self.auth.authenticated:
            return await io.handle(sqe, data, data_status, now)
        sqhd = io.sqhd = (io.sqhd + 1) % io.entries
        cid = _cid_of(sqe)
        try:
            if data_status:
                raise data_status_error(data_status)
            if len(sqe) >= 64 and sqe[0] == 0x7F and sqe[4] in (FabricsType.AUTH_SEND,
                                                                FabricsType.AUTH_RECEIVE):
                done = await self.auth_command(sqe, data, now)
                return Response(completion(cid, self.qid, sqhd, 0, done.dw0), done.data)
            raise st.AuthRequired(f"qid {self.qid}: authentication required")
        except st.NvmeError as e:
            return self.fail(cid, sqhd, e)
        except Exception:
            log.exception("%r: authentication command failed", self)
            return self.fail(cid, sqhd, st.InternalError())

    async def auth_command(self, sqe: bytes, data: memoryview | None, now: float) -> Done:
        """Authentication Send or Receive on this queue (admin or I/O)."""
        ctrl = self.controller
        assert ctrl is not None
        if self.auth is None:
            # The host may authenticate where it was not asked to (credentials set after its
            # Connect): its queue keeps working meanwhile, and a failure still drops it.
            if not self._require_auth(ctrl, gate=False):
                raise st.InvalidField("no DH-HMAC-CHAP credentials for this host", error_loc=4)
        auth = self.auth
        assert auth is not None
        if sqe[4] == FabricsType.AUTH_SEND:
            payload = fabrics.auth_send_payload(sqe, data)
            await auth.send(payload)
            result = Done()
        else:
            al = fabrics.auth_receive_length(sqe, ctrl.mdts_bytes)
            message = await auth.receive()
            if len(message) > al:
                raise st.InvalidField(f"AL {al} is shorter than the {len(message)}-byte "
                                      "message", error_loc=44)
            result = Done(data=message + bytes(al - len(message)))
        if auth.failed:
            # Answer this command, then drop the controller (nvmet: fatal error).
            self._delete_ctrl_at_close = True
            self._close_at = now
            self.handle_command = self._handle_closed_after_failure
            self.start_direct = None
        elif auth.authenticated and self._io is not None \
                and self.handle_command == self._handle_io_unauthenticated:
            self.handle_command = self._io.handle
            self.start_direct = self._io.start_direct
        return result

    async def _handle_closed_after_failure(self, sqe: bytes, data: memoryview | None,
                                           data_status: int, now: float) -> Response | None:
        return self.fail(_cid_of(sqe), self.sqhd, st.AuthRequired("authentication failed"))

    async def _handle_admin(self, sqe: bytes, data: memoryview | None, data_status: int,
                            now: float) -> Response | None:
        ctrl = self.controller
        assert ctrl is not None
        self.sqhd = sqhd = (self.sqhd + 1) % self.sq_entries
        ctrl.admin_cmds += 1
        cid = _cid_of(sqe)
        try:
            if data_status:
                raise data_status_error(data_status)
            if len(sqe) < 64:
                raise st.InvalidField("short SQE")
            if sqe[0] == 0x7F:
                if sqe[4] in (FabricsType.AUTH_SEND, FabricsType.AUTH_RECEIVE):
                    done: Done | None = await self.auth_command(sqe, data, now)
                else:
                    done = self._admin_fabrics(ctrl, sqe, now)
            elif self._auth_gate and self.auth is not None and not self.auth.authenticated:
                raise st.AuthRequired(f"admin command {sqe[0]:#x} before authentication")
            elif not ctrl.ready:
                raise st.CommandSequenceError(f"admin command {sqe[0]:#x} while the controller"
                                              f" is {ctrl.state.value}")
            else:
                done = admin.execute(self, ctrl, pull_sqe(sqe), data, now)
            if done is None:
                return None
            return self._done(cid, sqhd, done)
        except st.NvmeError as e:
            return self.fail(cid, sqhd, e)
        except Exception:
            log.exception("%r: admin command %#x failed", ctrl, sqe[0])
            return self.fail(cid, sqhd, st.InternalError())

    def _admin_fabrics(self, ctrl: Controller, sqe: bytes, now: float) -> Done:
        fctype = sqe[4]
        if fctype == FabricsType.PROPERTY_GET:
            return fabrics.property_get(ctrl, sqe)
        if fctype == FabricsType.PROPERTY_SET:
            return fabrics.property_set(ctrl, sqe, now)
        if fctype == FabricsType.CONNECT:
            raise st.CommandSequenceError("the admin queue is connected already")
        if fctype == FabricsType.DISCONNECT:
            raise st.InvalidField("Disconnect deletes I/O queues only", error_loc=4)
        raise st.InvalidOpcode(f"fabrics command type {fctype:#x}", error_loc=4)
