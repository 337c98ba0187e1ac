"""The initiator's side of NVMe/TCP TLS: which PSK and identity to offer, and a queue client
whose PDUs travel inside TLS 1.3.

A host configured with a PSK (interchange form) offers, for each subsystem, the identity and
TLS PSK libnvme would have put in the kernel keyring (``target.tls.psk``): version 0
("NVMe0R01 <hostnqn> <subnqn>") by default, as Linux 6.12 looks up; version 1 on request.
The TLS handshake comes first on every queue's connection, then the ICReq, as on Linux.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass

from target.host.queue_client import QueueClient
from target.tls.engine import TlsClosed, TlsContext, TlsError, TlsSession
from target.tls.psk import ConfiguredPsk, LabelEncoding, make_identity, tls_psk

RECEIVE_BUFFER = 256 << 10


@dataclass(frozen=True, slots=True, repr=False)
class ClientPsk:
    """What one connection offers: identity, TLS PSK, cipher suite (``repr`` hides the key)."""

    identity: bytes
    key: bytes
    cipher_suite: str

    def __repr__(self) -> str:
        return f"ClientPsk({self.identity.decode(errors='replace')!r}, {self.cipher_suite})"


@dataclass(frozen=True, slots=True)
class HostTls:
    """A host's TLS setting: its configured PSK and how to derive from it."""

    psk: ConfiguredPsk
    identity_version: int = 0
    encoding: LabelEncoding = LabelEncoding.LIBNVME_COMPAT

    def for_subsystem(self, hostnqn: str, subnqn: str) -> ClientPsk:
        identity = make_identity(self.psk, hostnqn, subnqn, version=self.identity_version,
                                 encoding=self.encoding)
        return ClientPsk(str(identity).encode(), tls_psk(self.psk, identity, self.encoding),
                         identity.cipher.cipher_suite)


_context: TlsContext | None = None


def _client_context() -> TlsContext:
    global _context
    if _context is None:
        _context = TlsContext(server=False)
    return _context


class TlsQueueClient(QueueClient):
    """A :class:`QueueClient` over TLS 1.3: handshake, then the ICReq."""

    def __init__(self, *, hdgst: bool, ddgst: bool, depth: int, psk: ClientPsk) -> None:
        super().__init__(hdgst=hdgst, ddgst=ddgst, depth=depth)
        self._tls: TlsSession | None = _client_context().session(
            identity=psk.identity, key=psk.key, cipher_suite=psk.cipher_suite)
        self._rx = bytearray(RECEIVE_BUFFER)
        self._rxv = memoryview(self._rx)
        self.cipher_suite = ""

    def connection_made(self, transport: object) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")  # type: ignore[attr-defined]
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._step_handshake()

    def _step_handshake(self) -> None:
        tls = self._tls
        assert tls is not None
        try:
            done = tls.handshake()
        except TlsError as exc:
            self._send_ciphertext()
            self._fail(ConnectionError(f"TLS handshake failed: {exc}"))
            self.close()
            return
        self._send_ciphertext()
        if done:
            self.cipher_suite = tls.cipher_suite
            self._hq.initiate()
            self._flush()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._rxv

    def buffer_updated(self, nbytes: int) -> None:
        tls = self._tls
        if tls is None:
            return
        try:
            tls.receive_ciphertext(self._rxv[:nbytes])
            if not tls.established:
                self._step_handshake()
                if not tls.established:
                    return
            while True:  # bounded by the records buffered
                buf = self._hq.get_buffer(RECEIVE_BUFFER)
                n = tls.read_into(buf)
                if n == 0:
                    break
                self._hq.buffer_updated(n)
        except TlsClosed:
            self._fail(ConnectionError("target closed the TLS session"))
            self.close()
            return
        except TlsError as exc:
            self._fail(ConnectionError(str(exc)))
            self.close()
            return
        self._process_events()

    def _flush(self) -> None:
        tls = self._tls
        if tls is None or not tls.established:
            return
        data = self._hq.data_to_send()
        if data:
            try:
                tls.write(b"".join(data))
            except TlsError as exc:
                self._fail(ConnectionError(str(exc)))
                self.close()
                return
        self._send_ciphertext()

    def _send_ciphertext(self) -> None:
        tls, transport = self._tls, self._transport
        if tls is None or transport is None or transport.is_closing():
            return
        out = tls.ciphertext_to_send()
        if out:
            transport.write(out)

    def send_raw(self, data: bytes) -> None:
        """Arbitrary bytes inside the TLS session (tests of bad input)."""
        if self._tls is not None and self._tls.established:
            self._tls.write(data)
            self._send_ciphertext()

    def send_raw_ciphertext(self, data: bytes) -> None:
        """Arbitrary bytes on the wire, outside TLS (tests of bad records)."""
        super().send_raw(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        tls, self._tls = self._tls, None
        if tls is not None:
            tls.close()
