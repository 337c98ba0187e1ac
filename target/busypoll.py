"""Busy-polling: keep the event loop awake for a while after each receive.

Why: at queue depth 1 every command arrives on a sleeping loop. The thread blocks in
``epoll_wait``, its CPU goes idle, and the next capsule has to wake it: a scheduler switch and,
when the CPU was halted, an inter-processor interrupt. In a VM each of these is a trap to the
hypervisor. On the 2-vCPU Firecracker VM this project is measured on, a bare uvloop server
doing the same PDU exchange spends 21-28 us of CPU per round trip when its client shares its
CPU and 60-70 us when the client is on the other CPU, against about 3 us per I/O at queue depth
32, where one wake-up serves many commands (see perf/run.py and README "Benchmarks").

How: after a receive the poller keeps one callback in the loop's ready queue. A loop with a
ready callback polls its sockets with a zero timeout instead of sleeping (uvloop: an active
idle handle makes libuv's poll timeout 0; asyncio: a non-empty ready queue), so the next
capsule is found by a loop that is already running. When ``window_s`` passes with no receive,
the callback stops re-arming itself and the loop sleeps again: the spin is bounded, and an
idle target costs nothing.

Cost: while it spins the target burns its CPU: with a host at queue depth 1 that is a whole
core for as long as the host keeps sending. It is therefore off unless asked for (``serve
--busy-poll US`` or ``[target] busy_poll_us``), for latency-sensitive deployments with a core to
spare. ``SO_BUSY_POLL`` (the kernel polling a NIC queue) is a different thing and does not apply
to loopback, which has no NAPI queue.
"""
from __future__ import annotations

import asyncio
import time


class BusyPoller:
    """Keeps ``loop`` polling with a zero timeout until ``window_s`` after the last :meth:`kick`.

    ``kick`` is called on every receive, so it does no more than set a flag (and, on the first
    receive after a quiet spell, schedule the spin); the clock is read once per loop iteration
    by the spin itself.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError("the busy-poll window must be positive")
        self._loop = loop
        self.window_s = window_s
        self._kicked = False
        self._until = 0.0
        self._handle: asyncio.Handle | None = None
        self.spins = 0  # loop iterations spent polling (for tests and benchmarks)
        self.bursts = 0  # times polling started after a quiet spell

    @property
    def spinning(self) -> bool:
        return self._handle is not None

    def kick(self) -> None:
        """Something was received: poll for ``window_s`` more."""
        self._kicked = True
        if self._handle is None:
            self.bursts += 1
            self._handle = self._loop.call_soon(self._spin)

    def _spin(self) -> None:
        now = time.monotonic()
        if self._kicked:
            self._kicked = False
            self._until = now + self.window_s
        if now < self._until:
            self.spins += 1
            self._handle = self._loop.call_soon(self._spin)
        else:
            self._handle = None

    def close(self) -> None:
        """Stop spinning now (the loop may be closing)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._kicked = False
