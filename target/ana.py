"""Asymmetric Namespace Access (ANA): the state each path shows for each ANA group.

Theory of operation (NVMe Base 2.0 §8.1). A *path* is a listener of the target, named by its
NVMe port id: a host that connects one subsystem through two listeners has two controllers, one
per path, and native multipath (Linux ``nvme_core.multipath``) chooses between them by the ANA
state each controller reports. An *ANA group* is a set of namespaces of one subsystem
(``Namespace.anagrpid``; by default every namespace of a subsystem is in group 1, so a
subsystem moves between paths as one).

The :class:`AnaTable` holds what the admin set, keyed by (port id, subsystem NQN or None, group
id or None). The most specific entry wins: (port, NQN, group), then (port, NQN), then (port);
a path that no entry names is OPTIMIZED, the state every path has until someone says
otherwise. The table is plain data; :class:`target.subsystem.Target` applies a change to the
live controllers (views of the namespaces each path may serve, the ANA log's change count, and
the ANA change notice).

What a state means for commands on the path (§8.1.3): OPTIMIZED and NON_OPTIMIZED serve I/O;
INACCESSIBLE, PERSISTENT_LOSS and CHANGE complete I/O with the path-related statuses ANA
Inaccessible, ANA Persistent Loss and ANA Transition (SCT 3h, never DNR, so the host retries on
another path). Admin commands work in every state.
"""
from __future__ import annotations

from collections.abc import Iterator

from target.nvme import status as st
from target.nvme.spec import AnaState

DEFAULT_ANAGRPID = 1
MAX_ANA_GROUPS = 128  # Identify ANAGRPMAX and NANAGRPID: group ids are 1..128
ANATT_S = 10  # Identify ANATT: how long a path may stay in CHANGE before the host gives up
SERVING_STATES = frozenset({AnaState.OPTIMIZED, AnaState.NON_OPTIMIZED})

# The names the control module and the CLI use for the states.
STATE_NAMES: dict[str, AnaState] = {
    "optimized": AnaState.OPTIMIZED,
    "non-optimized": AnaState.NON_OPTIMIZED,
    "inaccessible": AnaState.INACCESSIBLE,
    "persistent-loss": AnaState.PERSISTENT_LOSS,
    "change": AnaState.CHANGE,
}
_NAME_OF = {v: k for k, v in STATE_NAMES.items()}


def state_name(state: AnaState) -> str:
    return _NAME_OF[state]


def parse_state(text: str | int | AnaState) -> AnaState:
    """An ANA state from its name (``non-optimized``, also ``non_optimized``) or its value."""
    if isinstance(text, str):
        key = text.strip().lower().replace("_", "-")
        if key in STATE_NAMES:
            return STATE_NAMES[key]
        raise ValueError(f"ANA state {text!r}: one of {', '.join(STATE_NAMES)}")
    try:
        return AnaState(text)
    except ValueError:
        raise ValueError(f"ANA state {text!r} is not defined") from None


def check_grpid(grpid: int) -> int:
    if not 1 <= grpid <= MAX_ANA_GROUPS:
        raise ValueError(f"ANA group id {grpid} outside 1..{MAX_ANA_GROUPS}")
    return grpid


def path_error(state: AnaState, what: str) -> st.NvmeError:
    """The status an I/O command gets on a path in ``state`` (one that does not serve I/O)."""
    if state == AnaState.INACCESSIBLE:
        return st.AnaInaccessible(what)
    if state == AnaState.PERSISTENT_LOSS:
        return st.AnaPersistentLoss(what)
    return st.AnaTransition(what)


Key = tuple[int, "str | None", "int | None"]


class AnaTable:
    """ANA states set by the admin, by (port id, subsystem NQN or None, group id or None)."""

    def __init__(self) -> None:
        self._entries: dict[Key, AnaState] = {}

    def set(self, portid: int, state: AnaState | None, *, nqn: str | None = None,
            grpid: int | None = None) -> bool:
        """Set (or with ``state`` None, remove) one entry; True if the table changed."""
        if grpid is not None:
            if nqn is None:
                raise ValueError("an ANA group id is only meaningful within a subsystem")
            check_grpid(grpid)
        key: Key = (portid, nqn, grpid)
        if state is None:
            return self._entries.pop(key, None) is not None
        state = AnaState(state)
        if self._entries.get(key) == state:
            return False
        self._entries[key] = state
        return True

    def state(self, portid: int, nqn: str, grpid: int) -> AnaState:
        entries = self._entries
        if not entries:
            return AnaState.OPTIMIZED
        for key in ((portid, nqn, grpid), (portid, nqn, None), (portid, None, None)):
            found = entries.get(key)
            if found is not None:
                return found
        return AnaState.OPTIMIZED

    def forget_port(self, portid: int) -> bool:
        """Drop every entry of a port (its listener is gone); True if any was dropped."""
        keys = [k for k in self._entries if k[0] == portid]
        for k in keys:
            del self._entries[k]
        return bool(keys)

    def entries(self) -> Iterator[tuple[Key, AnaState]]:
        yield from sorted(self._entries.items(), key=lambda kv: (kv[0][0], kv[0][1] or "",
                                                                 kv[0][2] or 0))
