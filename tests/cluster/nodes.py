"""Several sbstore daemons in cluster mode, as child processes on loopback, for the cluster
tests; a host that uses their paths as a multipath host would; a TCP proxy that can cut one
node off from etcd.

The daemons are :class:`tests.linux_host.sbstore_process.SbstoreDaemon` (``serve --config``,
ready when the API answers and the NVMe/TCP port accepts; SIGTERM then SIGKILL; they die with
the test process), each with a ``[cluster]`` section. Every wait here is bounded.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from perf import harness
from sbstore.control.client import Client
from target.host import CommandFailed, Controller
from target.nvme.logpages import pull_ana_log
from target.nvme.spec import AnaState, LogPageId, StatusType
from tests.linux_host.sbstore_process import SbstoreDaemon, free_port, write_config

T = TypeVar("T")
NQN = "nqn.2026-11.io.sbstore.test:cluster"
LEASE_TTL = 2


@dataclass
class Node:
    name: str
    daemon: SbstoreDaemon
    nvme_port: int
    peer_port: int
    socket: Path

    def api(self, method: str, target: str, body: Any = None, **query: Any) -> Any:
        with Client(self.socket, timeout_s=10) as c:
            return c.request(method, target, body, query)

    def get(self, target: str) -> Any:
        with Client(self.socket, timeout_s=10) as c:
            return c.get(target)

    def cli(self, *args: str) -> Any:
        return self.daemon.cli(*args).ok(" ".join(args))

    def status(self) -> dict[str, Any]:
        return self.get("/v1/cluster")  # type: ignore[no-any-return]

    def volume(self, name: str) -> dict[str, Any]:
        return next(v for v in self.status()["volumes"] if v["name"] == name)

    def healthy(self, name: str) -> dict[str, Any] | None:
        """The volume's status once it has a primary and every replica is in sync."""
        v = self.volume(name)
        return v if v["state"] == "healthy" and v["primary"] else None

    def metrics(self) -> str:
        """A scrape of the metrics endpoint the daemon announced at its last start."""
        url = [line.split("Metrics: ", 1)[1].strip() for line in
               self.daemon.output().splitlines() if line.startswith("Metrics: ")][-1]
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.read().decode()  # type: ignore[no-any-return]

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        proc = self.daemon.proc
        assert proc is not None
        proc.kill()
        proc.wait(timeout=10)
        self.daemon.returncode = proc.returncode


