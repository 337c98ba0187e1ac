"""The store's errors: one family, each with a message a person can act on.

Rules of this module:
- Every error the store raises on purpose is a :class:`StoreError` subclass; anything else is a
  bug or an OS error we did not expect.
- The store knows nothing of NVMe: ``sbstore.volume_device`` is the one place that turns these
  into NVMe status values (NoSpace -> Capacity Exceeded, OutOfRange -> LBA Out of Range, ...).
"""
from __future__ import annotations


class StoreError(Exception):
    """Base of every error the pool raises on purpose."""


class NoSpace(StoreError):
    """The pool (its data clusters or its metadata area) has no room for the operation."""


class NotFound(StoreError):
    """No volume or snapshot by that name, id or uuid (or it was deleted)."""


class AlreadyExists(StoreError):
    """A volume or snapshot of that name already exists."""


class Busy(StoreError):
    """The object is in a state that forbids the operation now."""


class ReadOnly(StoreError):
    """A write to a snapshot, or to a pool opened read-only."""


class Corrupt(StoreError):
    """The on-disk structures are damaged (bad checksum, pointer out of range, ...)."""


class DeviceError(StoreError):
    """The device under the pool failed an I/O (EIO and the like); ``writing`` says which way."""

    def __init__(self, message: str, *, writing: bool) -> None:
        super().__init__(message)
        self.writing = writing


class InvalidArgument(StoreError):
    """A request the pool cannot carry out as asked (bad size, name, block size, ...)."""


class OutOfRange(InvalidArgument):
    """An I/O beyond the end of the volume."""


class PoolFailed(StoreError):
    """A metadata commit failed; the pool refuses further changes until it is reopened."""
