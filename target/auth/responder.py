"""The controller's side of DH-HMAC-CHAP on one queue (after Linux
drivers/nvme/target/fabrics-cmd-auth.c): Authentication Send carries the host's messages in,
Authentication Receive carries the controller's out.

Theory of operation. A :class:`Responder` is made per queue when its Connect finds that the
host must authenticate (the subsystem holds :class:`HostCredentials` for the host NQN). It
walks ``step``, the message it expects next:

    NEGOTIATE --Send(Negotiate)--> CHALLENGE --Receive--> REPLY --Send(Reply)--> SUCCESS1
    SUCCESS1 --Receive--> DONE (unidirectional) | SUCCESS2 --Send(Success2)--> DONE

Any failure moves to FAILURE1 with a reason; the next Receive returns a Failure1 message and
the transaction ends ``failed`` (the session then drops the controller, as nvmet's fatal error
does). A Failure2 from the host ends it ``failed`` too. A Negotiate at any time starts over:
that is how the host re-authenticates a live queue, which stays authenticated meanwhile.

Rules:
- Hash: the first of the credentials' hash preference list that the host offers. DH group:
  the first of the credentials' group preference list the host offers. None usable:
  Failure1 with HASH_UNUSABLE / DHGROUP_UNUSABLE.
- ``credentials()``: the credentials that may answer, asked afresh at every Negotiate (so a
  re-authentication after a key rotation uses the new secret). One for an NVM subsystem; for
  the discovery controller, every secret the host holds on any subsystem (the Reply is checked
  against each; the controller secret paired with the one that matched answers a
  bidirectional request). None left (the host's credentials were removed): NOT_USABLE.
- Modular exponentiations are slow in Python (7 ms for ffdhe2048, 70 ms for ffdhe8192 here)
  and ``pow()`` holds the GIL throughout, so a thread would not help: they go through
  ``offload``, which the server points at a worker process (target/offload.py). The
  controller's key pair per group is shared by the controller's queues (``KeyPairs``), as
  nvmet shares one per controller, and made afresh when the admin queue authenticates.
- Nothing secret leaves through exceptions, logs or reprs: failures are logged as reasons.
"""
from __future__ import annotations

