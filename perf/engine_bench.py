"""I/O engine benchmark: every engine against fio (io_uring, O_DIRECT) on the same file, same run.

    python3 perf/engine_bench.py [--dir /var/tmp] [--size-mib 1024] [--seconds 3] [--rounds 1]
        [--liburing-python /path/to/venv/bin/python] [--json perf/results/engine.json] [--keep]

Workloads (fio's names): 4 KiB randread at queue depth 1 (latency), 4 KiB randread and
randwrite at queue depth 32, 128 KiB sequential read and write at queue depth 16, on a file on a disk file system (``--dir``, not tmpfs),
filled with data first (ext4 answers reads of unwritten extents without touching the disk), with
the page cache dropped before every measurement.

Ours are driven the way the store will drive them: ``qd`` coroutines on uvloop, each awaiting
one I/O at a time into its own engine buffer (fio's iodepth), each measurement in a fresh
interpreter. Reported per engine and workload:
IOPS and MB/s as a ratio to fio's in the same round, CPU microseconds per I/O of our process
(user and system, all threads) next to fio's, and the same asyncio harness with no I/O at all
(``null``: each read completes on the next loop iteration), so that

    engine's own CPU per I/O  ~  our user CPU per I/O - null's user CPU per I/O

(the kernel's part is the system time, which fio pays too).

``--liburing-python``: a Python with the PyPI package ``liburing`` installed, not a dependency
of the project: ``python3 -m venv --system-site-packages /var/tmp/liburing-venv`` (so uvloop is
there) and ``/var/tmp/liburing-venv/bin/pip install liburing==2024.5.3`` (the 2026 wheels are
built for AVX-512 and die with SIGILL on CPUs without it). Then the
4 KiB randread runs also with the same engine design (one submit per loop iteration, eventfd on
the loop, a future per I/O) but the ring driven through that binding, for the comparison with
our pure-Python ring. ``--uring-flags`` adds io_uring variants with setup flags
(e.g. ``coop`` = SINGLE_ISSUER|COOP_TASKRUN; the plain ``io_uring`` engine now sets
COOP_TASKRUN itself, see sbstore/store/engines/uring.py).

The machine may be shared: figures are noisy, ratios within one round are what to read.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import uvloop

from sbstore.store.engines import open_engine
from sbstore.store.engines.buffers import BufferPool
from sbstore.store.engines.common import OpenFile
from sbstore.store.engines.ring import SETUP_COOP_TASKRUN, SETUP_SINGLE_ISSUER
from sbstore.store.engines.uring import UringEngine

MiB = 1 << 20
WORKLOADS = {  # name: (fio rw, block size, queue depth)
    "randread-4k-qd1": ("randread", 4096, 1),
    "randread-4k-qd32": ("randread", 4096, 32),
    "randwrite-4k-qd32": ("randwrite", 4096, 32),
    "read-128k-qd16": ("read", 128 << 10, 16),
    "write-128k-qd16": ("write", 128 << 10, 16),
}
URING_FLAGS = {"coop": SETUP_SINGLE_ISSUER | SETUP_COOP_TASKRUN}


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        return True
    except OSError:
        return False


def prepare(path: str, size: int) -> None:
    """A file of ``size`` bytes of real data (allocated, written extents)."""
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        f.writelines(block for _ in range(size // MiB))
        f.flush()
        os.fsync(f.fileno())


# --- fio ----------------------------------------------------------------------------------------

def run_fio(path: str, size: int, rw: str, bs: int, qd: int, seconds: float) -> dict[str, Any]:
    cmd = ["fio", "--name=bench", f"--filename={path}", f"--size={size}",
           "--ioengine=io_uring", "--direct=1", f"--rw={rw}", f"--bs={bs}",
           f"--iodepth={qd}", f"--runtime={seconds}", "--time_based", "--randrepeat=0",
           "--norandommap", "--output-format=json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
    job = json.loads(out.stdout)["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    ios = side["total_ios"]
    runtime_s = job["job_runtime"] / 1000
    usr = job["usr_cpu"] / 100 * runtime_s
    sys_ = job["sys_cpu"] / 100 * runtime_s
    return {"iops": side["iops"], "mb_s": side["bw_bytes"] / 1e6, "ios": ios,
            "lat_us": side["lat_ns"]["mean"] / 1000, "cpu_us_per_io": (usr + sys_) / ios * 1e6, "user_us_per_io": usr / ios * 1e6,
            "sys_us_per_io": sys_ / ios * 1e6}


# --- our harness --------------------------------------------------------------------------------

class NullEngine:
    """No I/O: each read completes on the next loop iteration (the harness's own cost)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._pool = BufferPool()

    def buffer(self, nbytes: int) -> memoryview:
        return self._pool.get(nbytes)

    def read_into(self, offset: int, buf: memoryview) -> Awaitable[None]:
        fut = self._loop.create_future()
        self._loop.call_soon(fut.set_result, None)
        return fut

    write = read_into  # type: ignore[assignment]

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


class LiburingEngine:
    """The same engine design as ours, with the ring driven by the PyPI ``liburing`` binding
    (2024.5.3, Cython; the 2026 Zig-built wheels need AVX-512). Reads only; bench use only."""

    def __init__(self, path: str, entries: int = 256) -> None:
        import liburing
        self.L = liburing
        self.ring = liburing.io_uring()
        liburing.io_uring_queue_init(entries, self.ring)
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        liburing.io_uring_register_eventfd(self.ring, self.efd)
        self.cqe = liburing.io_uring_cqe()
        self.inflight: dict[int, tuple[asyncio.Future[None], int]] = {}
        self.ud = 0
        self.scheduled = False
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.efd, self._on_ready)
        self.pool = BufferPool()
        self.submits = 0

    def buffer(self, nbytes: int) -> memoryview:
        return self.pool.get(nbytes)

    def read_into(self, offset: int, buf: memoryview) -> Awaitable[None]:
        L = self.L
        if not self.scheduled:
            self.loop.call_soon(self._submit)
            self.scheduled = True
        fut = self.loop.create_future()
        ud = self.ud = self.ud + 1
        n = buf.nbytes
        self.inflight[ud] = (fut, n)
        sqe = L.io_uring_get_sqe(self.ring)
        L.io_uring_prep_read(sqe, self.fd, buf, n, offset)
        L.io_uring_sqe_set_data64(sqe, ud)
        return fut

    def _submit(self) -> None:
        self.scheduled = False
        self.L.io_uring_submit(self.ring)
        self.submits += 1

    def _on_ready(self) -> None:
        L, ring, cqe = self.L, self.ring, self.cqe
        try:
            os.read(self.efd, 8)
        except BlockingIOError:
            pass
        pop = self.inflight.pop
        while L.io_uring_peek_cqe(ring, cqe) == 0:
            ud, res = cqe.user_data, cqe.res
            L.io_uring_cqe_seen(ring, cqe)
            fut, n = pop(ud)
            if res == n:
                fut.set_result(None)
            else:
                fut.set_exception(OSError(-res if res < 0 else 5, "liburing read failed"))

    def stats(self) -> dict[str, int]:
        return {"submit_calls": self.submits}

    def close(self) -> None:
        self.loop.remove_reader(self.efd)
        self.L.io_uring_queue_exit(self.ring)
        os.close(self.efd)
        os.close(self.fd)


