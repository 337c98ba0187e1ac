"""The device a node serves for its replica of a cluster volume, and what the node remembers
of its cluster volumes between restarts.

Rules of this module:
- :class:`RoleDevice` is what the namespace holds, for the namespace's whole life: the manager
  switches what it delegates to as the node's role changes (nothing: refuse; a
  ``MirroredDevice``: serve as primary), so a role change never re-creates the namespace.
  Refusing answers the ANA Inaccessible path status, a second guard behind the ANA state the
  listeners show: a host that sends I/O down an inaccessible path anyway is refused, and a
  multipath host retries on another path (path errors have DNR clear).
- A :class:`RoleDevice` starts refusing: at daemon start the node does not know its role yet,
  and an old primary restarted must never accept a write.
- :class:`LocalRegistry` is a small JSON file in the state directory: the uuids of this node's
  cluster volumes and the NQNs of its cluster exports. The control service restores exports
  from its database before etcd has been read; the registry tells the device hook which of
  them are cluster volumes (and must start refusing) without waiting for etcd.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid as uuid_mod
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from target.blockdev import BlockDevice, BlockDeviceError
from target.nvme.spec import PathStatus, StatusType

log = logging.getLogger("sbstore.cluster.device")


class PathInaccessible(BlockDeviceError):
    """This node does not serve the volume now (not its primary): ANA Inaccessible."""

    sct = int(StatusType.PATH)
    sc = int(PathStatus.ANA_INACCESSIBLE)


class RoleDevice:
    """Delegates to ``active`` (the primary's mirrored device) or refuses every I/O."""

    __slots__ = ("__weakref__", "_active", "_drained", "_held", "_writing", "local", "name")

    def __init__(self, local: BlockDevice, name: str = "") -> None:
        self.local = local  # the replica in this node's pool (what a MirroredDevice wraps)
        self.name = name
        self._active: BlockDevice | None = None
        # A snapshot of a replicated volume holds the hosts' writes here, above the mirror,
        # so every copy stops at the same write: held (None: not held), and the writes in
        # flight it waits for.
        self._held: asyncio.Future[None] | None = None
        self._writing = 0
        self._drained: asyncio.Future[None] | None = None

    @property
    def active(self) -> BlockDevice | None:
        return self._active

    def serve(self, device: BlockDevice) -> None:
        self._active = device

    def refuse(self) -> None:
        self._active = None

    def _device(self) -> BlockDevice:
        device = self._active
        if device is None:
            raise PathInaccessible(f"volume {self.name or self.uuid}: this node is not its "
                                   f"primary")
        return device

    @property
    def block_size(self) -> int:
        return self.local.block_size

    @property
    def num_blocks(self) -> int:
        return self.local.num_blocks

    @property
    def uuid(self) -> uuid_mod.UUID:
        return self.local.uuid

    @property
    def used_blocks(self) -> int | None:
        return getattr(self.local, "used_blocks", None)

    # --- holding writes (snapshots) --------------------------------------------------------

    def hold(self) -> None:
        """New writes wait (reads go on) until :meth:`release`."""
        if self._held is None:
            self._held = asyncio.get_running_loop().create_future()

    async def drained(self) -> None:
        """Return once no write admitted before :meth:`hold` is in flight."""
        while self._writing:  # bounded: held, so the count only falls
            self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)

    def release(self) -> None:
        held, self._held = self._held, None
        if held is not None and not held.done():
            held.set_result(None)

    async def _begin_write(self) -> BlockDevice:
        while self._held is not None:  # each release lets them through; re-held: wait again
            await asyncio.shield(self._held)
        device = self._device()
        self._writing += 1
        return device

    def _end_write(self) -> None:
        self._writing -= 1
        if not self._writing and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # --- I/O --------------------------------------------------------------------------------

    async def read(self, lba: int, nblocks: int) -> bytes | bytearray | memoryview:
        return await self._device().read(lba, nblocks)

    async def write(self, lba: int, data: bytes | bytearray | memoryview,
                    fua: bool = False) -> None:
        if self._held is None:  # the hot path: no coroutine of its own
            device = self._device()
            self._writing += 1
        else:
            device = await self._begin_write()
        try:
            await device.write(lba, data, fua)
        finally:
            self._end_write()

    async def flush(self) -> None:
        await self._device().flush()

    async def write_zeroes(self, lba: int, nblocks: int) -> None:
        device = await self._begin_write()
        try:
            await device.write_zeroes(lba, nblocks)
        finally:
            self._end_write()

    async def deallocate(self, ranges: Sequence[tuple[int, int]]) -> None:
        device = await self._begin_write()
        try:
            await device.deallocate(ranges)
        finally:
            self._end_write()


class LocalRegistry:
    """``state_dir/cluster.json``: ``{"volumes": {uuid: name}, "exports": [nqn, ...]}``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.volumes: dict[str, str] = {}
        self.exports: set[str] = set()
        try:
            data: Any = json.loads(path.read_text())
            self.volumes = {str(k): str(v) for k, v in data.get("volumes", {}).items()}
            self.exports = {str(x) for x in data.get("exports", [])}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError, TypeError, IndexError) as exc:
            # Unreadable: start from nothing. The manager rebuilds it from etcd; meanwhile
            # restored exports of cluster volumes are served as plain volumes would be, which
            # is why the file is written atomically and this should not happen.
            log.error("%s is unreadable (%s); cluster volumes are found again from etcd",
                      path, exc)

    def add_volume(self, uuid: str, name: str) -> None:
        if self.volumes.get(uuid) != name:
            self.volumes[uuid] = name
            self._save()

    def remove_volume(self, uuid: str) -> None:
        if self.volumes.pop(uuid, None) is not None:
            self._save()

    def add_export(self, nqn: str) -> None:
        if nqn not in self.exports:
            self.exports.add(nqn)
            self._save()

    def remove_export(self, nqn: str) -> None:
        if nqn in self.exports:
            self.exports.discard(nqn)
            self._save()

    def _save(self) -> None:
        """Atomically (temporary file, fsync, rename): a crash leaves the old or the new."""
        tmp = self.path.with_suffix(".tmp")
        data = json.dumps({"volumes": self.volumes, "exports": sorted(self.exports)},
                          indent=1).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)


class ClusterDevices:
    """The control service's device hook for cluster volumes (composed inside the QoS hook):
    a namespace of a volume the registry names gets a :class:`RoleDevice`, which serves what
    the manager says for that volume (refusing until it says anything)."""

    def __init__(self, registry: LocalRegistry) -> None:
        self.registry = registry
        self._devices: dict[str, weakref.WeakSet[RoleDevice]] = {}
        self._active: dict[str, BlockDevice] = {}

    def wrap(self, pool_name: str, vol: Any, inner: BlockDevice) -> BlockDevice:
        uuid = str(vol.uuid)
        name = self.registry.volumes.get(uuid)
        if name is None:
            return inner  # not a cluster volume: served as in single-node mode
        device = RoleDevice(inner, name)
        active = self._active.get(uuid)
        if active is not None:
            device.serve(active)
        self._devices.setdefault(uuid, weakref.WeakSet()).add(device)
        return device

    def devices(self, uuid: str) -> list[RoleDevice]:
        return list(self._devices.get(uuid, ()))

    def serve(self, uuid: str, device: BlockDevice) -> None:
        self._active[uuid] = device
        for d in list(self._devices.get(uuid, ())):
            d.serve(device)

    def refuse(self, uuid: str) -> None:
        self._active.pop(uuid, None)
        for d in list(self._devices.get(uuid, ())):
            d.refuse()

    def serving(self, uuid: str) -> bool:
        return uuid in self._active
