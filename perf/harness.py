"""What the benchmarks share: the daemon as a process of its own, the load generator as
another, fio as the yardstick, and the machine's accounting (CPU time, RSS, page cache).

Placement: the daemon is pinned to the first CPU this process may use and every load (our load
generator, scrapers) to the second, so the load never takes the daemon's core; fio, the
yardstick, runs on the daemon's CPU, the core a target would have. On a one-CPU machine
nothing is pinned.
"""
from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from perf import fio_json  # noqa: E402
from perf.percentiles import FIO_PERCENTILE_LIST  # noqa: E402

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


# --- the machine ------------------------------------------------------------------------------

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 20.0,
             step: float = 0.1, error: type[Exception] = RuntimeError) -> T:
    """Poll ``check`` every ``step`` seconds until it returns something truthy, and return
    that (exceptions count as not yet); after ``timeout`` raise ``error`` naming ``what``
    and the last exception."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            got = check()
            if got:
                return got
        except Exception as exc:  # noqa: BLE001 (not up yet, not there yet)
            last = exc
        time.sleep(step)
    raise error(f"timed out after {timeout} s waiting for {what} (last error: {last!r})")


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of ``pid`` (all its threads) in seconds, from /proc. The kernel keeps
    their sum exact but splits it between user and system by sampling at the tick."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    # fields[11], fields[12]: utime and stime (stat fields 14 and 15) in clock ticks.
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), from /proc."""
    return sum(cpu_times(pid))


def cpus() -> tuple[str | None, str | None]:
    """(daemon CPU, load CPU) for taskset, or (None, None) on a one-CPU machine."""
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) < 2:
        return None, None
    return str(mine[0]), str(mine[1])


def pinned(cpu: str | None) -> list[str]:
    return ["taskset", "-c", cpu] if cpu is not None else []


def pin_to(cpus: set[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child to ``cpus`` (None when there is nothing to pin)."""
    if not cpus:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, cpus)
    return pin


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def page_cache_bytes() -> int:
    """The system's page cache (Cached in /proc/meminfo)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Cached:"):
                return int(line.split()[1]) * 1024
    return 0


def file_cached_bytes(path: str) -> int | None:
    """Bytes of ``path`` in the page cache (util-linux ``fincore``), None without it."""
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path],
                             capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = out.stdout.strip()
    return int(text) if out.returncode == 0 and text.isdigit() else None


def drop_caches() -> bool:
    """Write back and drop the page cache (root only); False where that is not allowed."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def child_env(tree: str = ROOT) -> dict[str, str]:
    """The environment of a process that runs the code of source tree ``tree``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [tree, env.get("PYTHONPATH")]))
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(k, None)
    return env


# --- the daemon -------------------------------------------------------------------------------

@dataclass
class Daemon:
    proc: subprocess.Popen[str]  # the daemon, or the wrapper (py-spy) that started it
    pid: int  # the daemon itself
    socket: str
    nvme_port: int
    metrics_url: str | None
    lines: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=200))
    _reader: threading.Thread | None = None

    def client(self) -> Any:
        from sbstore.control.client import Client
        return Client(socket_path=self.socket)

    def stop(self) -> int:
        if self.proc.poll() is None:
            # Signal the daemon, not a wrapper: py-spy writes its profile when its child exits.
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        return self.proc.returncode


def write_config(workdir: str, *, pool_size: str = "16G", io: str = "auto",
                 extra: str = "", metrics_extra: str = "") -> str:
    """A config for one pool file in ``workdir`` (created at first start), the API on a unix
    socket there, metrics on a free loopback port, one 127.0.0.1 listener on a free port;
    ``metrics_extra`` goes into [metrics] (e.g. ``per_volume = "full"``), ``extra`` after it."""
    cfg = os.path.join(workdir, "sbstore.toml")
    metrics_text = 'listen = "127.0.0.1:0"\n' + metrics_extra.replace("[metrics]\n", "")
    with open(cfg, "w") as f:
        f.write(f"""
state_dir = "state"
[log]
level = "warning"
[api]
socket = "{os.path.join(workdir, 'api.sock')}"
[metrics]
{metrics_text}
{extra}
[[pools]]
name = "bench"
path = "bench.pool"
create_size = "{pool_size}"
io = "{io}"
[[listeners]]
address = "127.0.0.1"
port = 0
""")
    return cfg


