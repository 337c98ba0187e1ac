"""Run a coroutine without a Task: stepped inline until it first suspends, then resumed by a
light :class:`Driver` each time the future it waits on is done.

Why: a command handler (or a replicated frame's I/O) is a coroutine, and many complete without
suspending (RAM, the page cache). A Task costs about 1 us to create, more to wake, and its
first step waits for the next loop iteration; against a per-I/O CPU budget of 8 us that is the
largest single cost. Used by the target's connections (``target.server``) and the replication
listener (``sbstore.cluster.replica_server``).
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

_Coroutine = Coroutine[Any, Any, Any]


def run_eagerly(coro: Awaitable[Any], done: Callable[[Any, BaseException | None], None],
                pending: set[Driver]) -> None:
    """Run ``coro`` until it first suspends; if it finishes, call ``done`` at once, else let a
    :class:`Driver` finish it. ``done(result, exc)`` is called exactly once either way.

    Handlers run outside a Task, so they must not rely on ``asyncio.current_task()``
    (``asyncio.timeout`` does): they await futures and that is all.
    """
    # Handlers are coroutine functions. No isinstance() check: against typing.Coroutine it
    # cost 0.5 us per command (four Python-level calls through typing and abc, 6% of the
    # target's Python time at QD32 under py-spy); an object without send() fails below like
    # any other handler error.
    coro = cast(_Coroutine, coro)  # (a module-level alias: subscripting typing per call costs)
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        done(stop.value, None)
        return
    except Exception as exc:  # the handler failed before suspending
        done(None, exc)
        return
    Driver(coro, done, pending).wait(yielded)


class Driver:
    """Steps a suspended handler each time the future it waits on is done: what a Task does,
    minus what a handler does not need (a Task costs ~1 us to create, and waking one through
    ``asyncio.wait`` several more; an I/O on an asynchronous device suspends every time).

    ``close()`` (the connection went away) closes the coroutine where it waits: its ``finally``
    blocks run, and nobody is told the result."""

    __slots__ = ("coro", "done", "fut", "pending")

    def __init__(self, coro: Coroutine[Any, Any, Any],
                 done: Callable[[Any, BaseException | None], None],
                 pending: set[Driver]) -> None:
        self.coro: Coroutine[Any, Any, Any] | None = coro
        self.done = done
        self.pending = pending
        self.fut: Any = None

    def wait(self, yielded: Any) -> None:
        self.pending.add(self)
        if yielded is None:  # a bare yield (asyncio.sleep(0)): go on next iteration
            self.fut = None
            asyncio.get_running_loop().call_soon(self.step, None)
            return
        # The asyncio protocol for a future yielded by ``await``: whoever runs the coroutine
        # clears the flag and resumes it when the future is done; the coroutine then reads the
        # future's result or exception itself.
        yielded._asyncio_future_blocking = False
        self.fut = yielded
        yielded.add_done_callback(self.step)

    def step(self, _fut: object) -> None:
        if self.coro is None:  # closed meanwhile
            return
        self.pending.discard(self)
        try:
            yielded = self.coro.send(None)
        except StopIteration as stop:
            self.coro = None
            self.done(stop.value, None)
            return
        except BaseException as exc:  # noqa: BLE001 - reported to done(), as a Task would
            self.coro = None
            self.done(None, exc)
            return
        self.wait(yielded)

    def close(self) -> None:
        coro, self.coro = self.coro, None
        self.pending.discard(self)
        fut, self.fut = self.fut, None
        if fut is not None:
            fut.remove_done_callback(self.step)
        if coro is not None:
            coro.close()