async def drive(engine: Any, rw: str, bs: int, qd: int, seconds: float,
                size: int) -> dict[str, Any]:
    nblocks = size // bs
    writing = "write" in rw
    rand = rw.startswith("rand")
    next_seq = [0]
    stop = time.monotonic() + seconds

    async def worker(i: int) -> int:
        buf = engine.buffer(bs)
        buf[:] = os.urandom(bs) if writing else bytes(bs)
        io = engine.write if writing else engine.read_into
        pick = random.Random(i).randrange
        n = 0
        while True:
            if not n & 15 and time.monotonic() >= stop:
                return n
            if rand:
                off = pick(nblocks) * bs
            else:
                off = next_seq[0]
                next_seq[0] = off + bs if off + bs < nblocks * bs else 0
            await io(off, buf)
            n += 1

    t0, c0, p0 = time.monotonic(), os.times(), time.process_time()
    counts = await asyncio.gather(*[worker(i) for i in range(qd)])
    wall, c1, cpu = time.monotonic() - t0, os.times(), time.process_time() - p0
    ios = sum(counts)
    # process_time is exact (all threads); the user/system split comes from tick sampling
    # (like fio's usr/sys), so it is only roughly right on short runs.
    user, sys_ = c1.user - c0.user, c1.system - c0.system
    split = user / (user + sys_) if user + sys_ else 0.0
    stats = engine.stats()
    return {"iops": ios / wall, "mb_s": ios * bs / wall / 1e6, "ios": ios,
            "lat_us": qd * wall / ios * 1e6, "cpu_us_per_io": cpu / ios * 1e6, "user_us_per_io": cpu * split / ios * 1e6,
            "sys_us_per_io": cpu * (1 - split) / ios * 1e6,
            "ios_per_submit": round(ios / stats["submit_calls"], 1)
            if stats.get("submit_calls") else None}


