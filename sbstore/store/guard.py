"""When a freed cluster may be handed out again: after every data I/O that might still touch it.

Why: data I/O is asynchronous (an io_uring read or write is in flight while the loop runs other
commands). A read or an in-place write that looked up cluster ``p`` may still be in flight when
another command unmaps ``p`` (deallocate, a delete, a copy-on-write of a shared cluster) and a
commit makes ``p`` allocatable. If ``p`` were handed to another volume at once, the late write
would land in that volume's data, or the late read would return it. Neither may ever happen.

Theory of operation (an epoch scheme, like RCU's grace periods): every data I/O takes a ticket
(:meth:`ReuseGuard.begin`) naming the current epoch and gives it back when the I/O completes
(:meth:`ReuseGuard.end`). A commit closes the epoch when it is prepared (:meth:`close_epoch`);
the clusters it releases become allocatable through :meth:`after`, which runs the release once
no I/O of that epoch or an older one is still in flight. I/Os that begin later looked up maps
in which the released clusters are no longer mapped, so they need not be waited for.

Pure: no clock, no I/O, no asyncio.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable


class ReuseGuard:
    """Counts data I/Os in flight per epoch; defers releases until older ones finish."""

    __slots__ = ("_active", "_deferred", "epoch")

    def __init__(self) -> None:
        self.epoch = 0
        self._active: dict[int, int] = {}  # epoch -> data I/Os of it still in flight
        self._deferred: deque[tuple[int, Callable[[], None]]] = deque()

    def begin(self) -> int:
        """A data I/O starts; returns its ticket."""
        e = self.epoch
        a = self._active
        a[e] = a.get(e, 0) + 1
        return e

    def end(self, ticket: int) -> None:
        """The data I/O holding ``ticket`` completed (or failed)."""
        a = self._active
        n = a[ticket] - 1
        if n:
            a[ticket] = n
            return
        del a[ticket]
        if self._deferred:
            self._run_ready()

    def close_epoch(self) -> int:
        """A commit is prepared: I/Os begun from now on belong to the next epoch. Returns the
        closed epoch (what :meth:`after` waits for)."""
        e = self.epoch
        self.epoch = e + 1
        return e

    def after(self, epoch: int, release: Callable[[], None]) -> None:
        """Run ``release`` once no I/O of ``epoch`` or older is in flight (now, if none is)."""
        if self._deferred or not self._quiet(epoch):
            self._deferred.append((epoch, release))
            self._run_ready()
        else:
            release()

    @property
    def deferred(self) -> int:
        """Releases waiting for I/O to drain."""
        return len(self._deferred)

    def _quiet(self, epoch: int) -> bool:
        a = self._active
        return not a or min(a) > epoch

    def _run_ready(self) -> None:
        # Releases run in epoch order: a later one never overtakes an earlier one.
        d = self._deferred
        while d and self._quiet(d[0][0]):
            d.popleft()[1]()
