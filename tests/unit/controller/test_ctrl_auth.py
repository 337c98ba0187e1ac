"""DH-HMAC-CHAP through QueueSession, no sockets: AUTHREQ in the Connect responses, what a
queue may do before it has authenticated (fabrics commands only), the Authentication Send /
Receive field checks, SQHD across refused commands, a failure dropping the controller, and
fuzzed Authentication Send payloads (never an exception, never authenticated)."""
from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as hs

from target.auth import chap
from target.auth.responder import HostCredentials
from target.auth.secret import DhchapSecret
from target.nvme import dhchap as m
from target.nvme.spec import (
    CONNECT_AUTHREQ_ATR,
    AdminOpcode,
    CommandSpecificStatus,
    FabricsType,
    GenericStatus,
    IdentifyCns,
    StatusType,
)

from .helpers import (
    HOSTNQN,
    SUBNQN,
    Conn,
    Env,
    bring_up_admin,
    connect_io,
    disconnect,
    fabrics,
    identify,
    make_env,
    read,
    sqe,
)

SECRET = DhchapSecret(bytes(range(32)), 1)
AUTH_REQUIRED = (StatusType.COMMAND_SPECIFIC, CommandSpecificStatus.AUTH_REQUIRED)


def env_with_auth() -> Env:
    env = make_env()
    env.subsystem.set_host_credentials(HOSTNQN, HostCredentials(SECRET,
                                                                dhgroups=(m.DhGroupId.NULL,)))
    return env


def auth_send(payload: bytes, *, tl: int | None = None, secp: int = m.SECP_DHCHAP,
              sgl: int | None = None, cid: int = 9) -> bytes:
    raw = fabrics(FabricsType.AUTH_SEND, cid=cid, length=len(payload) if sgl is None else sgl,
                  incapsule=True)
    struct.pack_into("<xBBBI", raw, 40, 1, 1, secp, len(payload) if tl is None else tl)
    return bytes(raw)


def auth_receive(al: int = 4096, cid: int = 9) -> bytes:
    raw = fabrics(FabricsType.AUTH_RECEIVE, cid=cid, length=al)
    struct.pack_into("<xBBBI", raw, 40, 1, 1, m.SECP_DHCHAP, al)
    return bytes(raw)


async def authenticate(conn: Conn, *, t_id: int = 3, secret: DhchapSecret = SECRET) -> bytes:
    """The host's side by hand (null group); returns what Success1/Failure1 said."""
    neg = m.push_negotiate(m.Negotiate(t_id, (m.HashId.SHA256,), (m.DhGroupId.NULL,)))
    assert (await conn.cmd(auth_send(neg), neg)).ok
    got = await conn.cmd(auth_receive())
    assert got.ok and got.data is not None and len(got.data) == 4096
    ch = m.pull_challenge(got.data)
    r1 = chap.host_response(ch.hash_id, secret.transformed(HOSTNQN), ch.c1, ch.seqnum, t_id,
                            HOSTNQN, SUBNQN)
    reply = m.push_reply(m.Reply(t_id, 0, r1, None))
    assert (await conn.cmd(auth_send(reply), reply)).ok
    done = await conn.cmd(auth_receive())
    assert done.ok and done.data is not None
    return done.data


async def test_admin_queue_before_and_after() -> None:
    env = env_with_auth()
    conn, cntlid = await bring_up_admin(env)  # Connect + Property Get/Set: allowed
    assert conn.session.auth is not None
    for raw in (identify(IdentifyCns.CONTROLLER), sqe(AdminOpcode.KEEP_ALIVE)):
        r = await conn.cmd(raw)
        assert r.status == AUTH_REQUIRED and r.dnr
    assert m.message_kind(await authenticate(conn))[1] == m.MessageId.SUCCESS1
    assert (await conn.cmd(identify(IdentifyCns.CONTROLLER))).ok


async def test_connect_results_carry_atr() -> None:
    env = env_with_auth()
    conn, cntlid = await bring_up_admin(env)
    await authenticate(conn)
    io, r = await connect_io(env, cntlid, 1, sqsize=3)
    assert r.ok and r.cqe.dw0 == cntlid | CONNECT_AUTHREQ_ATR
    plain = make_env()
    _c, plain_id = await bring_up_admin(plain)
    _io, r = await connect_io(plain, plain_id, 1)
    assert r.cqe.dw0 == plain_id  # no credentials, no ATR


