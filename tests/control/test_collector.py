"""The cyclic collector is off while a GET's answer lives across loop turns, and back on
after, however the pauses overlap (sbstore.collector)."""
from __future__ import annotations

import asyncio
import gc

from sbstore.collector import collector_paused


def test_overlapping_pauses_turn_the_collector_back_on_when_the_last_ends() -> None:
    assert gc.isenabled()
    first, second = collector_paused(), collector_paused()
    first.__enter__()
    second.__enter__()
    assert not gc.isenabled()
    first.__exit__(None, None, None)  # not nested: the first to begin ends first
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_a_pause_leaves_a_collector_that_was_off_off() -> None:
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


async def test_a_failing_block_still_ends_its_pause() -> None:
    async def fails() -> None:
        with collector_paused():
            await asyncio.sleep(0)
            raise RuntimeError("boom")
    try:
        await fails()
    except RuntimeError:
        pass
    assert gc.isenabled()
