"""Fixtures of the cluster tests: a fresh real etcd per test, and a client on it."""
from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from sbstore.cluster.etcd import EtcdClient
from tests.cluster.etcd_server import ETCD, EtcdServer


@pytest.fixture
def etcd(tmp_path) -> Iterator[EtcdServer]:
    if not os.access(ETCD, os.X_OK):
        pytest.skip(f"no etcd at {ETCD} (test.sh installs the Debian package etcd-server)")
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def etcd_client(etcd: EtcdServer) -> AsyncIterator[EtcdClient]:
    client = EtcdClient([etcd.url], timeout=2.0)
    try:
        yield client
    finally:
        await client.close()
