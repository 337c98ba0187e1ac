"""A real target on 127.0.0.1 (port chosen by the kernel), served in the test's own loop."""
from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

from target.blockdev import RamDevice
from target.server import TargetServer, TransportLimits
from target.subsystem import Subsystem, Target

NQN = "nqn.2026-11.io.sbstore:test"
NQN_4K = "nqn.2026-11.io.sbstore:test-4k"


@dataclass
class Served:
    target: Target
    server: TargetServer
    port: int
    ram512: RamDevice
    ram4k: RamDevice

    @property
    def addr(self) -> tuple[str, int]:
        return "127.0.0.1", self.port


@pytest.fixture
async def served():
    target = Target()
    ram512 = RamDevice(64 << 20, block_size=512, uuid=uuid.UUID(int=1))
    ram4k = RamDevice(64 << 20, block_size=4096, uuid=uuid.UUID(int=2))
    sub = Subsystem(NQN, serial="SBSTEST0001", model="sbstore test", allow_any_host=True)
    sub.add_namespace(ram512)
    target.add_subsystem(sub)
    sub4k = Subsystem(NQN_4K, serial="SBSTEST0002", model="sbstore test 4k",
                      allow_any_host=True)
    sub4k.add_namespace(ram4k)
    target.add_subsystem(sub4k)
    server = TargetServer(target, TransportLimits(maxh2cdata=64 * 1024))
    listener = await server.listen("127.0.0.1", 0)
    try:
        yield Served(target, server, int(listener.trsvcid), ram512, ram4k)
    finally:
        await server.close()
