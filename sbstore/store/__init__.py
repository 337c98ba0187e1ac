"""sbstore.store: the pool on disk (thin volumes, snapshots, clones). Imports stdlib only.

See :mod:`sbstore.store.pool` for the API and the commit protocol, FORMAT.md for the bytes.
"""
from .errors import (
                     AlreadyExists,
                     Busy,
                     Corrupt,
                     DeviceError,
                     InvalidArgument,
                     NoSpace,
                     NotFound,
                     OutOfRange,
                     PoolFailed,
                     ReadOnly,
                     StoreError,
)
from .layout import DEFAULT_CLUSTER_SIZE
from .pool import Pool, PoolStats
from .volume import Volume

__all__ = [
                     "DEFAULT_CLUSTER_SIZE",
                     "AlreadyExists",
                     "Busy",
                     "Corrupt",
                     "DeviceError",
                     "InvalidArgument",
                     "NoSpace",
                     "NotFound",
                     "OutOfRange",
                     "Pool",
                     "PoolFailed",
                     "PoolStats",
                     "ReadOnly",
                     "StoreError",
                     "Volume",
]
