"""A RAM device that counts the commands it served, for tests of the load engines."""
from __future__ import annotations

from target.blockdev import RamDevice


class CountingRam(RamDevice):
    """Counts reads, writes and flushes. It overrides read and write, so the target serves it
    through them rather than the direct path (target.blockdev): every command comes here."""

    def __init__(self, size_bytes: int, block_size: int) -> None:
        super().__init__(size_bytes, block_size)
        self.reads = self.writes = self.flushes = 0

    async def read(self, lba: int, nblocks: int) -> memoryview:
        self.reads += 1
        return await super().read(lba, nblocks)

    async def write(self, lba: int, data: bytes | bytearray | memoryview,
                    fua: bool = False) -> None:
        self.writes += 1
        await super().write(lba, data, fua)

    async def flush(self) -> None:
        self.flushes += 1
