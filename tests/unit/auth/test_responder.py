"""The controller's DH-HMAC-CHAP transaction without sockets: the full exchange with the host
code's own computations, and hostile message sequences fuzzed (never an exception, never
authenticated without the right response)."""
from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as hs

from target.auth import chap
from target.auth.responder import HostCredentials, KeyPairs, Responder, Step
from target.auth.secret import DhchapSecret
from target.nvme import dhchap as m

SUBNQN, HOSTNQN = "nqn.2024-01.io.sbstore:unit", "nqn.2014-08.org.nvmexpress:uuid:1"
SECRET = DhchapSecret(bytes(range(32)), 1)


def responder(**kw: object) -> Responder:
    creds = HostCredentials(SECRET, **kw)  # type: ignore[arg-type]
    return Responder(qid=0, subnqn=SUBNQN, hostnqn=HOSTNQN, credentials=lambda: [creds],
                     key_pairs=KeyPairs())


def test_null_group_exchange_by_hand() -> None:
    async def run() -> None:
        r = responder()
        await r.send(m.push_negotiate(m.Negotiate(5, (m.HashId.SHA384,), (m.DhGroupId.NULL,))))
        ch = m.pull_challenge(await r.receive())
        assert (ch.hash_id, ch.dhgroup_id, len(ch.c1), ch.dh_value) == (2, 0, 48, b"")
        r1 = chap.host_response(2, SECRET.transformed(HOSTNQN), ch.c1, ch.seqnum, 5, HOSTNQN,
                                SUBNQN)
        await r.send(m.push_reply(m.Reply(5, 0, r1, None)))
        ok = m.pull_success1(await r.receive())
        assert ok.r2 is None and r.authenticated and r.step is Step.DONE
    asyncio.run(run())


def test_wrong_transaction_id_fails() -> None:
    async def run() -> None:
        r = responder()
        await r.send(m.push_negotiate(m.Negotiate(5, (1,), (0,))))
        await r.receive()
        await r.send(m.push_reply(m.Reply(6, 0, bytes(32), None)))
        failure = m.pull_failure(await r.receive())
        assert failure.from_controller and r.failed and not r.authenticated
    asyncio.run(run())


@settings(max_examples=200, deadline=None)
@given(hs.lists(hs.one_of(hs.binary(max_size=120), hs.just(b"RECEIVE"),
                          hs.just(m.push_negotiate(m.Negotiate(1, (1,), (0,)))),
                          hs.just(m.push_success2(1))), max_size=8))
def test_fuzzed_sequences(messages: list[bytes]) -> None:
    async def run() -> None:
        r = responder(dhgroups=(m.DhGroupId.NULL,))
        for msg in messages:
            if msg == b"RECEIVE":
                out = await r.receive()
                m.message_kind(out)
            else:
                await r.send(msg)
            assert not r.authenticated  # nobody here knows the secret's response
    asyncio.run(run())
