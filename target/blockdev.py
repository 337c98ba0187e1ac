"""The small interface the target serves, and two devices: RAM and a plain file.

Rules of this module:
- It imports nothing from the rest of the project: the store's volumes and the QoS layer
  implement :class:`BlockDevice` from the outside, so the target never learns about them.
- Addresses are in logical blocks (``lba``, ``nblocks``); buffers are bytes-like.
- Every I/O method is a coroutine so that a device may wait (a thread, a QoS queue) without the
  target knowing. A device that can answer at once simply does not await anything.
- Errors: a device raises :class:`BlockDeviceError` (or a subclass) carrying the NVMe status
  (status code type, status code) the target should return, or an exception of a family a
  translator was registered for (:func:`register_errors`: a device implemented outside the
  target then needs no wrapper coroutine per I/O just to translate). The target maps anything
  else to Internal Error.

- Optional, for the hot path: ``read_direct(lba, nblocks, done, tag) -> bool`` starts a read
  that calls ``done(tag, data, None)`` or ``done(tag, None, error)`` once it completes (errors
  as above; at once, before returning, for a device that has the data at hand), or returns
  False with nothing started and ``done`` never called, and the target awaits ``read``
  instead; ``write_direct(lba, data, fua, done, tag) -> bool`` likewise for a write
  (``done(tag, None, None)``). A device offers them where an I/O completes from a callback
  anyway (io_uring) or at once (RAM): the target then spends no coroutine, future or loop
  callback on it. Wrappers (statistics, QoS) pass them through only if they can account for
  them.

Durability contract (DESIGN.md): a device behaves like a disk with a volatile write cache. A
completed ``write`` may be lost in a crash until ``flush`` completes; a ``write(fua=True)``
completes only once its data (and whatever locates it) is durable.
"""
from __future__ import annotations

import asyncio
import mmap
import os
import uuid as uuid_mod
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

# read_direct's completion callback: done(tag, data, error); and read_direct itself.
DirectDone = Callable[[Any, Any, "BaseException | None"], None]
DirectRead = Callable[[int, int, DirectDone, Any], bool]
DirectWrite = Callable[[int, Any, bool, DirectDone, Any], bool]

# NVMe status values used by device errors (NVMe Base 2.0, Figure 102/104). Duplicated from
# target.nvme on purpose: this module imports nothing.
SCT_GENERIC = 0x0
SCT_MEDIA = 0x2
SC_INTERNAL_ERROR = 0x06
SC_LBA_OUT_OF_RANGE = 0x80
SC_CAPACITY_EXCEEDED = 0x81
SC_WRITE_FAULT = 0x80  # media error type
SC_UNRECOVERED_READ_ERROR = 0x81  # media error type


class BlockDeviceError(Exception):
    """An I/O failed; ``sct``/``sc`` is the NVMe status the host should see."""

    sct: int = SCT_GENERIC
    sc: int = SC_INTERNAL_ERROR

    def __init__(self, message: str, *, sct: int | None = None, sc: int | None = None) -> None:
        super().__init__(message)
        if sct is not None:
            self.sct = sct
        if sc is not None:
            self.sc = sc


class OutOfRangeError(BlockDeviceError):
    sct = SCT_GENERIC
    sc = SC_LBA_OUT_OF_RANGE


class CapacityExceededError(BlockDeviceError):
    """The backing pool has no free space for a write (NVMe Capacity Exceeded)."""

    sct = SCT_GENERIC
    sc = SC_CAPACITY_EXCEEDED


