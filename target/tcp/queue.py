"""TargetQueue: the controller side of one NVMe/TCP connection, sans-I/O (no sockets, no clock).

See docs/target-contract.md for how the server joins it to the controller. Bytes in
(``get_buffer``/``buffer_updated`` or ``receive_data``), events out (``next_event``), responses
in (``send_completion``, ``send_read_data``), segments out (``data_to_send``).

Theory of operation (NVMe/TCP Transport 1.0; drivers/nvme/target/tcp.c and SPDK for practice):
- Connection setup: the first PDU must be an ICReq (pfv 0, hlen = plen = 128, HPDA 0..31). The
  answer is an ICResp with pfv 0, our CPDA, the digests the host asked for (we support both)
  and MAXH2CDATA; then :class:`QueueEstablished`. Anything else first is a PDU sequence error.
- A CapsuleCmd's data pointer is an SGL descriptor (SQE bytes 24..39; its last byte is the
  descriptor identifier). A command moves data to the controller when bit 0 of its opcode is
  set (for the fabrics opcode 0x7F, bit 0 of fctype): opcode bits 1:0 give the direction (Base
  2.0 §5 Figure 139), and Linux ``nvme_is_write`` tests the same bit.
  * identifier 0x01 (data block, offset): in-capsule data. It must be a host-to-controller
    command, offset 0, the SGL length equal to the data the capsule carries and at most
    ``max_incapsule_data``. Otherwise the command is reported with a ``data_status`` (0x02,
    0x16, 0x0F) and its data skipped, never executed: the queue stays usable.
  * identifier 0x5A (transport data block): data moved by the transport. For a host-to-
    controller command the queue solicits it with R2T PDUs (a transfer tag per command; at most
    MAXR2T+1 R2Ts outstanding per command, each at most ``max_r2t_len`` bytes) and gathers the
    H2CData straight into the command's buffer; a length above ``max_data_len`` gets
    ``data_status`` 0x0F without soliciting anything. For a read, the controller later calls
    ``send_read_data``.
  * other identifiers with a data length: ``data_status`` 0x11 (SGL descriptor type invalid).
- H2CData must name an outstanding transfer (TTAG) of the same command (CCCID), start where one
  of its outstanding R2Ts continues (else FES 4, data out of range), stay inside that R2T and
  within MAXH2CDATA (else FES 5, data limit exceeded), and datal must equal the PDU's data.
- Digests: a header digest mismatch is fatal (FES 3). A data digest mismatch fails only the
  command: it completes with 0x22 Transient Transport Error (SPDK does the same), and for a
  gathered write the remaining data is still received, so the stream stays in step.
- Memory: transfer buffers in use are bounded by ``max_transfer_bytes`` (one transfer may always
  run, however large up to ``max_data_len``); commands beyond wait, unsolicited, in a FIFO of at
  most ``max_waiting``; more than that is a fatal PDU sequence error (a host never has more
  commands outstanding than its SQ holds).
- After a fatal error or the host's H2CTermReq, input is ignored and sends are no-ops.
"""
from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable

from target.nvme.spec import (
    SGL_DATA_BLOCK_OFFSET,
    SGL_TRANSPORT_DATA_BLOCK,
    GenericStatus,
)
from target.tcp.digest import DIGEST, crc32c
from target.tcp.events import (
    CommandReceived,
    Established,
    PeerTerminated,
    ProtocolFailed,
    QueueEstablished,
    ResponseReceived,
)
from target.tcp.host import HostQueue
from target.tcp.pdu import (
    CH,
    CMD_HLEN,
    DATA,
    DATA_FIELDS,
    DATA_HLEN,
    DATA_LAST,
    DATA_SUCCESS,
    DDGST_ENABLE,
    DDGSTF,
    FEI_CCCID,
    FEI_DATAL,
    FEI_DATAO,
    FEI_FLAGS,
    FEI_PDA,
    FEI_PFV,
    FEI_PLEN,
    FEI_TTAG,
    FEI_TYPE,
    HDGST_ENABLE,
    HDGSTF,
    IC,
    IC_PDU_LEN,
    MIN_MAXH2CDATA,
    PDA_MAX,
    PDU_C2H_DATA,
    PDU_C2H_TERM_REQ,
    PDU_CAPSULE_CMD,
    PDU_CAPSULE_RESP,
    PDU_H2C_DATA,
    PDU_H2C_TERM_REQ,
    PDU_IC_REQ,
    PDU_IC_RESP,
    PDU_R2T,
    PFV_1_0,
    RESP_HLEN,
    DataLimitExceeded,
    DataOutOfRange,
    InvalidPduHeader,
    PduSequenceError,
    data_offset,
    pda_bytes,
)
from target.tcp.stream import DEAD, HANDSHAKE_BUFFER_SIZE, RECV_BUFFER_SIZE, PduStream

