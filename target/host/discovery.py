"""``discover``: what ``nvme discover`` does, from Python.

Connect to the well-known discovery NQN, read the Discovery Log Page (0x70): its header for the
generation counter and the record count, then the whole page; retry while the generation
counter moved in between (Fabrics 1.1 §5.3), a bounded number of times.
"""
from __future__ import annotations

import struct
import uuid as uuid_mod
from typing import TYPE_CHECKING

from target.host.auth import HostAuth
from target.host.controller import Controller
from target.nvme.logpages import DiscoveryLogEntry, pull_discovery_log
from target.nvme.spec import (
    DISCOVERY_LOG_ENTRY_SIZE,
    DISCOVERY_LOG_HEADER_SIZE,
    DISCOVERY_NQN,
    LogPageId,
)

if TYPE_CHECKING:
    from target.host.tls import HostTls

MAX_ATTEMPTS = 5


async def discover(host: str, port: int, *, hostnqn: str | None = None,
                   hostid: uuid_mod.UUID | None = None, hdgst: bool = False,
                   ddgst: bool = False, timeout_s: float = 10.0,
                   auth: HostAuth | None = None,
                   tls: HostTls | None = None) -> list[DiscoveryLogEntry]:
    """The discovery log; ``auth``: DH-HMAC-CHAP credentials, for a discovery controller
    that asks for them; ``tls``: TLS 1.3 with this host's PSK."""
    ctrl = await Controller.connect(host, port, DISCOVERY_NQN, hostnqn=hostnqn, hostid=hostid,
                                    nr_io_queues=0, hdgst=hdgst, ddgst=ddgst, kato_ms=0,
                                    keep_alive=False, timeout_s=timeout_s, auth=auth,
                                    tls=tls)
    try:
        for _ in range(MAX_ATTEMPTS):
            header = await ctrl.get_log_page(LogPageId.DISCOVERY, DISCOVERY_LOG_HEADER_SIZE,
                                             rae=True)
            genctr, numrec = struct.unpack_from("<QQ", header)
            page = await ctrl.get_log_page(
                LogPageId.DISCOVERY, DISCOVERY_LOG_HEADER_SIZE + numrec * DISCOVERY_LOG_ENTRY_SIZE,
                rae=True)
            again, entries = pull_discovery_log(page)
            if again == genctr and len(entries) == numrec:
                return entries
        raise RuntimeError(f"discovery log kept changing over {MAX_ATTEMPTS} reads")
    finally:
        await ctrl.close()