async def test_io_queue_gate_and_sqhd() -> None:
    env = env_with_auth()
    conn, cntlid = await bring_up_admin(env)
    await authenticate(conn)
    io, r = await connect_io(env, cntlid, 1, sqsize=3)  # four entries: SQHD wraps at 4
    heads = [r.cqe.sqhd]
    refused = await io.cmd(read(1, 0, 1))
    assert refused.status == AUTH_REQUIRED
    heads.append(refused.cqe.sqhd)
    await authenticate(io)  # four commands
    ok = await io.cmd(read(1, 0, 1))
    assert ok.ok and ok.data == bytes(512)
    assert heads + [ok.cqe.sqhd] == [1, 2, (2 + 4 + 1) % 4]
    assert (await io.cmd(disconnect())).ok


async def test_disconnect_before_authentication() -> None:
    env = env_with_auth()
    conn, cntlid = await bring_up_admin(env)
    await authenticate(conn)
    io, _ = await connect_io(env, cntlid, 1)
    assert (await io.cmd(disconnect())).ok


async def test_field_checks() -> None:
    env = env_with_auth()
    conn, _ = await bring_up_admin(env)
    neg = m.push_negotiate(m.Negotiate(1, (1,), (0,)))
    bad = {
        "secp": (auth_send(neg, secp=0xEA), neg, (0, GenericStatus.INVALID_FIELD)),
        "tl 0": (auth_send(neg, tl=0), neg, (0, GenericStatus.INVALID_FIELD)),
        "sgl": (auth_send(neg, sgl=len(neg) + 8), neg + bytes(8),
                (0, GenericStatus.SGL_DATA_LENGTH_INVALID)),
    }
    for what, (raw, data, status) in bad.items():
        assert (await conn.cmd(raw, data)).status == status, what
    assert (await conn.cmd(auth_send(neg), neg)).ok
    r = await conn.cmd(auth_receive(al=16))  # the Challenge is 48 bytes
    assert r.status == (0, GenericStatus.INVALID_FIELD)


async def test_wrong_secret_drops_the_controller() -> None:
    env = env_with_auth()
    conn, _ = await bring_up_admin(env)
    answer = await authenticate(conn, secret=DhchapSecret(bytes(32), 1))
    failure = m.pull_failure(answer)
    assert failure.from_controller and failure.reason == m.FailureReason.FAILED
    assert conn.session.next_deadline() == 0.0
    conn.session.handle_timer(0.0)
    assert conn.closed and conn.close_calls == 1 and not env.subsystem.controllers


@settings(max_examples=150, deadline=None)
@given(hs.lists(hs.one_of(hs.binary(max_size=100), hs.just(b"")), max_size=6))
def test_fuzzed_auth_send(payloads: list[bytes]) -> None:
    import asyncio

    async def run() -> None:
        env = env_with_auth()
        conn, _ = await bring_up_admin(env)
        for p in payloads:
            if conn.closed:
                break
            if p:
                await conn.cmd(auth_send(p), p)
            else:
                await conn.cmd(auth_receive())
            assert conn.session.auth is not None and not conn.session.auth.authenticated
        if not conn.closed:
            assert (await conn.cmd(identify(IdentifyCns.CONTROLLER))).status == AUTH_REQUIRED
    asyncio.run(run())


async def test_credentials_set_after_connect() -> None:
    env = make_env()
    conn, _ = await bring_up_admin(env)  # admitted without authentication
    env.subsystem.set_host_credentials(HOSTNQN, HostCredentials(SECRET,
                                                                dhgroups=(m.DhGroupId.NULL,)))
    assert (await conn.cmd(sqe(AdminOpcode.KEEP_ALIVE))).ok  # not asked at its Connect
    neg = m.push_negotiate(m.Negotiate(4, (m.HashId.SHA256,), (m.DhGroupId.NULL,)))
    assert (await conn.cmd(auth_send(neg), neg)).ok
    assert (await conn.cmd(sqe(AdminOpcode.KEEP_ALIVE))).ok  # mid-transaction: still served
    assert (await conn.cmd(auth_receive())).ok
    assert env.target.dhchap_successes == 0 and env.target.dhchap_failures == 0
