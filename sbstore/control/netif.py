"""Listeners by interface name: an interface's addresses, resolved with pyroute2, and a watcher
that follows them as they appear and disappear.

Rules of this module:
- Which addresses count: IPv4, any scope (``lo``'s 127.0.0.1 is host-scoped and still
  listenable); IPv6 except link-local (fe80::/10 needs a scope id, ``fe80::1%eth0``, which an
  NVMe/TCP discovery log entry cannot carry, so such listeners are not offered), tentative
  (duplicate address detection still running: bind(2) would fail with EADDRNOTAVAIL; the
  address counts once DAD completes, which the kernel announces) or DAD-failed addresses. For a
  point-to-point interface the local address (``IFA_LOCAL``) counts, not the peer.
- Following, not polling: the watcher subscribes to the kernel's address and link notices
  (rtnetlink multicast groups) on a plain non-blocking netlink socket added to the event loop
  with ``loop.add_reader``. A notice is only a doorbell: the watcher then asks pyroute2 for the
  interface's addresses again and reports the difference. So lost notices (a full socket
  buffer: ENOBUFS) cost nothing but a re-read, and the interface is followed by name: deleted,
  it reports its addresses removed; re-created (any index), it reports the new ones.
- pyroute2 runs in a worker thread (``asyncio.to_thread``): its synchronous ``IPRoute`` (0.9)
  drives a private event loop of its own, which cannot run inside the daemon's running loop,
  and a re-read costs ~6 ms that the loop should not wait for. Re-reads are serialised and
  debounced (``debounce_s``), so a burst of notices costs one re-read.
- ``on_change(added, removed)`` is called in the loop's thread, in order, one call at a time;
  it may be a coroutine function (awaited before the next change is looked at). Its exceptions
  are logged, not raised: a listener that failed to bind must not stop the watcher.
- The watcher reads the namespace of the process that starts it (tests run it under ``ip netns
  exec``); it never changes anything.
"""
from __future__ import annotations

import asyncio
import errno
import inspect
import ipaddress
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Self

log = logging.getLogger("sbstore.control.netif")

# rtnetlink (include/uapi/linux/rtnetlink.h, if_addr.h)
NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR = 16, 17, 20, 21
RT_SCOPE_LINK = 253
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change (16 bytes)
_RTATTR = struct.Struct("=HH")  # rta_len, rta_type
_INDEX = struct.Struct("=i")
_IFINDEX_OFFSET = 4  # of ifa_index in struct ifaddrmsg and ifi_index in struct ifinfomsg
IFLA_IFNAME = 3
NLA_TYPE_MASK = 0x3FFF

def _link_name(data: bytes, pos: int, length: int) -> bytes | None:
    """IFLA_IFNAME of the RTM_NEWLINK/DELLINK message at ``pos`` (None if absent)."""
    at, end = pos + _NLMSGHDR.size + _IFINFOMSG.size, pos + length
    while at + _RTATTR.size <= end:
        rta_len, rta_type = _RTATTR.unpack_from(data, at)
        if rta_len < _RTATTR.size or at + rta_len > end:
            return None
        if rta_type & NLA_TYPE_MASK == IFLA_IFNAME:
            return bytes(data[at + _RTATTR.size:at + rta_len]).split(b"\0", 1)[0]
        at += (rta_len + 3) & ~3
    return None


OnChange = Callable[[set[str], set[str]], Awaitable[None] | None]


class InterfaceNotFound(LookupError):
    """No network interface of that name (in this network namespace)."""


@dataclass(frozen=True)
class InterfaceAddresses:
    ifname: str
    ifindex: int | None  # None: no such interface now
    addresses: frozenset[str]


def _usable(family: int, address: str, scope: int, flags: int, *, ipv4: bool,
            ipv6: bool) -> bool:
    if family == socket.AF_INET:
        return ipv4
    if family != socket.AF_INET6 or not ipv6:
        return False
    if flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
        return False
    return scope != RT_SCOPE_LINK and not ipaddress.IPv6Address(address).is_link_local


def lookup_interface(ifname: str, *, ipv4: bool = True, ipv6: bool = True
                     ) -> InterfaceAddresses:
    """The interface's index and listenable addresses (empty, index None, when it does not
    exist). Blocking, and with pyroute2 0.9 not callable from a thread running an event loop:
    from a coroutine use :func:`resolve_interface` or :class:`InterfaceWatcher`."""
    from pyroute2 import IPRoute  # type: ignore[import-untyped]

    with IPRoute() as ipr:
        indices = ipr.link_lookup(ifname=ifname)
        if not indices:
            return InterfaceAddresses(ifname, None, frozenset())
        index = int(indices[0])
        found = set()
        for msg in ipr.get_addr(index=index):
            if msg["index"] != index:
                continue
            family = msg["family"]
            address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if not address:
                continue
            flags = msg.get_attr("IFA_FLAGS")
            if flags is None:
                flags = msg["flags"]
            if _usable(family, address, msg["scope"], flags, ipv4=ipv4, ipv6=ipv6):
                found.add(ipaddress.ip_address(address).compressed)
        return InterfaceAddresses(ifname, index, frozenset(found))