# The host role and its events are re-exported: both roles are "the queue" to their users.
__all__ = [
    "CommandReceived",
    "Established",
    "HostQueue",
    "PeerTerminated",
    "ProtocolFailed",
    "QueueEstablished",
    "ResponseReceived",
    "TargetQueue",
]

Buffer = bytes | bytearray | memoryview

# SQE fields the transport needs (Base 2.0 Figure 88): opcode @0, cid @2, byte 4 (fctype for
# the fabrics opcode), SGL address @24, length @32, descriptor identifier @39.
_SQE_FIELDS = struct.Struct("<BxHB19xQI3xB")
_FABRICS_OPCODE = 0x7F
_PLEN = struct.Struct("<I")  # CH.plen at offset 4
_ZERO8 = bytes(8)
_PAD = bytes(256)

_INVALID_FIELD = int(GenericStatus.INVALID_FIELD)
_SGL_LENGTH_INVALID = int(GenericStatus.SGL_DATA_LENGTH_INVALID)
_SGL_TYPE_INVALID = int(GenericStatus.SGL_TYPE_INVALID)
_SGL_OFFSET_INVALID = int(GenericStatus.SGL_OFFSET_INVALID)
_TRANSIENT = int(GenericStatus.TRANSIENT_TRANSPORT_ERROR)

_command_received = CommandReceived
_new = tuple.__new__  # CommandReceived without a Python frame (target.tcp.events)
_MAX_R2T_PER_COMMAND = 16  # we never have more R2Ts out per command, whatever MAXR2T allows


class _Transfer:
    """A host-to-controller transfer solicited with R2T: one command's data being gathered."""

    __slots__ = (
        "buf",
        "cid",
        "length",
        "received",
        "solicited",
        "sqe",
        "status",
        "ttag",
        "view",
        "windows",
    )

    def __init__(self, cid: int, sqe: bytes, length: int) -> None:
        self.cid = cid
        self.sqe = sqe
        self.length = length
        self.ttag = -1
        self.buf: bytearray | memoryview | None = None
        self.view: memoryview | None = None
        self.received = 0
        self.solicited = 0
        self.windows: list[list[int]] = []  # outstanding R2Ts: [next offset, end offset]
        self.status = 0


