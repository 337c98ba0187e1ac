"""``discover``: what ``nvme discover`` does, from Python.

Connect to the well-known discovery NQN, read the Discovery Log Page (0x70): its header for the
generation counter and the record count, then the records, then the header again; retry while
the generation counter moved underneath (Fabrics 1.1 §5.3), a bounded number of times.
"""
from __future__ import annotations

import struct
import uuid as uuid_mod

from target.host.commands import (DISCOVERY_ENTRY_LEN, DISCOVERY_HEADER_LEN, DiscoveryEntry,
                                  parse_discovery_entries)
from target.host.controller import Controller
from target.nvme.spec import DISCOVERY_NQN, LogPageId

MAX_ATTEMPTS = 5


async def discover(host: str, port: int, *, hostnqn: str | None = None,
                   hostid: uuid_mod.UUID | None = None, hdgst: bool = False,
                   ddgst: bool = False, timeout_s: float = 10.0) -> list[DiscoveryEntry]:
    ctrl = await Controller.connect(host, port, DISCOVERY_NQN, hostnqn=hostnqn, hostid=hostid,
                                    nr_io_queues=0, hdgst=hdgst, ddgst=ddgst, kato_ms=0,
                                    keep_alive=False, timeout_s=timeout_s)
    try:
        for _ in range(MAX_ATTEMPTS):
            header = await ctrl.get_log_page(LogPageId.DISCOVERY, DISCOVERY_HEADER_LEN, rae=True)
            genctr, numrec = struct.unpack_from("<QQ", header)
            entries: list[DiscoveryEntry] = []
            if numrec:
                page = await ctrl.get_log_page(LogPageId.DISCOVERY,
                                               numrec * DISCOVERY_ENTRY_LEN,
                                               offset=DISCOVERY_HEADER_LEN, rae=True)
                entries = parse_discovery_entries(page, numrec)
            again = await ctrl.get_log_page(LogPageId.DISCOVERY, DISCOVERY_HEADER_LEN)
            if struct.unpack_from("<Q", again)[0] == genctr:
                return entries
        raise RuntimeError(f"discovery log kept changing over {MAX_ATTEMPTS} reads")
    finally:
        await ctrl.close()
