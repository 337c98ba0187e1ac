"""How often the event loop ran other work while a coroutine ran: the tests' measure of whether
control-plane work (a listing, a metrics render) yields to the loop, as an I/O would need it to."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def turns_while(awaitable: Awaitable[T]) -> tuple[T, int]:
    """(``awaitable``'s result, the loop turns another task got while it ran)."""
    turns = 0
    stop = False

    async def ticker() -> None:
        nonlocal turns
        while not stop:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)  # the ticker is running before the awaitable starts
    try:
        before = turns
        result = await awaitable
        return result, turns - before
    finally:
        stop = True
        await task
