"""The discovery log page (70h) as one host sees it (after Linux
drivers/nvme/target/discovery.c).

Rules:
- A host sees only the subsystems it may connect to: for each listener, one NVM subsystem
  entry per subsystem whose ACL admits the host and which that listener reaches, then one
  "current discovery subsystem" entry for the listener (subtype 3, the discovery NQN).
- Every entry is TCP, controller id FFFFh (dynamic), admin queue size 32, and TREQ "SQ flow
  control disable supported": a Linux host given that bit may ask for disabled SQ flow
  control and then read data with C2HData SUCCESS (no CapsuleResp).
- Secure channel (TP 8011): a listener with TLS "required" has TREQ "required" and TSAS
  sectype TLS 1.3, one with "allowed" TREQ "not required" and sectype TLS 1.3 (a Linux host
  then connects with TLS by itself, ``nvme connect-all``); others "not specified", none.
- A wildcard listener (0.0.0.0, ::) is shown with the address the host reached us on, when the
  session knows it (``QueueSession(local_traddr=...)``): a host cannot connect to 0.0.0.0.
- The header carries the target's generation counter, bumped by every change that may alter a
  log (target/subsystem.py); a host re-reads when it changes between its reads.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from target.nvme.logpages import DiscoveryLogEntry, push_discovery_log
from target.nvme.spec import (
    DISCOVERY_NQN,
    SUBTYPE_CURRENT_DISCOVERY,
    SUBTYPE_NVME,
    TCP_SECTYPE_NONE,
    TCP_SECTYPE_TLS13,
    TREQ_DISABLE_SQFLOW,
    TREQ_NOT_REQUIRED,
    TREQ_NOT_SPECIFIED,
    TREQ_REQUIRED,
)

if TYPE_CHECKING:
    from target.controller import Controller, QueueSession
    from target.subsystem import Listener, Target

ADMIN_QUEUE_SIZE = 32  # ASQSZ we advertise (Linux's NVME_AQ_DEPTH); larger ones are accepted
EFLAGS_DUPRETINFO = 1 << 0  # the current discovery entry returns this same information
TREQ = TREQ_NOT_SPECIFIED | TREQ_DISABLE_SQFLOW
_SECURE_CHANNEL = {"off": (TREQ_NOT_SPECIFIED, TCP_SECTYPE_NONE),
                   "allowed": (TREQ_NOT_REQUIRED, TCP_SECTYPE_TLS13),
                   "required": (TREQ_REQUIRED, TCP_SECTYPE_TLS13)}


def _treq_sectype(listener: Listener) -> tuple[int, int]:
    treq, sectype = _SECURE_CHANNEL[listener.tls]
    return treq | TREQ_DISABLE_SQFLOW, sectype


def _listeners(target: Target, own: Listener) -> list[Listener]:
    registered = sorted(target.listeners.values(), key=lambda x: x.portid)
    if own not in registered:
        registered.insert(0, own)
    return registered


def _traddr(listener: Listener, own: Listener, local_traddr: str | None) -> str:
    if listener.is_wildcard and local_traddr and listener.adrfam == own.adrfam:
        return local_traddr
    return listener.traddr


def discovery_entries(target: Target, hostnqn: str, own: Listener,
                      local_traddr: str | None = None) -> list[DiscoveryLogEntry]:
    """The records the host ``hostnqn``, connected through ``own``, may see."""
    entries: list[DiscoveryLogEntry] = []
    listeners = _listeners(target, own)
    for subsystem in sorted(target.subsystems.values(), key=lambda s: s.nqn):
        for listener in listeners:
            if subsystem.admits(hostnqn, listener):
                treq, sectype = _treq_sectype(listener)
                entries.append(DiscoveryLogEntry(
                    subtype=SUBTYPE_NVME, portid=listener.portid, trsvcid=listener.trsvcid,
                    subnqn=subsystem.nqn, traddr=_traddr(listener, own, local_traddr),
                    adrfam=listener.adrfam, treq=treq, asqsz=ADMIN_QUEUE_SIZE,
                    sectype=sectype))
    for listener in listeners:
        treq, sectype = _treq_sectype(listener)
        entries.append(DiscoveryLogEntry(
            subtype=SUBTYPE_CURRENT_DISCOVERY, portid=listener.portid, trsvcid=listener.trsvcid,
            subnqn=DISCOVERY_NQN, traddr=_traddr(listener, own, local_traddr),
            adrfam=listener.adrfam, treq=treq, asqsz=ADMIN_QUEUE_SIZE,
            eflags=EFLAGS_DUPRETINFO, sectype=sectype))
    return entries


def discovery_log(session: QueueSession, ctrl: Controller) -> bytes:
    target = ctrl.target
    return push_discovery_log(target.genctr, discovery_entries(
        target, ctrl.hostnqn, session.listener, session.local_traddr))
