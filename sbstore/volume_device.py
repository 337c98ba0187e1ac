"""A store volume as the target's block device: the one place store errors become NVMe status.

``sbstore.store`` knows nothing of NVMe and ``target`` nothing of the store; this adapter joins
them. :class:`VolumeDevice` satisfies ``target.blockdev.BlockDevice`` with the volume's own I/O
methods, and registers with the target (``register_errors``) how each ``StoreError`` becomes a
status, once, here:

==========================  ===========================================================
store error                 NVMe status the host sees
==========================  ===========================================================
NoSpace                     Capacity Exceeded (generic 0x81)
OutOfRange                  LBA Out of Range (generic 0x80)
ReadOnly                    Namespace is Write Protected (generic 0x20)
NotFound                    Invalid Namespace or Format (generic 0x0B): the volume is gone
InvalidArgument             Invalid Field in Command (generic 0x02)
Corrupt                     Unrecovered Read Error (media 0x81)
DeviceError (writing)       Write Fault (media 0x80)
DeviceError (reading)       Unrecovered Read Error (media 0x81)
PoolFailed, Busy, others    Internal Error (generic 0x06)
==========================  ===========================================================
"""
from __future__ import annotations

import uuid as uuid_mod

from sbstore.store import (
    Corrupt,
    DeviceError,
    InvalidArgument,
    NoSpace,
    NotFound,
    OutOfRange,
    ReadOnly,
    StoreError,
    Volume,
)
from target.blockdev import (
    SC_UNRECOVERED_READ_ERROR,
    SC_WRITE_FAULT,
    SCT_GENERIC,
    SCT_MEDIA,
    BlockDeviceError,
    CapacityExceededError,
    OutOfRangeError,
    register_errors,
)
from target.nvme.spec import GenericStatus

SC_INVALID_FIELD = int(GenericStatus.INVALID_FIELD)
SC_INVALID_NAMESPACE = int(GenericStatus.INVALID_NAMESPACE)
SC_NAMESPACE_WRITE_PROTECTED = 0x20  # NVMe Base 2.0 Figure 102: Namespace is Write Protected


def to_blockdev_error(exc: StoreError) -> BlockDeviceError:
    """The block-device error (carrying its NVMe status) for a store error."""
    msg = str(exc)
    if isinstance(exc, NoSpace):
        return CapacityExceededError(msg)
    if isinstance(exc, OutOfRange):
        return OutOfRangeError(msg)
    if isinstance(exc, ReadOnly):
        return BlockDeviceError(msg, sct=SCT_GENERIC, sc=SC_NAMESPACE_WRITE_PROTECTED)
    if isinstance(exc, NotFound):
        return BlockDeviceError(msg, sct=SCT_GENERIC, sc=SC_INVALID_NAMESPACE)
    if isinstance(exc, InvalidArgument):
        return BlockDeviceError(msg, sct=SCT_GENERIC, sc=SC_INVALID_FIELD)
    if isinstance(exc, DeviceError):
        return BlockDeviceError(msg, sct=SCT_MEDIA,
                                sc=SC_WRITE_FAULT if exc.writing else SC_UNRECOVERED_READ_ERROR)
    if isinstance(exc, Corrupt):
        return BlockDeviceError(msg, sct=SCT_MEDIA, sc=SC_UNRECOVERED_READ_ERROR)
    return BlockDeviceError(msg)


# Volumes raise StoreErrors; the target translates them with the table above, so a volume's
# I/O methods are served as they are (no wrapper coroutine per I/O: each layer costs a frame
# created and resumed on every I/O).
register_errors(StoreError, to_blockdev_error)  # type: ignore[arg-type]


class VolumeDevice:
    """Serve a :class:`~sbstore.store.Volume` through ``target.blockdev.BlockDevice``: the
    volume's own I/O methods (its errors are registered with the target above)."""

    __slots__ = ("deallocate", "flush", "read", "read_direct", "volume", "write",
                 "write_direct", "write_zeroes")

    def __init__(self, volume: Volume) -> None:
        self.volume = volume
        self.read = volume.read
        # target.blockdev's optional direct read and write
        self.read_direct = volume.read_direct
        self.write_direct = volume.write_direct
        self.write = volume.write
        self.flush = volume.flush
        self.write_zeroes = volume.write_zeroes
        self.deallocate = volume.deallocate

    @property
    def block_size(self) -> int:
        return self.volume.block_size

    @property
    def num_blocks(self) -> int:
        return self.volume.num_blocks

    @property
    def used_blocks(self) -> int:
        """The blocks of the clusters the volume's map names (Identify Namespace NUSE)."""
        return self.volume.allocated_bytes // self.volume.block_size

    @property
    def uuid(self) -> uuid_mod.UUID:
        return self.volume.uuid
