"""HostQueue: the initiator side of one NVMe/TCP connection, sans-I/O.

Used by the asyncio initiator (``target/host/``), the load generator and the tests. Same shape
as :class:`target.tcp.queue.TargetQueue`: bytes in, events out, commands in, segments out.

Theory of operation (NVMe/TCP Transport 1.0; what drivers/nvme/host/tcp.c does):
- ``initiate()`` queues the ICReq (our HPDA, digests, MAXR2T). The ICResp is accepted only with
  pfv 0, hlen = plen = 128, CPDA 0..31, exactly the digests we asked for, and MAXH2CDATA a
  multiple of 4 of at least 4096; then :class:`Established`.
- ``send_command(sqe, data, read_len)`` rewrites the SQE's data pointer: write data goes in the
  capsule (SGL 0x01) when it fits ``incapsule_limit``, else it is described as a transport data
  block (SGL 0x5A) and sent as H2CData PDUs (at most MAXH2CDATA each, LAST_PDU on the last one
  of each R2T) as R2Ts ask for it; a read gets SGL 0x5A with ``read_len`` and a buffer that
  C2HData fills in place.
- Each completion is reported as :class:`ResponseReceived`. A C2HData with SUCCESS (only valid
  with LAST_PDU) completes the command with a synthesized all-zero-status CQE. A data digest
  mismatch in C2HData does not kill the queue: the command's completion is reported with status
  0x04 Data Transfer Error (as Linux does) instead of what the controller sent.
- A CapsuleResp for a command id we did not send is still reported (data None): the tests send
  raw capsules with ``send_raw``.
- Fatal errors queue an H2CTermReq and report :class:`ProtocolFailed`; a C2HTermReq from the
  controller is :class:`PeerTerminated`. Local misuse (bad arguments, duplicate command id,
  sending before the connection is established) raises ValueError/RuntimeError at once.
"""
from __future__ import annotations

import struct
from collections.abc import Callable

from target.nvme.spec import (
    SGL_DATA_BLOCK_OFFSET,
    SGL_TRANSPORT_DATA_BLOCK,
    GenericStatus,
)
from target.nvme.status import status_field
from target.nvme.structs import CQE
from target.tcp.digest import DIGEST, crc32c
from target.tcp.events import (
    Established,
    PeerTerminated,
    ProtocolFailed,
    ResponseReceived,
)
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
    FEI_DGST,
    FEI_FLAGS,
    FEI_MAXR2T,
    FEI_PDA,
    FEI_PFV,
    FEI_PLEN,
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
    TERM,
    TERM_HLEN,
    TERM_MAX_DATA,
    DataOutOfRange,
    InvalidPduHeader,
    PduSequenceError,
    data_offset,
    pda_bytes,
)
from target.tcp.stream import DEAD, RECV_BUFFER_SIZE, PduStream

__all__ = ["Established", "HostQueue", "PeerTerminated", "ProtocolFailed", "ResponseReceived"]

Buffer = bytes | bytearray | memoryview

_SGL_DESC = struct.Struct("<QI3xB")  # address, length, identifier at SQE byte 24
_PSDT_SGL = 0x40
_PAD = bytes(256)
_CQE_CID = struct.Struct("<H")  # cid at CQE byte 12
_XFER_ERROR_STATUS = status_field(0, GenericStatus.DATA_TRANSFER_ERROR)
_response_received = ResponseReceived


class _Command:
    """An outstanding command: the write data it may still have to send, or its read buffer."""

    __slots__ = ("buf", "cid", "data", "digest_error", "received", "view")

    def __init__(self, cid: int, data: memoryview | None, read_len: int) -> None:
        self.cid = cid
        self.data = data
        self.buf = bytearray(read_len) if read_len else None
        self.view = memoryview(self.buf) if self.buf is not None else None
        self.received = 0
        self.digest_error = False


