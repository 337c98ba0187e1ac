"""A disk model for the QoS benchmark: a backend with real, bounded service capacity.

Why a model and not the VM's disk or a RAM device: on the 2-vCPU test VM a RAM or page-cache
device is never the bottleneck (the single-threaded target's CPU is), so tenants would compete
for the target's CPU, not for the device, and fair sharing of the device could not show. The
VM's virtual disk with O_DIRECT in a thread pool has a capacity nobody controls (the host's
cache, other guests) and costs the target CPU per I/O for the thread hops. This model is
cheap (one timer per I/O) and exactly as fast as it says, so the figures measure the QoS
layer and not the disk.

The model: ``slots`` servers working in parallel, each I/O taking ``io_s + nbytes * byte_s``
seconds; an I/O that finds every server busy waits for the first free one, in arrival order
(the device's own FIFO queue, which is what a noisy neighbour fills when nothing above it
decides). Service times are reserved against the model's own schedule (each slot's
``free_at``), so the capacity is exact over time however late or early the event loop's
timers fire (uvloop rounds delays down to whole milliseconds); only each I/O's latency sees
that jitter, by up to a millisecond. The data itself lives in a :class:`RamDevice`.
"""
from __future__ import annotations

import asyncio
import heapq
import time
import uuid as uuid_mod
from collections.abc import Sequence

from target.blockdev import RamDevice

_now = time.monotonic


class SimDisk:
    """The shared servers: every :class:`SimVolume` on it competes for them."""

    def __init__(self, slots: int = 16, io_s: float = 0.002, byte_s: float = 20e-9) -> None:
        self.slots = slots
        self.io_s = io_s
        self.byte_s = byte_s
        self._free_at = [0.0] * slots  # a heap: when each server is next free
        self.ios = 0
        self.busy_s = 0.0

    def service_s(self, nbytes: int) -> float:
        return self.io_s + nbytes * self.byte_s

    def capacity_iops(self, nbytes: int) -> float:
        """I/Os per second of ``nbytes`` each with every server busy."""
        return self.slots / self.service_s(nbytes)

    async def serve(self, nbytes: int) -> None:
        """Wait for a server and the I/O's service time."""
        now = _now()
        free = heapq.heappop(self._free_at)
        service = self.service_s(nbytes)
        done = max(now, free) + service
        heapq.heappush(self._free_at, done)
        self.ios += 1
        self.busy_s += service
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.call_later(done - now, _resolve, fut)
        await fut


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class SimVolume:
    """A volume on a :class:`SimDisk`: a ``BlockDevice`` whose I/O waits for the disk."""

    def __init__(self, disk: SimDisk, size_bytes: int, block_size: int = 4096) -> None:
        self.disk = disk
        self.ram = RamDevice(size_bytes, block_size)

    @property
    def block_size(self) -> int:
        return self.ram.block_size

    @property
    def num_blocks(self) -> int:
        return self.ram.num_blocks

    @property
    def uuid(self) -> uuid_mod.UUID:
        return self.ram.uuid

    async def read(self, lba: int, nblocks: int) -> memoryview:
        await self.disk.serve(nblocks * self.ram.block_size)
        return await self.ram.read(lba, nblocks)

    async def write(self, lba: int, data: bytes | bytearray | memoryview, fua: bool = False
                    ) -> None:
        await self.disk.serve(len(data))
        await self.ram.write(lba, data, fua)

    async def flush(self) -> None:
        await self.disk.serve(0)

    async def write_zeroes(self, lba: int, nblocks: int) -> None:
        await self.disk.serve(0)
        await self.ram.write_zeroes(lba, nblocks)

    async def deallocate(self, ranges: Sequence[tuple[int, int]]) -> None:
        await self.disk.serve(0)
        await self.ram.deallocate(ranges)
