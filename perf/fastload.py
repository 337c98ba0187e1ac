"""A light load engine for benchmarks: after bring-up, it owns the I/O queue's socket.

The general initiator (``target.host``) spends 25-40 us of CPU per I/O (futures, dataclasses,
a coroutine per command). On a 2-vCPU machine that starves the target of requests and, sharing
the physical core, slows it. This engine keeps ``qd`` reads or in-capsule writes in flight per
queue with almost no per-I/O work: capsules are prebuilt and only cid and SLBA are patched;
responses are parsed with ``struct.unpack_from`` straight from a reusable receive buffer and
every completion's status is checked. Reads need the SUCCESS flag path or a CapsuleResp; both
are handled. A write that fits in the capsule (the target advertises 8 KiB) carries its data
in-capsule; a larger one is sent as a bare capsule (SGL transport data block) and its data
follows each R2T as H2CData PDUs of at most the queue's MAXH2CDATA (so 128k writes work).

It speaks only what it needs (digests off, HPDA 0); correctness testing is the general
initiator's job, not this one's.

``poll=True`` drives the queues the way ``spdk_nvme_perf`` does: a loop that never sleeps,
receiving with MSG_DONTWAIT. It matters for what the target is charged: a load generator asleep
in epoll must be woken by every response the target sends, and on this VM that wake-up (an IPI
sent from inside the target's ``writev``) was a fifth of the target's CPU at QD1. A polling
initiator takes its own core and leaves the target only its own work, as SPDK's would.
"""
from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time
from array import array
from typing import Any

from target.host.controller import Controller

CH = struct.Struct("<BBBBI")  # type, flags, hlen, pdo, plen
CAPSULE_HLEN = 72
T_CAPSULE_CMD, T_CAPSULE_RESP, T_H2C_DATA, T_C2H_DATA, T_R2T = 0x04, 0x05, 0x06, 0x07, 0x09
DATA_HDR = struct.Struct("<BBBBIHHII4x")  # CH, cccid, ttag, datao|r2to, datal|r2tl
DATA_HLEN = 24
F_LAST, F_SUCCESS = 0x04, 0x08
RECV_BUF = 4 << 20
PATTERNS = ("randread", "randwrite", "read", "write", "randrw")  # what the light engines drive


def queue_maxh2cdata(qc: Any) -> int:
    """A connected I/O queue's MAXH2CDATA, once it is checked to speak what the light engines
    (this one and perf/native_load.py) speak: CPDA 0, no digests."""
    params = qc.params
    if params is None:
        return 1 << 20
    if params.cpda or params.hdgst or params.ddgst:
        raise ValueError("the fast and native load engines speak CPDA 0 without digests")
    return int(params.maxh2cdata)


def fits_in_capsule(ctrl: Controller, bs: int) -> bool:
    """Whether a write of ``bs`` bytes may carry its data in the command capsule: within the
    controller's IOCCSZ (16-byte units, the 64-byte SQE included) or the initiator's limit."""
    ioccsz = ctrl.info.ioccsz if ctrl.info is not None else 0
    return bs <= ctrl.admin.incapsule_limit or bs <= ioccsz * 16 - 64


def payload_for(seed: int, bs: int) -> bytes:
    """What every write of a run with this seed carries (both load engines)."""
    return random.Random(seed).randbytes(bs)


