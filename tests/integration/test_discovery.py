"""The discovery subsystem over TCP, as `nvme discover` reads it."""
from __future__ import annotations

from target.host import Controller, discover
from target.server import TargetServer
from tests.integration.conftest import NQN


async def test_discovery_lists_the_subsystems(served):
    entries = await discover(*served.addr)
    nqns = {e.subnqn for e in entries}
    assert NQN in nqns
    nvm = [e for e in entries if e.subnqn == NQN][0]
    assert nvm.trtype == 3 and nvm.adrfam == 1 and nvm.subtype == 2
    assert nvm.traddr == "127.0.0.1" and nvm.trsvcid == str(served.port)


async def test_wildcard_listener_reports_the_address_reached(served):
    """A listener on 0.0.0.0 must not advertise 0.0.0.0: the host could not connect to it."""
    server = TargetServer(served.target)
    listener = await server.listen("0.0.0.0", 0)
    try:
        port = int(listener.trsvcid)
        entries = await discover("127.0.0.1", port)
        mine = [e for e in entries if e.subnqn == NQN and e.trsvcid == str(port)]
        assert mine and mine[0].traddr == "127.0.0.1", entries
        async with await Controller.connect("127.0.0.1", port, NQN, nr_io_queues=1) as ctrl:
            await ctrl.write(1, 3, b"\x33" * 512)
    finally:
        await server.close()


async def test_listen_with_a_taken_portid_leaves_no_socket_bound(served):
    import socket

    import pytest
    taken = served.server.listeners[0].portid
    server = TargetServer(served.target)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(Exception):
        await server.listen("127.0.0.1", port, portid=taken)
    with socket.socket() as again:  # the port is free again: nothing kept it bound
        again.bind(("127.0.0.1", port))
    assert server.listeners == []
