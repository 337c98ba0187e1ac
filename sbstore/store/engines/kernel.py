"""The few Linux calls the engines need that ``os`` does not offer, through ctypes.

Rules of this module:
- Standard library only (ctypes on libc): the store must not depend on a compiled binding.
- Every wrapper raises ``OSError`` with the kernel's errno, like ``os`` does, so callers handle
  one kind of failure.
- Facts only (open, alignment, fallocate, the raw syscall): no policy about which engine to use.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import struct
from typing import Any

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# statx(2): AT_EMPTY_PATH makes it describe the descriptor itself; STATX_DIOALIGN (Linux 6.1)
# asks for the direct-I/O alignment. Offsets in struct statx (include/uapi/linux/stat.h).
_AT_EMPTY_PATH = 0x1000
_STATX_DIOALIGN = 0x2000
_STATX_SIZE = 256
_STX_MASK = 0
_STX_DIO_MEM_ALIGN = 152
_STX_DIO_OFFSET_ALIGN = 156
_SYS_STATX_X86_64 = 332

# ioctl(BLKSSZGET) = _IO(0x12, 104): the logical sector size of a block device, an int.
_BLKSSZGET = 0x1268

DEFAULT_ALIGN = 512  # what every Linux block device and file system accepts for O_DIRECT

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def libc_function(name: str, restype: Any, *argtypes: Any) -> Any:
    """A fresh ctypes handle on a libc function (each with its own argtypes, so the variadic
    ``syscall`` can be declared once per system call). None where libc lacks it."""
    try:
        fn = _libc[name]
    except AttributeError:
        return None
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


_fallocate = libc_function("fallocate", ctypes.c_int, ctypes.c_int, ctypes.c_int,
                           ctypes.c_long, ctypes.c_long)
_statx = libc_function("statx", ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                       ctypes.c_uint, ctypes.c_void_p)
_sys_statx = libc_function("syscall", ctypes.c_long, ctypes.c_long, ctypes.c_int,
                           ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)


def errno_error(err: int, what: str) -> OSError:
    """``OSError(err)`` with the usual message, prefixed by what we were doing."""
    return OSError(err, f"{what}: {os.strerror(err)}")


def fallocate(fd: int, mode: int, offset: int, nbytes: int) -> None:
    """fallocate(2); OSError(ENOSYS) where libc has no wrapper."""
    if _fallocate is None:
        raise errno_error(errno.ENOSYS, "fallocate")
    if _fallocate(fd, mode, offset, nbytes) != 0:
        err = ctypes.get_errno()
        raise errno_error(err, f"fallocate(mode={mode:#x}, {nbytes} bytes at {offset})")


FALLOCATE_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.ENODEV})
"""The errnos with which a file system or device says "this fallocate mode is not for me"."""


def dio_alignment(fd: int) -> tuple[int, int] | None:
    """``(offset_align, mem_align)`` the kernel reports for O_DIRECT on ``fd`` (statx
    STATX_DIOALIGN, Linux 6.1+), or None when it does not say (older kernel, or a file system
    that does not fill it in: tmpfs, most network file systems)."""
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if _statx is not None:
        rc = _statx(fd, b"", _AT_EMPTY_PATH, _STATX_DIOALIGN, buf)
    elif _sys_statx is not None and os.uname().machine == "x86_64":
        rc = _sys_statx(_SYS_STATX_X86_64, fd, b"", _AT_EMPTY_PATH, _STATX_DIOALIGN, buf)
    else:
        return None
    if rc != 0:
        return None
    (mask,) = struct.unpack_from("<I", buf.raw, _STX_MASK)
    if not mask & _STATX_DIOALIGN:
        return None
    mem_align, offset_align = struct.unpack_from("<II", buf.raw, _STX_DIO_MEM_ALIGN)
    if offset_align == 0:  # the kernel's way of saying "no direct I/O on this file"
        return None
    return offset_align, max(mem_align, 1)


def logical_block_size(fd: int) -> int:
    """The logical sector size of a block device (BLKSSZGET)."""
    out = fcntl.ioctl(fd, _BLKSSZGET, b"\0\0\0\0")
    (size,) = struct.unpack("<i", out)
    return int(size)


def is_block_device(fd: int) -> bool:
    return stat.S_ISBLK(os.fstat(fd).st_mode)


def alignment(fd: int) -> tuple[int, int, str]:
    """``(block_align, mem_align, source)`` for O_DIRECT I/O on ``fd``: the offset and length
    multiple the device takes directly, the buffer address multiple, and where they came from
    (for the engine's reason line)."""
    dio = dio_alignment(fd)
    if is_block_device(fd):
        lbs = logical_block_size(fd)
        mem = dio[1] if dio else DEFAULT_ALIGN
        return lbs, mem, f"BLKSSZGET {lbs}"
    if dio is not None:
        return dio[0], dio[1], f"statx DIOALIGN {dio[0]}/{dio[1]}"
    return DEFAULT_ALIGN, DEFAULT_ALIGN, f"default {DEFAULT_ALIGN}"


def open_file(path: str, *, direct: bool, readonly: bool) -> int:
    """Open an existing pool file or block device for data I/O (never creates it)."""
    flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
    if direct:
        flags |= os.O_DIRECT
    return os.open(path, flags)


def device_size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)