class HostQueue(PduStream):
    """The initiator side of one NVMe/TCP queue (one TCP connection)."""

    _term_type = PDU_H2C_TERM_REQ

    def __init__(self, hdgst: bool = False, ddgst: bool = False, hpda: int = 0,
                 maxr2t: int = 0, *, recv_buffer_size: int = RECV_BUFFER_SIZE) -> None:
        super().__init__(recv_buffer_size=recv_buffer_size)
        if not 0 <= hpda <= PDA_MAX:
            raise ValueError(f"hpda must be 0..{PDA_MAX}")
        if not 0 <= maxr2t <= 0xFFFFFFFF:
            raise ValueError("maxr2t is a u32")
        self._want_hdgst = bool(hdgst)
        self._want_ddgst = bool(ddgst)
        self.hpda = hpda
        self.maxr2t = maxr2t
        self._rx_align = pda_bytes(hpda)
        self.established = False
        self.cpda = 0
        self.maxh2cdata = 0
        # In-capsule data the controller accepts (IOCCSZ * 16 - 64), set by the initiator after
        # Identify Controller; 0 means "only when send_command is told a limit".
        self.incapsule_limit = 0
        self._commands: dict[int, _Command] = {}
        self._hd_flag = 0
        self._dd_len = 0
        self._cur_command: _Command | None = None
        self._cur_flags = 0
        self._accept(PDU_IC_RESP, self._on_icresp)
        self._accept(PDU_C2H_TERM_REQ, self._terminated_by_peer)
        self._accept(PDU_CAPSULE_RESP, self._on_capsule_resp)
        self._accept(PDU_C2H_DATA, self._on_c2h_data)
        self._accept(PDU_R2T, self._on_r2t)

    # -- send ---------------------------------------------------------------------------------
    def initiate(self) -> None:
        """Queue the ICReq."""
        dgst = (HDGST_ENABLE if self._want_hdgst else 0) | (DDGST_ENABLE if self._want_ddgst
                                                            else 0)
        self._out.append(IC.pack(PDU_IC_REQ, 0, IC_PDU_LEN, 0, IC_PDU_LEN, PFV_1_0,
                                 self.hpda, dgst, self.maxr2t))

    def send_command(self, sqe: Buffer, data: Buffer | None = None, read_len: int = 0,
                     incapsule_limit: int | None = None) -> None:
        """Queue a command. ``data``: host-to-controller data (kept by reference until sent, do
        not change it); ``read_len``: bytes of controller-to-host data to expect.
        ``incapsule_limit`` overrides the ``incapsule_limit`` attribute for this command (the
        Connect command's 1024 bytes go in-capsule before Identify has told the real limit:
        every controller takes 8 KiB on the admin queue: NVME_TCP_ADMIN_CCSZ)."""
        if not self.established:
            raise RuntimeError("send_command before the ICResp was received")
        if self._state == DEAD:
            return
        if len(sqe) != 64:
            raise ValueError(f"an SQE is 64 bytes, got {len(sqe)}")
        if type(data) is memoryview and data.itemsize != 1:
            data = data.cast("B")
        nbytes = len(data) if data is not None else 0
        if nbytes and read_len:
            raise ValueError("bidirectional data transfers are not supported")
        if read_len < 0 or nbytes > 0xFFFFFFFF or read_len > 0xFFFFFFFF:
            raise ValueError("data length out of range")
        cmd = bytearray(sqe)
        cid = cmd[2] | cmd[3] << 8
        if cid in self._commands:
            raise ValueError(f"command id {cid} is already outstanding")
        cmd[1] = (cmd[1] & 0x3F) | _PSDT_SGL
        limit = self.incapsule_limit if incapsule_limit is None else incapsule_limit
        out = self._out
        hd = 4 if self.hdgst else 0
        if nbytes and nbytes <= limit:
            _SGL_DESC.pack_into(cmd, 24, 0, nbytes, SGL_DATA_BLOCK_OFFSET)
            pdo = data_offset(CMD_HLEN, self.hdgst, self.cpda)
            flags = self._hd_flag | (DDGSTF if self.ddgst else 0)
            header = CH.pack(PDU_CAPSULE_CMD, flags, CMD_HLEN, pdo,
                             pdo + nbytes + self._dd_len) + cmd
            if hd:
                header += DIGEST.pack(crc32c(header))
            header += _PAD[:pdo - CMD_HLEN - hd]
            out.append(header)
            out.append(data)  # type: ignore[arg-type]
            if self._dd_len:
                out.append(DIGEST.pack(crc32c(data)))  # type: ignore[arg-type]
            self._commands[cid] = _Command(cid, None, 0)
            return
        length = nbytes or read_len
        _SGL_DESC.pack_into(cmd, 24, 0, length, SGL_TRANSPORT_DATA_BLOCK)
        header = CH.pack(PDU_CAPSULE_CMD, self._hd_flag, CMD_HLEN, 0, CMD_HLEN + hd) + cmd
        if hd:
            header += DIGEST.pack(crc32c(header))
        out.append(header)
        view = None
        if nbytes:
            view = memoryview(data)  # type: ignore[arg-type]
            if view.itemsize != 1:
                view = view.cast("B")
        self._commands[cid] = _Command(cid, view, read_len)

    def send_raw(self, data: Buffer) -> None:
        """Queue bytes as they are (malformed PDUs for tests)."""
        self._out.append(bytes(data))

    def terminate(self, fes: int, fei: int = 0, hdr: Buffer = b"") -> None:
        """Queue an H2CTermReq and stop: the connection is to be closed."""
        if self._state == DEAD:
            return
        hdr = bytes(hdr[:TERM_MAX_DATA])
        self._out.append(TERM.pack(PDU_H2C_TERM_REQ, 0, TERM_HLEN, 0, TERM_HLEN + len(hdr),
                                   fes, fei) + hdr)
        self._die()

    def abandon(self, cid: int) -> None:
        """Forget command ``cid`` (the initiator gave up waiting): its id may be reused. A late
        R2T or C2HData for it is then a protocol error, a late CapsuleResp is reported."""
        self._commands.pop(cid, None)

    @property
    def outstanding(self) -> int:
        """Commands sent and not completed yet."""
        return len(self._commands)

    # -- receive: handlers --------------------------------------------------------------------
    def _on_icresp(self, start: int, flags: int, pdo: int, plen: int, hdr_end: int) -> None:
        if self.established:
            raise PduSequenceError(FEI_TYPE, "ICResp on an established queue")
        if plen != IC_PDU_LEN:
            raise InvalidPduHeader(FEI_PLEN, f"ICResp plen {plen}")
        _, _, _, _, _, pfv, cpda, dgst, maxh2cdata = IC.unpack_from(self._buf, start)
        if pfv != PFV_1_0:
            raise InvalidPduHeader(FEI_PFV, f"ICResp pfv {pfv}")
        if cpda > PDA_MAX:
            raise InvalidPduHeader(FEI_PDA, f"ICResp cpda {cpda}")
        if (bool(dgst & HDGST_ENABLE) != self._want_hdgst
                or bool(dgst & DDGST_ENABLE) != self._want_ddgst):
            raise InvalidPduHeader(FEI_DGST, f"ICResp digests {dgst:#x} are not what we asked")
        if maxh2cdata % 4 or maxh2cdata < MIN_MAXH2CDATA:
            raise InvalidPduHeader(FEI_MAXR2T, f"ICResp MAXH2CDATA {maxh2cdata}")
        self._start = start + IC_PDU_LEN
        self.established = True
        self.cpda, self.maxh2cdata = cpda, maxh2cdata
        self._hd_flag = HDGSTF if self._want_hdgst else 0
        self._dd_len = 4 if self._want_ddgst else 0
        self._negotiated(self._want_hdgst, self._want_ddgst)
        self._events.append(Established(cpda, self.hdgst, self.ddgst, maxh2cdata))

    def _need_established(self, what: str) -> None:
        if not self.established:
            raise PduSequenceError(FEI_TYPE, f"{what} before ICResp")

    def _fast_path(self) -> tuple[tuple[bytes, ...], Callable[[int, int], bool | None]] | None:
        if not self.established:
            return None
        plen = RESP_HLEN + 4 if self.hdgst else RESP_HLEN
        return (CH.pack(PDU_CAPSULE_RESP, self._hd_flag, RESP_HLEN, 0, plen),), \
            self._on_capsule_resp_fast

    def _on_capsule_resp_fast(self, start: int, avail: int) -> bool:
        """The fast path: a CapsuleResp with exactly the expected CH."""
        plen = RESP_HLEN + 4 if self.hdgst else RESP_HLEN
        if avail < plen:
            return False
        if self.hdgst:
            self._check_hdgst(start, RESP_HLEN)
        self._start = start + plen
        self._complete(start)
        return True

    def _on_capsule_resp(self, start: int, flags: int, pdo: int, plen: int,
                         hdr_end: int) -> None:
        self._need_established("CapsuleResp")
        if plen != hdr_end:
            raise InvalidPduHeader(FEI_PLEN, f"CapsuleResp plen {plen}")
        self._start = start + plen
        self._complete(start)

    def _complete(self, start: int) -> None:
        """Report the completion in the CapsuleResp at ``start``."""
        cqe = self._mv[start + 8:start + RESP_HLEN].tobytes()
        cid = _CQE_CID.unpack_from(cqe, 12)[0]
        command = self._commands.pop(cid, None)
        data = None
        if command is not None:
            data = command.view
            if command.digest_error:
                cqe = cqe[:14] + struct.pack("<H", _XFER_ERROR_STATUS | (cqe[14] & 1))
        self._events.append(_response_received(cid, cqe, data))

    def _on_c2h_data(self, start: int, flags: int, pdo: int, plen: int, hdr_end: int) -> None:
        self._need_established("C2HData")
        nbytes = self._data_len(flags, pdo, plen, hdr_end)
        cccid, _, datao, datal = DATA_FIELDS.unpack_from(self._buf, start + 8)
        if datal != nbytes or not nbytes:
            raise InvalidPduHeader(FEI_DATAL, f"C2HData datal {datal}, {nbytes} bytes of data")
        command = self._commands.get(cccid)
        if command is None or command.view is None:
            raise InvalidPduHeader(FEI_CCCID, f"C2HData for command {cccid}, which reads nothing")
        if datao + datal > len(command.view):
            raise DataOutOfRange(FEI_DATAO, f"C2HData {datao}+{datal} beyond the "
                                            f"{len(command.view)}-byte read")
        if flags & DATA_SUCCESS and not flags & DATA_LAST:
            raise InvalidPduHeader(FEI_FLAGS, "C2HData SUCCESS without LAST_PDU")
        self._cur_command = command
        self._cur_flags = flags
        self._expect_data(start + pdo, nbytes, command.view, datao, bool(flags & DDGSTF),
                          self._c2h_data_done)

    def _c2h_data_done(self, ok: bool) -> None:
        command = self._cur_command
        assert command is not None
        command.received += self._sink_pos - self._data_begin
        if not ok:
            command.digest_error = True
        if self._cur_flags & DATA_SUCCESS:
            del self._commands[command.cid]
            status = _XFER_ERROR_STATUS if command.digest_error else 0
            cqe = CQE.pack(0, 0, 0, 0, command.cid, status)
            self._events.append(_response_received(command.cid, cqe, command.view))

    def _on_r2t(self, start: int, flags: int, pdo: int, plen: int, hdr_end: int) -> None:
        self._need_established("R2T")
        if plen != hdr_end:
            raise InvalidPduHeader(FEI_PLEN, f"R2T plen {plen}")
        cccid, ttag, r2to, r2tl = DATA_FIELDS.unpack_from(self._buf, start + 8)
        command = self._commands.get(cccid)
        if command is None or command.data is None:
            raise InvalidPduHeader(FEI_CCCID, f"R2T for command {cccid}, which writes nothing")
        if not r2tl:
            raise InvalidPduHeader(FEI_DATAL, "R2T for 0 bytes")
        if r2to + r2tl > len(command.data):
            raise DataOutOfRange(FEI_DATAO, f"R2T {r2to}+{r2tl} beyond the "
                                            f"{len(command.data)}-byte write")
        self._start = start + plen
        self._send_h2c_data(command, ttag, r2to, r2tl)

    def _send_h2c_data(self, command: _Command, ttag: int, offset: int, length: int) -> None:
        data = command.data
        assert data is not None
        out = self._out
        hd = 4 if self.hdgst else 0
        dd = self._dd_len
        pdo = data_offset(DATA_HLEN, self.hdgst, self.cpda)
        pad = _PAD[:pdo - DATA_HLEN - hd]
        base = self._hd_flag | (DDGSTF if dd else 0)
        end = offset + length
        step = self.maxh2cdata
        while offset < end:
            n = min(step, end - offset)
            flags = base | DATA_LAST if offset + n == end else base
            header = DATA.pack(PDU_H2C_DATA, flags, DATA_HLEN, pdo, pdo + n + dd,
                               command.cid, ttag, offset, n)
            if hd:
                header += DIGEST.pack(crc32c(header))
            if pad:
                header += pad
            chunk = data[offset:offset + n]
            out.append(header)
            out.append(chunk)
            if dd:
                out.append(DIGEST.pack(crc32c(chunk)))
            offset += n

    def _on_dead(self) -> None:
        self._commands.clear()