class TargetQueue(PduStream):
    """The controller side of one NVMe/TCP queue (one TCP connection)."""

    _term_type = PDU_C2H_TERM_REQ

    def __init__(self, *, max_incapsule_data: int = 8192, maxh2cdata: int = 131072,
                 max_data_len: int = 1 << 20, cpda: int = 0, max_r2t_len: int | None = None,
                 max_c2h_data: int = 131072, max_transfer_bytes: int = 16 << 20,
                 max_waiting: int = 4096, recv_buffer_size: int = RECV_BUFFER_SIZE,
                 transfer_buffer: Callable[[int], memoryview] | None = None) -> None:
        # Until the ICReq, a small buffer: a connection that never sends one costs little.
        super().__init__(recv_buffer_size=recv_buffer_size,
                         handshake_buffer_size=HANDSHAKE_BUFFER_SIZE)
        if maxh2cdata % 4 or maxh2cdata < MIN_MAXH2CDATA:
            raise ValueError(f"maxh2cdata must be a multiple of 4, at least {MIN_MAXH2CDATA}")
        if not 0 <= cpda <= PDA_MAX:
            raise ValueError(f"cpda must be 0..{PDA_MAX}")
        if max_incapsule_data < 0 or max_data_len < 0 or max_c2h_data < 1:
            raise ValueError("negative limit")
        self.max_incapsule_data = max_incapsule_data
        self.maxh2cdata = maxh2cdata
        self.max_data_len = max_data_len
        self.cpda = cpda
        self.max_r2t_len = max_r2t_len or maxh2cdata
        self.max_c2h_data = max_c2h_data
        self.max_transfer_bytes = max_transfer_bytes
        self.max_waiting = max_waiting
        # Where a write's data is gathered, solicited or in-capsule (None: a bytearray). The
        # server may hand out page-aligned buffers so that an O_DIRECT write takes the host's
        # data as it came.
        self._transfer_buffer = transfer_buffer
        self.allow_success_flag = False
        self.established = False
        self.hpda = 0
        self.maxr2t = 0
        self._rx_align = pda_bytes(cpda)
        self._r2t_per_command = 1
        self._transfers: dict[int, _Transfer] = {}  # by transfer tag
        self._transfer_bytes = 0
        self._waiting: deque[_Transfer] = deque()
        self._next_ttag = 0
        # Headers that only depend on the negotiation, built once it is done.
        self._resp_ch = CH.pack(PDU_CAPSULE_RESP, 0, RESP_HLEN, 0, RESP_HLEN)
        self._hd_flag = 0
        self._c2h_flags = 0
        self._c2h_pdo = DATA_HLEN
        self._c2h_pad = b""
        self._dd_len = 0
        # The H2CData PDU whose data is being received.
        self._cur_transfer: _Transfer | None = None
        self._cur_window: list[int] = [0, 0]
        self._cur_cid = 0  # the CapsuleCmd whose in-capsule data is being received
        self._cur_sqe = b""
        self._accept(PDU_IC_REQ, self._on_icreq)
        self._accept(PDU_H2C_TERM_REQ, self._terminated_by_peer)
        # Until the ICReq, capsules and data are out of sequence (FES 2).
        self._accept(PDU_CAPSULE_CMD, self._before_icreq)
        self._accept(PDU_H2C_DATA, self._before_icreq)
        self._c2h_simple_max = 0  # one-PDU reads with no digest or padding: the fast path

    # -- receive: handlers --------------------------------------------------------------------
    def _before_icreq(self, start: int, flags: int, pdo: int, plen: int, hdr_end: int) -> None:
        raise PduSequenceError(FEI_TYPE, f"PDU type {self._buf[start]:#x} before ICReq")

    def _on_icreq(self, start: int, flags: int, pdo: int, plen: int, hdr_end: int) -> None:
        if self.established:
            raise PduSequenceError(FEI_TYPE, "ICReq on an established queue")
        if plen != IC_PDU_LEN:
            raise InvalidPduHeader(FEI_PLEN, f"ICReq plen {plen}")
        _, _, _, _, _, pfv, hpda, dgst, maxr2t = IC.unpack_from(self._buf, start)
        if pfv != PFV_1_0:
            raise InvalidPduHeader(FEI_PFV, f"ICReq pfv {pfv}")
        if hpda > PDA_MAX:
            raise InvalidPduHeader(FEI_PDA, f"ICReq hpda {hpda}")
        self._start = start + IC_PDU_LEN
        hdgst = bool(dgst & HDGST_ENABLE)
        ddgst = bool(dgst & DDGST_ENABLE)
        self.established = True
        self.hpda, self.maxr2t = hpda, maxr2t
        self._r2t_per_command = min(maxr2t + 1, _MAX_R2T_PER_COMMAND)
        hd = 4 if hdgst else 0
        self._hd_flag = HDGSTF if hdgst else 0
        self._resp_ch = CH.pack(PDU_CAPSULE_RESP, self._hd_flag, RESP_HLEN, 0, RESP_HLEN + hd)
        self._c2h_flags = self._hd_flag | (DDGSTF if ddgst else 0)
        self._c2h_pdo = data_offset(DATA_HLEN, hdgst, hpda)
        self._c2h_pad = _PAD[:self._c2h_pdo - DATA_HLEN - hd]
        self._dd_len = 4 if ddgst else 0
        if not (hdgst or ddgst or self._c2h_pad):
            self._c2h_simple_max = self.max_c2h_data
        self._handlers[PDU_CAPSULE_CMD] = self._on_capsule_cmd
        self._handlers[PDU_H2C_DATA] = self._on_h2c_data
        self._negotiated(hdgst, ddgst)  # rebuilds the receive tables, fast path included
        self._out.append(IC.pack(PDU_IC_RESP, 0, IC_PDU_LEN, 0, IC_PDU_LEN, PFV_1_0,
                                 self.cpda, dgst & (HDGST_ENABLE | DDGST_ENABLE),
                                 self.maxh2cdata))
        self._events.append(QueueEstablished(hdgst, ddgst, maxr2t, hpda))

    def _fast_path(self) -> tuple[tuple[bytes, ...], Callable[[int, int], bool | None]] | None:
        if not self.established:
            return None
        hd = 4 if self.hdgst else 0
        prefixes = [CH.pack(PDU_CAPSULE_CMD, self._hd_flag, CMD_HLEN, 0, CMD_HLEN + hd)]
        if not (self.hdgst or self.ddgst or self.cpda):
            # type, flags, hlen, pdo of a capsule with in-capsule data (plen varies)
            prefixes.append(bytes((PDU_CAPSULE_CMD, 0, CMD_HLEN, CMD_HLEN)))
        return tuple(prefixes), self._on_capsule_fast

    def _on_capsule_fast(self, start: int, avail: int) -> bool | None:
        """The fast path: a CapsuleCmd without data (its exact CH matched), or, with no digests,
        one whose in-capsule data is all in the buffer and exactly what its SGL describes.
        Anything else goes to the general path."""
        buf = self._buf
        if not buf[start + 3]:  # pdo 0: the no-data CH
            plen = CMD_HLEN + 4 if self.hdgst else CMD_HLEN
            if avail < plen:
                return False
            if plen != CMD_HLEN:
                self._check_hdgst(start, CMD_HLEN)
            opcode, cid, fctype, _, sgl_length, sgl_id = _SQE_FIELDS.unpack_from(buf, start + 8)
            if sgl_length and (sgl_id != SGL_TRANSPORT_DATA_BLOCK
                               or (fctype if opcode == _FABRICS_OPCODE else opcode) & 1):
                self._on_capsule_cmd(start, buf[start + 1], 0, plen, plen)  # R2T or a bad SGL
                return True
            self._start = start + plen
            self._events.append(_new(CommandReceived, (
                cid, self._mv[start + 8:start + CMD_HLEN].tobytes(), None, 0)))
            return True
        plen = _PLEN.unpack_from(buf, start + 4)[0]
        if avail < plen:
            return None  # streams in: the general path
        opcode, cid, fctype, address, sgl_length, sgl_id = _SQE_FIELDS.unpack_from(buf,
                                                                                   start + 8)
        if (sgl_id != SGL_DATA_BLOCK_OFFSET or address or sgl_length != plen - CMD_HLEN
                or sgl_length > self.max_incapsule_data or not sgl_length
                or not (fctype if opcode == _FABRICS_OPCODE else opcode) & 1):
            return None
        self._start = start + plen
        take = self._transfer_buffer
        if take is None:
            data = memoryview(buf[start + CMD_HLEN:start + plen])  # the cheapest copy
        else:
            # Into an aligned buffer: an O_DIRECT write then takes the data as it is.
            data = take(sgl_length)
            data[:] = self._mv[start + CMD_HLEN:start + plen]
        self._events.append(_new(CommandReceived, (
            cid, self._mv[start + 8:start + CMD_HLEN].tobytes(), data, 0)))
        return True

    def _on_capsule_cmd(self, start: int, flags: int, pdo: int, plen: int,
                        hdr_end: int) -> None:
        nbytes = self._data_len(flags, pdo, plen, hdr_end) if plen != hdr_end else 0
        opcode, cid, fctype, sgl_address, sgl_length, sgl_id = _SQE_FIELDS.unpack_from(
            self._buf, start + 8)
        sqe = self._mv[start + 8:start + CMD_HLEN].tobytes()
        write = (fctype if opcode == _FABRICS_OPCODE else opcode) & 1
        if not nbytes and (not sgl_length or (sgl_id == SGL_TRANSPORT_DATA_BLOCK and not write)):
            # The hot path: a read, or a command without data.
            self._start = start + plen
            self._events.append(_new(CommandReceived, (cid, sqe, None, 0)))
            return
        status = 0
        if sgl_id == SGL_TRANSPORT_DATA_BLOCK:
            if nbytes:
                status = _SGL_LENGTH_INVALID  # data in the capsule that the SGL does not describe
            elif write and sgl_length:
                if sgl_length > self.max_data_len:
                    status = _SGL_LENGTH_INVALID
                else:
                    if len(self._waiting) >= self.max_waiting:
                        raise PduSequenceError(FEI_TYPE, "too many commands waiting for R2T")
                    self._start = start + plen
                    self._begin_transfer(_Transfer(cid, sqe, sgl_length))
                    return
        elif sgl_id == SGL_DATA_BLOCK_OFFSET:
            if nbytes or sgl_length:
                if not write:
                    status = _INVALID_FIELD
                elif sgl_address:
                    status = _SGL_OFFSET_INVALID
                elif sgl_length > self.max_incapsule_data or nbytes != sgl_length:
                    status = _SGL_LENGTH_INVALID
                else:
                    data_at = start + pdo
                    end = data_at + nbytes
                    if self._end >= end + (4 if flags & DDGSTF else 0):
                        # All of it is in the buffer already (the usual case): one copy.
                        take = self._transfer_buffer
                        if take is None:
                            data = memoryview(self._buf[data_at:end])
                        else:
                            data = take(nbytes)
                            data[:] = self._mv[data_at:end]
                        if flags & DDGSTF:
                            self._start = end + 4
                            if crc32c(data) != DIGEST.unpack_from(self._buf, end)[0]:
                                self._events.append(_command_received(cid, sqe, None,
                                                                      _TRANSIENT))
                                return
                        else:
                            self._start = end
                        self._events.append(_command_received(cid, sqe, data, 0))
                        return
                    self._cur_cid, self._cur_sqe = cid, sqe
                    take = self._transfer_buffer
                    sink = memoryview(bytearray(nbytes)) if take is None else take(nbytes)
                    self._expect_data(data_at, nbytes, sink, 0, bool(flags & DDGSTF),
                                      self._incapsule_done)
                    return
        elif nbytes or sgl_length:
            status = _SGL_TYPE_INVALID
        self._events.append(_command_received(cid, sqe, None, status))
        if nbytes:
            self._expect_data(start + pdo, nbytes, None, 0, False, _ignore)
        else:
            self._start = start + plen

    def _incapsule_done(self, ok: bool) -> None:
        sink = self._sink
        if ok:
            self._events.append(_command_received(self._cur_cid, self._cur_sqe, sink, 0))
        else:
            self._events.append(_command_received(self._cur_cid, self._cur_sqe, None,
                                                  _TRANSIENT))

    def _on_h2c_data(self, start: int, flags: int, pdo: int, plen: int, hdr_end: int) -> None:
        nbytes = self._data_len(flags, pdo, plen, hdr_end)
        cccid, ttag, datao, datal = DATA_FIELDS.unpack_from(self._buf, start + 8)
        if datal != nbytes or not nbytes:
            raise InvalidPduHeader(FEI_DATAL, f"H2CData datal {datal}, {nbytes} bytes of data")
        transfer = self._transfers.get(ttag)
        if transfer is None:
            raise InvalidPduHeader(FEI_TTAG, f"H2CData for unknown transfer tag {ttag}")
        if cccid != transfer.cid:
            raise InvalidPduHeader(FEI_CCCID, f"H2CData cccid {cccid} for transfer tag {ttag} "
                                              f"of command {transfer.cid}")
        if datal > self.maxh2cdata:
            raise DataLimitExceeded(FEI_DATAL, f"H2CData of {datal} bytes > MAXH2CDATA")
        for window in transfer.windows:
            if window[0] == datao:
                break
        else:
            raise DataOutOfRange(FEI_DATAO, f"H2CData offset {datao} is not where an "
                                            f"outstanding R2T of command {cccid} continues")
        end = datao + datal
        if end > window[1]:
            raise DataLimitExceeded(FEI_DATAL, f"H2CData up to {end}, R2T up to {window[1]}")
        if flags & DATA_LAST and end != window[1]:
            raise InvalidPduHeader(FEI_FLAGS, "LAST_PDU before the R2T's data is complete")
        self._cur_transfer = transfer
        self._cur_window = window
        self._expect_data(start + pdo, nbytes, transfer.view, datao, bool(flags & DDGSTF),
                          self._h2c_data_done)

    def _h2c_data_done(self, ok: bool) -> None:
        transfer = self._cur_transfer
        window = self._cur_window
        assert transfer is not None
        pos = self._sink_pos
        transfer.received += pos - window[0]
        window[0] = pos
        if not ok:
            transfer.status = _TRANSIENT
        if pos == window[1]:
            transfer.windows.remove(window)
            self._solicit(transfer)
        if transfer.received == transfer.length:
            self._finish_transfer(transfer)

    # -- transfers ----------------------------------------------------------------------------
    def _begin_transfer(self, transfer: _Transfer) -> None:
        if self._transfers and (self._transfer_bytes + transfer.length > self.max_transfer_bytes
                                or len(self._transfers) >= 0xFFFF):
            self._waiting.append(transfer)
            return
        ttag = self._next_ttag
        while ttag in self._transfers:
            ttag = (ttag + 1) % 0xFFFF
        self._next_ttag = (ttag + 1) % 0xFFFF
        transfer.ttag = ttag
        if self._transfer_buffer is None:
            transfer.view = memoryview(bytearray(transfer.length))
        else:
            transfer.view = self._transfer_buffer(transfer.length)
        transfer.buf = transfer.view
        self._transfers[ttag] = transfer
        self._transfer_bytes += transfer.length
        self._solicit(transfer)

    def _solicit(self, transfer: _Transfer) -> None:
        """Send R2Ts until MAXR2T+1 are outstanding or all the data is asked for."""
        length = transfer.length
        while transfer.solicited < length and len(transfer.windows) < self._r2t_per_command:
            offset = transfer.solicited
            n = min(self.max_r2t_len, length - offset)
            transfer.windows.append([offset, offset + n])
            transfer.solicited = offset + n
            header = DATA.pack(PDU_R2T, self._hd_flag, DATA_HLEN, 0,
                               DATA_HLEN + (4 if self.hdgst else 0), transfer.cid,
                               transfer.ttag, offset, n)
            if self.hdgst:
                header += DIGEST.pack(crc32c(header))
            self._out.append(header)

    def _finish_transfer(self, transfer: _Transfer) -> None:
        del self._transfers[transfer.ttag]
        self._transfer_bytes -= transfer.length
        if transfer.status:
            self._events.append(_command_received(transfer.cid, transfer.sqe, None,
                                                  transfer.status))
        else:
            self._events.append(_command_received(transfer.cid, transfer.sqe, transfer.view, 0))
        while self._waiting:
            nxt = self._waiting[0]
            if self._transfers and (self._transfer_bytes + nxt.length
                                    > self.max_transfer_bytes):
                break
            self._waiting.popleft()
            self._begin_transfer(nxt)

    def _on_dead(self) -> None:
        self._c2h_simple_max = 0
        self._transfers.clear()
        self._waiting.clear()
        self._transfer_bytes = 0

    # -- send ---------------------------------------------------------------------------------
    def send_completion(self, cqe: Buffer) -> None:
        """Queue a CapsuleResp carrying the 16-byte completion ``cqe``."""
        if type(cqe) is not bytes:
            cqe = bytes(cqe)
        if len(cqe) != 16:
            raise ValueError(f"a CQE is 16 bytes, got {len(cqe)}")
        if self._state == DEAD:
            return
        header = self._resp_ch + cqe
        if self.hdgst:
            header += DIGEST.pack(crc32c(header))
        self._out.append(header)

    def send_read_data(self, cid: int, data: Buffer, cqe: Buffer) -> None:
        """Queue ``data`` for command ``cid`` as C2HData PDUs (at most ``max_c2h_data`` bytes
        each), then the CapsuleResp; or, when ``allow_success_flag`` is set and the completion
        is plain success (status 0, dw0 = dw1 = 0), mark the last C2HData LAST_PDU|SUCCESS and
        send no CapsuleResp (NVMe/TCP allows it only when SQ flow control is disabled).
        ``data`` is sent as is (not copied): keep it unchanged until it is written."""
        if type(cqe) is not bytes:
            cqe = bytes(cqe)
        if type(data) is memoryview and data.itemsize != 1:  # (_byte_view, inline: hot)
            data = data.cast("B")
        total = len(data)
        if 0 < total <= self._c2h_simple_max and len(cqe) == 16:
            # The hot path: one PDU, no digests, no padding; a live queue.
            out = self._out
            if self.allow_success_flag and cqe[15] == 0 and cqe[14] <= 1 and cqe[:8] == _ZERO8:
                out.append(DATA.pack(PDU_C2H_DATA, DATA_LAST | DATA_SUCCESS, DATA_HLEN,
                                     DATA_HLEN, DATA_HLEN + total, cid, 0, 0, total))
                out.append(data)
            else:
                out.append(DATA.pack(PDU_C2H_DATA, DATA_LAST, DATA_HLEN, DATA_HLEN,
                                     DATA_HLEN + total, cid, 0, 0, total))
                out.append(data)
                out.append(self._resp_ch + cqe)
            return
        self._send_c2h_data(cid, data, total, cqe)

    def _send_c2h_data(self, cid: int, data: Buffer, total: int, cqe: bytes) -> None:
        """send_read_data, the general case: digests, padding, several PDUs, no data."""
        if len(cqe) != 16:
            raise ValueError(f"a CQE is 16 bytes, got {len(cqe)}")
        if self._state == DEAD:
            return
        if not total:
            self.send_completion(cqe)
            return
        success = (self.allow_success_flag and cqe[15] == 0 and cqe[14] <= 1
                   and cqe[:8] == _ZERO8)
        if total <= self.max_c2h_data:  # one PDU, with digests or padding
            pdo = self._c2h_pdo
            header = DATA.pack(PDU_C2H_DATA, self._c2h_flags | (DATA_LAST | DATA_SUCCESS
                                                                 if success else DATA_LAST),
                               DATA_HLEN, pdo, pdo + total + self._dd_len, cid, 0, 0, total)
            if self.hdgst:
                header += DIGEST.pack(crc32c(header))
            out = self._out
            out.append(header + self._c2h_pad if self._c2h_pad else header)
            out.append(data)
            if self._dd_len:
                out.append(DIGEST.pack(crc32c(data)))
            if not success:
                header = self._resp_ch + cqe
                if self.hdgst:
                    header += DIGEST.pack(crc32c(header))
                out.append(header)
            return
        hdgst = self.hdgst
        dd = self._dd_len
        pdo = self._c2h_pdo
        pad = self._c2h_pad
        out = self._out
        flags = self._c2h_flags
        limit = self.max_c2h_data
        view = data if type(data) is memoryview or total <= limit else memoryview(data)
        offset = 0
        while offset < total:
            n = min(limit, total - offset)
            f = flags
            if offset + n == total:
                f |= DATA_LAST | DATA_SUCCESS if success else DATA_LAST
            header = DATA.pack(PDU_C2H_DATA, f, DATA_HLEN, pdo, pdo + n + dd, cid, 0,
                               offset, n)
            if hdgst:
                header += DIGEST.pack(crc32c(header))
            if pad:
                header += pad
            chunk = view if n == total else view[offset:offset + n]
            out.append(header)
            out.append(chunk)
            if dd:
                out.append(DIGEST.pack(crc32c(chunk)))
            offset += n
        if not success:
            self.send_completion(cqe)

    @property
    def pending_transfers(self) -> int:
        """Commands whose data is being solicited or waits to be (for metrics and tests)."""
        return len(self._transfers) + len(self._waiting)


def _byte_view(data: Buffer) -> Buffer:
    """``data`` as something whose len() counts bytes."""
    if type(data) is memoryview and data.itemsize != 1:
        return data.cast("B")
    return data


def _ignore(ok: bool) -> None:
    """Data of a command that already failed: nothing to do once it is skipped."""
