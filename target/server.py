"""The asyncio side of the target: listeners, and one protocol object per TCP connection.

Theory of operation (DESIGN.md "Models worth imitating"): every NVMe queue is its own TCP
connection. A :class:`QueueConnection` is a thin loop around two sans-I/O parts:

    socket bytes -> TargetQueue (PDUs) -> events -> QueueSession (NVMe) -> Response -> TargetQueue

Rules of this module:
- It owns every socket, timer and task; the parts it joins own none.
- Bytes are received into the TargetQueue's own reusable buffer (``BufferedProtocol``) and sent
  with ``transport.writelines`` as the segments the queue produced: header, payload and digest
  are never joined.
- A command handler is a coroutine. Many complete without suspending (RAM, the page cache),
  so the handler is first stepped inline; one that really waits (an io_uring read) is resumed
  by a light :class:`_Driver` rather than a Task (a Task costs about 1 us to create and more to
  wake, against a per-I/O CPU budget of 8 us). See :mod:`target.eager`.
- Admission (``target.admission``): with an admission controller, an I/O command whose device
  names a flow runs only when the controller admits it; until then its connection holds it,
  and stops reading once it holds ``HELD_HIGH_WATER`` (TCP back-pressure).
- Timers: the session reports its next deadline; this module only arms ``loop.call_at``.
- Busy-polling (off by default, :mod:`target.busypoll`): every receive kicks the server's one
  poller, which keeps the loop polling instead of sleeping for a bounded time.
- A failure on one connection closes that connection only.
- Unauthenticated clients cannot exhaust the daemon (``target.connlimits``): a connection over
  its listener's or its source address's cap is closed at accept, one that sends no ICReq, or
  no Connect after it, in time is closed, and the lines a peer can provoke per connection are
  rate-limited (``target.loglimit``). A connected queue is never closed by these.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, cast

from target.admission import Admission
from target.busypoll import BusyPoller
from target.connlimits import (
    REFUSED_LISTENER,
    WAITING_CONNECT,
    WAITING_ICREQ,
    ConnectionGate,
    ConnectionLimits,
)
from target.controller import QueueSession, Response
from target.eager import Driver as _Driver
from target.eager import run_eagerly as _run_eagerly
from target.loglimit import DEFAULT_BURST, DEFAULT_INTERVAL_S, LogLimiter
from target.offload import ProcessOffload
from target.subsystem import Listener, Target
from target.tcp.queue import (
    CommandReceived,
    PeerTerminated,
    ProtocolFailed,
    QueueEstablished,
    TargetQueue,
)

log = logging.getLogger("sbstore.target")

# Stop reading from a connection while this many bytes wait in its send buffer; a host that
# does not read its completions must not make the target hold unbounded memory.
WRITE_HIGH_WATER = 4 << 20
WRITE_LOW_WATER = 1 << 20
# Stop reading from a connection while it holds this many commands the admission controller
# has not let run yet (target.admission); read again once it is down to the low mark.
HELD_HIGH_WATER = 64
HELD_LOW_WATER = 16
# Connections the kernel completes before the loop accepts them. A burst bigger than this
# while the loop is busy (a hypervisor reconnecting hundreds of queues after a restart, a
# flood of idle connections) has its SYNs dropped and retried a second later. The kernel
# caps it at net.core.somaxconn (4096 on current kernels).
LISTEN_BACKLOG = 1024

# Kinds of per-connection log lines, each rate-limited on its own (a flood of one kind does
# not hide the others); the metrics count what each did not log.
LOG_PROTOCOL_ERROR = "protocol_error"
LOG_PEER_TERMINATED = "peer_terminated"
LOG_REFUSED = "refused"
LOG_TIMED_OUT = "handshake_timeout"
LOG_CONNECT_REFUSED = "connect_refused"
_LOG_LEVELS = {LOG_PROTOCOL_ERROR: logging.WARNING, LOG_PEER_TERMINATED: logging.INFO,
               LOG_REFUSED: logging.WARNING, LOG_TIMED_OUT: logging.INFO,
               LOG_CONNECT_REFUSED: logging.INFO}


@dataclass(frozen=True)
class TransportLimits:
    """Transport tuning that the NVMe layer does not see. The in-capsule size and the largest
    transfer are the Target's (``incapsule_data_size``, ``max_data_transfer``): Identify
    advertises them, so they are read from there, never configured twice."""

    # None: as large as the largest transfer. A write then needs one R2T round trip, not eight
    # (the Linux host keeps one R2T outstanding per command); the data lands straight in the
    # command's buffer, so a large PDU costs no extra memory.
    maxh2cdata: int | None = None
    # Seconds the loop keeps polling after a receive instead of sleeping (0: never). Trades a
    # core for the wake-up latency of a sleeping loop; see target.busypoll.
    busy_poll_s: float = 0.0
    # Where a write's solicited (R2T) data is gathered: a callable giving a writable buffer of
    # a size, or None for a bytearray. Page-aligned buffers (the daemon's) let an O_DIRECT
    # write take the data as it came off the socket instead of copying it once more.
    transfer_buffer: Callable[[int], memoryview] | None = None


class QueueConnection(asyncio.BufferedProtocol):
    """One TCP connection = one NVMe queue."""

    def __init__(self, server: TargetServer, listener: Listener) -> None:
        self._server = server
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        # The queue's state machine and receive buffer (about 8 KiB) are made when the first
        # bytes arrive (_target_queue): a connection that never sends anything holds only
        # this object, its transport and its deadline (issue 8: 10,000 idle ones must cost
        # the daemon less than 64 MiB; tests/integration/test_idle_10k.py).
        self._queue: TargetQueue | None = None
        self._session: QueueSession | None = None
        self._poller = server.poller()
        self._transport: asyncio.Transport | None = None
        self._pending: set[_Driver] = set()  # handlers waiting on a device
        self._admission = server.admission
        self._held = 0  # commands handed to the admission controller, not yet run
        # Commands the admission controller let run and not finished yet, per flow.
        self._admitted: dict[object, list[int]] = {}  # flow -> [commands, bytes]
        self._read_paused = False  # by us, for held commands (not by the write buffer)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closing = False
        self._write_paused = False
        self._batching = False  # inside _process_events: responses are flushed once at its end
        self._flush_soon = False  # a _flush_later is scheduled
        self.peer: str = "?"
        self._source = "?"  # the peer's address, for the per-source cap
        self._counted = False  # admitted by the server's ConnectionGate (released when lost)
        # Closes the connection if it is still without an ICReq, or without a Connect, when
        # it fires (target.connlimits); it does nothing once the queue is connected.
        self._handshake_timer: asyncio.TimerHandle | None = None

    # -- asyncio.BufferedProtocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self._source = str(peer[0]) if peer else "?"
        server = self._server
        refused = server.gate.admit(self._listener, self._source)
        if refused is not None:
            # Closed before anything is allocated or read; a reset, not a FIN, so not even a
            # TIME_WAIT entry is left on our side. Connections already open are untouched.
            self._closing = True
            server.log_limited(LOG_REFUSED, "connection %s refused: %s reached (%d per %s)",
                               self.peer, refused, *server.cap_of(refused))
            transport.abort()
            return
        self._counted = True
        server._connections.add(self)
        self._handshake_timer = self._loop.call_later(
            server.connection_limits.icreq_timeout_s, self._on_handshake_deadline)

    def get_buffer(self, sizehint: int) -> memoryview:
        queue = self._queue
        if queue is None:
            queue = self._target_queue()
        return queue.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        queue = self._queue
        assert queue is not None  # get_buffer made it
        queue.buffer_updated(nbytes)
        if self._poller is not None:
            self._poller.kick()
        self._process_events()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._server._connections.discard(self)
        if self._counted:
            self._counted = False
            self._server.gate.release(self._listener, self._source)
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for driver in list(self._pending):
            driver.close()
        if self._admission is not None:
            if self._held:
                self._admission.forget(self)
                self._held = 0
            for flow, (n, nbytes) in self._admitted.items():  # closed where they waited
                self._admission.finished(flow, n, nbytes)
            self._admitted.clear()
        if self._session is not None:
            try:
                self._session.connection_lost()
            except Exception:
                log.exception("session teardown failed for %s", self.peer)
            self._session = None

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._transport is not None and not self._closing and not self._read_paused:
            self._transport.resume_reading()

    # -- events -------------------------------------------------------------------------------
    def _target_queue(self) -> TargetQueue:
        """The connection's TargetQueue, made on first use (the first bytes received)."""
        queue = self._queue
        if queue is None:
            server = self._server
            target = server.target
            queue = self._queue = TargetQueue(
                max_incapsule_data=target.incapsule_data_size,
                maxh2cdata=server.limits.maxh2cdata or target.max_data_transfer,
                max_data_len=target.max_data_transfer,
                transfer_buffer=server.limits.transfer_buffer)
        return queue

    def _process_events(self) -> None:
        queue = self._queue
        if queue is None:  # nothing received yet
            return
        self._batching = True
        try:
            self._drain_events(queue)
        finally:
            self._batching = False
        if not self._closing:
            self._flush()
            self._rearm_timer()

    def _drain_events(self, queue: TargetQueue) -> None:
        # Paused for held commands: the rest stay parsed in the queue (bounded by its receive
        # buffer) until run_held() reads on.
        events = queue.events
        while events and not self._closing and not self._read_paused:
            event = events.popleft()
            if type(event) is CommandReceived:
                self._dispatch(event)
            elif type(event) is QueueEstablished:
                self._start_session()
            elif type(event) is ProtocolFailed:
                self._server.log_limited(LOG_PROTOCOL_ERROR,
                                         "connection %s: protocol error (fes %d): %s",
                                         self.peer, event.fes, event.message)
                self._flush()
                self.close()
                return
            elif type(event) is PeerTerminated:
                self._server.log_limited(LOG_PEER_TERMINATED,
                                         "connection %s: host terminated the connection "
                                         "(fes %d)", self.peer, event.fes)
                self.close()
                return

    def _start_session(self) -> None:
        # A wildcard listener (0.0.0.0, ::) tells the discovery log the address this
        # connection actually reached.
        local = self._transport.get_extra_info("sockname") if self._transport else None
        session = QueueSession(self._server.target, self._listener,
                               local_traddr=local[0] if local else None)
        session.on_close = self.close
        session.on_async_response = self._send_response
        session.on_connect_refused = self._connect_refused
        self._session = session
        if self._handshake_timer is not None:  # the ICReq came: now the Connect must
            self._handshake_timer.cancel()
            self._handshake_timer = self._loop.call_later(
                self._server.connection_limits.connect_timeout_s, self._on_handshake_deadline)

    def _dispatch(self, event: CommandReceived) -> None:
        session = self._session
        if session is None:  # the queue only emits commands after the handshake
            self.close()
            return
        adm = self._admission
        if adm is not None and not adm.solo:
            flow = session.flow_of(event.sqe)
            if flow is not None:
                if not adm.admit(*flow):
                    adm.hold(flow[0], flow[1], self, event)
                    self._held += 1
                    if self._held >= HELD_HIGH_WATER and not self._read_paused:
                        self._read_paused = True
                        if self._transport is not None and not self._write_paused:
                            self._transport.pause_reading()
                    return
                self._start_admitted(session, event, flow[0], flow[1])
                return
        direct = session.start_direct
        if adm is not None and adm.solo and direct is not None:
            adm.solo_admitted += 1  # an I/O queue's command: nothing to share, no admission
        if direct is not None and not event.data_status \
                and direct(event.sqe, event.data, self._send_response):
            return
        coro = session.handle_command(event.sqe, event.data, event.data_status, time.monotonic())
        _run_eagerly(coro, self._on_handled, self._pending)

    # -- target.admission.HeldCommands ---------------------------------------------------------
    def _start_admitted(self, session: QueueSession, event: CommandReceived, flow: object,
                        nbytes: int) -> None:
        running = self._admitted.get(flow)
        if running is None:
            self._admitted[flow] = [1, nbytes]
        else:
            running[0] += 1
            running[1] += nbytes
        done = functools.partial(self._on_admitted_done, flow, nbytes)
        direct = session.start_direct
        if direct is not None and not event.data_status and direct(event.sqe, event.data, done):
            return
        coro = session.handle_command(event.sqe, event.data, event.data_status, time.monotonic())
        _run_eagerly(coro, done, self._pending)

    def run_held(self, event: CommandReceived, flow: object, nbytes: int) -> None:
        self._held -= 1
        if self._read_paused and self._held <= HELD_LOW_WATER:
            self._read_paused = False
            if self._transport is not None and not self._write_paused and not self._closing:
                self._transport.resume_reading()
                self._loop.call_soon(self._process_events)  # commands parsed before the pause
        session = self._session
        if session is None or self._closing:
            if self._admission is not None:  # admitted, but nothing will run
                self._admission.finished(flow, 1, nbytes)
            return
        self._batching = True  # responses go out together at end_turn()
        self._start_admitted(session, event, flow, nbytes)

    def end_turn(self) -> None:
        # The responses of the held commands just run go out with the other responses of this
        # loop turn (completions reaped from the device), in one writev.
        self._batching = False
        if not self._closing and not self._flush_soon:
            self._flush_soon = True
            self._loop.call_soon(self._flush_later)

    def _on_admitted_done(self, flow: object, nbytes: int, response: Response | None,
                          exc: BaseException | None = None) -> None:
        running = self._admitted.get(flow)
        if running is None:
            # A direct I/O (session.start_direct) completing after connection_lost, which
            # gave back everything this connection had executing.
            return
        if running[0] == 1:
            del self._admitted[flow]
        else:
            running[0] -= 1
            running[1] -= nbytes
        adm = self._admission
        assert adm is not None
        adm.finished(flow, 1, nbytes)
        if exc is None and response is not None:
            self._send_response(response)  # (what _on_handled does: a call less per command)
        else:
            self._on_handled(response, exc)

    def _on_handled(self, response: Response | None, exc: BaseException | None) -> None:
        if exc is not None:
            # The session turns every NVMe error into a completion; reaching here is a bug.
            log.error("connection %s: command handler failed", self.peer, exc_info=exc)
            self.close()
            return
        if response is not None:
            self._send_response(response)

    def _send_response(self, response: Response) -> None:
        queue = self._queue
        if self._closing or queue is None:  # (a response needs a command: never None here)
            return
        session = self._session
        if session is not None:
            queue.allow_success_flag = session.allow_success_flag
        cqe, data = response
        if data is not None:
            queue.send_read_data(cqe[12] | cqe[13] << 8, data, cqe)  # CQE bytes 12-13: the cid
        else:
            queue.send_completion(cqe)
        if not self._batching and not self._flush_soon:
            # A completion from a device (a driver resumed by an I/O's future): more of this
            # connection's usually complete in the same loop turn, so their responses go out
            # in one writev at the end of it rather than one each (a syscall per I/O was a
            # third of the target's time at QD32 on an io_uring pool).
            self._flush_soon = True
            self._loop.call_soon(self._flush_later)

    def _flush_later(self) -> None:
        self._flush_soon = False
        if not self._closing:
            self._flush()
            self._rearm_timer()

    def _flush(self) -> None:
        if self._queue is None:
            return
        data = self._queue.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.writelines(data)

    # -- timers and teardown ------------------------------------------------------------------
    def _rearm_timer(self) -> None:
        session = self._session
        if session is None or self._closing:
            return
        deadline = session.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            # time.monotonic() and loop.time() share a clock on Linux (CLOCK_MONOTONIC), but
            # convert anyway so the arithmetic does not depend on it.
            delay = max(0.0, deadline - time.monotonic())
            self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._session is not None and not self._closing:
            self._session.handle_timer(time.monotonic())
            self._flush()
            self._rearm_timer()

    def _connect_refused(self, error: Exception) -> None:
        self._server.log_limited(LOG_CONNECT_REFUSED, "connection %s: Connect refused: %s",
                                 self.peer, error)

    def _on_handshake_deadline(self) -> None:
        self._handshake_timer = None
        session = self._session
        if self._closing:
            return
        if session is None:
            waiting_for = WAITING_ICREQ
        elif session.controller is None and not session.closed:
            waiting_for = WAITING_CONNECT
        else:
            return  # connected: the controller's keep-alive looks after it from now on
        server = self._server
        server.gate.note_timed_out(waiting_for)
        limits = server.connection_limits
        server.log_limited(LOG_TIMED_OUT, "connection %s closed: no %s within %g s", self.peer,
                           "ICReq" if waiting_for == WAITING_ICREQ else "Connect",
                           limits.icreq_timeout_s if waiting_for == WAITING_ICREQ
                           else limits.connect_timeout_s)
        # A reset, not a FIN (as for a connection refused at accept): nothing is owed to a
        # peer that never finished its handshake, and a flood of them leaves no TIME_WAIT
        # entries on our side (thousands of those block the reuse of their address pairs).
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._flush()
            self._transport.close()
        self._closing = True