class FastQueue(asyncio.BufferedProtocol):
    """One I/O queue driven closed-loop at a fixed depth until ``stop_at``."""

    def __init__(self, *, nsid: int, block_size: int, bs: int, qd: int, write: bool,
                 span_blocks: int, stop_at: float, max_ios: int, seed: int,
                 done: asyncio.Future[None], sequential: bool = False,
                 incapsule: bool = True, maxh2cdata: int = 1 << 20,
                 flush_every: int = 0, read_pct: int | None = None) -> None:
        """``read_pct`` (0-100) mixes reads and writes at random in that proportion (fio's
        rwmixread) and overrides ``write``; None: all writes or all reads, as ``write`` says."""
        self.nblocks = bs // block_size
        self.span = max(1, span_blocks // self.nblocks)
        self.mixed = read_pct is not None and 0 < read_pct < 100
        if read_pct is not None and not self.mixed:
            write = read_pct == 0
        self.read_share = (read_pct or 0) / 100.0
        self.qd, self.write, self.stop_at, self.max_ios = qd, write, stop_at, max_ios
        writes = write or self.mixed
        self.rng = random.Random(seed)
        self.sequential = sequential
        self.next_slot = (seed * 7919) % self.span  # queues start apart in the span
        self.done = done
        self.ios = 0
        self.issued = 0
        self.errors = 0
        self.lat_ns = array("q")
        self.sent_at = [0] * qd
        self.buf = bytearray(RECV_BUF)
        self.view = memoryview(self.buf)
        self.start = 0  # first unparsed byte
        self.end = 0  # end of received bytes
        self.transport: Any = None
        self.stopping = False
        # Capsules (common header + SQE (+ in-capsule data for writes)), one per cid and kind.
        self.read_template = self._templates(nsid, bs, write=False, in_capsule=False)
        self.write_template = self._templates(nsid, bs, write=True, in_capsule=incapsule)
        self.template = self.write_template if write else self.read_template
        self.payload = payload_for(seed, bs) if writes else b""
        self.payload_view = memoryview(self.payload)
        self.maxh2cdata = maxh2cdata
        self.r2t_writes = writes and not incapsule  # data goes after R2T, not in the capsule
        # A Flush after every ``flush_every`` writes (it takes a queue slot like an I/O).
        self.flush_every = flush_every if write and not self.mixed else 0
        self.flushes = 0
        flush_sqe = bytearray(64)
        struct.pack_into("<BBHI", flush_sqe, 0, 0x00, 0x40, 0, nsid)
        self.flush_template = [bytearray(CH.pack(T_CAPSULE_CMD, 0, CAPSULE_HLEN, 0, CAPSULE_HLEN)
                                         + flush_sqe) for _ in range(qd)]
        for cid, t in enumerate(self.flush_template):
            struct.pack_into("<H", t, 8 + 2, cid)

    def _templates(self, nsid: int, bs: int, *, write: bool,
                   in_capsule: bool) -> list[bytearray]:
        """One Read or Write capsule per cid, ready but for its SLBA."""
        in_capsule = write and in_capsule
        data_len = bs if in_capsule else 0
        sqe = bytearray(64)
        struct.pack_into("<BBHI", sqe, 0, 0x01 if write else 0x02, 0x40, 0, nsid)
        # SGL: in-capsule (0x01) for small writes, transport data block (0x5A) for reads and
        # for writes whose data follows an R2T.
        struct.pack_into("<QI3xB", sqe, 24, 0, bs, 0x01 if in_capsule else 0x5A)
        struct.pack_into("<I", sqe, 48, self.nblocks - 1)
        header = CH.pack(T_CAPSULE_CMD, 0, CAPSULE_HLEN, CAPSULE_HLEN if in_capsule else 0,
                         CAPSULE_HLEN + data_len)
        templates = [bytearray(header + sqe) for _ in range(self.qd)]
        for cid, t in enumerate(templates):
            struct.pack_into("<H", t, 8 + 2, cid)
        return templates

    def _capsule(self, cid: int, out: list[Any]) -> None:
        if self.flush_every and self.issued % (self.flush_every + 1) == self.flush_every:
            self.sent_at[cid] = time.perf_counter_ns()
            self.issued += 1
            self.flushes += 1
            out.append(bytes(self.flush_template[cid]))
            return
        write = self.write
        if self.mixed:
            write = self.rng.random() >= self.read_share
            t = self.write_template[cid] if write else self.read_template[cid]
        else:
            t = self.template[cid]
        if self.sequential:
            slot = self.next_slot
            self.next_slot = (slot + 1) % self.span
        else:
            slot = self.rng.randrange(self.span)
        struct.pack_into("<Q", t, 8 + 40, slot * self.nblocks)
        self.sent_at[cid] = time.perf_counter_ns()
        self.issued += 1
        out.append(bytes(t))
        if write and not self.r2t_writes:
            out.append(self.payload)

    def _send_data(self, buf: bytearray, pos: int, out: list[Any]) -> None:
        """Answer the R2T at ``pos`` with H2CData PDUs carrying the range it asks for."""
        _, _, _, _, _, cccid, ttag, r2to, r2tl = DATA_HDR.unpack_from(buf, pos)
        end = r2to + r2tl
        step = self.maxh2cdata
        off = r2to
        while off < end:
            n = min(step, end - off)
            out.append(DATA_HDR.pack(T_H2C_DATA, F_LAST if off + n == end else 0, DATA_HLEN,
                                     DATA_HLEN, DATA_HLEN + n, cccid, ttag, off, n))
            out.append(self.payload_view[off:off + n])
            off += n

    def begin(self, transport: Any) -> None:
        self.transport = transport
        out: list[Any] = []
        for cid in range(min(self.qd, self.max_ios)):  # never more than max_ios in all
            self._capsule(cid, out)
        transport.writelines(out)

    # BufferedProtocol
    def get_buffer(self, sizehint: int) -> memoryview:
        if self.end > RECV_BUF - (RECV_BUF // 4):
            # Compact: move the unparsed tail to the front.
            n = self.end - self.start
            self.buf[:n] = self.buf[self.start:self.end]
            self.start, self.end = 0, n
        return self.view[self.end:]

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        buf, pos, end = self.buf, self.start, self.end
        out: list[Any] = []
        now_ns = time.perf_counter_ns
        lat = self.lat_ns
        unpack = CH.unpack_from
        keep_going = not self.stopping
        while end - pos >= 8:
            ptype, flags, hlen, pdo, plen = unpack(buf, pos)
            if end - pos < plen:
                break
            if ptype == T_CAPSULE_RESP:
                cid, status = struct.unpack_from("<HH", buf, pos + 8 + 12)
                if status & 0xFFFE:
                    self.errors += 1
            elif ptype == T_C2H_DATA:
                if not flags & F_SUCCESS:
                    pos += plen
                    continue  # the CapsuleResp that follows completes it
                cid = struct.unpack_from("<H", buf, pos + 8)[0]
            elif ptype == T_R2T and self.r2t_writes:
                self._send_data(buf, pos, out)
                pos += plen
                continue
            else:
                self.errors += 1
                self.stopping = True
                pos += plen
                continue
            pos += plen
            lat.append(now_ns() - self.sent_at[cid])
            self.ios += 1
            if keep_going and self.issued < self.max_ios:
                self._capsule(cid, out)
        self.start = pos
        if self.start == self.end:
            self.start = self.end = 0
        if out:
            if time.perf_counter() >= self.stop_at:
                self.stopping = True
            self.transport.writelines(out)
        if self.ios >= self.issued and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"queue lost: {exc}"))


