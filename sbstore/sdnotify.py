"""systemd's readiness protocol (sd_notify(3)) over ``$NOTIFY_SOCKET``, no dependency.

Rules: a message is ``KEY=value`` lines in one datagram to the unix socket systemd names in
``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). Outside systemd the variable
is unset and every call is a no-op returning False. A failed send is logged, never raised: the
daemon must not die because its supervisor went away. The watchdog interval is half of
``$WATCHDOG_USEC`` (as sd_watchdog_enabled(3) advises), and only when ``$WATCHDOG_PID`` is unset
or names this process. Pings come from the event loop, so a stuck loop stops them and systemd
restarts the daemon: that is the point.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger("sbstore.sdnotify")


def notify(**fields: object) -> bool:
    """Send ``KEY=value`` fields (``notify(READY=1, STATUS="serving")``); True if sent."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path[0] == "@":
        path = "\0" + path[1:]
    # One field per line: a newline inside a value would forge another field.
    message = "".join(f"{key}={str(value).replace(chr(10), ' ')}\n"
                      for key, value in fields.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, path)
    except OSError as exc:
        log.warning("sd_notify to %r failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def ready(status: str | None = None) -> bool:
    return notify(READY=1, **({"STATUS": status} if status else {}))


def stopping(status: str | None = None) -> bool:
    return notify(STOPPING=1, **({"STATUS": status} if status else {}))


def status(text: str) -> bool:
    return notify(STATUS=text)


def watchdog_ping() -> bool:
    return notify(WATCHDOG=1)


def watchdog_interval_s() -> float | None:
    """Seconds between pings (half the watchdog timeout), or None when no watchdog is asked
    of this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.strip() != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    return value / 2e6 if value > 0 else None


async def watchdog_loop(interval_s: float | None = None) -> None:
    """Ping every ``interval_s`` (default :func:`watchdog_interval_s`) until cancelled; returns
    at once when no watchdog is asked."""
    interval = interval_s if interval_s is not None else watchdog_interval_s()
    if interval is None:
        return
    while True:
        watchdog_ping()
        await asyncio.sleep(interval)
