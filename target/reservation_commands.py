"""The four reservation commands on an I/O queue (Base 2.0 §7.3-7.6): decode cdw10/cdw11 and
the data, run them on the namespace's :class:`target.reservation.Reservations`, persist a change
(``on_change``) before the command completes, and build the Reservation Report.

Fields: Register cdw10 RREGA 2:0, IEKEY 3, CPTPL 31:30; Acquire cdw10 RACQA 2:0, IEKEY 3,
RTYPE 15:8; Release cdw10 RRELA 2:0, IEKEY 3, RTYPE 15:8; Report cdw10 NUMD (0's based
dwords), cdw11 EDS bit 0.

The host is named by the Host Identifier of its Connect (the controller's ``hostid``). This
target's host ids are 128 bits (Identify Controller CTRATT bit 0), so a Report must ask for the
extended data structure once a host is registered: the regular one has room for 64-bit ids
only, and the spec then wants Host Identifier Inconsistent Format (as Linux nvmet and SPDK
answer). With no registrant the regular structure is returned.
"""
from __future__ import annotations

from collections.abc import Callable

from target.nvme import status as st
from target.nvme.reservations import pull_key, pull_key_pair, push_report
from target.nvme.spec import (
    RESV_CPTPL_SHIFT,
    RESV_IEKEY,
    RESV_REPORT_EDS,
    IoOpcode,
    ReservationNotice,
)
from target.reservation import Reservations

# Deliver a notice to a host's controllers (see Subsystem.reservation_notice).
Notify = Callable[[bytes, ReservationNotice], None]
OPCODES = frozenset({IoOpcode.RESERVATION_REGISTER, IoOpcode.RESERVATION_REPORT,
                     IoOpcode.RESERVATION_ACQUIRE, IoOpcode.RESERVATION_RELEASE})


def _data_error(exc: ValueError) -> st.NvmeError:
    return st.SglDataLengthInvalid(str(exc))


async def execute(resv: Reservations, opcode: int, hostid: bytes, cdw10: int, cdw11: int,
                  data: memoryview | None, max_bytes: int, notify: Notify | None = None, *,
                  sgl_len: int | None = None) -> bytes | None:
    """Run one reservation command; returns the data to send back (Report) or None. Once
    the change is persisted, the hosts it took something from hear of it (``notify``)."""
    if opcode == IoOpcode.RESERVATION_REPORT:
        return report(resv, cdw10, cdw11, max_bytes, sgl_len)
    action, iekey = cdw10 & 0x7, bool(cdw10 & RESV_IEKEY)
    rtype = (cdw10 >> 8) & 0xFF
    resv.notices.clear()  # a failed command's notices must not reach anyone
    try:
        if opcode == IoOpcode.RESERVATION_REGISTER:
            crkey, nrkey = pull_key_pair(data)
            resv.register(hostid, action, crkey, nrkey, iekey=iekey,
                          cptpl=cdw10 >> RESV_CPTPL_SHIFT)
        elif opcode == IoOpcode.RESERVATION_ACQUIRE:
            crkey, prkey = pull_key_pair(data)
            resv.acquire(hostid, action, rtype, crkey, prkey, iekey=iekey)
        elif opcode == IoOpcode.RESERVATION_RELEASE:
            resv.release(hostid, action, rtype, pull_key(data), iekey=iekey)
        else:
            raise st.InvalidOpcode(f"I/O opcode {opcode:#x}", error_loc=0)
    except ValueError as exc:
        raise _data_error(exc) from None
    # Every successful command but a plain Acquire of what is held already changes something
    # (the generation at least); persisting an unchanged state is harmless.
    if resv.on_change is not None:
        await resv.on_change(resv.record())
    notices = resv.take_notices()
    if notify is not None:
        for other, kind in notices:
            notify(other, kind)
    return None


def report(resv: Reservations, cdw10: int, cdw11: int, max_bytes: int,
           sgl_len: int | None = None) -> bytes:
    """The report, NUMD dwords long: the SGL must describe exactly that much (``sgl_len``)."""
    nbytes = ((cdw10 & 0xFFFFFFFF) + 1) * 4
    if nbytes > max_bytes:
        raise st.InvalidField(f"report of {nbytes} bytes exceeds MDTS", error_loc=40)
    if sgl_len is not None and sgl_len != nbytes:
        raise st.SglDataLengthInvalid(f"report of {nbytes} bytes, SGL {sgl_len}", error_loc=24)
    extended = bool(cdw11 & RESV_REPORT_EDS)
    status = resv.status()
    if not extended and status.registrants:
        raise st.HostIdInconsistentFormat(
            "registrants have 128-bit host ids: ask for the extended data structure (EDS)",
            error_loc=44)
    return push_report(status, nbytes, extended=extended)
