"""The TLS 1.3 PSK engine without sockets: a client and a server session joined by hand
(h11's ConnectionPair idea), fed whole, byte by byte, and with garbage."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from target.tls import openssl
from target.tls.engine import TlsClosed, TlsContext, TlsError, TlsSession

pytestmark = pytest.mark.skipif(not openssl.AVAILABLE, reason=openssl.UNAVAILABLE_REASON)

SHA256 = "TLS_AES_128_GCM_SHA256"
SHA384 = "TLS_AES_256_GCM_SHA384"
IDENTITY = b"NVMe0R01 nqn.host nqn.sub"
IDENTITY384 = b"NVMe0R02 nqn.host nqn.sub"
KEY = bytes(range(32))
KEY384 = bytes(range(48))
SERVER_CTX = TlsContext(server=True) if openssl.AVAILABLE else None
CLIENT_CTX = TlsContext(server=False) if openssl.AVAILABLE else None


def server(keys: dict[bytes, tuple[bytes, str]] | None = None) -> TlsSession:
    table = keys if keys is not None else {IDENTITY: (KEY, SHA256), IDENTITY384: (KEY384, SHA384)}
    return SERVER_CTX.session(psk_for=table.get)


def client(identity: bytes = IDENTITY, key: bytes = KEY, suite: str = SHA256,
           **kw: bool) -> TlsSession:
    return CLIENT_CTX.session(identity=identity, key=key, cipher_suite=suite, **kw)


def pump(c: TlsSession, s: TlsSession, *, byte_by_byte: bool = False) -> None:
    """Run the handshake to its end (bounded: TLS 1.3 takes 1.5 round trips)."""
    for _ in range(6):
        c.handshake()
        for chunk in _chunks(c.ciphertext_to_send(), byte_by_byte):
            s.receive_ciphertext(chunk)
            s.handshake()
        for chunk in _chunks(s.ciphertext_to_send(), byte_by_byte):
            c.receive_ciphertext(chunk)
            c.handshake()
        if c.established and s.established:
            return
    raise AssertionError("handshake did not finish")


def _chunks(data: bytes, one: bool) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))] if one else ([data] if data else [])


def read_all(session: TlsSession, limit: int = 1 << 22) -> bytes:
    buf = bytearray(65536)
    out = bytearray()
    while len(out) < limit:
        n = session.read_into(memoryview(buf))
        if n == 0:
            break
        out += buf[:n]
    return bytes(out)


@pytest.mark.parametrize("identity,key,suite", [(IDENTITY, KEY, SHA256),
                                                (IDENTITY384, KEY384, SHA384)])
def test_handshake_and_data_both_ways(identity, key, suite):
    c, s = client(identity, key, suite), server()
    pump(c, s)
    assert c.cipher_suite == s.cipher_suite == suite
    assert s.peer_identity == identity
    # No session tickets after the handshake: a kTLS host takes only application data.
    assert s.ciphertext_to_send() == b""
    data = os.urandom(1 << 20)  # crosses many 16 KiB records
    c.write(data)
    s.receive_ciphertext(c.ciphertext_to_send())
    assert read_all(s) == data
    s.write(memoryview(bytearray(b"reply")))
    c.receive_ciphertext(s.ciphertext_to_send())
    assert read_all(c) == b"reply"


def test_handshake_fed_one_byte_at_a_time():
    c, s = client(), server()
    pump(c, s, byte_by_byte=True)
    c.write(b"x" * 100)
    for b in _chunks(c.ciphertext_to_send(), True):
        s.receive_ciphertext(b)
    assert read_all(s) == b"x" * 100


def test_a_sha384_psk_wins_even_when_the_host_prefers_aes128():
    c, s = client(IDENTITY384, KEY384, SHA384, offer_all_suites=True), server()
    pump(c, s)
    assert s.cipher_suite == SHA384


@pytest.mark.parametrize("c_args,why", [
    ((IDENTITY, bytes(32), SHA256), "binder"),  # wrong key
    ((b"NVMe0R01 nqn.other nqn.sub", KEY, SHA256), "unknown PSK identity"),
])
def test_refused_psk_fails_both_sides_with_an_alert(c_args, why):
    c, s = client(*c_args), server()
    c.handshake()
    s.receive_ciphertext(c.ciphertext_to_send())
    with pytest.raises(TlsError, match=why):
        s.handshake()
    alert = s.ciphertext_to_send()
    assert alert[:1] == b"\x15"  # an alert record for the host
    c.receive_ciphertext(alert)
    with pytest.raises(TlsError):
        c.handshake()
    with pytest.raises(TlsError):
        s.read_into(memoryview(bytearray(10)))


def test_close_notify_ends_the_session():
    c, s = client(), server()
    pump(c, s)
    c.close_notify()
    s.receive_ciphertext(c.ciphertext_to_send())
    with pytest.raises(TlsClosed):
        s.read_into(memoryview(bytearray(100)))


def test_lookup_errors_refuse_without_unwinding_through_c():
    def broken(identity: bytes):
        raise RuntimeError("boom")
    c, s = client(), SERVER_CTX.session(psk_for=broken)
    c.handshake()
    s.receive_ciphertext(c.ciphertext_to_send())
    with pytest.raises(TlsError, match="boom"):
        s.handshake()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.booleans())
def test_fuzz_garbage_before_the_handshake(data, as_handshake):
    s = server()
    if as_handshake:
        data = b"\x16\x03\x01" + data
    s.receive_ciphertext(data)
    try:
        assert s.handshake() is False  # still waiting for a whole record
    except TlsError:
        assert s.failed
    s.close()


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=3000))
def test_fuzz_garbage_records_after_the_handshake(data):
    c, s = client(), server()
    pump(c, s)
    c.write(b"before")
    # The garbage ends with random bytes, so it never ends as whole valid records: the session
    # fails (TlsError, nothing else) within a bounded number of reads; the owner then closes
    # the connection. (Whether "before" is delivered first is OpenSSL's business.)
    s.receive_ciphertext(c.ciphertext_to_send() + data + os.urandom(17))
    with pytest.raises(TlsError):
        for _ in range(64):  # bounded: each pass consumes a record or adds 16 KiB of noise
            if s.read_into(memoryview(bytearray(65536))) == 0:
                s.receive_ciphertext(os.urandom(16 << 10))
    assert s.failed
    s.close()
    c.close()
