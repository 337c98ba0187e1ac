"""The I/O queue: NVM commands (Read, Write, Flush, Write Zeroes, Dataset Management) on qid
1..N, validated and executed against the namespace's block device (after Linux
drivers/nvme/target/io-cmd-bdev.c).

Rules:
- Validation before I/O, in this order: SQE flags (no fused commands, SGL data pointer), NSID
  (Invalid Namespace), LBA range (LBA Out of Range), data length against NLB x block size (Data
  SGL Length Invalid), MDTS (Invalid Field). Unknown opcode: Invalid Opcode.
- A device's :class:`target.blockdev.BlockDeviceError` (or an exception of a family registered
  with ``target.blockdev.register_errors``) becomes its own status (sct/sc); any other
  exception is Internal Error, logged. Errors go through ``QueueSession.fail`` (Error log).
- ANA (target/ana.py): namespaces are looked up in the subsystem's *path view* of the port this
  controller connected through, which holds only the namespaces that path serves. A miss is
  then either Invalid Namespace or the path's ANA status (Inaccessible, Persistent Loss,
  Transition), which the subsystem tells apart; the hot path pays nothing for ANA.
- Reservations (target/reservation.py): a namespace's ``fence`` is None unless a reservation is
  held on it, so Read and Write pay one attribute test; while one is held, a command the
  reservation forbids this controller's host fails with Reservation Conflict. Flush, Write
  Zeroes and Dataset Management are checked as writes. The four reservation commands run in
  target/reservation_commands.py.
- Every command bumps one controller counter (reads, writes, other_cmds or errors): SMART reads
  them and keep-alive takes a change as proof of traffic.

The hot path (Read/Write) is kept flat on purpose: one ``struct.unpack_from`` for every field
it needs, a dict lookup for the namespace, integer checks, one await on the device, and a
Response built with ``tuple.__new__``. No dataclass, no extra coroutine frame. ``IoQueue.handle``
is bound directly as the session's ``handle_command``.
"""
from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from target import fabrics, reservation_commands
from target.blockdev import BlockDeviceError, as_blockdev_error
from target.nvme import status as st
from target.nvme.spec import (
    DSM_ATTR_DEALLOCATE,
    DSM_RANGE_SIZE,
    NSID_ALL,
    RW_FUA,
    SQE_FLAGS_FUSE_MASK,
    SQE_FLAGS_PSDT_MASK,
    SQE_FLAGS_PSDT_SGL,
    WRITE_ZEROES_DEAC,
    FabricsType,
    GenericStatus,
    IoOpcode,
    MediaStatus,
    StatusType,
)
from target.response import Response, pack_cqe

if TYPE_CHECKING:
    from target.controller import Controller, QueueSession
    from target.subsystem import Namespace

log = logging.getLogger(__name__)

# opcode, flags, cid, nsid, (cdw2, cdw3, mptr, sgl address), sgl length, (reserved, sgl id),
# cdw10|cdw11 (slba), cdw12 (nlb 15:0, FUA bit 30, DEAC bit 25)
_IO_SQE = struct.Struct("<BBHI24xI4xQI")
_unpack_io = _IO_SQE.unpack_from
_DSM_RANGE = struct.Struct("<IIQ")  # cattr, nlb, slba
_SGL_LENGTH = struct.Struct("<I")  # SGL descriptor length, SQE bytes 32..35
_new = tuple.__new__
_SGL_FLAGS = SQE_FLAGS_PSDT_SGL  # what every well-formed fabrics command carries
_READ, _WRITE = IoOpcode.READ, IoOpcode.WRITE


def data_status_error(data_status: int) -> st.NvmeError:
    """The transport could not deliver the command's data: complete it with that (generic)
    status; only a transient transport error (digest mismatch) may be retried."""
    return st.NvmeError(f"transport data status {data_status:#x}", sct=StatusType.GENERIC,
                        sc=data_status & 0xFF,
                        dnr=data_status != GenericStatus.TRANSIENT_TRANSPORT_ERROR)


def blockdev_status(error: BlockDeviceError) -> st.NvmeError:
    """A device error as the NVMe status the host sees. Media errors, internal errors and path
    errors may be retried (DNR clear: a replicated volume's device fails a write with ANA
    Transition or Inaccessible so that the host's multipath retries it on another node); other
    generic errors (out of range, capacity exceeded) may not."""
    retry = error.sct in (StatusType.MEDIA, StatusType.PATH) or (
        error.sct == StatusType.GENERIC and error.sc in (GenericStatus.INTERNAL_ERROR,
                                                         GenericStatus.NAMESPACE_NOT_READY,
                                                         GenericStatus.TRANSIENT_TRANSPORT_ERROR))
    return st.NvmeError(str(error), sct=error.sct, sc=error.sc, dnr=not retry)


