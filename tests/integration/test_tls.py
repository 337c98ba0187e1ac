"""NVMe/TCP over TLS 1.3 with a PSK, through real sockets on 127.0.0.1: our initiator against
our target, with listeners that require, allow, or do not offer TLS."""
from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from target.blockdev import RamDevice
from target.host import Controller, QueueClient, discover
from target.host import commands as cmd
from target.host.tls import HostTls
from target.nvme.spec import (
    DISCOVERY_NQN,
    TCP_SECTYPE_NONE,
    TCP_SECTYPE_TLS13,
    TREQ_NOT_REQUIRED,
    TREQ_NOT_SPECIFIED,
    TREQ_REQUIRED,
    CommandSpecificStatus,
    StatusType,
)
from target.server import TargetServer
from target.subsystem import Subsystem, Target
from target.tls import openssl
from target.tls.keyring import PskKeyring
from target.tls.psk import ConfiguredPsk, LabelEncoding, PskHash

pytestmark = pytest.mark.skipif(not openssl.AVAILABLE, reason=openssl.UNAVAILABLE_REASON)

NQN = "nqn.2026-12.io.sbstore:tls"
HOST_A = "nqn.2014-08.org.nvmexpress:uuid:0b2a3a4c-0000-4000-8000-00000000000a"
HOST_B = "nqn.2014-08.org.nvmexpress:uuid:0b2a3a4c-0000-4000-8000-00000000000b"
HOST_NOKEY = "nqn.2014-08.org.nvmexpress:uuid:0b2a3a4c-0000-4000-8000-0000000000ff"
KEY_A = ConfiguredPsk(PskHash.SHA256, bytes(range(32)))
KEY_B = ConfiguredPsk(PskHash.SHA384, bytes(range(100, 148)))
TLS_A = HostTls(KEY_A)
TLS_B = HostTls(KEY_B, identity_version=1, encoding=LabelEncoding.RFC8446)


class Ports:
    def __init__(self, server: TargetServer, ports: dict[str, int]) -> None:
        self.server = server
        self.required, self.allowed, self.off = ports["required"], ports["allowed"], ports["off"]


@pytest.fixture
async def tls_target():
    target = Target()
    sub = Subsystem(NQN, serial="SBSTLS0001", model="sbstore tls", allow_any_host=True)
    sub.add_namespace(RamDevice(16 << 20, block_size=512, uuid=uuid.UUID(int=7)))
    target.add_subsystem(sub)
    keyring = PskKeyring()
    keyring.set(HOST_A, KEY_A)
    keyring.set(HOST_B, KEY_B, LabelEncoding.RFC8446)
    server = TargetServer(target, tls_keyring=keyring)
    ports = {}
    for mode in ("required", "allowed", "off"):
        ports[mode] = int((await server.listen("127.0.0.1", 0, tls=mode)).trsvcid)
    try:
        yield Ports(server, ports)
    finally:
        await server.close()


