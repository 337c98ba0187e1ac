"""One TLS 1.3 session with an external PSK, sans-I/O: ciphertext in, plaintext out, and back.

Theory of operation. An OpenSSL ``SSL`` object reads from one memory BIO and writes to another
(``SSL_set_bio``); nothing touches a socket. The owner feeds received bytes with
:meth:`TlsSession.receive_ciphertext`, drives the handshake with :meth:`TlsSession.handshake`,
reads plaintext with :meth:`TlsSession.read_into`, encrypts with :meth:`TlsSession.write`, and
sends whatever :meth:`TlsSession.ciphertext_to_send` returns.

- Server: OpenSSL calls the PSK find-session callback with the identity from the ClientHello;
  ``psk_for(identity) -> (key, cipher suite) | None`` answers it, and a session carrying that
  key as its resumption secret is built (SSL_SESSION_set1_master_key). No certificate is
  configured, so an unknown identity ends the handshake with an alert.
- Client: the use-session callback offers ``identity`` with ``key``.
- Only TLS 1.3, only TLS_AES_128_GCM_SHA256 / TLS_AES_256_GCM_SHA384 (NVMe/TCP TLS), and no
  session tickets: a Linux host's kTLS receive path takes only application data records, and
  a NewSessionTicket after the handshake would end its connection.

Rules: every failure raises :class:`TlsError` and leaves the session unusable (``failed``);
an alert OpenSSL produced is still in :meth:`ciphertext_to_send` for the owner to send before
closing. Loops over OpenSSL calls are bounded by the bytes available.
"""
from __future__ import annotations

import ctypes
from ctypes import byref, c_size_t, c_void_p
from typing import Any, Callable

from target.tls import openssl as O
from target.tls.openssl import lib

PskLookup = Callable[[bytes], "tuple[bytes, str] | None"]
CIPHER_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384"
_MAX_INT = 0x7FFFFFFF


class TlsError(Exception):
    """The TLS session failed (handshake refused, bad record, protocol violation)."""


class TlsUnavailable(TlsError):
    """OpenSSL 3 could not be loaded: TLS listeners and connections cannot work here."""


class TlsClosed(TlsError):
    """The peer closed the TLS session (close_notify)."""


def require_openssl() -> None:
    if not O.AVAILABLE:
        raise TlsUnavailable(f"NVMe/TCP TLS needs OpenSSL 3: {O.UNAVAILABLE_REASON}")


# SSL* -> session, for the callbacks OpenSSL makes from inside SSL_do_handshake.
_sessions: dict[int, TlsSession] = {}


def _find_session(ssl: int, identity: int, identity_len: int, sess_out: Any) -> int:
    session = _sessions.get(ssl)
    out = sess_out  # SSL_SESSION **, as a ctypes pointer
    out[0] = None
    if session is None or session.psk_for is None:
        return 0
    try:
        found = session.psk_for(ctypes.string_at(identity, identity_len))
    except Exception as exc:  # a lookup bug must not unwind through C
        session.refusal = f"PSK lookup failed: {exc!r}"
        return 0
    if found is None:
        session.refusal = session.refusal or "unknown PSK identity"
        return 1  # no PSK for it: OpenSSL goes on without one, and fails (no certificate)
    key, suite = found
    sess = _make_session(ssl, key, suite)
    if sess is None:
        session.refusal = f"cannot build a PSK session: {O.last_error()}"
        return 0
    session.cipher_suite = suite
    session.peer_identity = ctypes.string_at(identity, identity_len)
    out[0] = sess
    return 1


def _use_session(ssl: int, md: int | None, id_out: Any, idlen_out: Any, sess_out: Any) -> int:
    session = _sessions.get(ssl)
    ids, idlen, out = id_out, idlen_out, sess_out  # ctypes pointers to OpenSSL's out-params
    out[0] = None
    if session is None or session._client_psk is None:
        return 0
    identity, key, suite = session._client_psk
    # md is the handshake hash once a suite is chosen (on a HelloRetryRequest): offer the PSK
    # only if its hash fits (RFC 8446 §4.2.11).
    if md and lib.EVP_MD_get_size(md) != (32 if suite.endswith("SHA256") else 48):
        return 1
    sess = _make_session(ssl, key, suite)
    if sess is None:
        return 0
    ids[0] = ctypes.cast(identity, c_void_p).value
    idlen[0] = len(identity.raw)
    out[0] = sess
    return 1


