"""sbstore.slices.yield_to_io: between two slices of control-plane work, what an I/O event
started (a response's write, queued with call_soon) runs before the next slice does."""
from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path
from typing import Any

from sbstore.slices import yield_to_io
from sbstore.store.engines import open_engine
from sbstore.store.engines.uring import UringEngine


def _spin(seconds: float, until: Any = None) -> None:
    """Busy for ``seconds`` (or until ``until()``) without a system call (perf_counter reads
    the vDSO clock), as a slice of Python work is: nothing in it enters the kernel."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and not (until is not None and until()):
        pass


async def _slices_and_response(start_io: Any, until: Any = None) -> list[str]:
    """Slice 1 starts an I/O whose completion queues a 'response' with call_soon, spins while
    it completes, yields with yield_to_io; slice 2 notes the order."""
    loop = asyncio.get_running_loop()
    order: list[str] = []

    def completed() -> None:
        loop.call_soon(order.append, "response")

    start_io(completed)
    # The I/O completes meanwhile: a socket's byte at once; a read once the disk is done
    # (``until`` sees its completion in the ring, posted at a timer tick at the latest).
    _spin(0.05 if until is None else 5.0, until)
    await yield_to_io()
    order.append("next slice")
    await asyncio.sleep(0.01)
    return order


async def test_a_socket_event_during_a_slice_is_answered_before_the_next_slice() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        def start(completed: Any) -> None:
            def readable() -> None:
                a.recv(16)
                loop.remove_reader(a.fileno())
                completed()
            loop.add_reader(a.fileno(), readable)
            b.send(b"x")

        assert await _slices_and_response(start) == ["response", "next slice"]
    finally:
        a.close()
        b.close()


class _Done:
    def __init__(self, then: Any) -> None:
        self.then = then
        self.finished = False

    def done(self) -> bool:
        return self.finished

    def set_result(self, value: Any) -> None:
        self.finished = True
        self.then()

    def set_exception(self, exc: BaseException) -> None:
        self.finished = True
        raise AssertionError(f"the read failed: {exc}")


async def test_a_pool_read_completing_during_a_slice_is_answered_before_the_next_slice(
        tmp_path: Path) -> None:
    """The same through a real io_uring engine: the read's completion is posted (cooperative
    task work, at the latest as a turn's epoll_wait returns), reaped from the eventfd's turn,
    and what it queued runs before the next slice."""
    path = tmp_path / "pool.img"
    path.write_bytes(os.urandom(1 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:  # off the page cache, so the read goes to the device and completes by interrupt
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    e = open_engine(str(path), "io_uring")
    assert isinstance(e, UringEngine)
    try:
        buf = e.buffer(4096)

        def start(completed: Any) -> None:
            assert e.read_with(8192, buf, _Done(completed))
            e._submit()  # in the slice, as the target's own turn would have submitted it

        ring = e._ring

        def posted() -> bool:
            return bool(ring.cq32[ring.cq_tail_i] != e._cq_head)

        assert await _slices_and_response(start, posted) == ["response", "next slice"]
    finally:
        e.close()