async def _io(ctrl: Controller, slot: int = 0) -> None:
    lba = 1024 * slot
    data = os.urandom(256 << 10)
    await ctrl.write(1, lba + 8, data)
    assert bytes(await ctrl.read(1, lba + 8, len(data) // 512)) == data
    small = os.urandom(512)
    await ctrl.write(1, lba, small)  # in-capsule
    assert bytes(await ctrl.read(1, lba, 1)) == small


@pytest.mark.parametrize("hostnqn,tls", [(HOST_A, TLS_A), (HOST_B, TLS_B)],
                         ids=["sha256-v0-compat", "sha384-v1-rfc8446"])
async def test_io_over_tls_on_a_required_listener(tls_target, hostnqn, tls):
    async with await Controller.connect("127.0.0.1", tls_target.required, NQN, hostnqn=hostnqn,
                                        nr_io_queues=2, tls=tls) as ctrl:
        assert ctrl.admin.cipher_suite == tls.psk.cipher.cipher_suite
        await _io(ctrl)
        await asyncio.gather(*(_io(ctrl, slot) for slot in range(1, 5)))


async def test_required_listener_refuses_plain_tcp(tls_target):
    with pytest.raises(ConnectionError):
        await Controller.connect("127.0.0.1", tls_target.required, NQN, hostnqn=HOST_A,
                                 timeout_s=5)
    async with await Controller.connect("127.0.0.1", tls_target.required, NQN,
                                        hostnqn=HOST_A, tls=TLS_A) as ctrl:
        await _io(ctrl)


async def test_allowed_listener_takes_both(tls_target):
    async with await Controller.connect("127.0.0.1", tls_target.allowed, NQN, hostnqn=HOST_A,
                                        tls=TLS_A) as secure, \
            await Controller.connect("127.0.0.1", tls_target.allowed, NQN,
                                     hostnqn=HOST_NOKEY) as plain:
        await _io(secure, 1)
        await _io(plain, 2)


@pytest.mark.parametrize("hostnqn,tls", [
    (HOST_A, HostTls(ConfiguredPsk(PskHash.SHA256, bytes(32)))),  # wrong key
    (HOST_A, HostTls(KEY_A, encoding=LabelEncoding.RFC8446)),  # the other derivation
    (HOST_NOKEY, TLS_A),  # a host with no key on the target
    (HOST_A, HostTls(ConfiguredPsk(PskHash.SHA384, bytes(48)))),  # another hash than A's
], ids=["wrong-key", "wrong-encoding", "unknown-host", "wrong-hash"])
async def test_bad_psk_fails_the_handshake_and_others_are_served(tls_target, hostnqn, tls):
    for port in (tls_target.required, tls_target.allowed):
        with pytest.raises(ConnectionError, match="TLS"):
            await Controller.connect("127.0.0.1", port, NQN, hostnqn=hostnqn, tls=tls,
                                     timeout_s=5)
    async with await Controller.connect("127.0.0.1", tls_target.required, NQN,
                                        hostnqn=HOST_A, tls=TLS_A) as ctrl:
        await _io(ctrl)


async def test_a_psk_opens_only_its_own_host_and_subsystem(tls_target):
    # The TLS session is A's; the Connect then claims to be host B.
    q = await QueueClient.open("127.0.0.1", tls_target.required, depth=4,
                               tls=TLS_A.for_subsystem(HOST_A, NQN))
    try:
        data = cmd.connect_data(hostid=uuid.uuid4(), cntlid=0xFFFF, subnqn=NQN, hostnqn=HOST_B)
        q.incapsule_limit = len(data)
        done = await q.submit(cmd.connect(0, qid=0, sqsize=4), data=data)
        assert (done.sct, done.sc) == (StatusType.COMMAND_SPECIFIC,
                                       CommandSpecificStatus.CONNECT_INVALID_HOST)
    finally:
        q.close()
    # A's identity names NQN, not the discovery subsystem.
    q = await QueueClient.open("127.0.0.1", tls_target.required, depth=4,
                               tls=TLS_A.for_subsystem(HOST_A, NQN))
    try:
        data = cmd.connect_data(hostid=uuid.uuid4(), cntlid=0xFFFF, subnqn=DISCOVERY_NQN,
                                hostnqn=HOST_A)
        q.incapsule_limit = len(data)
        done = await q.submit(cmd.connect(0, qid=0, sqsize=4), data=data)
        assert done.sct == StatusType.COMMAND_SPECIFIC and not done.ok
    finally:
        q.close()


async def test_discovery_log_tells_hosts_which_ports_want_tls(tls_target):
    entries = await discover("127.0.0.1", tls_target.required, hostnqn=HOST_A, tls=TLS_A)
    by_port = {}
    for e in entries:
        by_port.setdefault(int(e.trsvcid), set()).add((e.treq & 3, e.sectype))
    assert by_port[tls_target.required] == {(TREQ_REQUIRED, TCP_SECTYPE_TLS13)}
    assert by_port[tls_target.allowed] == {(TREQ_NOT_REQUIRED, TCP_SECTYPE_TLS13)}
    assert by_port[tls_target.off] == {(TREQ_NOT_SPECIFIED, TCP_SECTYPE_NONE)}
    assert all(e.treq & 4 for e in entries)  # SQ flow control disable, as before


async def test_tls_listener_needs_a_keyring():
    server = TargetServer(Target())
    with pytest.raises(ValueError, match="keyring"):
        await server.listen("127.0.0.1", 0, tls="required")
    assert server.listeners == []
    await server.close()


# -- garbage on the TLS record path ------------------------------------------------------------

async def _raw_exchange(port: int, payload: bytes, timeout_s: float = 5.0) -> bool:
    """Send ``payload`` on a fresh connection; True if the target then closed it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            chunk = await asyncio.wait_for(reader.read(65536), timeout_s)
            if not chunk:
                return True
        return False
    except (ConnectionError, asyncio.TimeoutError):
        return True
    finally:
        writer.close()


garbage = st.one_of(
    st.binary(min_size=1, max_size=2048),
    st.binary(max_size=2048).map(lambda b: b"\x16\x03\x01" + b),  # a "handshake record"
    st.binary(max_size=512).map(lambda b: b"\x16\x03\x03\x40\x00" + b),  # truncated one
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=garbage)
async def test_fuzz_garbage_before_the_handshake(tls_target, payload):
    # Garbage (then EOF) on a TLS port: that connection closes, nothing else notices.
    assert await _raw_exchange(tls_target.required, payload)
    assert tls_target.server.connection_count <= 1


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(min_size=1, max_size=4096))
async def test_fuzz_garbage_records_after_the_handshake(tls_target, payload):
    q = await QueueClient.open("127.0.0.1", tls_target.required, depth=4,
                               tls=TLS_A.for_subsystem(HOST_A, NQN))
    try:
        q.send_raw_ciphertext(payload + os.urandom(64))  # never a valid record: random tag
        assert await q.wait_closed(5.0)
    finally:
        q.close()


async def test_after_fuzzing_the_target_still_serves(tls_target):
    for payload in (b"\x16\x03\x01\x00\x05hello", b"\x00" * 128, os.urandom(300)):
        await _raw_exchange(tls_target.required, payload)
    async with await Controller.connect("127.0.0.1", tls_target.required, NQN,
                                        hostnqn=HOST_A, tls=TLS_A) as ctrl:
        await _io(ctrl)


async def test_a_stalled_handshake_is_closed(tls_target, monkeypatch):
    from target.tls import connection
    monkeypatch.setattr(connection, "HANDSHAKE_TIMEOUT_S", 0.3)
    for port in (tls_target.required, tls_target.allowed):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then silence
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the target
        finally:
            writer.close()
    async with await Controller.connect("127.0.0.1", tls_target.required, NQN,
                                        hostnqn=HOST_A, tls=TLS_A) as ctrl:
        await asyncio.sleep(0.5)  # past the timeout: an established session is not touched
        await _io(ctrl)


async def test_idle_connections_to_tls_listeners_cost_what_plain_ones_do(tls_target):
    # Until its first byte, a connection has no receive buffer (256 KiB for TLS records) and
    # no OpenSSL session: 10,000 idle ones must fit in 64 MiB (issue 8).
    import socket
    import tracemalloc
    loop = asyncio.get_running_loop()
    socks = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for port in [tls_target.required, tls_target.allowed] * 50:
            s = socket.socket()
            s.setblocking(False)
            socks.append(s)
            await loop.sock_connect(s, ("127.0.0.1", port))
        for _ in range(200):  # bounded wait for the target to accept them all
            if tls_target.server.connection_count >= len(socks):
                break
            await asyncio.sleep(0.01)
        assert tls_target.server.connection_count >= len(socks)
        grown = tracemalloc.get_traced_memory()[0] - before
        assert grown < 100 * 8 * 1024, f"{grown / 100:.0f} bytes per idle connection"
    finally:
        tracemalloc.stop()
        for s in socks:
            s.close()
    async with await Controller.connect("127.0.0.1", tls_target.allowed, NQN,
                                        hostnqn=HOST_A, tls=TLS_A) as ctrl:
        await _io(ctrl)


async def test_without_openssl_a_tls_listener_fails_with_the_reason(monkeypatch):
    monkeypatch.setattr(openssl, "AVAILABLE", False)
    monkeypatch.setattr(openssl, "UNAVAILABLE_REASON", "libssl.so.3 (OpenSSL 3) not found")
    keyring = PskKeyring()
    server = TargetServer(Target(), tls_keyring=keyring)
    with pytest.raises(ValueError, match="needs OpenSSL 3: libssl.so.3"):
        await server.listen("127.0.0.1", 0, tls="allowed")
    plain = await server.listen("127.0.0.1", 0)  # everything else works
    assert server.listeners == [plain]
    await server.close()


def test_a_plain_target_loads_no_tls_code():
    import subprocess
    import sys
    code = ("import asyncio, sys, uvloop\n"
            "from target.server import TargetServer\n"
            "from target.subsystem import Target\n"
            "from target.host import Controller\n"
            "async def main():\n"
            "    s = TargetServer(Target())\n"
            "    await s.listen('127.0.0.1', 0)\n"
            "    await s.close()\n"
            "uvloop.run(main())\n"
            "print(sorted(m for m in sys.modules if m.startswith('target.tls')"
            " or m == 'target.host.tls'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