async def resolve_interface(ifname: str, *, ipv4: bool = True, ipv6: bool = True
                            ) -> frozenset[str]:
    """The listenable addresses of ``ifname`` now; InterfaceNotFound if it does not exist."""
    found = await asyncio.to_thread(lookup_interface, ifname, ipv4=ipv4, ipv6=ipv6)
    if found.ifindex is None:
        raise InterfaceNotFound(f"no network interface named {ifname!r}")
    return found.addresses


def _open_notice_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK,
                         socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                         NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
    except BaseException:
        sock.close()
        raise
    return sock


class InterfaceWatcher:
    """Follows the listenable addresses of one interface, by name.

    ``await start()`` subscribes, reads the addresses and returns them (``on_change`` is not
    called for them); afterwards ``on_change(added, removed)`` reports each difference.
    ``await close()`` (or ``async with``) unsubscribes and stops; idempotent.
    """

    def __init__(self, ifname: str, on_change: OnChange, *, ipv4: bool = True,
                 ipv6: bool = True, debounce_s: float = 0.02) -> None:
        self.ifname = ifname
        self._ifname_b = ifname.encode()
        self._on_change = on_change
        self._ipv4 = ipv4
        self._ipv6 = ipv6
        self.debounce_s = debounce_s
        self._addresses: frozenset[str] = frozenset()
        self._ifindex: int | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._dirty = False
        self._closed = False

    @property
    def addresses(self) -> frozenset[str]:
        return self._addresses

    @property
    def ifindex(self) -> int | None:
        return self._ifindex

    async def start(self) -> frozenset[str]:
        if self._sock is not None or self._closed:
            raise RuntimeError("an InterfaceWatcher starts once")
        self._loop = asyncio.get_running_loop()
        # Subscribe before the first read: a change between the two is then seen twice at
        # worst, never missed.
        self._sock = _open_notice_socket()
        self._loop.add_reader(self._sock.fileno(), self._on_readable)
        try:
            found = await asyncio.to_thread(lookup_interface, self.ifname, ipv4=self._ipv4,
                                            ipv6=self._ipv6)
        except BaseException:
            await self.close()
            raise
        self._ifindex, self._addresses = found.ifindex, found.addresses
        return found.addresses

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sock is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- notices --------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None or self._closed:
            return
        # While a re-read is pending or running, any notice may concern us: our index may be
        # about to change (interface re-created), so the filter below cannot be trusted.
        relevant = self._task is not None and not self._task.done()
        for _ in range(1024):  # bounded: a flood of notices still lets the loop breathe
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # notices were dropped: re-read to be sure
                    relevant = True
                    continue
                log.warning("netlink notices for %s: %s", self.ifname, exc)
                break
            if not data:
                break
            relevant = relevant or self._concerns_us(data)
        if relevant:
            self._kick()

    def _concerns_us(self, data: bytes) -> bool:
        """Whether a batch of rtnetlink notices may change our addresses: an address notice
        on our interface (or on any, while ours does not exist), a link notice on our index
        or carrying our name (created, renamed to it)."""
        pos, end = 0, len(data)
        while pos + _NLMSGHDR.size + _IFINFOMSG.size <= end:
            length, mtype = _NLMSGHDR.unpack_from(data, pos)[:2]
            if length < _NLMSGHDR.size or pos + length > end:
                return True  # malformed: re-read rather than guess
            (index,) = _INDEX.unpack_from(data, pos + _NLMSGHDR.size + _IFINDEX_OFFSET)
            if mtype in (RTM_NEWADDR, RTM_DELADDR) and (
                    self._ifindex is None or index == self._ifindex):
                return True
            if mtype in (RTM_NEWLINK, RTM_DELLINK) and (
                    index == self._ifindex or _link_name(data, pos, length) == self._ifname_b):
                return True
            pos += (length + 3) & ~3
        return False

    def _kick(self) -> None:
        self._dirty = True
        if self._task is None or self._task.done():
            assert self._loop is not None
            self._task = self._loop.create_task(self._follow())

    async def _follow(self) -> None:
        while self._dirty and not self._closed:
            await asyncio.sleep(self.debounce_s)
            self._dirty = False
            try:
                found = await asyncio.to_thread(lookup_interface, self.ifname,
                                                ipv4=self._ipv4, ipv6=self._ipv6)
            except Exception:
                log.exception("reading the addresses of %s failed; retrying", self.ifname)
                self._dirty = True
                await asyncio.sleep(1.0)
                continue
            added = found.addresses - self._addresses
            removed = self._addresses - found.addresses
            self._ifindex, self._addresses = found.ifindex, found.addresses
            if not (added or removed):
                continue
            log.info("%s: addresses added %s, removed %s", self.ifname, sorted(added),
                     sorted(removed))
            try:
                result = self._on_change(set(added), set(removed))
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("on_change for %s failed", self.ifname)
