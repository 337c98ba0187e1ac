"""A queue connection whose bytes travel inside TLS 1.3 (NVMe/TCP TLS, TP 8011).

Theory of operation: :class:`TlsQueueConnection` is a :class:`target.server.QueueConnection`
with a TLS session between the socket and the PDU stream. Ciphertext is received into this
connection's own buffer and fed to the session; plaintext is decrypted straight into the
TargetQueue's receive buffer (``get_buffer``/``buffer_updated``, as the socket would have
written it), and the queue's outgoing segments are encrypted in one ``SSL_write`` per flush.
Plain listeners never make one of these, so their path is untouched.

Listener modes (``Listener.tls``):
- ``required``: the first byte must open a TLS handshake record (type 22); anything else, a
  plain ICReq included, closes the connection.
- ``allowed``: the first byte decides, as Linux nvmet's peek does: 22 means TLS, anything else
  (an ICReq starts with PDU type 0) means plain NVMe/TCP on this connection.

The host's PSK identity names its host NQN and subsystem NQN; the queue's Connect must name
the same two (``QueueSession.tls_peer``), so a host's key opens only its own door.
A handshake failure (unknown identity, wrong key, garbage) sends OpenSSL's alert, logs why
(never the key), and closes this connection only.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable

from target.server import QueueConnection
from target.tls.engine import (
    TlsClosed,
    TlsContext,
    TlsError,
    TlsSession,
    require_openssl,
)
from target.tls.psk import PskError, parse_identity

if TYPE_CHECKING:
    from target.server import TargetServer
    from target.subsystem import Listener
    from target.tls.keyring import PskKeyring

log = logging.getLogger("sbstore.target.tls")

TLS_HANDSHAKE_RECORD = 22  # RFC 8446 §5.1 ContentType.handshake
RECEIVE_BUFFER = 256 << 10
# A connection that has not finished its handshake by then is closed: a peer that opens
# sockets and stalls must not hold them (and their OpenSSL state) forever.
HANDSHAKE_TIMEOUT_S = 10.0
_DETECT, _TLS, _PLAIN = range(3)


class TlsQueueConnection(QueueConnection):
    """One TCP connection on a listener with ``tls`` "allowed" or "required"."""

    def __init__(self, server: TargetServer, listener: Listener, *, context: TlsContext,
                 keyring: PskKeyring, required: bool) -> None:
        super().__init__(server, listener)
        self._required = required
        self._tls_state = _DETECT
        # The receive buffer (256 KiB) and the OpenSSL session are made when the first bytes
        # arrive and when they open a handshake: a connection that sends nothing costs what a
        # plain one does (issue 8's idle-connection budget).
        self._context = context
        self._keyring = keyring
        self._tls: TlsSession | None = None
        self._rxv: memoryview | None = None
        self.tls_peer: tuple[str, str] | None = None  # (hostnqn, subnqn) from the identity
        self._handshake_timer: asyncio.TimerHandle | None = None
        self.handshake_timeout_s = HANDSHAKE_TIMEOUT_S

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._handshake_timer = self._loop.call_later(self.handshake_timeout_s,
                                                      self._handshake_expired)

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if self._tls_state != _PLAIN and not (self._tls and self._tls.established):
            log.warning("connection %s: no TLS handshake within %.0f s: closed", self.peer,
                        self.handshake_timeout_s)
            self.close()

    def _stop_handshake_timer(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    # -- receiving ----------------------------------------------------------------------------
    def get_buffer(self, sizehint: int) -> memoryview:
        if self._tls_state == _PLAIN:
            return super().get_buffer(sizehint)
        rxv = self._rxv
        if rxv is None:
            rxv = self._rxv = memoryview(bytearray(RECEIVE_BUFFER))
        return rxv

    def buffer_updated(self, nbytes: int) -> None:
        state = self._tls_state
        if state == _PLAIN:
            super().buffer_updated(nbytes)
            return
        if self._closing or nbytes <= 0:
            return
        if state == _DETECT:
            assert self._rxv is not None  # get_buffer made it
            if self._rxv[0] == TLS_HANDSHAKE_RECORD:
                self._tls_state = _TLS
                self._tls = self._context.session(psk_for=self._keyring.psk_for)
            elif self._required:
                log.warning("connection %s: plain NVMe/TCP refused: listener %s:%s requires TLS",
                            self.peer, self._listener.traddr, self._listener.trsvcid)
                self.close()
                return
            else:
                self._become_plain(nbytes)
                return
        self._receive_tls(nbytes)

    def _become_plain(self, nbytes: int) -> None:
        self._tls_state = _PLAIN
        self._stop_handshake_timer()
        self._drop_tls()
        rxv, self._rxv = self._rxv, None  # plain from now on: the queue's buffer only
        assert rxv is not None
        pos = 0
        queue = self._target_queue()
        while pos < nbytes:  # bounded: every pass moves at least one byte
            buf = queue.get_buffer(nbytes - pos)
            n = min(len(buf), nbytes - pos)
            buf[:n] = rxv[pos:pos + n]
            queue.buffer_updated(n)
            pos += n
        self._process_events()

    def _receive_tls(self, nbytes: int) -> None:
        tls, rxv = self._tls, self._rxv
        assert tls is not None and rxv is not None
        try:
            tls.receive_ciphertext(rxv[:nbytes])
            if not tls.established:
                done = tls.handshake()
                self._send_ciphertext()
                if not done:
                    return
                self._on_established(tls)
                if self._closing:
                    return
            got = False
            queue = self._target_queue()
            while not self._closing:  # bounded: each pass consumes buffered records
                buf = queue.get_buffer(RECEIVE_BUFFER)
                n = tls.read_into(buf)
                if n == 0:
                    break
                queue.buffer_updated(n)
                got = True
        except TlsClosed:
            self.close()
            return
        except TlsError as exc:
            log.warning("connection %s: %s", self.peer, exc)
            self._send_ciphertext()  # OpenSSL's alert, if it made one
            self.close()
            return
        if got:
            if self._poller is not None:
                self._poller.kick()
            self._process_events()

    def _on_established(self, tls: TlsSession) -> None:
        try:
            identity = parse_identity(tls.peer_identity or b"")
        except PskError:  # cannot happen: the keyring parsed it to find the key
            self.close()
            return
        self.tls_peer = (identity.hostnqn, identity.subnqn)
        self._stop_handshake_timer()
        log.info("connection %s: TLS 1.3 (%s) with %s for %s", self.peer, tls.cipher_suite,
                 identity.hostnqn, identity.subnqn)

    # -- sending ------------------------------------------------------------------------------
    def _flush(self) -> None:
        if self._tls_state != _TLS:
            super()._flush()
            return
        queue = self._queue
        data = queue.data_to_send() if queue is not None else None
        tls = self._tls
        if not data or tls is None or not tls.established:
            return
        try:
            tls.write(data[0] if len(data) == 1 else b"".join(data))
        except TlsError as exc:
            log.warning("connection %s: %s", self.peer, exc)
            self._closing = True
            if self._transport is not None:
                self._transport.close()
            return
        self._send_ciphertext()

    def _send_ciphertext(self) -> None:
        tls, transport = self._tls, self._transport
        if tls is None or transport is None or transport.is_closing():
            return
        out = tls.ciphertext_to_send()
        if out:
            transport.write(out)

    def _start_session(self) -> None:
        super()._start_session()
        if self._session is not None:
            self._session.tls_peer = self.tls_peer

    # -- teardown -----------------------------------------------------------------------------
    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._stop_handshake_timer()
        self._drop_tls()

    def _drop_tls(self) -> None:
        tls, self._tls = self._tls, None
        if tls is not None:
            tls.close()


def connection_factory(server: TargetServer, mode: str,
                       keyring: PskKeyring | None) -> Callable[[Listener], QueueConnection]:
    """Connections for a listener in TLS ``mode`` ("allowed" or "required"). Raises
    ValueError now, not at the first connection, when OpenSSL 3 or the keyring is missing."""
    try:
        require_openssl()
    except TlsError as exc:  # the listener fails like any listener that cannot open
        raise ValueError(str(exc)) from None
    if keyring is None:
        raise ValueError("a TLS listener needs PSKs: configure a TLS keyring")
    context = TlsContext(server=True)
    required = mode == "required"

    def make(listener: Listener) -> QueueConnection:
        return TlsQueueConnection(server, listener, context=context, keyring=keyring,
                                  required=required)
    return make
