"""DH-HMAC-CHAP against a real target on loopback, driven by our initiator: the right secret
connects and does I/O (each hash; the null group, ffdhe2048 and ffdhe8192), a wrong one is
refused, skipping authentication leaves every non-fabrics command refused with Authentication
Required, bidirectional authentication both ways, re-authentication, key rotation, and the
discovery controller."""
from __future__ import annotations

import asyncio
import struct

import pytest

from target.auth.responder import HostCredentials
from target.auth.secret import DhchapSecret
from target.host import commands as cmd
from target.host.auth import AuthenticationFailed, HostAuth, authenticate
from target.host.controller import Controller
from target.host.queue_client import CommandFailed, QueueClient
from target.nvme.dhchap import DhGroupId, FailureReason, HashId
from target.nvme.spec import CONNECT_AUTHREQ_ATR, DISCOVERY_NQN, CommandSpecificStatus

from .conftest import NQN, Served

HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:6f1d2a3e-0000-4000-8000-00000000a0a1"
HOST_SECRET = DhchapSecret.generate(1)
CTRL_SECRET = DhchapSecret.generate(2)
AUTH_REQUIRED = CommandSpecificStatus.AUTH_REQUIRED


def require(served: Served, creds: HostCredentials | None = None) -> None:
    sub = served.target.subsystems[NQN]
    sub.set_host_credentials(HOSTNQN, creds or HostCredentials(HOST_SECRET, CTRL_SECRET))


async def connect(served: Served, auth: HostAuth | None, **kw: object) -> Controller:
    return await Controller.connect(*served.addr, NQN, hostnqn=HOSTNQN, auth=auth,
                                    timeout_s=10, **kw)  # type: ignore[arg-type]


async def roundtrip(ctrl: Controller) -> None:
    await ctrl.write(1, 8, b"\xA5" * 512)
    assert bytes(await ctrl.read(1, 8, 1)) == b"\xA5" * 512


@pytest.mark.parametrize("hash_id", list(HashId))
async def test_each_hash_with_ffdhe2048(served: Served, hash_id: int) -> None:
    require(served)
    auth = HostAuth(HOST_SECRET, hashes=(hash_id,), dhgroups=(DhGroupId.FFDHE2048,))
    async with await connect(served, auth, nr_io_queues=2) as ctrl:
        assert ctrl.auth_required and ctrl.auth_outcome is not None
        assert (ctrl.auth_outcome.hash_id, ctrl.auth_outcome.dhgroup_id) == (
            hash_id, DhGroupId.FFDHE2048)
        await roundtrip(ctrl)


@pytest.mark.parametrize("group", [DhGroupId.NULL, DhGroupId.FFDHE8192])
async def test_null_and_largest_group(served: Served, group: int) -> None:
    require(served)
    auth = HostAuth(HOST_SECRET, CTRL_SECRET, dhgroups=(group,))
    async with await connect(served, auth) as ctrl:
        assert ctrl.auth_outcome is not None and ctrl.auth_outcome.dhgroup_id == group
        assert ctrl.auth_outcome.bidirectional
        await roundtrip(ctrl)


async def test_wrong_secret_is_refused_and_dropped(served: Served) -> None:
    require(served)
    with pytest.raises(AuthenticationFailed) as info:
        await connect(served, HostAuth(DhchapSecret.generate(1)))
    assert info.value.by_controller and info.value.reason == FailureReason.FAILED
    assert not served.target.subsystems[NQN].controllers


async def test_skipping_authentication_is_refused(served: Served) -> None:
    require(served)
    with pytest.raises(CommandFailed) as info:  # Identify, after the Connect and enable
        await connect(served, HostAuth(HOST_SECRET), authenticate=False)
    assert (info.value.sct, info.value.sc, info.value.dnr) == (1, AUTH_REQUIRED, True)
    with pytest.raises(CommandFailed) as info:
        await connect(served, None)
    assert info.value.sc == AUTH_REQUIRED


async def test_io_queue_must_authenticate_too(served: Served) -> None:
    require(served)
    auth = HostAuth(HOST_SECRET)
    async with await connect(served, auth, nr_io_queues=0) as ctrl:
        granted = await ctrl.set_number_of_queues(1)
        assert granted >= 1
        q = await QueueClient.open(*served.addr, depth=8)
        try:
            data = cmd.connect_data(hostid=ctrl.hostid, cntlid=ctrl.cntlid, subnqn=NQN,
                                    hostnqn=HOSTNQN)
            q.incapsule_limit = 8192
            done = (await q.submit(cmd.connect(0, qid=1, sqsize=8), data=data)).check()
            assert done.cqe.dw0 == ctrl.cntlid | CONNECT_AUTHREQ_ATR
            read = cmd.read(0, 1, 0, 1, 512)
            refused = await q.submit(read, read_len=512)
            assert (refused.sct, refused.sc) == (1, AUTH_REQUIRED)
            await authenticate(q, auth, subnqn=NQN, hostnqn=HOSTNQN)
            (await q.submit(read, read_len=512)).check("Read after authentication")
        finally:
            q.close()