def make_engine(name: str, path: str) -> Any:
    if name == "null":
        return NullEngine()
    if name == "liburing":
        return LiburingEngine(path)
    if name.startswith("threads:"):  # threads:N, the threads engine with N workers
        return open_engine(path, "threads", threads=int(name.split(":", 1)[1]))
    if name.startswith("io_uring+"):
        flags = URING_FLAGS[name.split("+", 1)[1]]
        return UringEngine(OpenFile.open(path, direct=True), name, setup_flags=flags)
    return open_engine(path, name)


def run_ours(name: str, path: str, size: int, rw: str, bs: int, qd: int,
             seconds: float) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        engine = make_engine(name, path)
        try:
            return await drive(engine, rw, bs, qd, seconds, size)
        finally:
            engine.close()
    return uvloop.run(main())


def run_child(python: str, name: str, path: str, size: int, workload: str,
              seconds: float) -> dict[str, Any]:
    """One measurement in another interpreter (the venv that has the liburing binding)."""
    cmd = [python, os.path.abspath(__file__), "--child", name, "--file", path,
           "--size-mib", str(size // MiB), "--seconds", str(seconds), "--workloads", workload]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                         check=False)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]}
    result: dict[str, Any] = json.loads(out.stdout)
    return result


# --- the run ------------------------------------------------------------------------------------

def one_round(args: argparse.Namespace, path: str, size: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for wl in args.workloads.split(","):
        rw, bs, qd = WORKLOADS[wl]
        row: dict[str, Any] = {}
        drop_caches()
        row["fio"] = run_fio(path, size, rw, bs, qd, args.seconds)
        names = list(args.engines.split(","))
        names += [f"io_uring+{f}" for f in args.uring_flags.split(",") if f]
        if wl.startswith("randread-4k"):
            names.append("null")
        for name in names:
            drop_caches()
            # Each measurement in a fresh interpreter, as the binding's must be: same heap,
            # same garbage collector state, no threads left over from the engine before.
            row[name] = run_child(sys.executable, name, path, size, wl, args.seconds)
        if wl == "randread-4k-qd32" and args.liburing_python:
            drop_caches()
            row["liburing"] = run_child(args.liburing_python, "liburing", path, size, wl,
                                        args.seconds)
        out[wl] = row
        print_row(wl, row)
    return out


def print_row(wl: str, row: dict[str, Any]) -> None:
    fio = row["fio"]
    print(f"\n{wl}: fio {fio['iops']:.0f} IOPS {fio['mb_s']:.0f} MB/s, "
          f"lat {fio['lat_us']:.0f} us, {fio['cpu_us_per_io']:.2f} us CPU/IO "
          f"(user {fio['user_us_per_io']:.2f})")
    for name, r in row.items():
        if name == "fio":
            continue
        if "error" in r:
            print(f"  {name:16s} failed: {r['error']}")
            continue
        ratio = "" if name == "null" else f"x{r['iops'] / fio['iops']:.2f} of fio"
        print(f"  {name:16s} {r['iops']:9.0f} IOPS {ratio:13s} lat {r['lat_us']:5.0f} us"
              f" CPU/IO {r['cpu_us_per_io']:6.2f}"
              f" us (user {r['user_us_per_io']:5.2f}, sys {r['sys_us_per_io']:5.2f})"
              f"  IOs/submit {r['ios_per_submit']}")


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Median over rounds of each figure, and the ratios to fio of the same round."""
    summary: dict[str, Any] = {}
    for wl in rounds[0]:
        summary[wl] = {}
        for name in rounds[0][wl]:
            rs = [r[wl][name] for r in rounds if "error" not in r[wl].get(name, {"error": 1})]
            if not rs:
                summary[wl][name] = rounds[0][wl][name]
                continue
            med = {k: statistics.median(x[k] for x in rs) for k in
                   ("iops", "mb_s", "lat_us", "cpu_us_per_io", "user_us_per_io",
                    "sys_us_per_io")}
            if name != "fio":
                med["iops_vs_fio"] = statistics.median(
                    r[wl][name]["iops"] / r[wl]["fio"]["iops"] for r in rounds
                    if "error" not in r[wl][name])
                med["cpu_per_io_vs_fio"] = statistics.median(
                    r[wl][name]["cpu_us_per_io"] / r[wl]["fio"]["cpu_us_per_io"] for r in rounds
                    if "error" not in r[wl][name])
            summary[wl][name] = {k: round(v, 3) for k, v in med.items()}
        rr = summary[wl]
        if "null" in rr:
            # What an engine adds: its CPU per I/O less the harness's (null) and less the
            # kernel's own work for the I/O (fio's system time), and its user time alone.
            for name in rr:
                if name not in ("fio", "null") and "user_us_per_io" in rr[name]:
                    rr[name]["engine_user_us_per_io"] = round(
                        rr[name]["user_us_per_io"] - rr["null"]["user_us_per_io"], 3)
                    rr[name]["engine_cpu_over_kernel_us_per_io"] = round(
                        rr[name]["cpu_us_per_io"] - rr["null"]["cpu_us_per_io"]
                        - rr["fio"]["sys_us_per_io"], 3)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default="/var/tmp")
    p.add_argument("--file", help="use this file (default: DIR/sbstore-engine-bench.img)")
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--engines", default="io_uring,threads,buffered")
    p.add_argument("--uring-flags", default="", help="comma list of: " + ",".join(URING_FLAGS))
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--liburing-python", help="python of a venv with the liburing package")
    p.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results", "engine.json"))
    p.add_argument("--keep", action="store_true", help="keep the data file for the next run")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    size = args.size_mib * MiB
    path = args.file or os.path.join(args.dir, "sbstore-engine-bench.img")
    if args.child:
        rw, bs, qd = WORKLOADS[args.workloads]
        print(json.dumps(run_ours(args.child, path, size, rw, bs, qd, args.seconds)))
        return 0
    created = not os.path.exists(path)
    prepare(path, size)
    dropped = drop_caches()
    print(f"file {path} ({args.size_mib} MiB), {args.seconds}s per run, "
          f"page cache {'dropped' if dropped else 'NOT dropped (not root?)'} before each")
    try:
        rounds = [one_round(args, path, size) for _ in range(args.rounds)]
    finally:
        if created and not args.keep:
            os.unlink(path)
    report = {"machine": platform.node(), "cpus": os.cpu_count(),
              "kernel": platform.release(), "python": platform.python_version(),
              "file": path, "size_mib": args.size_mib, "seconds": args.seconds,
              "rounds": rounds, "summary": summarize(rounds)}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
