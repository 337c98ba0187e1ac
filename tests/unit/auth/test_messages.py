"""DH-HMAC-CHAP message codecs: round trips, and hostile lengths fuzzed (never a crash, never
a read past the payload)."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as hs

from target.nvme import dhchap as m


def test_negotiate_as_linux_sends_it() -> None:
    raw = m.push_negotiate(m.Negotiate(7, (1, 2, 3), (0, 1, 2, 3, 4, 5)))
    assert len(raw) == 72 and raw[:8] == bytes([0, 0, 0, 0, 7, 0, 0, 1])
    assert raw[8:12] == bytes([1, 0, 3, 6]) and raw[12:15] == bytes([1, 2, 3])
    assert raw[42:48] == bytes([0, 1, 2, 3, 4, 5])
    assert m.pull_negotiate(raw) == m.Negotiate(7, (1, 2, 3), (0, 1, 2, 3, 4, 5))


def test_round_trips() -> None:
    ch = m.Challenge(3, 2, 1, 0xDEADBEEF, bytes(48), b"\1" * 256)
    assert m.pull_challenge(m.push_challenge(ch)) == ch
    for c2 in (None, b"\2" * 32):
        rp = m.Reply(3, 5 if c2 else 0, b"\3" * 32, c2, b"\4" * 256)
        assert m.pull_reply(m.push_reply(rp)) == rp
    for r2 in (None, b"\5" * 64):
        s1 = m.Success1(3, 64, r2)
        assert m.pull_success1(m.push_success1(s1)) == s1
    f = m.Failure(3, m.FailureReason.HASH_UNUSABLE, True)
    assert m.pull_failure(m.push_failure(f)) == f
    assert m.message_kind(m.push_success2(9)) == (1, 4, 9)


@given(hs.binary(max_size=300))
def test_pull_never_crashes(blob: bytes) -> None:
    for pull in (m.pull_negotiate, m.pull_challenge, m.pull_reply, m.pull_success1,
                 m.pull_failure, m.message_kind):
        try:
            out = pull(blob)
        except m.MessageError:
            continue
        if isinstance(out, m.Challenge):
            assert 16 + len(out.c1) + len(out.dh_value) <= len(blob)
        if isinstance(out, m.Reply):
            assert 16 + 2 * len(out.r1) + len(out.dh_value) <= len(blob)