async def run_fast(ctrl: Controller, *, nsid: int, rw: str, bs: int, qd: int, seconds: float,
                   max_ios: int, span_bytes: int, seed: int, flush_every: int = 0,
                   poll: bool = False, rwmixread: int = 70) -> tuple[int, int, array, float]:
    """Drive every I/O queue of ``ctrl`` at ``qd`` each; returns (ios, errors, latencies, s).
    ``poll``: busy-poll the sockets instead of waiting in the event loop (module docstring).
    ``rw`` "randrw" mixes random reads and writes, ``rwmixread`` percent of them reads."""
    ns = ctrl.namespaces[nsid]
    write = rw.endswith("write")
    if rw not in PATTERNS:
        raise ValueError("the fast engine does reads, writes and a random mix of them")
    incapsule = fits_in_capsule(ctrl, bs)
    span = (span_bytes // ns.block_size) if span_bytes else ns.nsze
    loop = asyncio.get_running_loop()
    stop_at = time.perf_counter() + seconds
    queues = []
    for i, qc in enumerate(ctrl.io_queues):
        fut: asyncio.Future[None] = loop.create_future()
        maxh2cdata = queue_maxh2cdata(qc)
        fq = FastQueue(nsid=nsid, block_size=ns.block_size, bs=bs, qd=qd, write=write,
                       span_blocks=span, stop_at=stop_at,
                       max_ios=max_ios // len(ctrl.io_queues), seed=seed + i, done=fut,
                       sequential=not rw.startswith("rand"), incapsule=incapsule,
                       maxh2cdata=maxh2cdata,
                       flush_every=flush_every,
                       read_pct=rwmixread if rw == "randrw" else None)
        transport = qc._transport
        transport.set_protocol(fq)
        queues.append((fq, transport, fut))
    t0 = time.perf_counter()
    if poll:
        _run_polled([fq for fq, _, _ in queues], [t for _, t, _ in queues], seconds + 30)
    else:
        for fq, transport, _ in queues:
            fq.begin(transport)
        await asyncio.wait_for(asyncio.gather(*(f for _, _, f in queues)), seconds + 30)
    elapsed = time.perf_counter() - t0
    lat = array("q")
    for fq, _, _ in queues:
        lat.extend(fq.lat_ns)
    return (sum(fq.ios for fq, _, _ in queues), sum(fq.errors for fq, _, _ in queues), lat,
            elapsed)


class _SocketSender:
    """What FastQueue needs of a transport (``writelines``), on the non-blocking socket the
    event loop left us (a dup shares its O_NONBLOCK): a full send buffer is spun on, as the
    rest of the polling driver spins."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline

    def writelines(self, parts: list[Any]) -> None:
        data = memoryview(b"".join(parts))
        while data:
            try:
                data = data[self.sock.send(data):]
            except BlockingIOError:
                if time.perf_counter() > self.deadline:
                    raise TimeoutError("the target stopped taking data") from None


def _run_polled(fqs: list[FastQueue], transports: list[Any], timeout_s: float) -> None:
    """Spin over the queues' sockets (duplicated from the paused transports) until every queue
    is done or ``timeout_s`` passes."""
    socks = []
    deadline = time.perf_counter() + timeout_s
    try:
        for fq, transport in zip(fqs, transports):
            transport.pause_reading()  # the event loop must not take our responses
            fd = transport.get_extra_info("socket").fileno()
            sock = socket.socket(fileno=os.dup(fd))
            socks.append(sock)
            fq.begin(_SocketSender(sock, deadline))
        dontwait = socket.MSG_DONTWAIT
        pairs = list(zip(fqs, socks))
        spins = 0
        while not all(fq.done.done() for fq in fqs):
            for fq, sock in pairs:
                try:
                    n = sock.recv_into(fq.get_buffer(0), 0, dontwait)
                except BlockingIOError:
                    continue
                if n == 0:
                    raise ConnectionError("the target closed an I/O queue")
                fq.buffer_updated(n)
            spins += 1
            if not spins & 0x3FF and time.perf_counter() > deadline:
                raise TimeoutError("the polled run did not finish in time")
    finally:
        for sock in socks:
            sock.close()
        for transport in transports:
            transport.resume_reading()
