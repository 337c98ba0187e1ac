"""Admission: when a received I/O command may start using the target's CPU.

Why: on a Python target the CPU is nearly always the scarce resource. If every command ran the
moment its bytes were parsed, each connection would be served at the rate its host sends, and
tenant weights would order nothing. So an I/O command whose namespace's device names an
*admission flow* (``BlockDevice.admission_flow``, e.g. a tenant's queue in ``sbstore.qos``) asks
the server's :class:`Admission` first: it runs now, or it is held, in its connection, until the
admission controller picks it (:meth:`HeldCommands.run_held`). Every admitted command is
reported :meth:`Admission.finished` when its handler is done (its response queued), so the
controller can bound the commands executing at once: on an asynchronous device most of a
command's CPU is spent after its admission (the completion, the response). A connection
holding too many commands stops being read (TCP back-pressure), so nothing buffers without
bound.

The target knows nothing of tenants, weights or costs: a flow is an opaque object it gets from
the device and hands back. Admin and fabrics commands, and commands to devices without a flow,
are never held.
"""
from __future__ import annotations

from typing import Any, Protocol


class HeldCommands(Protocol):
    """A connection that holds commands for the admission controller."""

    def run_held(self, event: Any, flow: Any, nbytes: int) -> None:
        """Run a command this connection handed to :meth:`Admission.hold` (its turn came); it
        is admitted, and is reported finished like a command admitted at once."""

    def end_turn(self) -> None:
        """The controller ran some of our held commands this turn: send their responses."""


class Admission(Protocol):
    """Decides which received commands run, and when.

    ``solo`` is True while there is nothing to share (one tenant at most): the server then
    runs commands without :meth:`admit` or :meth:`finished` (about 3 us per 4k read on a pool
    at QD32, a tenth of the target's CPU) and only adds each to ``solo_admitted``. Commands
    it ran that way are never reported finished, even if ``solo`` turns False meanwhile."""

    solo: bool
    solo_admitted: int

    def admit(self, flow: Any, nbytes: int) -> bool:
        """May a command of ``flow`` moving ``nbytes`` run now? True: it is counted and the
        caller runs it at once. False: the caller must :meth:`hold` it."""

    def hold(self, flow: Any, nbytes: int, conn: HeldCommands, event: Any) -> None:
        """Queue the command; ``conn.run_held(event, flow, nbytes)`` is called when its turn
        comes."""

    def finished(self, flow: Any, n: int, nbytes: int) -> None:
        """``n`` admitted commands of ``flow``, moving ``nbytes`` in all, completed (or their
        connection went away)."""

    def forget(self, conn: HeldCommands) -> int:
        """The connection is gone: drop every command it holds; returns how many."""
