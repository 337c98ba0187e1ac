"""A replica of a cluster volume is created with the volume's uuid, so the namespace identity
(NGUID, UUID, EUI-64) hosts see is the same on every node that serves it."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from sbstore.store import AlreadyExists, Pool
from sbstore.volume_device import VolumeDevice
from target.subsystem import Subsystem


async def test_two_pools_give_a_shared_uuid_the_same_namespace_identity(tmp_path: Path) -> None:
    want = uuid.UUID("6b1f8a52-0d7e-4f3c-9a55-2f0c0b8a1e01")
    pools = [Pool.create(tmp_path / f"{n}.pool", 64 << 20) for n in "ab"]
    try:
        vols = [await p.create_volume("v", 1 << 20, 4096, uuid=want) for p in pools]
        assert [v.uuid for v in vols] == [want, want]
        idents = []
        for vol in vols:
            sub = Subsystem("nqn.2026-11.io.sbstore.test:id", serial="S", model="m",
                            allow_any_host=True)
            nsid = sub.add_namespace(VolumeDevice(vol))
            ns = sub.namespaces[nsid]
            idents.append((ns.uuid, ns.nguid, ns.eui64))
        assert idents[0] == idents[1] and idents[0][0] == want.bytes
        with pytest.raises(AlreadyExists, match="uuid"):
            await pools[0].create_volume("w", 1 << 20, 4096, uuid=want)
        fresh = await pools[0].create_volume("x", 1 << 20, 4096)
        assert fresh.uuid != want
    finally:
        for p in pools:
            await p.aclose()