import enum
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from target.auth import chap, ffdhe
from target.auth.secret import DhchapSecret
from target.nvme.dhchap import (
    DHGROUP_NAME,
    HASH_LEN,
    HASH_NAME,
    SC_C_NONE,
    AuthType,
    Challenge,
    DhGroupId,
    Failure,
    FailureReason,
    HashId,
    MessageError,
    MessageId,
    Success1,
    message_kind,
    pull_failure,
    pull_negotiate,
    pull_reply,
    push_challenge,
    push_failure,
    push_success1,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class Offload(Protocol):
    """Runs ``fn(*args)`` (a function of target.auth.ffdhe, picklable arguments) somewhere
    else, a worker process, and awaits its result."""

    def __call__(self, fn: Callable[..., T], /, *args: Any) -> Awaitable[T]: ...

DEFAULT_HASHES: tuple[int, ...] = (HashId.SHA256, HashId.SHA384, HashId.SHA512)
DEFAULT_DHGROUPS: tuple[int, ...] = (DhGroupId.FFDHE2048, DhGroupId.FFDHE3072,
                                     DhGroupId.FFDHE4096, DhGroupId.FFDHE6144,
                                     DhGroupId.FFDHE8192, DhGroupId.NULL)


async def run_inline(fn: Callable[..., T], /, *args: Any) -> T:
    """The default offload: compute on the caller's thread (tests, tools)."""
    return fn(*args)


@dataclass(frozen=True, slots=True)
class HostCredentials:
    """What a subsystem holds for one host: its secret, optionally a controller secret (then
    the controller can prove itself when the host asks), and the hash functions and DH groups
    this host may use, in order of preference."""

    host_secret: DhchapSecret
    ctrl_secret: DhchapSecret | None = None
    hashes: tuple[int, ...] = DEFAULT_HASHES
    dhgroups: tuple[int, ...] = DEFAULT_DHGROUPS

    def __post_init__(self) -> None:
        if not self.hashes or any(h not in HASH_LEN for h in self.hashes):
            raise ValueError(f"hash ids must be among {sorted(HASH_LEN)}")
        if not self.dhgroups or any(g not in DHGROUP_NAME for g in self.dhgroups):
            raise ValueError(f"DH group ids must be among {sorted(DHGROUP_NAME)}")

    def __repr__(self) -> str:
        return (f"HostCredentials(hashes={[HASH_NAME[HashId(h)] for h in self.hashes]}, "
                f"dhgroups={[DHGROUP_NAME[DhGroupId(g)] for g in self.dhgroups]}, "
                f"bidirectional={self.ctrl_secret is not None})")


class KeyPairs:
    """A controller's DH key pairs, one per group, made on first use."""

    def __init__(self) -> None:
        self._pairs: dict[int, ffdhe.KeyPair] = {}

    def clear(self) -> None:
        self._pairs.clear()

    async def get(self, group: int, offload: Offload) -> ffdhe.KeyPair:
        pair = self._pairs.get(group)
        if pair is None:
            pair = await offload(ffdhe.generate, group)
            self._pairs.setdefault(group, pair)
            pair = self._pairs[group]
        return pair


class _SeqNum:
    """Sequence numbers S1: a random non-zero start, then +1, skipping 0 (as Linux does)."""

    def __init__(self) -> None:
        self._value = 0

    def next(self) -> int:
        if not self._value:
            self._value = secrets.randbits(32) or 1
        else:
            self._value = (self._value + 1) & 0xFFFFFFFF or 1
        return self._value


SEQNUMS = _SeqNum()


class Step(enum.Enum):
    NEGOTIATE = "negotiate"  # waiting for the host's Negotiate (Send)
    CHALLENGE = "challenge"  # the host should read the Challenge (Receive)
    REPLY = "reply"  # waiting for the host's Reply (Send)
    SUCCESS1 = "success1"  # the host should read Success1 (Receive)
    SUCCESS2 = "success2"  # waiting for the host's Success2 (Send)
    FAILURE1 = "failure1"  # the host should read Failure1 (Receive)
    DONE = "done"  # the transaction is over (see ``authenticated`` / ``failed``)


@dataclass
class _Transaction:
    t_id: int
    hash_id: int
    dhgroup_id: int
    s1: int = 0
    c1: bytes = b""
    session_key: bytes | None = field(default=None, repr=False)
    matched: HostCredentials | None = None
    s2: int = 0
    c2: bytes | None = None
    pair: ffdhe.KeyPair | None = field(default=None, repr=False)


class Responder:
    """DH-HMAC-CHAP on one queue, controller side."""

    def __init__(self, *, qid: int, subnqn: str, hostnqn: str,
                 credentials: Callable[[], Sequence[HostCredentials]], key_pairs: KeyPairs,
                 offload: Offload = run_inline) -> None:
        self.qid = qid
        self.subnqn = subnqn
        self.hostnqn = hostnqn
        self.credentials = credentials
        self.candidates: tuple[HostCredentials, ...] = ()
        self.key_pairs = key_pairs
        self.offload = offload
        self.step = Step.NEGOTIATE
        self.authenticated = False
        self.failed = False
        self.reason: int = 0  # Failure reason once failed
        self.hash_id = 0
        self.dhgroup_id = 0
        self._t: _Transaction | None = None
        self._t_id = 0
        # Told True/False at the end of every transaction (the target's counters).
        self.on_outcome: Callable[[bool], None] | None = None

    def __repr__(self) -> str:
        return (f"Responder(qid={self.qid}, step={self.step.value}, "
                f"authenticated={self.authenticated})")

    # --- Authentication Send ------------------------------------------------------------------
    async def send(self, data: bytes) -> None:
        """A message from the host. Protocol faults become a pending Failure1, never an
        exception: the command itself completes successfully, as nvmet answers."""
        try:
            auth_type, auth_id, t_id = message_kind(data)
            if auth_type == AuthType.COMMON and auth_id == MessageId.NEGOTIATE:
                await self._negotiate(data)
                return
            if auth_type == AuthType.COMMON and auth_id == MessageId.FAILURE2:
                failure = pull_failure(data)
                self._end_failed(failure.reason or FailureReason.FAILED,
                                 "the host reported failure")
                return
            if auth_type != AuthType.DHCHAP:
                raise MessageError(f"message type {auth_type:#x}/{auth_id:#x}",
                                   FailureReason.INCORRECT_MESSAGE)
            expected = {Step.REPLY: MessageId.REPLY, Step.SUCCESS2: MessageId.SUCCESS2}
            if expected.get(self.step) != auth_id:
                raise MessageError(f"message {auth_id:#x} while at {self.step.value}",
                                   FailureReason.INCORRECT_MESSAGE)
            if t_id != self._t_id:
                raise MessageError(f"transaction {t_id}, {self._t_id} expected")
            if auth_id == MessageId.REPLY:
                await self._reply(data)
            else:  # Success2: the host accepted our response
                self.authenticated = True
                self._finish()
        except MessageError as e:
            self._fail(e.reason, str(e))

    async def _negotiate(self, data: bytes) -> None:
        msg = pull_negotiate(data)
        self._t = None
        self._t_id = msg.t_id
        if msg.sc_c != SC_C_NONE:
            raise MessageError("secure channel concatenation is not supported",
                               FailureReason.CONCAT_MISMATCH)
        self.candidates = tuple(self.credentials())
        if not self.candidates:
            raise MessageError("no credentials for this host any more",
                               FailureReason.NOT_USABLE)
        policy = self.candidates[0]
        hash_id = next((h for h in policy.hashes if h in msg.hash_ids), None)
        if hash_id is None:
            raise MessageError(f"no common hash in {list(msg.hash_ids)}",
                               FailureReason.HASH_UNUSABLE)
        group = next((g for g in policy.dhgroups if g in msg.dhgroup_ids), None)
        if group is None:
            raise MessageError(f"no common DH group in {list(msg.dhgroup_ids)}",
                               FailureReason.DHGROUP_UNUSABLE)
        if self.qid == 0:
            self.key_pairs.clear()  # a fresh exponential for every admin authentication
        self._t = _Transaction(msg.t_id, hash_id, group)
        self.hash_id, self.dhgroup_id = hash_id, group
        self.step = Step.CHALLENGE

    async def _reply(self, data: bytes) -> None:
        t = self._t
        assert t is not None
        msg = pull_reply(data)
        if len(msg.r1) != HASH_LEN[HashId(t.hash_id)]:
            raise MessageError(f"Reply HL {len(msg.r1)}", FailureReason.HASH_UNUSABLE)
        if t.dhgroup_id != DhGroupId.NULL:
            if not msg.dh_value or t.pair is None:
                raise MessageError("Reply without a DH value", FailureReason.INCORRECT_PAYLOAD)
            pair, peer = t.pair, msg.dh_value
            try:
                t.session_key = await self.offload(ffdhe.shared_secret, pair, peer)
            except ffdhe.DhError as e:
                raise MessageError(str(e), FailureReason.DHGROUP_UNUSABLE) from None
        elif msg.dh_value:
            raise MessageError("DH value with the null group", FailureReason.INCORRECT_PAYLOAD)
        for creds in self.candidates:
            expected = chap.host_response(t.hash_id,
                                          creds.host_secret.transformed(self.hostnqn), t.c1,
                                          t.s1, t.t_id, self.hostnqn, self.subnqn,
                                          t.session_key)
            if hmac.compare_digest(expected, msg.r1):
                t.matched = creds
                break
        else:
            raise MessageError("host response mismatch", FailureReason.FAILED)
        t.s2, t.c2 = msg.seqnum, msg.c2
        if t.c2 is not None and len(t.c2) != len(msg.r1):
            raise MessageError("C2 length")
        self.step = Step.SUCCESS1

    # --- Authentication Receive ---------------------------------------------------------------
    async def receive(self) -> bytes:
        """The message the host reads now."""
        if self.step is Step.CHALLENGE:
            return await self._challenge()
        if self.step is Step.SUCCESS1:
            return self._success1()
        if self.step is not Step.FAILURE1:
            self._fail(FailureReason.INCORRECT_MESSAGE,
                       f"Authentication Receive while at {self.step.value}")
        return self._failure1()

    async def _challenge(self) -> bytes:
        t = self._t
        assert t is not None
        hl = HASH_LEN[HashId(t.hash_id)]
        t.s1 = SEQNUMS.next()
        t.c1 = secrets.token_bytes(hl)
        dh_value = b""
        if t.dhgroup_id != DhGroupId.NULL:
            t.pair = await self.key_pairs.get(t.dhgroup_id, self.offload)
            dh_value = t.pair.public
        self.step = Step.REPLY
        return push_challenge(Challenge(t.t_id, t.hash_id, t.dhgroup_id, t.s1, t.c1, dh_value))

    def _success1(self) -> bytes:
        t = self._t
        assert t is not None and t.matched is not None
        hl = HASH_LEN[HashId(t.hash_id)]
        r2 = None
        if t.c2 is not None:  # the host asks us to prove ourselves
            ctrl_secret = t.matched.ctrl_secret
            if ctrl_secret is None:
                self._fail(FailureReason.FAILED, "the host asked for bidirectional "
                           "authentication but no controller secret is set")
                return self._failure1()
            r2 = chap.controller_response(t.hash_id, ctrl_secret.transformed(self.subnqn), t.c2,
                                          t.s2, t.t_id, self.subnqn, self.hostnqn,
                                          t.session_key)
        if t.s2 and t.c2 is not None:
            self.step = Step.SUCCESS2  # authenticated once the host sends Success2
        else:
            self.authenticated = True
            self._finish()
        return push_success1(Success1(t.t_id, hl, r2))

    def _failure1(self) -> bytes:
        data = push_failure(Failure(self._t_id, self.reason or FailureReason.FAILED, True))
        self._end_failed(self.reason or FailureReason.FAILED, "")
        return data

    # --- outcomes -----------------------------------------------------------------------------
    def _fail(self, reason: int, why: str) -> None:
        log.warning("DH-HMAC-CHAP on qid %d of %s for %s failed: %s", self.qid, self.subnqn,
                    self.hostnqn, why)
        self.reason = reason
        self.authenticated = False
        self.step = Step.FAILURE1
        self._t = None

    def _end_failed(self, reason: int, why: str) -> None:
        if why:
            log.warning("DH-HMAC-CHAP on qid %d of %s for %s: %s (reason %#x)", self.qid,
                        self.subnqn, self.hostnqn, why, reason)
        self.reason = reason
        self.authenticated = False
        self.failed = True
        self.step = Step.DONE
        self._t = None
        if self.on_outcome is not None:
            self.on_outcome(True)
        if self.on_outcome is not None:
            self.on_outcome(False)

    def _finish(self) -> None:
        t = self._t
        if t is not None and self.qid == 0:
            log.info("qid 0 of %s: %s authenticated with %s, group %s%s", self.subnqn,
                     self.hostnqn, HASH_NAME[HashId(t.hash_id)],
                     DHGROUP_NAME[DhGroupId(t.dhgroup_id)],
                     ", controller authenticated too" if t.c2 is not None else "")
        self.step = Step.DONE
        self._t = None
        if self.on_outcome is not None:
            self.on_outcome(True)