@dataclass
class Cluster:
    root: Path
    etcd_urls: dict[str, str]  # node -> the etcd URL it uses (a proxy, or etcd's)
    nodes: dict[str, Node] = field(default_factory=dict)

    def add(self, name: str, *, etcd_url: str, ttl: int = LEASE_TTL) -> Node:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        nvme_port, peer_port = free_port(), free_port()
        sock = d / "api.sock"
        extra = (f'\n[cluster]\netcd = ["{etcd_url}"]\nnode = "{name}"\n'
                 f'peer_address = "127.0.0.1:{peer_port}"\nlease_ttl = {ttl}\n'
                 f'prefix = "/t"\n')
        config = write_config(d / "sbstore.toml", state_dir=d / "state",
                              pool_path=d / "pool", pool_size="256M", api_socket=sock,
                              nvme_port=nvme_port, pool_name="p", extra=extra)
        daemon = SbstoreDaemon(config, sock, nvme_port, d / "daemon.log")
        node = self.nodes[name] = Node(name, daemon, nvme_port, peer_port, sock)
        return node

    def stop(self) -> None:
        for node in self.nodes.values():
            node.daemon.stop()

    def logs(self) -> str:
        return "\n".join(f"===== {n}\n{node.daemon.output()[-6000:]}"
                         for n, node in self.nodes.items())


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 20.0,
             step: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy (exceptions count as not yet); a test
    failure (AssertionError) when it does not in time."""
    return harness.wait_for(what, check, timeout, step, error=AssertionError)


async def await_for(what: str, check: Callable[[], Awaitable[T | None]], timeout: float = 20.0,
                    step: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            got = await check()
            if got:
                return got
        except Exception as exc:
            last = exc
        await asyncio.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last!r})")


async def ana_state(ctrl: Controller) -> AnaState:
    """The state of the (one) ANA group this path shows."""
    _, groups = pull_ana_log(await ctrl.get_log_page(LogPageId.ANA, 4096))
    return AnaState(groups[0].state)


def is_path_error(exc: BaseException) -> bool:
    return isinstance(exc, CommandFailed) and exc.sct == StatusType.PATH


class MultipathHost:
    """One controller per node for one export; I/O goes to the path that last worked and
    moves to the others on a path error or a lost connection, as Linux's native multipath
    does, until ``deadline_s`` has passed."""

    def __init__(self, nodes: dict[str, Node], nqn: str = NQN) -> None:
        self.nodes = nodes
        self.nqn = nqn
        self.ctrls: dict[str, Controller] = {}
        self.current: str | None = None
        self.switches: list[tuple[float, str]] = []
        self.hostid = uuid.uuid4()  # one host: the same host NQN and id on every path

    async def connect(self, name: str) -> Controller:
        old = self.ctrls.pop(name, None)
        if old is not None:
            with contextlib.suppress(Exception):
                await old.close(shutdown=False)
        ctrl = await Controller.connect("127.0.0.1", self.nodes[name].nvme_port, self.nqn,
                                        hostid=self.hostid, timeout_s=3.0, kato_ms=0)
        self.ctrls[name] = ctrl
        return ctrl

    async def close(self) -> None:
        for ctrl in self.ctrls.values():
            with contextlib.suppress(Exception):
                await ctrl.close(shutdown=False)
        self.ctrls.clear()

    def _order(self) -> Iterator[str]:
        names = sorted(self.ctrls)
        if self.current in self.ctrls:
            yield self.current  # type: ignore[misc]
        yield from (n for n in names if n != self.current)

    async def io(self, op: Callable[[Controller], Awaitable[T]], deadline_s: float = 15.0) -> T:
        deadline = time.monotonic() + deadline_s
        while True:
            for name in list(self._order()):
                ctrl = self.ctrls.get(name)
                if ctrl is None:
                    continue
                try:
                    result = await asyncio.wait_for(op(ctrl), 3.0)
                except Exception as exc:
                    if not (is_path_error(exc) or isinstance(
                            exc, (ConnectionError, OSError, asyncio.TimeoutError, EOFError,
                                  RuntimeError))):
                        raise
                    continue
                if name != self.current:
                    self.switches.append((time.monotonic(), name))
                    self.current = name
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"no path completed the I/O within {deadline_s} s")
            await asyncio.sleep(0.05)

    async def write(self, lba: int, data: bytes) -> None:
        await self.io(lambda c: c.write(1, lba, data))

    async def read(self, lba: int, nblocks: int) -> bytes:
        return bytes(await self.io(lambda c: c.read(1, lba, nblocks)))


class EtcdProxy:
    """A TCP proxy in front of etcd for one node; ``cut()`` drops every connection and refuses
    new ones (the node is cut off), ``mend()`` lets them through again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.cut_off = False
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                dst.close()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def cut(self) -> None:
        self.cut_off = True
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    def mend(self) -> None:
        self.cut_off = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def two_nodes_with_v1(cluster: Cluster, etcd_url: str) -> None:
    """Nodes a and b started, a two-copy volume ``v1`` (16 MiB) healthy, exported as NQN to
    any host and served by both nodes."""
    for name in ("a", "b"):
        cluster.add(name, etcd_url=etcd_url).daemon.start()
    a = cluster.nodes["a"]
    wait_for("two live nodes", lambda: len([n for n in a.status()["nodes"] if n["live"]]) == 2)
    a.cli("volume", "create", "v1", "--size", "16M", "--replicas", "2")
    a.cli("export", "create", NQN, "--volume", "v1", "--allow-any-host")
    wait_for("v1 healthy", lambda: a.healthy("v1"))
    wait_served(cluster, NQN)


def wait_served(cluster: Cluster, nqn: str, only: str | None = None) -> None:
    """Until every node (or node ``only``) serves ``nqn`` with its namespace."""
    for node in cluster.nodes.values():
        if only is None or node.name == only:
            wait_for(f"{nqn} served by {node.name}", functools.partial(_serves, node, nqn))


def _serves(node: Node, nqn: str) -> bool:
    return any(e["nqn"] == nqn and e["namespaces"] and e["namespaces"][0]["state"] == "serving"
               for e in node.get("/v1/subsystems"))
