"""The host's side of DH-HMAC-CHAP on one queue (after Linux drivers/nvme/host/auth.c), for
the Python initiator: Negotiate, read the Challenge, Reply, read Success1, and, when the
controller was asked to prove itself, check its response and send Success2 (or Failure2).

Usage: ``await authenticate(queue, HostAuth(...), subnqn=..., hostnqn=...)`` right after a
Connect whose response set AUTHREQ.ATR (``Controller.connect`` does it when given a secret),
or at any time later to re-authenticate. Raises :class:`AuthenticationFailed` with the
reason (the controller's Failure1, or what the host found wrong).

The offered hash functions and DH groups are parameters, so tests can pin one of each; the
defaults are what Linux offers (every hash, every group).
"""
from __future__ import annotations

import asyncio
import hmac
import itertools
import secrets
from dataclasses import dataclass

from target.auth import chap, ffdhe
from target.auth.secret import DhchapSecret
from target.host import commands as cmd
from target.host.queue_client import QueueClient
from target.nvme.dhchap import (
    HASH_LEN,
    AuthType,
    DhGroupId,
    Failure,
    FailureReason,
    HashId,
    MessageError,
    MessageId,
    Negotiate,
    Reply,
    message_kind,
    pull_challenge,
    pull_failure,
    pull_success1,
    push_failure,
    push_negotiate,
    push_reply,
    push_success2,
)

RECEIVE_LEN = 4096  # what Linux reads per Authentication Receive (enough for ffdhe8192)
ALL_HASHES = (HashId.SHA256, HashId.SHA384, HashId.SHA512)
ALL_DHGROUPS = (DhGroupId.NULL, DhGroupId.FFDHE2048, DhGroupId.FFDHE3072, DhGroupId.FFDHE4096,
                DhGroupId.FFDHE6144, DhGroupId.FFDHE8192)
_T_IDS = itertools.count(1)


class AuthenticationFailed(Exception):
    """DH-HMAC-CHAP did not succeed; ``reason`` is a FailureReason, ``by_controller`` tells
    whether the controller refused (Failure1) or the host did."""

    def __init__(self, message: str, reason: int, *, by_controller: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.by_controller = by_controller


@dataclass(frozen=True)
class HostAuth:
    """The host's credentials and what it offers."""

    secret: DhchapSecret
    ctrl_secret: DhchapSecret | None = None  # set: ask the controller to prove itself
    hashes: tuple[int, ...] = ALL_HASHES
    dhgroups: tuple[int, ...] = ALL_DHGROUPS


@dataclass(frozen=True)
class Outcome:
    hash_id: int
    dhgroup_id: int
    bidirectional: bool


async def _send(q: QueueClient, message: bytes) -> None:
    (await q.submit(cmd.auth_send(0, len(message)), data=message)).check("Authentication Send")


async def _receive(q: QueueClient) -> bytes:
    done = (await q.submit(cmd.auth_receive(0, RECEIVE_LEN), read_len=RECEIVE_LEN)
            ).check("Authentication Receive")
    return bytes(done.payload)


def _expect(data: bytes, message_id: int, t_id: int) -> None:
    auth_type, auth_id, got_t_id = message_kind(data)
    if auth_type == AuthType.COMMON and auth_id == MessageId.FAILURE1:
        failure = pull_failure(data)
        raise AuthenticationFailed(f"the controller refused (reason {failure.reason:#x})",
                                   failure.reason, by_controller=True)
    if auth_type != AuthType.DHCHAP or auth_id != message_id or got_t_id != t_id:
        raise MessageError(f"unexpected message {auth_type:#x}/{auth_id:#x} (t_id {got_t_id})",
                           FailureReason.INCORRECT_MESSAGE)


async def authenticate(q: QueueClient, auth: HostAuth, *, subnqn: str,
                       hostnqn: str) -> Outcome:
    """Run one DH-HMAC-CHAP transaction on queue ``q``."""
    t_id = next(_T_IDS) & 0xFFFF
    await _send(q, push_negotiate(Negotiate(t_id, auth.hashes, auth.dhgroups)))
    try:
        data = await _receive(q)
        _expect(data, MessageId.CHALLENGE, t_id)
        challenge = pull_challenge(data)
        if challenge.hash_id not in auth.hashes \
                or len(challenge.c1) != HASH_LEN.get(challenge.hash_id, -1):
            raise MessageError(f"hash {challenge.hash_id} not offered",
                               FailureReason.HASH_UNUSABLE)
        if challenge.dhgroup_id not in auth.dhgroups:
            raise MessageError(f"DH group {challenge.dhgroup_id} not offered",
                               FailureReason.DHGROUP_UNUSABLE)
        session_key, our_public = None, b""
        if challenge.dhgroup_id != DhGroupId.NULL:
            group, peer = challenge.dhgroup_id, challenge.dh_value

            def exchange() -> tuple[bytes, bytes]:
                pair = ffdhe.generate(group)
                return ffdhe.shared_secret(pair, peer), pair.public

            try:
                # A thread keeps the call shape simple; pow() holds the GIL, so the loop still
                # waits for it (the target runs its side in a worker process instead).
                session_key, our_public = await asyncio.to_thread(exchange)
            except ffdhe.DhError as e:
                raise MessageError(str(e), FailureReason.DHGROUP_UNUSABLE) from None
        elif challenge.dh_value:
            raise MessageError("DH value with the null group")
        h = challenge.hash_id
        r1 = chap.host_response(h, auth.secret.transformed(hostnqn), challenge.c1,
                                challenge.seqnum, t_id, hostnqn, subnqn, session_key)
        c2, s2 = None, 0
        if auth.ctrl_secret is not None:
            c2, s2 = secrets.token_bytes(len(r1)), secrets.randbits(32) or 1
    except MessageError as e:
        await _send(q, push_failure(Failure(t_id, e.reason, False)))
        raise AuthenticationFailed(str(e), e.reason, by_controller=False) from None

    await _send(q, push_reply(Reply(t_id, s2, r1, c2, our_public)))
    data = await _receive(q)
    try:
        _expect(data, MessageId.SUCCESS1, t_id)
        success = pull_success1(data)
        if auth.ctrl_secret is not None:
            assert c2 is not None
            expected = chap.controller_response(h, auth.ctrl_secret.transformed(subnqn), c2, s2,
                                                t_id, subnqn, hostnqn, session_key)
            if success.r2 is None or not hmac.compare_digest(success.r2, expected):
                raise MessageError("controller authentication failed", FailureReason.FAILED)
    except MessageError as e:
        await _send(q, push_failure(Failure(t_id, e.reason, False)))
        raise AuthenticationFailed(str(e), e.reason, by_controller=False) from None
    if auth.ctrl_secret is not None:
        await _send(q, push_success2(t_id))
    return Outcome(h, challenge.dhgroup_id, auth.ctrl_secret is not None)
