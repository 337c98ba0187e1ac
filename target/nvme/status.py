"""NVMe status as exceptions: raise the status a command must complete with, catch it once.

A handler raises ``NvmeError`` (or a subclass); the controller turns it into the completion's
status field with :func:`status_field`. ``error_loc`` names the offending byte of the SQE for the
Error Information log, as Linux nvmet does.
"""
from __future__ import annotations

from target.nvme.spec import CommandSpecificStatus as CS
from target.nvme.spec import GenericStatus as GS
from target.nvme.spec import MediaStatus, PathStatus, StatusType


def status_field(sct: int, sc: int, *, dnr: bool = False, more: bool = False) -> int:
    """The 15-bit status field as it sits in CQE bits 31:17 (phase bit excluded), shifted left
    by one so that it is the CQE's upper 16-bit word: SC bits 8:1, SCT 11:9, M 14, DNR 15."""
    return (sc << 1) | (sct << 9) | (int(more) << 14) | (int(dnr) << 15)


def split_status(word: int) -> tuple[int, int, bool]:
    """Inverse of :func:`status_field`: (sct, sc, dnr) from the CQE's status word."""
    return (word >> 9) & 0x7, (word >> 1) & 0xFF, bool(word & 0x8000)


class NvmeError(Exception):
    """A command fails with this NVMe status."""

    sct: int = StatusType.GENERIC
    sc: int = GS.INTERNAL_ERROR
    dnr: bool = True

    def __init__(self, message: str = "", *, sct: int | None = None, sc: int | None = None,
                 dnr: bool | None = None, error_loc: int | None = None) -> None:
        super().__init__(message or self.__class__.__name__)
        if sct is not None:
            self.sct = sct
        if sc is not None:
            self.sc = sc
        if dnr is not None:
            self.dnr = dnr
        self.error_loc = error_loc

    @property
    def status(self) -> int:
        return status_field(self.sct, self.sc, dnr=self.dnr)


def _generic(name: str, code: int, dnr: bool = True) -> type[NvmeError]:
    return type(name, (NvmeError,), {"sct": StatusType.GENERIC, "sc": code, "dnr": dnr})


def _specific(name: str, code: int) -> type[NvmeError]:
    return type(name, (NvmeError,), {"sct": StatusType.COMMAND_SPECIFIC, "sc": code})


InvalidOpcode = _generic("InvalidOpcode", GS.INVALID_OPCODE)
InvalidField = _generic("InvalidField", GS.INVALID_FIELD)
InternalError = _generic("InternalError", GS.INTERNAL_ERROR, dnr=False)
InvalidNamespace = _generic("InvalidNamespace", GS.INVALID_NAMESPACE)
CommandSequenceError = _generic("CommandSequenceError", GS.COMMAND_SEQUENCE_ERROR)
SglDataLengthInvalid = _generic("SglDataLengthInvalid", GS.SGL_DATA_LENGTH_INVALID)
SglTypeInvalid = _generic("SglTypeInvalid", GS.SGL_TYPE_INVALID)
LbaOutOfRange = _generic("LbaOutOfRange", GS.LBA_OUT_OF_RANGE)
CapacityExceeded = _generic("CapacityExceeded", GS.CAPACITY_EXCEEDED)
NamespaceNotReady = _generic("NamespaceNotReady", GS.NAMESPACE_NOT_READY, dnr=False)
TransientTransportError = _generic("TransientTransportError", GS.TRANSIENT_TRANSPORT_ERROR,
                                   dnr=False)
InvalidQueueId = _specific("InvalidQueueId", CS.INVALID_QUEUE_ID)
InvalidQueueSize = _specific("InvalidQueueSize", CS.INVALID_QUEUE_SIZE)
AsyncEventLimitExceeded = _specific("AsyncEventLimitExceeded", CS.ASYNC_EVENT_LIMIT_EXCEEDED)
InvalidLogPage = _specific("InvalidLogPage", CS.INVALID_LOG_PAGE)
FeatureNotSaveable = _specific("FeatureNotSaveable", CS.FEATURE_NOT_SAVEABLE)
ConnectInvalidParameters = _specific("ConnectInvalidParameters", CS.CONNECT_INVALID_PARAMETERS)
ConnectControllerBusy = _specific("ConnectControllerBusy", CS.CONNECT_CONTROLLER_BUSY)
ConnectInvalidHost = _specific("ConnectInvalidHost", CS.CONNECT_INVALID_HOST)
WriteFault = type("WriteFault", (NvmeError,), {"sct": StatusType.MEDIA,
                                               "sc": MediaStatus.WRITE_FAULT, "dnr": False})
UnrecoveredReadError = type("UnrecoveredReadError", (NvmeError,),
                            {"sct": StatusType.MEDIA, "sc": MediaStatus.UNRECOVERED_READ_ERROR,
                             "dnr": False})

# --- Added for the controller side ------------------------------------------------------------
AbortSqDeleted = _generic("AbortSqDeleted", GS.ABORT_SQ_DELETED, dnr=False)
KeepAliveExpired = _generic("KeepAliveExpired", GS.KEEP_ALIVE_EXPIRED)
FeatureNotChangeable = _specific("FeatureNotChangeable", CS.FEATURE_NOT_CHANGEABLE)
ConnectIncompatibleFormat = _specific("ConnectIncompatibleFormat", CS.CONNECT_INCOMPATIBLE_FORMAT)
AuthRequired = _specific("AuthRequired", CS.AUTH_REQUIRED)


def with_result(error: NvmeError, dw0: int) -> NvmeError:
    """Attach the completion's dword 0 to an error (Connect Invalid Parameters carries IPO/IATTR
    there); the controller reads it back with ``getattr(error, "dw0", 0)``."""
    error.dw0 = dw0  # type: ignore[attr-defined]
    return error


# --- Path related (SCT 3h): never DNR, so a multipath host retries the command on another path.
def _path(name: str, code: int) -> type[NvmeError]:
    return type(name, (NvmeError,), {"sct": StatusType.PATH, "sc": code, "dnr": False})


AnaPersistentLoss = _path("AnaPersistentLoss", PathStatus.ANA_PERSISTENT_LOSS)
AnaInaccessible = _path("AnaInaccessible", PathStatus.ANA_INACCESSIBLE)
AnaTransition = _path("AnaTransition", PathStatus.ANA_TRANSITION)


# --- Reservations (Base 2.0 §8.19) ------------------------------------------------------------
ReservationConflict = _generic("ReservationConflict", GS.RESERVATION_CONFLICT)
HostIdInconsistentFormat = _generic("HostIdInconsistentFormat", GS.HOST_ID_INCONSISTENT_FORMAT)
