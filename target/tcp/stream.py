"""The byte stream under both NVMe/TCP queue roles: PDU framing, digests, receive buffer, output.

Theory of operation. Bytes come in BufferedProtocol-style: ``get_buffer()`` hands out a
writable memoryview, ``buffer_updated(n)`` says how much was written, and every complete piece
is processed at once (so the next ``get_buffer()`` can already point into the right place).
``receive_data(bytes)`` does the same from a bytes object, for tests and plain ``Protocol``s.

A PDU is read in three stages:

1. HEADER: the 8-byte CH, then the rest of the header, its digest, and the padding up to PDO
   (at most 255 bytes in all, since PDO is a u8). The CH's type and hlen must be ones this role
   accepts before anything else is trusted; the header digest is verified before any other
   field is acted on. The role's handler for the type then validates the PDU-specific fields
   and either finishes the PDU or names a *sink* for its data.
2. DATA: the data is copied from the receive buffer into the sink (a memoryview over the
   command's own buffer) as it arrives, or, when a large remainder is due and nothing else is
   buffered, ``get_buffer()`` returns the sink itself so the socket writes straight into it.
   A ``None`` sink discards the data (a command already failed), with O(1) memory whatever
   ``plen`` says.
3. DDGST: the 4-byte data digest, compared with the CRC32C of what landed in the sink.

When a PDU's data (and digest) are already all in the receive buffer, which is the usual case
for small PDUs, they are copied and checked at once, without the DATA and DDGST stages. And a
role may name CH prefixes of its busiest PDUs (``_fast_path``): a PDU starting with one goes
straight to its handler, which checks whatever the prefix does not prove.

Rules:
- Memory is bounded by construction: the receive buffer is allocated once at its full size,
  when the connection is set up (``_negotiated``); until then a peer may only send its ICReq or
  ICResp, so a small handshake buffer holds it (a connection that never gets that far, such as
  one of a thousand idle sockets, costs a few KiB, not the full buffer). What waits in the
  buffer between calls is less than one header (< 256 bytes); data goes to buffers the handler
  sized from limits it enforces. No input makes this module allocate in proportion to ``plen``.
- Every loop consumes bytes or stops; nothing raises out of the public methods on any input.
  A protocol violation raises :class:`TransportError` inside; it is caught once, answered with
  a termination request (C2HTermReq or H2CTermReq, by role) carrying FES, FEI and up to 128
  bytes of the offending header, reported as :class:`ProtocolFailed`, and all later input is
  ignored. An unexpected exception (a bug) is reported the same way with FES 1 and a message
  starting with "internal error", so a fuzzer notices it.
- Output is a list of segments (``data_to_send()``): headers (with their digest and padding),
  payloads exactly as given, data digests. Payloads are never joined or copied.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable

from target.tcp.digest import DIGEST, crc32c
from target.tcp.events import Event, PeerTerminated, ProtocolFailed
from target.tcp.pdu import (
    CH,
    DATA_TYPES,
    DDGSTF,
    DIGEST_TYPES,
    FEI_FLAGS,
    FEI_HLEN,
    FEI_PDO,
    FEI_PLEN,
    FEI_TYPE,
    HDGSTF,
    HLEN,
    TERM,
    TERM_HLEN,
    TERM_MAX_DATA,
    HeaderDigestError,
    InvalidPduHeader,
    TransportError,
)

Buffer = bytes | bytearray | memoryview
# (start of the PDU in the receive buffer, flags, pdo, plen, end of header + header digest)
Handler = Callable[[int, int, int, int, int], None]
FastHandler = Callable[[int, int], "bool | None"]

RECV_BUFFER_SIZE = 256 * 1024
# The receive buffer before the handshake is done: it must hold the largest header a peer may
# leave pending (PDO is a u8: < 256 bytes) and still offer room to read into.
HANDSHAKE_BUFFER_SIZE = 1024
DIRECT_MIN = 16 * 1024  # receive straight into the sink when at least this much data is due
_MIN_FREE = 4096  # compact the receive buffer when less room than this is left at its end

HEADER, DATA, DDGST, DEAD = 0, 1, 2, 3


class PduStream:
    """What both queue roles share. A role subclass registers a handler per PDU type it
    accepts (``_accept``), sets ``_term_type`` (the termination request it sends) and
    ``_rx_align`` (the PDU data alignment, in bytes, it requires of the peer), calls
    ``_negotiated`` once digests are settled, and may offer ``_fast_path``."""

    _term_type: int

    def __init__(self, *, recv_buffer_size: int = RECV_BUFFER_SIZE,
                 handshake_buffer_size: int | None = None) -> None:
        """``handshake_buffer_size``: the receive buffer until ``_negotiated`` (None: the full
        ``recv_buffer_size`` from the start)."""
        if recv_buffer_size < 4 * _MIN_FREE:
            raise ValueError(f"recv_buffer_size must be at least {4 * _MIN_FREE}")
        first = recv_buffer_size if handshake_buffer_size is None else handshake_buffer_size
        if not HANDSHAKE_BUFFER_SIZE <= first <= recv_buffer_size:
            raise ValueError(f"handshake_buffer_size must be {HANDSHAKE_BUFFER_SIZE}.."
                             f"{recv_buffer_size}")
        self._recv_buffer_size = recv_buffer_size
        self._buf = bytearray(first)
        self._mv = memoryview(self._buf)
        self._start = 0  # first unprocessed byte
        self._end = 0  # end of received bytes
        self._state = HEADER
        self._direct = False  # the last get_buffer() returned the sink
        # The data of the PDU being received.
        self._sink: memoryview | None = None
        self._sink_pos = 0
        self._data_begin = 0
        self._data_left = 0
        self._pdu_ddgst = False
        self._on_data: Callable[[bool], None] = _no_data
        # Negotiated at connection setup.
        self.hdgst = False
        self.ddgst = False
        self._rx_align = 4
        # Per PDU type: None (not accepted from the peer) or (handler, hlen, mask of the HDGSTF
        # flag, the value it must have, may carry data). Rebuilt by _accept/_negotiated.
        self._handlers: dict[int, Handler] = {}
        self._rx: list[tuple[Handler, int, int, int, bool] | None] = [None] * 256
        # The fast path (a role's _fast_path()): CH prefixes of the PDUs that carry most of the
        # traffic, and a handler(start, avail) for a PDU starting with one of them. It returns
        # True (handled), False (more bytes needed) or None (let the general path decide).
        self._fast: tuple[tuple[bytes, ...], FastHandler] = (_NO_CH, _no_fast)
        self._events: deque[Event] = deque()
        # The same deque, public: a driver may drain it with popleft() rather than call
        # next_event() per event (a Python call per command).
        self.events = self._events
        self._out: list[Buffer] = []

    # -- public: receive ----------------------------------------------------------------------
    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """A writable buffer for the next bytes from the socket (never empty)."""
        if self._state == DATA and self._start == self._end:
            self._start = self._end = 0
            sink = self._sink
            left = self._data_left
            if sink is not None and left >= DIRECT_MIN:
                self._direct = True
                pos = self._sink_pos
                return sink[pos:pos + left]
        elif self._state == DEAD:
            self._start = self._end = 0
            return self._mv
        end = self._end
        if self._start == end:  # nothing pending: offer the whole buffer to the next read
            self._start = self._end = end = 0
        elif len(self._buf) - end < _MIN_FREE:
            start = self._start
            pending = end - start
            # Fewer than 256 bytes wait here (see the module rules): copying them is cheap.
            self._buf[:pending] = self._buf[start:end]
            self._start = 0
            self._end = end = pending
        return self._mv[end:]

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written into the last buffer from :meth:`get_buffer`."""
        try:
            if self._direct:
                self._direct = False
                self._sink_pos += nbytes
                self._data_left -= nbytes
                if self._data_left == 0:
                    self._data_complete()
                return
            if self._state == DEAD:
                return
            self._end += nbytes
            self._process()
        except TransportError as err:
            self._fail(err)
        except Exception as exc:  # noqa: BLE001 - a bug: input must still never raise
            self._fail(InvalidPduHeader(0, f"internal error: {type(exc).__name__}: {exc}"))

    def receive_data(self, data: Buffer) -> None:
        """Feed bytes (copies them in through :meth:`get_buffer`)."""
        mv = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
        while len(mv):
            if self._state == DEAD:
                return
            target = self.get_buffer(len(mv))
            n = min(len(target), len(mv))
            target[:n] = mv[:n]
            self.buffer_updated(n)
            mv = mv[n:]

    def next_event(self) -> Event | None:
        """The next event, or None when there is none until more bytes arrive."""
        if self._events:
            return self._events.popleft()
        return None

    # -- public: send -------------------------------------------------------------------------
    def data_to_send(self) -> list[Buffer]:
        """The pending output as segments (header, payload, digest...), and clear it."""
        out = self._out
        self._out = []
        return out

    @property
    def terminated(self) -> bool:
        """True after a fatal error or the peer's termination request: input is ignored."""
        return self._state == DEAD

    # -- receive machinery --------------------------------------------------------------------
    def _process(self) -> None:
        buf = self._buf
        fast_prefixes, fast = self._fast
        starts_with = buf.startswith
        while True:
            start = self._start
            avail = self._end - start
            state = self._state
            if state == HEADER:
                if avail < 8:
                    return
                if starts_with(fast_prefixes, start):
                    done = fast(start, avail)
                    if done:
                        continue
                    if done is False:
                        return  # more bytes needed
                    # None: the general path below decides.
                ptype, flags, hlen, pdo, plen = CH.unpack_from(buf, start)
                spec = self._rx[ptype]
                if spec is None:
                    raise InvalidPduHeader(FEI_TYPE, f"unexpected PDU type {ptype:#x}")
                handler, expected_hlen, hd_mask, hd_flag, may_carry_data = spec
                if hlen != expected_hlen:
                    raise InvalidPduHeader(FEI_HLEN, f"PDU type {ptype:#x} with hlen {hlen}")
                if flags & hd_mask != hd_flag:
                    raise InvalidPduHeader(FEI_FLAGS, "header digest flag does not match the "
                                                      "negotiation")
                hdr_end = hlen + 4 if hd_flag else hlen
                # PDO is a u8: waiting for the padding up to it is bounded.
                need = pdo if pdo > hdr_end and plen > hdr_end and may_carry_data else hdr_end
                if avail < need:
                    return
                if hd_flag and (crc32c(self._mv[start:start + hlen])
                                != DIGEST.unpack_from(buf, start + hlen)[0]):
                    raise HeaderDigestError(0, "header digest mismatch")
                handler(start, flags, pdo, plen, hdr_end)
            elif state == DATA:
                if not avail:
                    return
                n = min(self._data_left, avail)
                sink = self._sink
                if sink is not None:
                    pos = self._sink_pos
                    sink[pos:pos + n] = self._mv[start:start + n]
                    self._sink_pos = pos + n
                self._start = start + n
                self._data_left -= n
                if not self._data_left:
                    self._data_complete()
            elif state == DDGST:
                if avail < 4:
                    return
                self._start = start + 4
                self._state = HEADER
                sink = self._sink
                ok = sink is None or (crc32c(sink[self._data_begin:self._sink_pos])
                                      == DIGEST.unpack_from(buf, start)[0])
                self._on_data(ok)
            else:
                return

    def _accept(self, ptype: int, handler: Handler) -> None:
        """Accept PDUs of ``ptype`` from the peer, handled by ``handler``."""
        self._handlers[ptype] = handler
        self._rebuild_rx()

    def _negotiated(self, hdgst: bool, ddgst: bool) -> None:
        """Digests are on (or off) from now on, as the ICReq/ICResp exchange decided."""
        self.hdgst, self.ddgst = hdgst, ddgst
        if len(self._buf) < self._recv_buffer_size:
            # The full buffer, now that the peer has proved it speaks NVMe/TCP. This runs inside
            # _process, which holds the old buffer: the new one gets the same bytes at the same
            # offsets, so _start/_end and whatever _process goes on reading stay valid, and
            # nothing writes to either before the next get_buffer().
            buf = bytearray(self._recv_buffer_size)
            buf[:len(self._buf)] = self._buf
            self._buf = buf
            self._mv = memoryview(buf)
        self._rebuild_rx()

    def _rebuild_rx(self) -> None:
        rx: list[tuple[Handler, int, int, int, bool] | None] = [None] * 256
        for ptype, handler in self._handlers.items():
            digests = ptype in DIGEST_TYPES
            rx[ptype] = (handler, HLEN[ptype], HDGSTF if digests else 0,
                         HDGSTF if digests and self.hdgst else 0, ptype in DATA_TYPES)
        self._rx = rx
        self._fast = self._fast_path() or (_NO_CH, _no_fast)

    def _fast_path(self) -> tuple[tuple[bytes, ...], FastHandler] | None:
        """Role hook, called whenever the accepted types or the digests change: the CH prefixes
        worth a fast path and their handler (see ``_fast`` in ``__init__``). A prefix match
        proves nothing beyond its own bytes: the handler checks what it relies on."""
        return None

    def _check_hdgst(self, start: int, hlen: int) -> None:
        if crc32c(self._mv[start:start + hlen]) != DIGEST.unpack_from(self._buf, start + hlen)[0]:
            raise HeaderDigestError(0, "header digest mismatch")

    def _data_len(self, flags: int, pdo: int, plen: int, hdr_end: int) -> int:
        """Validate the framing of a data-carrying PDU; its data length (0 if it has none)."""
        if plen <= hdr_end:
            if plen < hdr_end:
                raise InvalidPduHeader(FEI_PLEN, f"plen {plen} shorter than the header")
            return 0
        dd = 4 if flags & DDGSTF else 0
        if bool(dd) != self.ddgst:
            raise InvalidPduHeader(FEI_FLAGS, "data digest flag does not match the negotiation")
        if pdo < hdr_end or pdo % self._rx_align or pdo + dd >= plen:
            raise InvalidPduHeader(FEI_PDO, f"pdo {pdo} (header {hdr_end}, plen {plen})")
        return plen - pdo - dd

    def _expect_data(self, data_at: int, nbytes: int, sink: memoryview | None, pos: int,
                     ddgst: bool, on_data: Callable[[bool], None]) -> None:
        """The current PDU's ``nbytes`` of data start at ``data_at`` in the receive buffer and
        go to ``sink[pos:]`` (None: discard); ``on_data(digest_ok)`` runs once they are in."""
        self._sink = sink
        self._data_begin = pos
        end = data_at + nbytes
        if self._end >= end + 4 if ddgst else self._end >= end:
            # All of it is in the buffer already: copy it now, no DATA/DDGST stages.
            if sink is not None:
                sink[pos:pos + nbytes] = self._mv[data_at:end]
            self._sink_pos = pos + nbytes
            if ddgst:
                self._start = end + 4
                on_data(sink is None or crc32c(sink[pos:pos + nbytes])
                        == DIGEST.unpack_from(self._buf, end)[0])
            else:
                self._start = end
                on_data(True)
            return
        self._start = data_at
        self._sink_pos = pos
        self._data_left = nbytes
        self._pdu_ddgst = ddgst
        self._on_data = on_data
        self._state = DATA

    def _data_complete(self) -> None:
        if self._pdu_ddgst:
            self._state = DDGST
        else:
            self._state = HEADER
            self._on_data(True)

    def _terminated_by_peer(self, start: int, flags: int, pdo: int, plen: int,
                            hdr_end: int) -> None:
        """Handler for the peer's termination request: its fixed 24 bytes are all we need."""
        _, _, _, _, _, fes, fei = TERM.unpack_from(self._buf, start)
        self._die()
        self._events.append(PeerTerminated(fes, fei))

    def _fail(self, err: TransportError) -> None:
        if self._state == DEAD:
            return
        hdr = b""
        if self._state == HEADER:
            start = self._start
            avail = self._end - start
            if avail >= 8:
                ptype, hlen = self._buf[start], self._buf[start + 2]
                hd = 4 if self.hdgst and ptype in DIGEST_TYPES else 0
                hdr = bytes(self._mv[start:start + min(avail, TERM_MAX_DATA, max(8, hlen + hd))])
        self._out.append(TERM.pack(self._term_type, 0, TERM_HLEN, 0, TERM_HLEN + len(hdr),
                                   err.fes, err.fei) + hdr)
        self._die()
        self._events.append(ProtocolFailed(err.fes, err.message))

    def _die(self) -> None:
        self._state = DEAD
        self._start = self._end = 0
        self._sink = None
        self._direct = False
        self._on_dead()

    def _on_dead(self) -> None:
        """Role hook: drop per-command state once the queue is dead."""


_NO_CH: tuple[bytes, ...] = ()  # bytearray.startswith(()) is always False: no fast path


def _no_fast(start: int, avail: int) -> bool | None:  # pragma: no cover - never matched
    return None


def _no_data(ok: bool) -> None:  # pragma: no cover - placeholder until a PDU carries data
    pass
