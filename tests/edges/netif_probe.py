"""Runs an InterfaceWatcher in this process's network namespace and reports on stdout, one JSON
object per line, for tests/edges/test_netif.py (run it under ``ip netns exec``).

Output: ``{"initial": [...], "ifindex": N}``, then ``{"added": [...], "removed": [...]}`` per
change, then ``{"closed": true, "reader_fd_closed": bool, "tasks_left": N}`` once stdin reaches
EOF (the test closes it) and the watcher is closed.
"""
from __future__ import annotations

import asyncio
import json
import sys

import uvloop

from sbstore.control.netif import InterfaceWatcher


def emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main(ifname: str) -> None:
    loop = asyncio.get_running_loop()
    eof = asyncio.Event()

    def on_stdin() -> None:
        if not sys.stdin.buffer.raw.read(4096):
            loop.remove_reader(sys.stdin.fileno())
            eof.set()

    def on_change(added: set[str], removed: set[str]) -> None:
        emit({"added": sorted(added), "removed": sorted(removed)})

    watcher = InterfaceWatcher(ifname, on_change)
    initial = await watcher.start()
    emit({"initial": sorted(initial), "ifindex": watcher.ifindex})
    loop.add_reader(sys.stdin.fileno(), on_stdin)
    await eof.wait()
    sock = watcher._sock
    await watcher.close()
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    emit({"closed": True, "reader_fd_closed": sock is not None and sock.fileno() == -1,
          "tasks_left": len(others)})


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