def _client_hello(ssl: int, _alert: object, _arg: object) -> int:
    """Before OpenSSL picks a cipher suite: allow only the one whose hash the host's NVMe PSK
    identity names ("NVMe0R02 ..." -> TLS_AES_256_GCM_SHA384). Otherwise a host that prefers
    TLS_AES_128_GCM_SHA256 while offering a SHA-384 PSK would get that suite, and the PSK
    would be ignored for its hash (RFC 8446 §4.2.11)."""
    data, size = c_void_p(), c_size_t()
    if lib.SSL_client_hello_get0_ext(ssl, O.TLSEXT_TYPE_PSK, byref(data), byref(size)) != 1:
        return O.SSL_CLIENT_HELLO_SUCCESS  # no PSK offered: the handshake fails later anyway
    if not data.value:
        return O.SSL_CLIENT_HELLO_SUCCESS
    suite = _suite_of_first_identity(ctypes.string_at(data.value, size.value))
    if suite is not None:
        lib.SSL_set_ciphersuites(ssl, suite.encode())
    return O.SSL_CLIENT_HELLO_SUCCESS


def _suite_of_first_identity(ext: bytes) -> str | None:
    # OfferedPsks: identities<7..2^16-1> of {identity<1..2^16-1>, uint32 age}, then binders.
    if len(ext) < 4:
        return None
    id_len = int.from_bytes(ext[2:4], "big")
    identity = ext[4:4 + id_len]
    if len(identity) < 8 or not identity.startswith(b"NVMe"):
        return None
    return {b"01": "TLS_AES_128_GCM_SHA256", b"02": "TLS_AES_256_GCM_SHA384"}.get(identity[6:8])


def _make_session(ssl: int, key: bytes, suite: str) -> int | None:
    cipher = lib.SSL_CIPHER_find(ssl, O.CIPHER_ID[suite])
    sess = lib.SSL_SESSION_new()
    if not cipher or not sess:
        if sess:
            lib.SSL_SESSION_free(sess)
        return None
    if not (lib.SSL_SESSION_set1_master_key(sess, key, len(key))
            and lib.SSL_SESSION_set_cipher(sess, cipher)
            and lib.SSL_SESSION_set_protocol_version(sess, O.TLS1_3_VERSION)):
        lib.SSL_SESSION_free(sess)
        return None
    return int(sess)


_FIND_CB = O.PSK_FIND_SESSION_CB(_find_session) if O.AVAILABLE else None
_USE_CB = O.PSK_USE_SESSION_CB(_use_session) if O.AVAILABLE else None
_HELLO_CB = O.CLIENT_HELLO_CB(_client_hello) if O.AVAILABLE else None