@runtime_checkable
class BlockDevice(Protocol):
    """What a namespace needs from its backing store."""

    @property
    def block_size(self) -> int:
        """Logical block size in bytes: 512 or 4096."""

    @property
    def num_blocks(self) -> int:
        """Capacity in logical blocks (may grow while served)."""

    @property
    def uuid(self) -> uuid_mod.UUID:
        """A stable identity: the namespace's NGUID and UUID are derived from it."""

    async def read(self, lba: int, nblocks: int) -> bytes | bytearray | memoryview:
        """Return exactly ``nblocks * block_size`` bytes; unwritten ranges read as zeroes."""

    async def write(self, lba: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        """Write ``len(data)`` bytes (a whole number of blocks) at ``lba``."""

    async def flush(self) -> None:
        """Make every completed write durable."""

    async def write_zeroes(self, lba: int, nblocks: int) -> None:
        """Make the range read as zeroes (a device may give the space back)."""

    async def deallocate(self, ranges: Sequence[tuple[int, int]]) -> None:
        """TRIM: ``(lba, nblocks)`` ranges may be unmapped; they then read as zeroes."""


# Optional, beyond the protocol: a thin device may have ``used_blocks`` (int or None), the
# blocks it really holds now; Identify Namespace reports it as NUSE (absent or None: all).
USED_BLOCKS = "used_blocks"


ErrorTranslator = Callable[[Exception], BlockDeviceError]
_TRANSLATORS: dict[type, ErrorTranslator] = {}


def register_errors(family: type[Exception], translate: ErrorTranslator) -> None:
    """Devices may raise ``family`` (and its subclasses): ``translate`` turns one into the
    :class:`BlockDeviceError` (the NVMe status) the host gets."""
    _TRANSLATORS[family] = translate


def as_blockdev_error(exc: Exception) -> BlockDeviceError | None:
    """``exc`` as a device error: itself, its registered translation, or None (a bug)."""
    if isinstance(exc, BlockDeviceError):
        return exc
    for cls in type(exc).__mro__:
        translate = _TRANSLATORS.get(cls)
        if translate is not None:
            return translate(exc)
    return None


def check_range(dev: BlockDevice, lba: int, nblocks: int) -> None:
    """Raise OutOfRangeError unless ``[lba, lba+nblocks)`` lies inside ``dev``."""
    if lba < 0 or nblocks < 0 or lba + nblocks > dev.num_blocks:
        raise OutOfRangeError(
            f"blocks {lba}..{lba + nblocks - 1} outside the device's {dev.num_blocks} blocks"
        )


class RamDevice:
    """A volatile device in memory: the yardstick for the protocol's own cost."""

    def __init__(self, size_bytes: int, block_size: int = 512, *, uuid: uuid_mod.UUID | None = None) -> None:
        if block_size not in (512, 4096) or size_bytes % block_size:
            raise ValueError("block_size must be 512 or 4096 and divide the size")
        if size_bytes <= 0:
            raise ValueError("a RAM device needs a positive size")
        # Page-aligned, like the buffers data arrives in (sbstore.store.engines.buffers): a
        # bytearray this size starts 16 bytes into a page, and copying a page-aligned buffer
        # to a destination just past it hits 4K aliasing, a 128 KiB write's copy taking about
        # 4x as long (48 against 11 us here). Populated now, as a bytearray's zeroing did, so
        # no write pays a page fault.
        self._buf = mmap.mmap(-1, size_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                              | mmap.MAP_POPULATE)
        self._view = memoryview(self._buf)
        self._block_size = block_size
        self._uuid = uuid or uuid_mod.uuid4()
        # A subclass that changes read or write (a test's slow or failing device) is served
        # through them: the direct forms are only this class's own behaviour.
        cls = type(self)
        self.read_direct: DirectRead | None = (
            self._read_direct if cls.read is RamDevice.read else None)
        self.write_direct: DirectWrite | None = (
            self._write_direct if cls.write is RamDevice.write else None)

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def num_blocks(self) -> int:
        return len(self._buf) // self._block_size

    @property
    def uuid(self) -> uuid_mod.UUID:
        return self._uuid

    async def read(self, lba: int, nblocks: int) -> memoryview:
        check_range(self, lba, nblocks)
        bs = self._block_size
        # A copy: the caller may hold the buffer while a later write changes the range.
        return memoryview(bytes(self._view[lba * bs:(lba + nblocks) * bs]))

    async def write(self, lba: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        bs = self._block_size
        check_range(self, lba, len(data) // bs)
        self._view[lba * bs:lba * bs + len(data)] = data

    # The direct forms (see the module rules) complete at once; out of range, they decline
    # and read/write raise the error.
    def _read_direct(self, lba: int, nblocks: int, done: DirectDone, tag: Any) -> bool:
        bs = self._block_size
        if lba < 0 or nblocks <= 0 or (lba + nblocks) * bs > len(self._buf):
            return False
        # A copy, as read() makes, but one object: the mmap's slice (bytes).
        done(tag, self._buf[lba * bs:(lba + nblocks) * bs], None)
        return True

    def _write_direct(self, lba: int, data: Any, fua: bool, done: DirectDone, tag: Any
                      ) -> bool:
        bs = self._block_size
        n = len(data)
        if lba < 0 or not n or n % bs or lba * bs + n > len(self._buf):
            return False
        self._view[lba * bs:lba * bs + n] = data
        done(tag, None, None)
        return True

    async def flush(self) -> None:
        return None

    async def write_zeroes(self, lba: int, nblocks: int) -> None:
        check_range(self, lba, nblocks)
        bs = self._block_size
        self._view[lba * bs:(lba + nblocks) * bs] = bytes(nblocks * bs)

    async def deallocate(self, ranges: Sequence[tuple[int, int]]) -> None:
        for lba, nblocks in ranges:
            await self.write_zeroes(lba, nblocks)


class FileDevice:
    """A plain file (or block device node) served with preadv/pwritev; Flush is fdatasync.

    Reads and writes run inline on the event loop: against the page cache they take
    microseconds, far less than a hop to a thread. fdatasync may take milliseconds, so it runs in
    the default executor.
    """

    def __init__(self, path: str | os.PathLike[str], *, block_size: int = 512,
                 size_bytes: int | None = None, uuid: uuid_mod.UUID | None = None) -> None:
        if block_size not in (512, 4096):
            raise ValueError("block_size must be 512 or 4096")
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if size_bytes is not None and os.fstat(self._fd).st_size < size_bytes:
            os.ftruncate(self._fd, size_bytes)
        self._size = os.lseek(self._fd, 0, os.SEEK_END)
        self._block_size = block_size
        self._uuid = uuid or uuid_mod.uuid5(uuid_mod.NAMESPACE_URL, f"file://{os.path.realpath(path)}")

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def num_blocks(self) -> int:
        return self._size // self._block_size

    @property
    def uuid(self) -> uuid_mod.UUID:
        return self._uuid

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    async def read(self, lba: int, nblocks: int) -> bytearray:
        check_range(self, lba, nblocks)
        buf = bytearray(nblocks * self._block_size)
        n = os.preadv(self._fd, [buf], lba * self._block_size)
        if n != len(buf):
            raise BlockDeviceError(f"short read: {n} of {len(buf)} bytes", sct=SCT_MEDIA,
                                   sc=SC_UNRECOVERED_READ_ERROR)
        return buf

    async def write(self, lba: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        check_range(self, lba, len(data) // self._block_size)
        n = os.pwritev(self._fd, [data], lba * self._block_size)
        if n != len(data):
            raise BlockDeviceError(f"short write: {n} of {len(data)} bytes", sct=SCT_MEDIA,
                                   sc=SC_WRITE_FAULT)
        if fua:
            await self.flush()

    async def flush(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, os.fdatasync, self._fd)

    async def write_zeroes(self, lba: int, nblocks: int) -> None:
        check_range(self, lba, nblocks)
        self._punch(lba, nblocks)

    async def deallocate(self, ranges: Sequence[tuple[int, int]]) -> None:
        for lba, nblocks in ranges:
            check_range(self, lba, nblocks)
        for lba, nblocks in ranges:
            self._punch(lba, nblocks)

    def _punch(self, lba: int, nblocks: int) -> None:
        """Give the range back to the filesystem; it then reads as zeroes."""
        off, length = lba * self._block_size, nblocks * self._block_size
        if length == 0:
            return
        try:
            _fallocate_punch(self._fd, off, length)
        except OSError:
            # No hole punching here (tmpfs on old kernels, a block device): write zeroes instead.
            chunk = bytes(min(length, 1 << 20))
            pos = off
            while pos < off + length:
                n = min(len(chunk), off + length - pos)
                os.pwrite(self._fd, memoryview(chunk)[:n], pos)
                pos += n


def _fallocate_punch(fd: int, offset: int, length: int) -> None:
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
    rc = libc.fallocate(ctypes.c_int(fd), ctypes.c_int(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE),
                        ctypes.c_long(offset), ctypes.c_long(length))
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
