"""NVMe reservations persist through a daemon restart (PTPL): registrants, the holder and the
type come back from the control state, and the other host's writes are still refused."""
from __future__ import annotations

import uuid
from pathlib import Path

from target.host import Controller
from target.host import commands as cmd
from target.nvme.spec import CPTPL_CLEAR, GenericStatus, ReservationType
from tests.control.conftest import HOST_A, HOST_B, NQN_1, DaemonThread, make_config

KEY_A, KEY_B = 0x1111, 0x2222
WE = ReservationType.WRITE_EXCLUSIVE


def _hostid(hostnqn: str) -> uuid.UUID:
    return uuid.UUID(hostnqn.rsplit(":", 1)[1])


async def _connect(d: DaemonThread, hostnqn: str) -> Controller:
    return await Controller.connect("127.0.0.1", d.port, NQN_1, hostnqn=hostnqn,
                                    hostid=_hostid(hostnqn))


async def _write_conflicts(ctrl: Controller, lba: int) -> bool:
    bs = ctrl.block_size(1)
    done = await ctrl.queue().submit(cmd.write(0, 1, lba, 1, bs), data=b"\0" * bs)
    return (done.sct, done.sc) == (0, GenericStatus.RESERVATION_CONFLICT)


async def test_reservation_survives_a_restart(tmp_path: Path, sock_dir: Path) -> None:
    d = DaemonThread(make_config(tmp_path, sock_dir))
    d.start()
    try:
        d.ok("volume", "create", "vol", "--size", "16M")
        d.ok("volume", "create", "other", "--size", "16M")
        d.ok("export", "create", NQN_1, "--volume", "vol", "--volume", "other",
             "--host", HOST_A, "--host", HOST_B)
        async with await _connect(d, HOST_A) as a, await _connect(d, HOST_B) as b:
            await a.resv_register(1, nrkey=KEY_A)
            await b.resv_register(1, nrkey=KEY_B)
            await a.resv_acquire(1, WE, crkey=KEY_A)
            assert await _write_conflicts(b, 0)
            # Namespace 2: registered with PTPL cleared, so forgotten at the restart.
            await a.resv_register(2, nrkey=KEY_A, cptpl=CPTPL_CLEAR)
            await a.resv_acquire(2, WE, crkey=KEY_A)
            before = await a.resv_report(1)

        d.restart()

        async with await _connect(d, HOST_A) as a, await _connect(d, HOST_B) as b:
            assert await b.resv_report(1) == before
            assert await _write_conflicts(b, 0)
            bs = b.block_size(1)
            assert bytes(await b.read(1, 0, 1)) == b"\0" * bs
            assert not (await b.resv_report(2)).registrants
            await b.write(2, 0, b"\x02" * bs)
            await a.resv_release(1, WE, crkey=KEY_A)
            await b.write(1, 0, b"\x01" * bs)

        d.restart()

        async with await _connect(d, HOST_B) as b:
            report = await b.resv_report(1)
            assert report.rtype == 0 and len(report.registrants) == 2
            await b.write(1, 1, b"\x01" * b.block_size(1))
        # Deleting the volume forgets its reservations.
        d.ok("volume", "delete", "vol", "--force")
        assert not [r for r in d.state_dump()["reservations"]
                    if r[1] != _uuid_of(d, "other")]
    finally:
        d.stop()


def _uuid_of(d: DaemonThread, name: str) -> str:
    return str(d.ok("volume", "show", name, "--json").json["uuid"])
