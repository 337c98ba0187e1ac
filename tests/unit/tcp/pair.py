"""A HostQueue and a TargetQueue joined by a fake link (the h11 ConnectionPair idea).

``Link.run()`` moves bytes both ways until neither side has anything to send (bounded rounds),
collecting events. Bytes can be delivered whole (``receive_data``), in fixed chunks, or
BufferedProtocol-style through ``get_buffer``/``buffer_updated`` as asyncio would.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from target.nvme.structs import Cqe, Sqe, push_cqe, push_sqe
from target.tcp.events import Event
from target.tcp.host import HostQueue
from target.tcp.pdu import Pdu, pull_pdu
from target.tcp.queue import TargetQueue

MAX_ROUNDS = 10_000


def feed(queue: HostQueue | TargetQueue, data: bytes, chunk: int | None = None,
         buffered: bool = False) -> None:
    """Deliver ``data`` in pieces of at most ``chunk`` bytes."""
    view = memoryview(data)
    step = chunk or len(view) or 1
    while len(view):
        piece, view = view[:step], view[step:]
        if not buffered:
            queue.receive_data(piece)
            continue
        while len(piece):
            target = queue.get_buffer(len(piece))
            assert len(target) > 0
            n = min(len(target), len(piece))
            target[:n] = piece[:n]
            queue.buffer_updated(n)
            piece = piece[n:]
            if queue.terminated:
                return


def drain(queue: HostQueue | TargetQueue) -> list[Event]:
    events = []
    while (event := queue.next_event()) is not None:
        events.append(event)
    return events


def joined(segments: Iterable[bytes | bytearray | memoryview]) -> bytes:
    return b"".join(bytes(s) for s in segments)


def decode_all(wire: bytes) -> list[Pdu]:
    """Every PDU in ``wire`` (which must hold whole PDUs only)."""
    pdus = []
    view = memoryview(wire)
    while len(view):
        got = pull_pdu(view)
        assert got is not None, "trailing partial PDU"
        pdus.append(got[0])
        view = view[got[1]:]
    return pdus


@dataclass
class Link:
    host: HostQueue
    target: TargetQueue
    chunk: int | None = None
    buffered: bool = False
    host_events: list[Event] = field(default_factory=list)
    target_events: list[Event] = field(default_factory=list)
    to_target: list[bytes] = field(default_factory=list)  # everything the host sent
    to_host: list[bytes] = field(default_factory=list)

    def step(self) -> bool:
        moved = False
        out = joined(self.host.data_to_send())
        if out:
            moved = True
            self.to_target.append(out)
            feed(self.target, out, self.chunk, self.buffered)
        self.target_events += drain(self.target)
        back = joined(self.target.data_to_send())
        if back:
            moved = True
            self.to_host.append(back)
            feed(self.host, back, self.chunk, self.buffered)
        self.host_events += drain(self.host)
        return moved

    def run(self) -> None:
        for _ in range(MAX_ROUNDS):
            if not self.step():
                return
        raise AssertionError("the queues never went quiet")

    def connect(self) -> None:
        self.host.initiate()
        self.run()

    def take_target_events(self) -> list[Event]:
        events, self.target_events = self.target_events, []
        return events

    def take_host_events(self) -> list[Event]:
        events, self.host_events = self.host_events, []
        return events


def make_link(*, hdgst: bool = False, ddgst: bool = False, hpda: int = 0, maxr2t: int = 0,
              chunk: int | None = None, buffered: bool = False, **target_kw: int) -> Link:
    link = Link(HostQueue(hdgst=hdgst, ddgst=ddgst, hpda=hpda, maxr2t=maxr2t),
                TargetQueue(**target_kw), chunk=chunk, buffered=buffered)
    link.connect()
    return link


def ready(**kw: int) -> Link:
    """A connected link with the handshake's events already taken."""
    link = make_link(**kw)  # type: ignore[arg-type]
    link.take_host_events()
    link.take_target_events()
    return link


def write_sqe(cid: int, nsid: int = 1) -> bytes:
    return push_sqe(Sqe(opcode=0x01, cid=cid, nsid=nsid))


def read_sqe(cid: int, nsid: int = 1) -> bytes:
    return push_sqe(Sqe(opcode=0x02, cid=cid, nsid=nsid))


def cqe(cid: int, status: int = 0, dw0: int = 0) -> bytes:
    return push_cqe(Cqe(cid=cid, status=status, dw0=dw0))


def pattern(nbytes: int, seed: int = 0) -> bytes:
    block = bytes((i * 7 + seed) & 0xFF for i in range(251))
    return (block * (nbytes // 251 + 1))[:nbytes]
