"""Long operations (inflate, export, import): what they are doing, how far along, and a way
to cancel them.

Rules of this module:
- An :class:`Operation` is made when the work starts and says ``done``/``total`` (in ``unit``:
  bytes or clusters) as the work reports it; its ``state`` goes running -> done | failed |
  cancelled, once. The registry keeps the last :data:`KEEP_FINISHED` finished ones, so a
  client that polls sees how an operation ended, and memory stays bounded.
- Cancelling asks, it does not kill: work that runs in a task of its own (inflate, import) gets
  ``CancelledError`` at its next await and undoes or stops as its own rules say (an import
  leaves no volume, an inflate leaves the clone valid, partly inflated); a stream being sent
  (export) checks :attr:`Operation.cancel_requested` between pieces and stops, so the receiver
  gets no trailer.
- No I/O here: the API shows these records; the service makes and finishes them.
"""
from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

KEEP_FINISHED = 100

T = TypeVar("T")


class OperationState(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class OperationCancelled(Exception):
    """The operation was cancelled (by ``DELETE /v1/operations/{id}``)."""


@dataclass
class Operation:
    id: int
    kind: str  # inflate | export | import
    pool: str
    target: str  # the volume or snapshot it works on
    unit: str = "bytes"
    done: int = 0
    total: int | None = None
    state: OperationState = OperationState.RUNNING
    started: float = field(default_factory=time.time)
    finished: float | None = None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # e.g. the snapshot an import makes
    cancel_requested: bool = False
    task: asyncio.Task[Any] | None = field(default=None, repr=False)

    def progress(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total

    def check_cancel(self) -> None:
        """Raise OperationCancelled if someone asked for it (for work between two pieces)."""
        if self.cancel_requested:
            raise OperationCancelled(f"operation {self.id} ({self.kind} of {self.target}) was "
                                     f"cancelled")

    def info(self) -> dict[str, Any]:
        end = self.finished if self.finished is not None else time.time()
        return {"id": self.id, "kind": self.kind, "pool": self.pool, "target": self.target,
                "state": self.state.value, "unit": self.unit, "done": self.done,
                "total": self.total,
                "percent": (round(100.0 * self.done / self.total, 1) if self.total else
                            (100.0 if self.state is OperationState.DONE else None)),
                "started": _iso(self.started),
                "finished": _iso(self.finished) if self.finished is not None else None,
                "elapsed_s": round(end - self.started, 3), "error": self.error,
                "cancel_requested": self.cancel_requested, **self.detail}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class OperationRegistry:
    """The daemon's operations, running and recently finished."""

    def __init__(self, keep_finished: int = KEEP_FINISHED) -> None:
        self.keep_finished = keep_finished
        self._ops: dict[int, Operation] = {}
        self._next_id = 1

    def start(self, kind: str, pool: str, target: str, unit: str = "bytes",
              total: int | None = None) -> Operation:
        op = Operation(self._next_id, kind, pool, target, unit, total=total)
        self._next_id += 1
        self._ops[op.id] = op
        return op

    def finish(self, op: Operation, exc: BaseException | None = None) -> None:
        if op.state is not OperationState.RUNNING:
            return
        op.finished = time.time()
        if exc is None:
            op.state = OperationState.DONE
        elif isinstance(exc, (asyncio.CancelledError, OperationCancelled)) or \
                op.cancel_requested:
            op.state = OperationState.CANCELLED
            op.error = "cancelled"
        else:
            op.state = OperationState.FAILED
            op.error = str(exc) or type(exc).__name__
        op.task = None
        finished = [o for o in self._ops.values() if o.state is not OperationState.RUNNING]
        for old in finished[:max(0, len(finished) - self.keep_finished)]:
            del self._ops[old.id]

    async def run(self, op: Operation, work: Callable[[Operation], Awaitable[T]]) -> T:
        """Run ``work(op)`` in a task of its own (so a cancel reaches only it) and wait for
        it; the operation records how it ended. A cancelled operation raises
        OperationCancelled here; the caller going away cancels the work too."""
        task = asyncio.get_running_loop().create_task(_call(work, op))
        op.task = task
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done() and task.cancelled():  # cancelled through the registry
                self.finish(op, OperationCancelled())
                raise OperationCancelled(f"operation {op.id} ({op.kind} of {op.target}) was "
                                         f"cancelled") from None
            task.cancel()  # our caller went away: so does the work
            try:
                await task
            except BaseException:  # noqa: BLE001 - recorded below
                pass
            self.finish(op, asyncio.CancelledError())
            raise
        except BaseException as exc:
            self.finish(op, exc)
            raise
        self.finish(op)
        return result

    def list(self) -> list[Operation]:
        return sorted(self._ops.values(), key=lambda o: o.id)

    def get(self, op_id: int) -> Operation | None:
        return self._ops.get(op_id)

    def cancel(self, op_id: int) -> Operation | None:
        """Ask operation ``op_id`` to stop; None if there is no such operation."""
        op = self._ops.get(op_id)
        if op is None or op.state is not OperationState.RUNNING:
            return op
        op.cancel_requested = True
        if op.task is not None and not op.task.done():
            op.task.cancel()
        return op


class TrackedStream:
    """A stream of bytes whose operation ends with it: done at its end, failed or cancelled
    if it raises, failed if it is closed before its end (the receiver went away), even when
    it was never started. ``check_cancel`` runs before each piece."""

    def __init__(self, registry: OperationRegistry, op: Operation,
                 chunks: AsyncIterator[bytes]) -> None:
        self._registry = registry
        self.op = op
        self._chunks = chunks

    def __aiter__(self) -> TrackedStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            self.op.check_cancel()
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            self._registry.finish(self.op)
            raise
        except BaseException as exc:
            self._registry.finish(self.op, exc)
            raise

    async def aclose(self) -> None:
        self._registry.finish(self.op, ConnectionError("the receiver went away before the "
                                                       "end of the stream"))
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def _call(work: Callable[[Operation], Awaitable[T]], op: Operation) -> T:
    return await work(op)
