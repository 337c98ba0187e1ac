"""perf/fastload.py's large writes (the QoS bench's 128k flood): bare capsules answered R2T by
R2T with H2CData, split at the queue's MAXH2CDATA; the target holds exactly the payload."""
from __future__ import annotations

import random

import pytest

from perf.fastload import run_fast
from target.blockdev import RamDevice
from target.host import Controller
from target.server import TargetServer, TransportLimits
from target.subsystem import Subsystem, Target
from tests.counting_ram import CountingRam

NQN = "nqn.2026-11.io.sbstore:fastload"


@pytest.mark.parametrize("maxh2cdata", [None, 32768])
async def test_large_writes_follow_r2t(maxh2cdata):
    target = Target()
    sub = Subsystem(NQN, allow_any_host=True)
    ram = RamDevice(8 << 20, 512)
    sub.add_namespace(ram)
    target.add_subsystem(sub)
    server = TargetServer(target, TransportLimits(maxh2cdata=maxh2cdata))
    listener = await server.listen("127.0.0.1", 0)
    try:
        ctrl = await Controller.connect("127.0.0.1", int(listener.trsvcid), NQN, queue_size=16)
        try:
            ios, errors, lat, _ = await run_fast(ctrl, nsid=1, rw="randwrite", bs=128 << 10,
                                                 qd=8, seconds=5.0, max_ios=64,
                                                 span_bytes=4 << 20, seed=3)
        finally:
            await ctrl.close(shutdown=False)
    finally:
        await server.close()
    assert ios == 64 and errors == 0 and len(lat) == 64
    payload = random.Random(3).randbytes(128 << 10)
    slots = [bytes(ram._buf[i:i + len(payload)]) for i in range(0, 4 << 20, len(payload))]
    written = [s for s in slots if any(s)]
    assert written and all(s == payload for s in written)


@pytest.mark.parametrize("bs", [4096, 128 << 10])
async def test_random_mix_reads_and_writes_in_proportion(bs):
    """rw="randrw" (the matrix's 70/30 job): about rwmixread percent of the commands the
    target serves are reads, the rest writes, in-capsule (4k) or after R2T (128k)."""
    target = Target()
    sub = Subsystem(NQN, allow_any_host=True)
    ram = CountingRam(8 << 20, 512)
    sub.add_namespace(ram)
    target.add_subsystem(sub)
    server = TargetServer(target, TransportLimits())
    listener = await server.listen("127.0.0.1", 0)
    try:
        ctrl = await Controller.connect("127.0.0.1", int(listener.trsvcid), NQN, queue_size=16)
        try:
            ios, errors, lat, _ = await run_fast(ctrl, nsid=1, rw="randrw", bs=bs, qd=8,
                                                 seconds=10.0, max_ios=1000,
                                                 span_bytes=8 << 20, seed=5, rwmixread=70)
        finally:
            await ctrl.close(shutdown=False)
    finally:
        await server.close()
    assert ios == 1000 and errors == 0 and len(lat) == 1000
    assert ram.reads + ram.writes == 1000
    assert 0.62 < ram.reads / 1000 < 0.78, (ram.reads, ram.writes)  # binomial, sd 1.4%