def start_daemon(cfg: str, cpu: str | None, wrap: list[str] | None = None,
                 tree: str = ROOT) -> Daemon:
    """``python -m sbstore serve --config cfg`` pinned to ``cpu`` (under ``wrap``, e.g. py-spy),
    the code of source tree ``tree``; returns once it listens, with its NVMe port, API socket
    and metrics URL."""
    wrap = wrap or []
    cmd = [*wrap, *pinned(cpu), sys.executable, "-m", "sbstore", "serve", "--config", cfg]
    proc = subprocess.Popen(cmd, cwd=tree, env=child_env(tree), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen: list[str] = []
    port = url = sock = None
    with open(cfg) as f:
        metrics_off = "enabled = false" in f.read()
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if port is not None and sock is not None and (url is not None or metrics_off):
                break
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line.rstrip())
            if m := re.search(r"NVMe/TCP on [^ ]+:(\d+)$", line.strip()):
                port = int(m.group(1))
            if m := re.search(r"Metrics: (\S+)", line):
                url = m.group(1)
            if m := re.search(r"--socket (\S+)", line):
                sock = m.group(1)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    if port is None or sock is None or (url is None and not metrics_off):
        proc.kill()
        proc.wait(10)
        raise RuntimeError("the daemon did not start:\n" + "\n".join(seen[-30:]))
    daemon = Daemon(proc, _serving_pid(proc.pid) if wrap else proc.pid, sock, port, url)
    daemon.lines.extend(seen)

    def drain() -> None:  # the daemon must never block on a full stdout pipe
        assert proc.stdout is not None
        for line in proc.stdout:
            daemon.lines.append(line.rstrip())
    daemon._reader = threading.Thread(target=drain, name="daemon-stdout", daemon=True)
    daemon._reader.start()
    return daemon


def pool_config(workdir: str, size: int, io: str, extra: str = "",
                filename: str = "sbstore.toml") -> str:
    """A config (``workdir``/``filename``) for one pool file in ``workdir`` with room for a
    volume of ``size`` bytes and its snapshots' worth again, data through engine ``io``.
    Configs written under other names in the same directory share the pool and the state."""
    cfg = write_config(workdir, pool_size=str(2 * size + (256 << 20)), io=io, extra=extra)
    if filename == "sbstore.toml":
        return cfg
    named = os.path.join(workdir, filename)
    os.replace(cfg, named)
    return named


def start_pool_daemon(workdir: str, size: int, io: str, cpu: str | None) -> Daemon:
    """The daemon with one pool file in ``workdir`` (a disk file system: O_DIRECT) with room
    for a volume of ``size`` bytes and its snapshots' worth again, data through engine ``io``."""
    return start_daemon(pool_config(workdir, size, io), cpu)


def pool_engine_line(daemon: Daemon) -> str:
    """The daemon's log line naming its pool's data I/O engine and why."""
    return next((ln for ln in daemon.lines if "data I/O through" in ln), "")


def export_filled_volume(daemon: Daemon, nqn: str, size: int, load_cpu: str | None,
                         name: str = "bench") -> dict[str, Any]:
    """Create volume ``name`` of ``size`` bytes in the daemon's pool, export it as ``nqn`` to
    any host, and write all of it once (128 KiB sequential writes, QD16) so every cluster is
    allocated and later jobs measure the data path, not allocation; the fill's MB/s and time."""
    client = daemon.client()
    client.post("/v1/volumes", {"name": name, "size_bytes": size, "block_size": 4096})
    client.post("/v1/subsystems", {"nqn": nqn, "volumes": [name], "allow_any_host": True})
    t0 = time.monotonic()
    fill = run_load(daemon.nvme_port, nqn, load_cpu, rw="write", bs=128 << 10, qd=16,
                    seconds=3600, span_bytes=size, max_ios=size // (128 << 10))
    return {"mb_per_s": fill["mb_per_s"], "seconds": round(time.monotonic() - t0, 1)}


def _serving_pid(root: int) -> int:
    """The ``sbstore serve`` process among ``root``'s descendants (under a wrapper)."""
    todo = [root]
    for _ in range(1000):  # bounded walk of a small process tree
        if not todo:
            break
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                # py-spy's own command line names the daemon's too: match the interpreter.
                if b"-m\0sbstore\0serve" in f.read() and \
                        os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(sys.executable):
                    return pid
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except FileNotFoundError:
            continue
    raise RuntimeError(f"no sbstore serve process under pid {root}")


def start_ram_demo(extra: list[str], cpus: set[int] | None = None,
                   tree: str = ROOT) -> tuple[subprocess.Popen[str], int]:
    """``sbstore serve --demo --ram`` (the code of source tree ``tree``) on a free loopback
    port, pinned to ``cpus``, logging warnings only (nothing drains its stdout after
    start-up); (process, NVMe/TCP port)."""
    proc = subprocess.Popen([sys.executable, "-m", "sbstore", "serve", "--demo", "--ram",
                             "--listen", "127.0.0.1:0", "--log-level", "warning", *extra],
                            cwd=tree, env=child_env(tree), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=pin_to(cpus))
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r" on [^ ]+:(\d+)$", line.strip())
        if m:
            return proc, int(m.group(1))
    proc.kill()
    proc.wait()
    raise RuntimeError("the target did not start")