# A direct I/O's context (IoQueue.start_direct): namespace, cid, sqhd, slba, bytes, done.
_DirectTag = tuple["Namespace", int, int, int, int, Callable[[Response], None]]


class IoQueue:
    """Commands of one I/O queue of one controller."""

    __slots__ = (
        "_ns_get",
        "counters",
        "ctrl",
        "entries",
        "hostid",
        "max_bytes",
        "portid",
        "qid",
        "session",
        "sqhd",
        "subsystem",
    )

    def __init__(self, session: QueueSession, ctrl: Controller) -> None:
        self.session = session
        self.ctrl = ctrl
        self.qid = session.qid
        self.sqhd = session.sqhd
        self.entries = session.sq_entries
        self.counters = ctrl.counters
        self.max_bytes = ctrl.mdts_bytes
        self.hostid = ctrl.hostid  # names the host's registrations and reservations
        self.subsystem = ctrl.subsystem
        self.portid = ctrl.listener.portid
        # The live path view: namespace add/remove and ANA changes show at once.
        self._ns_get = ctrl.subsystem.path_view(self.portid).get

    def flow_of(self, sqe: bytes) -> tuple[object, int] | None:
        """The admission flow of a command and the bytes it moves (None: never held)."""
        opcode, _, _, nsid, _, _, cdw12 = _unpack_io(sqe)
        ns = self._ns_get(nsid)
        if ns is None or ns.flow is None:
            return None
        if opcode == _READ or opcode == _WRITE:
            return ns.flow, ((cdw12 & 0xFFFF) + 1) << ns.lba_shift
        if opcode == IoOpcode.FABRICS:
            return None  # Disconnect must never wait behind data
        return ns.flow, 0

    def start_direct(self, sqe: bytes, data: memoryview | None,
                     done: Callable[[Response], None]) -> bool:
        """Start a Read or a Write through its device's ``read_direct``/``write_direct``
        (target.blockdev) and call ``done(response)`` when it completes; False, with
        nothing done, for anything but a well-formed Read or Write (no FUA) that the device
        takes that way: :meth:`handle` then serves the command, errors included. The checks
        are :meth:`handle`'s, in its order; ``data`` is the command's (its status is 0)."""
        opcode, flags, cid, nsid, sgl_len, slba, cdw12 = _unpack_io(sqe)
        if flags != _SGL_FLAGS:
            return False
        ns = self._ns_get(nsid)
        if ns is None or ns.fence is not None:
            return False
        nlb = (cdw12 & 0xFFFF) + 1
        nbytes = nlb << ns.lba_shift
        if slba + nlb > ns.nblocks or nbytes > self.max_bytes:
            return False
        sqhd = (self.sqhd + 1) % self.entries
        if opcode == _READ:
            if nbytes != sgl_len or ns.read_direct is None or not ns.read_direct(
                    slba, nlb, self._read_done, (ns, cid, sqhd, slba, nbytes, done)):
                return False
        elif opcode == _WRITE:
            if data is None or len(data) != nbytes or ns.write_direct is None \
                    or cdw12 & RW_FUA or not self.ctrl.write_cache or not ns.write_direct(
                        slba, data, False, self._write_done, (ns, cid, sqhd, slba, nbytes, done)):
                return False
        else:
            return False
        self.sqhd = sqhd
        return True

    def _read_done(self, tag: _DirectTag, data: bytes | bytearray | memoryview | None,
                   exc: BaseException | None) -> None:
        ns, cid, sqhd, slba, nbytes, done = tag
        if exc is None:
            c = ns.counters
            c.reads += 1
            c.read_bytes += nbytes
            c = self.counters
            c.reads += 1
            c.read_bytes += nbytes
            done(_new(Response, (pack_cqe(0, 0, sqhd, self.qid, cid, 0), data)))
        else:
            done(self._direct_failed(ns, cid, sqhd, slba, exc))

    def _write_done(self, tag: _DirectTag, _data: object, exc: BaseException | None) -> None:
        ns, cid, sqhd, slba, nbytes, done = tag
        if exc is None:
            c = ns.counters
            c.writes += 1
            c.write_bytes += nbytes
            c = self.counters
            c.writes += 1
            c.write_bytes += nbytes
            done(_new(Response, (pack_cqe(0, 0, sqhd, self.qid, cid, 0), None)))
        else:
            done(self._direct_failed(ns, cid, sqhd, slba, exc))

    def _direct_failed(self, ns: Namespace, cid: int, sqhd: int, slba: int,
                       exc: BaseException) -> Response:
        """A direct I/O's error as :meth:`handle` would have completed it."""
        if isinstance(exc, st.NvmeError):
            return self._failed(cid, sqhd, exc, ns, ns.nsid, slba)
        err = as_blockdev_error(exc) if isinstance(exc, Exception) else None
        if err is None:
            log.error("I/O on qid %d failed", self.qid, exc_info=exc)
            return self._failed(cid, sqhd, st.InternalError(), ns, ns.nsid, slba)
        log.info("namespace %d: %s", ns.nsid, err)
        return self._failed(cid, sqhd, blockdev_status(err), ns, ns.nsid, slba)

    async def handle(self, sqe: bytes, data: memoryview | None, data_status: int,
                     now: float) -> Response | None:
        sqhd = self.sqhd = (self.sqhd + 1) % self.entries
        opcode, flags, cid, nsid, sgl_len, slba, cdw12 = _unpack_io(sqe)
        ns = None
        try:
            if data_status or flags != _SGL_FLAGS:
                self._precheck(flags, data_status)
            if opcode == _READ:
                ns = self._ns_get(nsid)
                if ns is None:
                    raise self.subsystem.path_error(self.portid, nsid)
                nlb = (cdw12 & 0xFFFF) + 1
                if slba + nlb > ns.nblocks:
                    raise st.LbaOutOfRange(f"read {slba}+{nlb} beyond {ns.nblocks} blocks")
                nbytes = nlb << ns.lba_shift
                if nbytes != sgl_len:
                    raise st.SglDataLengthInvalid(f"read of {nbytes} bytes, SGL {sgl_len}")
                if nbytes > self.max_bytes:
                    raise st.InvalidField(f"read of {nbytes} bytes exceeds MDTS")
                if ns.fence is not None and ns.fence.blocks_read(self.hostid):
                    raise st.ReservationConflict(f"namespace {nsid} is reserved", error_loc=0)
                buf = await ns.device.read(slba, nlb)
                c = ns.counters
                c.reads += 1
                c.read_bytes += nbytes
                c = self.counters
                c.reads += 1
                c.read_bytes += nbytes
                return _new(Response, (pack_cqe(0, 0, sqhd, self.qid, cid, 0), buf))
            if opcode == _WRITE:
                ns = self._ns_get(nsid)
                if ns is None:
                    raise self.subsystem.path_error(self.portid, nsid)
                nlb = (cdw12 & 0xFFFF) + 1
                if slba + nlb > ns.nblocks:
                    raise st.LbaOutOfRange(f"write {slba}+{nlb} beyond {ns.nblocks} blocks")
                nbytes = nlb << ns.lba_shift
                if data is None or len(data) != nbytes:
                    raise st.SglDataLengthInvalid(
                        f"write of {nbytes} bytes, {0 if data is None else len(data)} sent")
                if nbytes > self.max_bytes:
                    raise st.InvalidField(f"write of {nbytes} bytes exceeds MDTS")
                if ns.fence is not None and ns.fence.blocks_write(self.hostid):
                    raise st.ReservationConflict(f"namespace {nsid} is reserved", error_loc=0)
                await ns.device.write(slba, data, cdw12 & RW_FUA != 0 or not self.ctrl.write_cache)
                c = ns.counters
                c.writes += 1
                c.write_bytes += nbytes
                c = self.counters
                c.writes += 1
                c.write_bytes += nbytes
                return _new(Response, (pack_cqe(0, 0, sqhd, self.qid, cid, 0), None))
            return await self._other(opcode, cid, nsid, slba, cdw12, sqe, data, now, sqhd)
        except st.NvmeError as e:
            return self._failed(cid, sqhd, e, ns, nsid, slba)
        except Exception as e:
            err = as_blockdev_error(e)
            if err is None:
                log.exception("I/O command %#x on qid %d failed", opcode, self.qid)
                return self._failed(cid, sqhd, st.InternalError(), ns, nsid, slba)
            log.info("namespace %d: %s", nsid, err)
            return self._failed(cid, sqhd, blockdev_status(err), ns, nsid, slba)

    def _failed(self, cid: int, sqhd: int, error: st.NvmeError, ns: Namespace | None,
                nsid: int, slba: int) -> Response:
        self.counters.errors += 1
        if ns is not None:
            ns.counters.errors += 1
            if error.sct == StatusType.MEDIA and error.sc in (MediaStatus.WRITE_FAULT,
                                                              MediaStatus.UNRECOVERED_READ_ERROR):
                self.ctrl.media_errors += 1
        return self.session.fail(cid, sqhd, error, nsid=nsid, lba=slba)

    @staticmethod
    def _precheck(flags: int, data_status: int) -> None:
        if data_status:
            raise data_status_error(data_status)
        if flags & SQE_FLAGS_FUSE_MASK:
            raise st.InvalidField("fused commands are not supported", error_loc=1)
        if flags & SQE_FLAGS_PSDT_MASK != SQE_FLAGS_PSDT_SGL:
            raise st.InvalidField("fabrics commands carry an SGL (PSDT 01b)", error_loc=1)

    def _namespace(self, nsid: int) -> Namespace:
        ns = self._ns_get(nsid)
        if ns is None:
            raise self.subsystem.path_error(self.portid, nsid)
        return ns

    def _writable(self, nsid: int) -> Namespace:
        """The namespace of a write-group command, if its reservation lets this host write."""
        ns = self._namespace(nsid)
        if ns.fence is not None and ns.fence.blocks_write(self.hostid):
            raise st.ReservationConflict(f"namespace {nsid} is reserved", error_loc=0)
        return ns

    async def _other(self, opcode: int, cid: int, nsid: int, slba: int, cdw12: int, sqe: bytes,
                     data: memoryview | None, now: float, sqhd: int) -> Response:
        if opcode == IoOpcode.FLUSH:
            if nsid == NSID_ALL:
                # Every namespace this path serves (those it does not are another path's).
                view = self.subsystem.path_view(self.portid)
                devices = {id(ns.device): ns.device for ns in view.values()}
                for device in devices.values():
                    await device.flush()
            else:
                await self._writable(nsid).device.flush()
        elif opcode == IoOpcode.WRITE_ZEROES:
            ns = self._writable(nsid)
            nlb = (cdw12 & 0xFFFF) + 1
            if slba + nlb > ns.nblocks:
                raise st.LbaOutOfRange(f"write zeroes {slba}+{nlb} beyond {ns.nblocks} blocks")
            if cdw12 & WRITE_ZEROES_DEAC:
                await ns.device.deallocate([(slba, nlb)])
            else:
                await ns.device.write_zeroes(slba, nlb)
            if cdw12 & RW_FUA or not self.ctrl.write_cache:
                await ns.device.flush()
        elif opcode == IoOpcode.DATASET_MANAGEMENT:
            ns = self._writable(nsid)
            nr = (slba & 0xFF) + 1  # cdw10 bits 7:0, 0's based
            attributes = slba >> 32  # cdw11
            if attributes & DSM_ATTR_DEALLOCATE:
                # Linux sends a 4 KiB buffer whatever NR is: the data may be longer than NR ranges.
                if data is None or len(data) < nr * DSM_RANGE_SIZE:
                    raise st.SglDataLengthInvalid(f"{nr} ranges need {nr * DSM_RANGE_SIZE} bytes")
                ranges = []
                for i in range(nr):
                    _cattr, nlb, start = _DSM_RANGE.unpack_from(data, i * DSM_RANGE_SIZE)
                    if start + nlb > ns.nblocks:
                        raise st.LbaOutOfRange(f"deallocate {start}+{nlb} beyond {ns.nblocks}")
                    if nlb:
                        ranges.append((start, nlb))
                if ranges:
                    await ns.device.deallocate(ranges)
        elif opcode == IoOpcode.FABRICS:
            return await self._fabrics(cid, sqe, data, now, sqhd)
        elif opcode in reservation_commands.OPCODES:
            subsystem = self.subsystem

            def notify(hostid: bytes, kind: int) -> None:
                subsystem.reservation_notice(nsid, hostid, kind)

            reply = await reservation_commands.execute(
                self._namespace(nsid).reservations, opcode, self.hostid,
                slba & 0xFFFFFFFF, slba >> 32, data, self.max_bytes, notify,
                sgl_len=_SGL_LENGTH.unpack_from(sqe, 32)[0])
            self.counters.other_cmds += 1
            return _new(Response, (pack_cqe(0, 0, sqhd, self.qid, cid, 0), reply))
        else:
            raise st.InvalidOpcode(f"I/O opcode {opcode:#x}", error_loc=0)
        self.counters.other_cmds += 1
        return _new(Response, (pack_cqe(0, 0, sqhd, self.qid, cid, 0), None))

    async def _fabrics(self, cid: int, sqe: bytes, data: memoryview | None, now: float,
                       sqhd: int) -> Response:
        fctype = fabrics.fctype_of(sqe)
        if fctype in (FabricsType.AUTH_SEND, FabricsType.AUTH_RECEIVE):  # re-authentication
            done = await self.session.auth_command(sqe, data, now)
            return _new(Response, (pack_cqe(0, 0, sqhd, self.qid, cid, 0), done.data))
        if fctype == FabricsType.DISCONNECT:
            fabrics.check_disconnect(sqe)
            self.counters.other_cmds += 1
            self.session.disconnect(now)
            return _new(Response, (pack_cqe(0, 0, sqhd, self.qid, cid, 0), None))
        if fctype == FabricsType.CONNECT:
            raise st.CommandSequenceError("this I/O queue is connected already")
        raise st.InvalidOpcode(f"fabrics command type {fctype:#x} on an I/O queue", error_loc=4)
