"""The native load engine: after the Python bring-up, a C program drives the I/O queues.

``perf/fastload.py`` keeps the initiator's cost per I/O low for Python (5-12 us on this VM), but
that cost sits between each completion and the next command, on the core next to the target's.
The issue's yardstick initiator, ``spdk_nvme_perf``, spends about 1 us there. This engine
is the closest stand-in we can build here: the target.host initiator connects (ICReq, Fabrics
Connect, controller enable), then ``perf/native/nvmf_load.c`` takes the connected I/O queue
sockets and busy-polls them from one thread, as ``spdk_nvme_perf`` does. It speaks what
fastload speaks, no more: reads, writes in the capsule or after R2T, Flushes every N writes,
a random mix; digests off, CPDA 0. Every completion's status is checked; a failed command
counts as an error.

The program is compiled on first use with the system C compiler (``$CC``, else ``cc``) into a
cache directory keyed by the source's hash, so an edited source is rebuilt and a stale binary
never runs.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from array import array
from pathlib import Path
from typing import Any

from perf.fastload import PATTERNS, fits_in_capsule, payload_for, queue_maxh2cdata
from target.host.controller import Controller

SOURCE = Path(__file__).resolve().parent / "native" / "nvmf_load.c"
_HEAD = struct.Struct("<4s5q")  # "NVLD", ios, errors, issued, elapsed_ns, latencies
_MAGIC = b"NVLD"


class NativeLoadError(RuntimeError):
    """The native engine could not be built or its run failed."""


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sbstore"


def binary() -> Path:
    """The compiled program, built now if this source has not been built before."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    path = _cache_dir() / f"nvmf_load-{digest}"
    if path.exists():
        return path
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise NativeLoadError("the native load engine needs a C compiler (cc or $CC)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    os.close(fd)
    try:
        done = subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-o", tmp, str(SOURCE)],
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode:
            raise NativeLoadError(f"{cc} failed on {SOURCE.name}:\n{done.stderr.strip()}")
        os.replace(tmp, path)  # atomic: a concurrent build of the same source is harmless
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


async def run_native(ctrl: Controller, *, nsid: int, rw: str, bs: int, qd: int,
                     seconds: float, max_ios: int, span_bytes: int, seed: int,
                     flush_every: int = 0, rwmixread: int = 70
                     ) -> tuple[int, int, array[int], float]:
    """Drive every I/O queue of ``ctrl`` at ``qd`` each, from the C program; returns (ios,
    errors, latencies in ns, seconds), as ``perf.fastload.run_fast`` does."""
    if rw not in PATTERNS:
        raise ValueError(f"rw must be one of {PATTERNS}")
    ns = ctrl.namespaces[nsid]
    if bs <= 0 or bs % ns.block_size:
        raise ValueError(f"bs must be a multiple of the {ns.block_size}-byte block")
    write = rw.endswith("write")
    mixed = rw == "randrw" and 0 < rwmixread < 100
    mode = "mix" if mixed else ("write" if write or (rw == "randrw" and rwmixread == 0)
                                else "read")
    incapsule = fits_in_capsule(ctrl, bs)
    span = (span_bytes // ns.block_size) if span_bytes else ns.nsze
    maxh2cdata = min(queue_maxh2cdata(qc) for qc in ctrl.io_queues)
    transports: list[Any] = [qc._transport for qc in ctrl.io_queues]
    fds: list[int] = []
    exe = binary()
    args = [str(exe), f"nsid={nsid}", f"block={ns.block_size}", f"bs={bs}",
            f"qd={qd}", f"mode={mode}", f"readpct={rwmixread}",
            f"seq={0 if rw.startswith('rand') else 1}", f"span={span}",
            f"seconds={seconds}", f"maxios={max_ios}", f"seed={seed}",
            f"incapsule={1 if incapsule else 0}", f"maxh2cdata={maxh2cdata}",
            f"flushevery={flush_every if mode == 'write' else 0}"]
    try:
        for transport in transports:
            transport.pause_reading()  # the event loop must not take the program's answers
            fds.append(os.dup(transport.get_extra_info("socket").fileno()))
        args.insert(1, "fds=" + ",".join(map(str, fds)))
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, pass_fds=fds)
        data = payload_for(seed, bs) if mode != "read" else b""
        try:
            out, err = await asyncio.wait_for(proc.communicate(data), seconds + 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise NativeLoadError("the native load engine did not finish in time") from None
    finally:
        for fd in fds:
            os.close(fd)
        for transport in transports:
            transport.resume_reading()
    if proc.returncode:
        raise NativeLoadError(f"native load engine: {err.decode(errors='replace').strip()}")
    if len(out) < _HEAD.size:
        raise NativeLoadError("the native load engine's output is malformed")
    magic, ios, errors, _issued, elapsed_ns, count = _HEAD.unpack_from(out)
    if magic != _MAGIC or len(out) != _HEAD.size + 8 * count:
        raise NativeLoadError("the native load engine's output is malformed")
    lat: array[int] = array("q")
    lat.frombytes(out[_HEAD.size:])
    return ios, errors, lat, elapsed_ns / 1e9
