"""perf/echo_floor.py's driver counts answers off a byte stream however it is split, and a wrong
answer is an error rather than speed."""
from __future__ import annotations

from itertools import pairwise

from perf.echo_floor import ANSWER, _Tally


def _tally(outstanding: int) -> _Tally:
    tally = _Tally()
    tally.sent_at.extend([100] * outstanding)
    return tally


def test_answers_split_anyhow_are_counted_once_each():
    stream = memoryview(ANSWER * 3)
    tally = _tally(3)
    done = 0
    cuts = [0, 5, 24, 4100, 4143, 4144, 9000, len(stream)]
    for a, b in pairwise(cuts):
        done += tally.take(stream[a:b], 1100)
    assert done == 3 and tally.errors == 0
    assert list(tally.lat_ns) == [1000, 1000, 1000] and not tally.sent_at


def test_a_wrong_answer_is_an_error():
    bad = bytearray(ANSWER)
    bad[0] = 0x05  # a CapsuleResp where the C2HData header belongs
    tally = _tally(1)
    assert tally.take(memoryview(bytes(bad)), 200) == 1
    assert tally.errors == 1
    bad = bytearray(ANSWER)
    bad[-24] = 0x07  # the trailer is not a CapsuleResp
    tally = _tally(1)
    tally.take(memoryview(bytes(bad)), 200)
    assert tally.errors == 1