class TlsContext:
    """An SSL_CTX for one role, TLS 1.3 PSK only. Make one per listener (server) or host."""

    def __init__(self, *, server: bool, cipher_suites: str = CIPHER_SUITES) -> None:
        require_openssl()
        self.server = server
        ctx = lib.SSL_CTX_new(lib.TLS_method())
        if not ctx:
            raise TlsError(f"SSL_CTX_new: {O.last_error()}")
        self._ctx: int | None = ctx
        ok = (lib.SSL_CTX_ctrl(ctx, O.SSL_CTRL_SET_MIN_PROTO_VERSION, O.TLS1_3_VERSION, None)
              and lib.SSL_CTX_ctrl(ctx, O.SSL_CTRL_SET_MAX_PROTO_VERSION, O.TLS1_3_VERSION, None)
              and lib.SSL_CTX_set_ciphersuites(ctx, cipher_suites.encode())
              and lib.SSL_CTX_set_num_tickets(ctx, 0))
        lib.SSL_CTX_set_options(ctx, O.SSL_OP_NO_TICKET)
        if server:
            lib.SSL_CTX_set_client_hello_cb(ctx, _HELLO_CB, None)
        if not ok:
            self.close()
            raise TlsError(f"configuring TLS 1.3 PSK: {O.last_error()}")

    def close(self) -> None:
        if self._ctx:
            lib.SSL_CTX_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit the module may be gone
            pass

    def session(self, *, psk_for: PskLookup | None = None, identity: bytes | None = None,
                key: bytes | None = None, cipher_suite: str | None = None,
                offer_all_suites: bool = False) -> TlsSession:
        """A server session (``psk_for``) or a client session (``identity``, ``key``,
        ``cipher_suite``; ``offer_all_suites``: offer both suites, not only the PSK's, as some
        TLS stacks do)."""
        assert self._ctx is not None, "context closed"
        return TlsSession(self, psk_for=psk_for, identity=identity, key=key,
                          cipher_suite=cipher_suite, offer_all_suites=offer_all_suites)