async def test_wrong_controller_secret_is_refused_by_the_host(served: Served) -> None:
    require(served)
    with pytest.raises(AuthenticationFailed) as info:
        await connect(served, HostAuth(HOST_SECRET, DhchapSecret.generate(2)))
    assert not info.value.by_controller
    for _ in range(100):  # the host's Failure2 makes the target drop the controller
        if not served.target.subsystems[NQN].controllers:
            break
        await asyncio.sleep(0.01)
    assert not served.target.subsystems[NQN].controllers


async def test_bidirectional_without_a_controller_secret_fails(served: Served) -> None:
    require(served, HostCredentials(HOST_SECRET))
    with pytest.raises(AuthenticationFailed) as info:
        await connect(served, HostAuth(HOST_SECRET, CTRL_SECRET))
    assert info.value.by_controller


async def test_unusable_hash_or_group(served: Served) -> None:
    require(served, HostCredentials(HOST_SECRET, hashes=(HashId.SHA512,),
                                    dhgroups=(DhGroupId.FFDHE3072,)))
    with pytest.raises(AuthenticationFailed) as info:
        await connect(served, HostAuth(HOST_SECRET, hashes=(HashId.SHA256,)))
    assert info.value.reason == FailureReason.HASH_UNUSABLE
    with pytest.raises(AuthenticationFailed) as info:
        await connect(served, HostAuth(HOST_SECRET, dhgroups=(DhGroupId.NULL,)))
    assert info.value.reason == FailureReason.DHGROUP_UNUSABLE


async def test_rotation_keeps_the_connected_host(served: Served) -> None:
    require(served)
    old = HostAuth(HOST_SECRET, CTRL_SECRET, dhgroups=(DhGroupId.NULL,))
    new_secret = DhchapSecret.generate(1)
    async with await connect(served, old, nr_io_queues=2) as ctrl:
        await ctrl.reauthenticate()  # the host asks again: same secret, still fine
        require(served, HostCredentials(new_secret, CTRL_SECRET))
        await roundtrip(ctrl)  # rotation dropped nobody
        with pytest.raises(AuthenticationFailed):
            await connect(served, old)
        async with await connect(served, HostAuth(new_secret, CTRL_SECRET)) as other:
            await roundtrip(other)
        await roundtrip(ctrl)
        await ctrl.reauthenticate(HostAuth(new_secret, CTRL_SECRET))
        await roundtrip(ctrl)


async def test_no_credentials_no_authentication(served: Served) -> None:
    async with await connect(served, HostAuth(HOST_SECRET)) as ctrl:
        assert not ctrl.auth_required and ctrl.auth_outcome is None
        await roundtrip(ctrl)


async def test_discovery_controller(served: Served) -> None:
    require(served)
    served.target.discovery_auth = True
    with pytest.raises(CommandFailed) as info:
        await Controller.connect(*served.addr, DISCOVERY_NQN, hostnqn=HOSTNQN, timeout_s=10)
    assert info.value.sc == AUTH_REQUIRED
    async with await Controller.connect(*served.addr, DISCOVERY_NQN, hostnqn=HOSTNQN,
                                        auth=HostAuth(HOST_SECRET), timeout_s=10) as disc:
        assert disc.auth_outcome is not None
        header = await disc.get_log_page(0x70, 1024)
        assert struct.unpack_from("<Q", header, 8)[0] >= 1
    from target.host import discover
    entries = await discover(*served.addr, hostnqn=HOSTNQN, auth=HostAuth(HOST_SECRET))
    assert NQN in [e.subnqn for e in entries]
    # a host holding no secret anywhere discovers as before
    async with await Controller.connect(*served.addr, DISCOVERY_NQN, timeout_s=10) as disc:
        assert not disc.auth_required


async def test_bad_auth_fields(served: Served) -> None:
    require(served)
    async with await connect(served, HostAuth(HOST_SECRET)) as ctrl:
        sqe = cmd.auth_receive(0, 4096)
        for field, value in (("cdw10", 0x01010000 | (0xE8 << 24)), ("cdw11", 0)):
            bad = type(sqe)(**{**{f: getattr(sqe, f) for f in sqe.__dataclass_fields__},
                               field: value})
            done = await ctrl.admin.submit(bad, read_len=4096)
            assert (done.sct, done.sc) == (0, 2)  # Invalid Field