def stop_process(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- load -------------------------------------------------------------------------------------

def loadgen_cmd(port: int, nqn: str, cpu: str | None, *, rw: str, bs: int, qd: int,
                seconds: float, span_bytes: int = 0, max_ios: int = 10**9, queues: int = 1,
                flush_every: int = 0, seed: int = 1, start_at: float = 0.0,
                engine: str = "fast") -> list[str]:
    """``engine``: perf/loadgen.py's (fast: event-loop driven; poll: busy-polling its socket,
    as spdk_nvme_perf does, so the target never has to wake it)."""
    return [*pinned(cpu), sys.executable, os.path.join(ROOT, "perf", "loadgen.py"),
            "--port", str(port), "--nqn", nqn, "--rw", rw, "--bs", str(bs), "--qd", str(qd),
            "--queues", str(queues), "--seconds", str(seconds), "--span-bytes", str(span_bytes),
            "--max-ios", str(max_ios), "--engine", engine, "--flush-every", str(flush_every),
            "--seed", str(seed), "--start-at", str(start_at)]


def start_load(cmd: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish_load(proc: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        raise RuntimeError("the load generator did not finish") from None
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {err[-3000:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def run_load(port: int, nqn: str, cpu: str | None, **job: Any) -> dict[str, Any]:
    """One load-generator process (perf/loadgen.py, fast engine); its JSON summary."""
    proc = start_load(loadgen_cmd(port, nqn, cpu, **job))
    return finish_load(proc, job["seconds"] + 120)


# --- fio, the yardstick -----------------------------------------------------------------------

def fio_timed_options(path: str, seconds: float) -> list[str]:
    """The options every timed yardstick job gives (after its ``--name``): io_uring and
    O_DIRECT on ``path``, ``seconds`` long, random offsets without fio's map, and the
    percentiles perf/percentiles.py reports."""
    return [f"--filename={path}", "--ioengine=io_uring", "--direct=1", f"--runtime={seconds}",
            "--time_based", "--norandommap", "--randrepeat=0",
            f"--percentile_list={FIO_PERCENTILE_LIST}"]


def run_fio(cpu: str | None, jobs: list[str], timeout: float,
            what: str = "fio") -> list[dict[str, Any]]:
    """fio pinned to ``cpu`` with the job options ``jobs`` (each job from its ``--name``);
    its jobs as perf/fio_json.py reads them. RuntimeError, naming ``what``, if it fails."""
    cmd = [*pinned(cpu), "fio", "--output-format=json", *jobs]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed: {out.stderr[-2000:]}")
    return fio_json.parse(out.stdout)


def fio(path: str, cpu: str | None, *, rw: str, bs: int, qd: int, seconds: float,
        size: int, offset: int = 0, rwmixread: int = 70) -> dict[str, Any]:
    """fio with io_uring and O_DIRECT on ``path`` (the yardstick): IOPS, MB/s, latencies (mean,
    p50, p99, p99.9 and perf/percentiles.py's points, us). ``rw`` "randrw" mixes reads and
    writes (``rwmixread`` percent reads), reported as one figure as the load generator does."""
    job_args = ["--name=yardstick", *fio_timed_options(path, seconds), f"--rw={rw}",
                f"--bs={bs}", f"--iodepth={qd}", f"--size={size}", f"--offset={offset}"]
    if rw == "randrw":
        job_args += [f"--rwmixread={rwmixread}", "--unified_rw_reporting=mixed"]
    job = run_fio(cpu, job_args, seconds + 120)[0]
    return {"rw": rw, "bs": bs, "qd": qd, "ios": job["ios"], "iops": job["iops"],
            "mb_per_s": job["mb_per_s"], "lat_us": job["lat_us"],
            "lat_pct_us": job["lat_pct_us"], "sys_cpu_pct": job["sys_cpu_pct"],
            "usr_cpu_pct": job["usr_cpu_pct"]}


def fill_file(path: str, size: int, cpu: str | None) -> None:
    """Write ``size`` bytes of fio's data into ``path`` (sequential 1 MiB direct writes)."""
    run_fio(cpu, ["--name=fill", f"--filename={path}", "--ioengine=io_uring", "--direct=1",
                  "--rw=write", "--bs=1M", "--iodepth=8", f"--size={size}"], 600, "fio fill")


def write_report(path: str, report: Any, indent: int = 1) -> None:
    """A benchmark's JSON report to ``path`` (its directory made if need be), and say where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=indent)
    print(f"results written to {path}")


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