class TlsSession:
    """One TLS connection's state. Not thread-safe; one per TCP connection."""

    def __init__(self, ctx: TlsContext, *, psk_for: PskLookup | None, identity: bytes | None,
                 key: bytes | None, cipher_suite: str | None,
                 offer_all_suites: bool = False) -> None:
        self._ctx = ctx  # keeps the SSL_CTX alive as long as its sessions
        self.psk_for = psk_for
        self.refusal = ""  # why the server refused the host's PSK, for the log
        self.peer_identity: bytes | None = identity  # server: the one its PSK was found for
        self.cipher_suite = cipher_suite or ""
        self.failed = False
        self.established = False
        self._client_psk: tuple[ctypes.Array[ctypes.c_char], bytes, str] | None = None
        ssl = lib.SSL_new(ctx._ctx)
        if not ssl:
            raise TlsError(f"SSL_new: {O.last_error()}")
        self._ssl: int | None = ssl
        rbio, wbio = lib.BIO_new(lib.BIO_s_mem()), lib.BIO_new(lib.BIO_s_mem())
        if not rbio or not wbio:
            for bio in (rbio, wbio):
                if bio:
                    lib.BIO_free(bio)
            self.close()
            raise TlsError("BIO_new failed")
        lib.SSL_set_bio(ssl, rbio, wbio)  # the SSL owns both BIOs from here
        self._rbio, self._wbio = rbio, wbio
        _sessions[ssl] = self
        if ctx.server:
            lib.SSL_set_psk_find_session_callback(ssl, _FIND_CB)
            lib.SSL_set_accept_state(ssl)
        else:
            if identity is None or key is None or cipher_suite not in O.CIPHER_ID:
                self.close()
                raise TlsError("a client session needs an identity, a key and a cipher suite")
            # The buffer OpenSSL reads the identity from must outlive the handshake.
            self._client_psk = (ctypes.create_string_buffer(identity, len(identity)), key,
                                cipher_suite)
            # Offer only the PSK's suite: a server picks a suite before it looks at PSKs, and
            # one whose hash differs from the PSK's makes it ignore the PSK (RFC 8446 §4.2.11).
            if not offer_all_suites and not lib.SSL_set_ciphersuites(ssl, cipher_suite.encode()):
                self.close()
                raise TlsError(f"SSL_set_ciphersuites: {O.last_error()}")
            lib.SSL_set_psk_use_session_callback(ssl, _USE_CB)
            lib.SSL_set_connect_state(ssl)
        self._len = c_size_t()

    # -- bytes in and out ---------------------------------------------------------------------
    def receive_ciphertext(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes that came from the peer."""
        if self._ssl is None:
            return
        n = len(data)
        if not n:
            return
        if isinstance(data, bytes):
            written = lib.BIO_write(self._rbio, data, n)
        else:
            view = memoryview(data).cast("B")
            if view.readonly:
                written = lib.BIO_write(self._rbio, bytes(view), n)
            else:
                written = lib.BIO_write(self._rbio, (ctypes.c_char * n).from_buffer(view), n)
        if written != n:
            self._fail(f"BIO_write took {written} of {n} bytes")

    def ciphertext_to_send(self) -> bytes | bytearray:
        """Bytes for the peer (handshake, alerts, records), or b"". One copy: out of the BIO
        straight into the buffer returned (a 128 KiB read's records are copied once)."""
        if self._ssl is None:
            return b""
        pending = lib.BIO_ctrl_pending(self._wbio)
        if not pending:
            return b""
        out = bytearray(pending)
        got = lib.BIO_read(self._wbio, (ctypes.c_char * pending).from_buffer(out), pending)
        if got < pending:
            del out[max(0, got):]
        return out

    def handshake(self) -> bool:
        """Advance the handshake with the bytes received so far; True once it is complete."""
        if self.established:
            return True
        if self._ssl is None or self.failed:
            raise TlsError("TLS session is closed")
        lib.ERR_clear_error()
        rc = lib.SSL_do_handshake(self._ssl)
        if rc == 1:
            self.established = True
            cipher = lib.SSL_get_current_cipher(self._ssl)
            if cipher:
                self.cipher_suite = (lib.SSL_CIPHER_get_name(cipher) or b"").decode()
            return True
        err = lib.SSL_get_error(self._ssl, rc)
        if err in (O.SSL_ERROR_WANT_READ, O.SSL_ERROR_WANT_WRITE):
            return False
        detail = O.last_error()
        self._fail(f"TLS handshake failed: {self.refusal or detail}")
        return False  # unreachable: _fail raises

    def read_into(self, buf: memoryview) -> int:
        """Decrypt into ``buf``; the number of bytes, 0 if a whole record has not arrived yet.
        Raises TlsClosed when the peer sent close_notify, TlsError on a bad record."""
        if self._ssl is None or self.failed:
            raise TlsError("TLS session is closed")
        n = len(buf)
        if n == 0:
            return 0
        lib.ERR_clear_error()
        rc = lib.SSL_read_ex(self._ssl, (ctypes.c_char * n).from_buffer(buf), n,
                             byref(self._len))
        if rc == 1:
            return self._len.value
        err = lib.SSL_get_error(self._ssl, rc)
        if err in (O.SSL_ERROR_WANT_READ, O.SSL_ERROR_WANT_WRITE):
            return 0
        if err == O.SSL_ERROR_ZERO_RETURN:
            self.failed = True
            raise TlsClosed("peer closed the TLS session")
        self._fail(f"TLS record rejected: {O.last_error()}")
        return 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` (all of it: the write BIO grows as needed)."""
        if self._ssl is None or self.failed or not self.established:
            raise TlsError("TLS session is not established")
        view = memoryview(data).cast("B")
        pos, total = 0, len(view)
        while pos < total:  # bounded: each call consumes >= 1 byte or fails
            chunk = view[pos:pos + _MAX_INT]
            raw = bytes(chunk) if chunk.readonly else (ctypes.c_char * len(chunk)).from_buffer(chunk)
            lib.ERR_clear_error()
            rc = lib.SSL_write_ex(self._ssl, raw, len(chunk), byref(self._len))
            if rc != 1 or self._len.value == 0:
                self._fail(f"TLS write failed: {O.last_error()}")
            pos += self._len.value

    def close_notify(self) -> None:
        """Queue a close_notify alert (then send :meth:`ciphertext_to_send`)."""
        if self._ssl is not None and self.established and not self.failed:
            lib.SSL_shutdown(self._ssl)

    def _fail(self, message: str) -> None:
        self.failed = True
        raise TlsError(message)

    def close(self) -> None:
        ssl, self._ssl = self._ssl, None
        if ssl:
            _sessions.pop(ssl, None)
            lib.SSL_free(ssl)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit the module may be gone
            pass
