"""A store volume as the target's block device: the one place store errors become NVMe status.

``sbstore.store`` knows nothing of NVMe and ``target`` nothing of the store; this adapter joins
them. :class:`VolumeDevice` satisfies ``target.blockdev.BlockDevice`` and translates each
``StoreError`` once, here:

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
from collections.abc import Sequence

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


class VolumeDevice:
    """Serve a :class:`~sbstore.store.Volume` through ``target.blockdev.BlockDevice``."""

    __slots__ = ("volume",)

    def __init__(self, volume: Volume) -> None:
        self.volume = volume

    @property
    def block_size(self) -> int:
        return self.volume.block_size

    @property
    def num_blocks(self) -> int:
        return self.volume.num_blocks

    @property
    def uuid(self) -> uuid_mod.UUID:
        return self.volume.uuid

    async def read(self, lba: int, nblocks: int) -> bytes | bytearray | memoryview:
        try:
            return await self.volume.read(lba, nblocks)
        except StoreError as exc:
            raise to_blockdev_error(exc) from exc

    async def write(self, lba: int, data: bytes | bytearray | memoryview, fua: bool = False
                    ) -> None:
        try:
            await self.volume.write(lba, data, fua)
        except StoreError as exc:
            raise to_blockdev_error(exc) from exc

    async def flush(self) -> None:
        try:
            await self.volume.flush()
        except StoreError as exc:
            raise to_blockdev_error(exc) from exc

    async def write_zeroes(self, lba: int, nblocks: int) -> None:
        try:
            await self.volume.write_zeroes(lba, nblocks)
        except StoreError as exc:
            raise to_blockdev_error(exc) from exc

    async def deallocate(self, ranges: Sequence[tuple[int, int]]) -> None:
        try:
            await self.volume.deallocate(ranges)
        except StoreError as exc:
            raise to_blockdev_error(exc) from exc
