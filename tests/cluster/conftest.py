"""Fixtures of the cluster tests: a fresh real etcd per test, a client on it, and the daemons
of a cluster on it (their logs printed, so a failing test shows them)."""
from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sbstore.cluster.etcd import EtcdClient
from tests.cluster.etcd_server import ETCD, EtcdServer
from tests.cluster.nodes import Cluster


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


@pytest.fixture
def cluster(tmp_path: Path, etcd: EtcdServer) -> Iterator[Cluster]:
    """No node yet: a test adds and starts its own (``cluster.add(name, etcd_url=etcd.url)``);
    every one is stopped after the test."""
    c = Cluster(tmp_path / "nodes", {})
    try:
        yield c
    finally:
        c.stop()
        print(c.logs())