@dataclass
class _Bound:
    listener: Listener
    server: asyncio.AbstractServer


@dataclass
class TargetServer:
    """The listeners of one target and the connections they accepted."""

    target: Target
    limits: TransportLimits = field(default_factory=TransportLimits)
    admission: Admission | None = None  # None: every command runs when it arrives
    connection_limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    # Per-connection log lines of one kind written per interval (target.loglimit).
    log_burst: int = DEFAULT_BURST
    log_interval_s: float = DEFAULT_INTERVAL_S
    # PSKs for listeners with TLS (a target.tls.keyring.PskKeyring; typed loosely so that a
    # plain target never imports the TLS code).
    tls_keyring: Any = None
    _bound: list[_Bound] = field(default_factory=list)
    _connections: set[QueueConnection] = field(default_factory=set)
    _poller: BusyPoller | None = None
    gate: ConnectionGate = field(init=False)
    _logs: dict[str, LogLimiter] = field(init=False)
    _log_timer: asyncio.TimerHandle | None = field(default=None, init=False)
    _log_timer_at: float = field(default=0.0, init=False)  # time.monotonic() it is armed for

    # DH-HMAC-CHAP's modular exponentiations take 7-70 ms in Python and pow() holds the GIL:
    # a worker process (started on first use) runs them, so other connections are served.
    _offload: ProcessOffload = field(default_factory=ProcessOffload)

    def __post_init__(self) -> None:
        self.target.offload = self._offload
        self.gate = ConnectionGate(self.connection_limits)
        self._logs = {kind: LogLimiter(log, level, kind, burst=self.log_burst,
                                       interval_s=self.log_interval_s)
                      for kind, level in _LOG_LEVELS.items()}

    def cap_of(self, refused: str) -> tuple[int, str]:
        """The cap a refusal reason stands for, and what it counts per (for messages)."""
        if refused == REFUSED_LISTENER:
            return self.connection_limits.max_per_listener, "listener"
        return self.connection_limits.max_per_source, "source address"

    def log_limited(self, kind: str, msg: str, *args: object) -> None:
        """Log a line a peer provoked, rate-limited per ``kind`` (a LOG_* name)."""
        self._logs[kind].log(time.monotonic(), msg, *args)
        self._arm_log_flush()

    def log_suppressed(self) -> dict[str, int]:
        """Per LOG_* kind: the lines not logged since the server was made."""
        return {kind: limiter.suppressed_total for kind, limiter in self._logs.items()}

    def _arm_log_flush(self) -> None:
        # One timer for all kinds, so that a summary of what was suppressed is written when
        # its window ends even if the flood has stopped.
        due = [d for d in (limiter.next_deadline() for limiter in self._logs.values())
               if d is not None]
        if not due or (self._log_timer is not None and self._log_timer_at <= min(due)):
            return
        if self._log_timer is not None:
            self._log_timer.cancel()
        self._log_timer_at = min(due)
        self._log_timer = asyncio.get_running_loop().call_later(
            max(0.0, self._log_timer_at - time.monotonic()), self._flush_logs)

    def _flush_logs(self) -> None:
        self._log_timer = None
        # The loop's timers are coarser than time.monotonic() (uvloop: 1 ms) and may fire a
        # little early: the deadline armed for has passed, whatever the clock says.
        now = max(time.monotonic(), self._log_timer_at)
        for limiter in self._logs.values():
            limiter.flush(now)
        self._arm_log_flush()

    def _flush_logs_now(self) -> None:
        # Stopping: whatever was suppressed is reported now rather than never.
        for limiter in self._logs.values():
            limiter.flush(float("inf"))

    def poller(self) -> BusyPoller | None:
        """The busy-poller the connections kick (one per server, made in the running loop on
        first use), or None when ``limits.busy_poll_s`` is 0."""
        if self._poller is None and self.limits.busy_poll_s > 0:
            self._poller = BusyPoller(asyncio.get_running_loop(), self.limits.busy_poll_s)
        return self._poller

    async def listen(self, host: str, port: int, *, portid: int | None = None,
                     tls: str = "off") -> Listener:
        """Start accepting NVMe/TCP connections on ``host:port`` (port 0: any free port).
        ``tls``: "off", "allowed" or "required" (PSKs from ``tls_keyring``); a TLS listener
        fails here, with the reason, when OpenSSL 3 or the keyring is missing."""
        loop = asyncio.get_running_loop()
        holder: list[Listener] = []
        make: Callable[[Listener], QueueConnection] = functools.partial(QueueConnection, self)
        if tls != "off":
            from target.tls.connection import (
                connection_factory,  # only TLS targets load it
            )
            make = connection_factory(self, tls, self.tls_keyring)
        server = await loop.create_server(lambda: make(holder[0]), host, port,
                                          reuse_address=True, backlog=LISTEN_BACKLOG)
        sockname = server.sockets[0].getsockname()
        try:
            listener = self.target.add_listener(
                traddr=sockname[0], trsvcid=str(sockname[1]),
                adrfam="ipv6" if ":" in sockname[0] else "ipv4", portid=portid, tls=tls)
        except BaseException:
            server.close()  # e.g. the port id is taken: do not leave the socket bound
            await server.wait_closed()
            raise
        holder.append(listener)
        self._bound.append(_Bound(listener, server))
        return listener

    @property
    def listeners(self) -> list[Listener]:
        return [b.listener for b in self._bound]

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def stop_listening(self, listener: Listener) -> None:
        for bound in list(self._bound):
            if bound.listener is listener:
                bound.server.close()
                await bound.server.wait_closed()
                self._bound.remove(bound)
                self.target.remove_listener(listener)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, close every connection, and wait (bounded) for them to go."""
        for bound in self._bound:
            bound.server.close()
        if self._log_timer is not None:
            self._log_timer.cancel()
            self._log_timer = None
            self._flush_logs_now()
        await self._offload.close()
        if self._poller is not None:
            self._poller.close()
            self._poller = None
        for conn in list(self._connections):
            conn.close()
        deadline = time.monotonic() + timeout_s
        while self._connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for bound in self._bound:
            try:
                await asyncio.wait_for(bound.server.wait_closed(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                pass
        self._bound.clear()
