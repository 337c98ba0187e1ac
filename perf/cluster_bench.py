"""Cluster mode end to end: replicated against single-copy write IOPS and latency in the same run,
and the replication transport's per-write cost against the NVMe/TCP initiator's.

    python3 perf/cluster_bench.py [--seconds 3] [--repeat 3] [--qd 1,32] [--size-mib 128]
                                  [--load-engine fast|poll] [--dir /var/tmp]
                                  [--json perf/results/cluster.json]

What it does, as a user would (everything on 127.0.0.1, in a fresh directory under ``--dir``):

1. Starts a real etcd (tests/cluster/etcd_server.py) and two daemons in cluster mode
   (``python3 -m sbstore serve --config`` with a ``[cluster]`` section, a file pool each):
   node ``a`` pinned to the first CPU, node ``b`` to the second (taskset).
2. Through node a's API creates ``single`` (``replicas: 1``: a cluster volume with one copy,
   so both volumes go through the same role device and mirror, and the difference is the peer)
   and ``rep`` (``replicas: 2``). Placement is by free space (ties by name), so node a's pool
   is made larger and one copy lands on a; ``rep`` is created with that one copy (a is then its
   primary) and gets its copy on b after (``POST /v1/cluster/volumes/rep/replicas``). Each is
   exported on its own NQN; both are filled once (128 KiB sequential writes) so the runs
   measure allocated clusters.
3. Drives 4 KiB random writes at each queue depth with the load generator (perf/loadgen.py,
   a process of its own pinned to the second CPU, node b's) through NVMe/TCP to node a,
   ``--seconds`` per run, alternating the two volumes (the order flips every repeat) and
   repeating ``--repeat`` times so both see the same machine. Per run: IOPS, mean and p99
   latency (the load generator's round trip), and the CPU time (/proc/PID/stat, utime +
   stime) each daemon spent per write. Reports the median of the runs with their range, and
   the ratio replicated/single-copy of the medians.
4. The transport, measured in the same run, from a process pinned to the first CPU (where a
   primary's mirror runs): 4 KiB writes at each queue depth through
   - ``stream``: a ReplicaClient (the replication stream, docs/cluster.md) to node b's
     replication listener, into node b's copy of ``rep`` (with the epoch of the current
     primary; node b's copy then differs from node a's, which does not matter here: the
     volumes are thrown away), and
   - ``nvme_tcp``: the in-tree NVMe/TCP initiator (target/host, ``Controller.write``) to a
     plain volume on node b (``local-b``, filled once too) exported by node b,
   each: IOPS, mean and p99 latency, the sender's CPU per write and node b's.

The load generator's default engine here is ``fast``, not ``poll``: it shares the second CPU
with node b, and a busy-polling load generator would take that CPU from the replica.

Everything it starts it stops (etcd, both daemons, load generators, the transport process),
also on Ctrl-C, SIGTERM or an error; every wait is bounded.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from perf.harness import (
    Daemon,
    child_env,
    cpu_seconds,
    loadgen_cmd,
    median,
    pinned,
    start_daemon,
    write_config,
    write_report,
)
from perf.harness import wait_for as wait_until  # (wait_for below: with WAIT_S)
from perf.replication_bench import timed_writes
from tests.cluster.etcd_server import ETCD, EtcdServer, free_port

IO_BYTES = 4096
NQN_PREFIX = "nqn.2026-12.io.sbstore.bench:cluster-"
MAX_PLACEMENT_TRIES = 8
WAIT_S = 30.0  # a volume healthy, an export writable
LEASE_TTL = 5
VOLUMES = ("rep", "single")


def run_seconds(pid: int) -> float:
    """The exact CPU time of all of ``pid``'s threads (/proc/PID/task/*/schedstat, ns): the
    tick-sampled utime + stime of /proc/PID/stat moves in 10 ms steps, coarse for short runs."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended in between
    return total / 1e9


# --- bounded waits and the API ----------------------------------------------------------------

def wait_for(what: str, check: Any, timeout: float = WAIT_S, step: float = 0.1) -> Any:
    """perf.harness.wait_for with this benchmark's default bound."""
    return wait_until(what, check, timeout, step)


def api(daemon: Daemon, method: str, target: str, body: Any = None) -> Any:
    from sbstore.control.client import Client
    with Client(daemon.socket, timeout_s=10) as c:
        return c.request(method, target, body, {})


def cluster_volume(daemon: Daemon, name: str) -> dict[str, Any] | None:
    status = api(daemon, "GET", "/v1/cluster")
    return next((v for v in status["volumes"] if v["name"] == name), None)


def healthy(daemon: Daemon, name: str) -> dict[str, Any] | None:
    v = cluster_volume(daemon, name)
    return v if v and v["state"] == "healthy" and v["primary"] else None


def create_on(daemon: Daemon, base: str, size: int, replicas: int, node: str) -> dict[str, Any]:
    """A cluster volume of ``replicas`` copies whose primary is ``node``. It is created with one
    copy (placement puts it on ``node``, whose pool is the larger), so ``node`` is its primary
    from the start; the other copies are added after (each a full copy of a volume nothing has
    written yet). Created with all its copies at once, whichever node campaigned first would
    win, and under load that was the same node every time. Should the one copy land
    elsewhere, it is created again under a new name (``base-2``, ...)."""
    for attempt in range(1, MAX_PLACEMENT_TRIES + 1):
        name = base if attempt == 1 else f"{base}-{attempt}"
        api(daemon, "POST", "/v1/volumes", {"name": name, "size_bytes": size, "replicas": 1})
        v = wait_for(f"volume {name} healthy", lambda n=name: healthy(daemon, n))
        if v["primary"] == node:
            others = [n["name"] for n in api(daemon, "GET", "/v1/cluster")["nodes"]
                      if n["live"] and n["name"] != node]
            for other in others[:replicas - 1]:
                api(daemon, "POST", f"/v1/cluster/volumes/{name}/replicas", {"add": other})

            def complete(n: str = name) -> dict[str, Any] | None:
                w = healthy(daemon, n)
                return w if w and len(w["replicas"]) == replicas and w["primary"] == node \
                    else None
            v = wait_for(f"volume {name} healthy with {replicas} copies", complete)
            v["placement_attempts"] = attempt
            return v  # type: ignore[no-any-return]
        print(f"  {name}: primary {v['primary']}, replicas {v['replicas']}: again", flush=True)
        api(daemon, "DELETE", f"/v1/volumes/{name}")
        wait_for(f"volume {name} deleted", lambda n=name: cluster_volume(daemon, n) is None)
    raise RuntimeError(f"no {base} with its primary on {node} in {MAX_PLACEMENT_TRIES} tries")


def export(daemon: Daemon, nqn: str, volume: str) -> None:
    api(daemon, "POST", "/v1/subsystems", {"nqn": nqn, "volumes": [volume],
                                           "allow_any_host": True})


async def _probe_write(port: int, nqn: str) -> bool:
    from target.host import Controller
    ctrl = await Controller.connect("127.0.0.1", port, nqn, timeout_s=3.0, kato_ms=0)
    try:
        await asyncio.wait_for(ctrl.write(1, 0, bytes(IO_BYTES)), 3.0)
        return True
    finally:
        await ctrl.close(shutdown=False)


def wait_writable(port: int, nqn: str) -> None:
    """Until one write through the export succeeds (its ANA state is optimized there)."""
    import uvloop
    wait_for(f"{nqn} writable on port {port}", lambda: uvloop.run(_probe_write(port, nqn)),
             step=0.3)


# --- processes this script starts -------------------------------------------------------------

class Children:
    """Every short-lived child (load generators, the transport process): killed on the way out."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def run(self, cmd: list[str], timeout_s: float) -> dict[str, Any]:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{cmd[-1]!r}... did not finish within {timeout_s} s") from None
        finally:
            self.kill(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:6])}... failed: {err[-3000:]}")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def kill(self, proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None:
            proc.kill()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if proc in self.procs:
            self.procs.remove(proc)

    def kill_all(self) -> None:
        for proc in list(self.procs):
            self.kill(proc)


def load(children: Children, daemons: dict[str, Daemon], nqn: str, cpu: str | None,
         **job: Any) -> dict[str, Any]:
    """One load-generator run against node a; with each daemon's CPU time per I/O."""
    before = {n: (cpu_seconds(d.pid), run_seconds(d.pid)) for n, d in daemons.items()}
    r = children.run(loadgen_cmd(daemons["a"].nvme_port, nqn, cpu, **job), job["seconds"] + 60)
    ios = max(r["ios"], 1)
    for n, d in daemons.items():
        r[f"cpu_us_per_io_{n}"] = round((cpu_seconds(d.pid) - before[n][0]) / ios * 1e6, 2)
        r[f"run_us_per_io_{n}"] = round((run_seconds(d.pid) - before[n][1]) / ios * 1e6, 2)
    return r


def idle_cpu(daemons: dict[str, Daemon], seconds: float = 1.0) -> dict[str, float]:
    """Each daemon's CPU with no I/O (the reconcile loop, the lease), in ms per second: the
    part of a run's CPU per write that is not the writes'."""
    before = {n: run_seconds(d.pid) for n, d in daemons.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    return {n: round((run_seconds(d.pid) - before[n]) / elapsed * 1e3, 2)
            for n, d in daemons.items()}


# --- the transport process (on the primary's CPU) ---------------------------------------------

async def _timed_writes(write: Any, qd: int, seconds: float, slots: int,
                        b_pid: int) -> dict[str, Any]:
    """perf/replication_bench.py's timed writes, and node b's CPU per write meanwhile."""
    b0 = run_seconds(b_pid)
    r = await timed_writes(write, qd, seconds, slots)
    n = max(r["ios"], 1)
    return {"qd": qd, "ios": r["ios"], "seconds": r["seconds"], "iops": r["iops"],
            "mean_us": r["mean_us"], "p50_us": r["p50_us"], "p99_us": r["p99_us"],
            "sender_cpu_us_per_io": r["cpu_us_per_io"],
            "cpu_us_per_io_b": round((run_seconds(b_pid) - b0) / n * 1e6, 2)}


async def transport(spec: dict[str, Any]) -> dict[str, Any]:
    """``stream`` then ``nvme_tcp``, each at every queue depth (a short warm-up first)."""
    from sbstore.cluster.replica_client import ReplicaClient
    from target.host import Controller
    qds, seconds, slots, b_pid = spec["qds"], spec["seconds"], spec["slots"], spec["b_pid"]
    out: dict[str, Any] = {"stream": {}, "nvme_tcp": {}}
    client = ReplicaClient(("127.0.0.1", spec["peer_port"]), uuid.UUID(spec["uuid"]), IO_BYTES)
    await client.connect()
    epoch = spec["epoch"]
    try:
        async def stream_write(lba: int, data: bytes) -> None:
            await client.write(epoch, lba, data)
        await _timed_writes(stream_write, 4, 0.3, slots, b_pid)
        for qd in qds:
            out["stream"][f"qd{qd}"] = await _timed_writes(stream_write, qd, seconds, slots,
                                                           b_pid)
    finally:
        client.close()
    ctrl = await Controller.connect("127.0.0.1", spec["nvme_port"], spec["nqn"],
                                    queue_size=max(qds) + 1, timeout_s=5.0)
    try:
        async def nvme_write(lba: int, data: bytes) -> None:
            await ctrl.write(1, lba, data)
        await _timed_writes(nvme_write, 4, 0.3, slots, b_pid)
        for qd in qds:
            out["nvme_tcp"][f"qd{qd}"] = await _timed_writes(nvme_write, qd, seconds, slots,
                                                             b_pid)
    finally:
        await ctrl.close()
    return out


def transport_child(spec_json: str) -> int:
    import uvloop
    print(json.dumps(uvloop.run(transport(json.loads(spec_json)))))
    return 0


# --- the report -------------------------------------------------------------------------------

def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and ranges of one (volume, queue depth) over the repeats."""
    def col(get: Any) -> dict[str, Any]:
        values = [get(r) for r in runs]
        return {"median": round(median(values), 2), "range": [min(values), max(values)]}
    return {"runs": len(runs), "iops": col(lambda r: r["iops"]),
            "mean_us": col(lambda r: round(r["lat_us"]["mean"], 1)),
            "p99_us": col(lambda r: r["lat_us"]["p99"]),
            "cpu_us_per_io_a": col(lambda r: r["cpu_us_per_io_a"]),
            "cpu_us_per_io_b": col(lambda r: r["cpu_us_per_io_b"]),
            "run_us_per_io_a": col(lambda r: r["run_us_per_io_a"]),
            "run_us_per_io_b": col(lambda r: r["run_us_per_io_b"])}


def ratio(rep: dict[str, Any], single: dict[str, Any]) -> dict[str, float]:
    def r(key: str) -> float:
        return round(float(rep[key]["median"]) / max(float(single[key]["median"]), 1e-9), 3)
    return {"iops": r("iops"), "mean_us": r("mean_us"), "p99_us": r("p99_us"),
            "cpu_us_per_io_a": r("cpu_us_per_io_a"), "run_us_per_io_a": r("run_us_per_io_a")}


def print_report(report: dict[str, Any]) -> None:
    def rng(c: dict[str, Any], fmt: str = ".0f") -> str:
        lo, hi = c["range"]
        return f"{c['median']:{fmt}} [{lo:{fmt}}-{hi:{fmt}}]"
    idle = report.get("idle_cpu_ms_per_s", {})
    print(f"\n4 KiB random writes through NVMe/TCP to node a, {report['seconds']:g} s per run, "
          f"median of {report['repeat']} [range]. CPU per write of each daemon: /proc/PID/stat "
          f"utime+stime (10 ms ticks) and, in (), the exact run time (schedstat); idle, the "
          f"daemons spend a {idle.get('a', '?')} and b {idle.get('b', '?')} ms/s")
    print(f"{'job':<19}{'volume':<8}{'IOPS':>20}{'mean us':>20}{'p99 us':>22}"
          f"{'a CPU us/w':>18}{'b CPU us/w':>18}")
    for job, row in report["host"].items():
        for vol in VOLUMES:
            s = row[vol]
            a_cpu = f"{s['cpu_us_per_io_a']['median']:.0f} ({s['run_us_per_io_a']['median']:.0f})"
            b_cpu = f"{s['cpu_us_per_io_b']['median']:.0f} ({s['run_us_per_io_b']['median']:.0f})"
            print(f"{job:<19}{vol:<8}{rng(s['iops']):>20}{rng(s['mean_us']):>20}"
                  f"{rng(s['p99_us']):>22}{a_cpu:>18}{b_cpu:>18}")
        q = row["rep/single"]
        print(f"{'':<19}rep/single: IOPS x{q['iops']}, mean latency x{q['mean_us']}, "
              f"p99 x{q['p99_us']}, node a CPU per write x{q['run_us_per_io_a']}")
    print("\nTransport, 4 KiB writes from a process on node a's CPU to node b, one run each "
          "(sender CPU: its process time; node b: exact run time):")
    print(f"{'transport':<10}{'job':<6}{'IOPS':>9}{'mean us':>10}{'p99 us':>10}"
          f"{'sender CPU us/w':>17}{'b CPU us/w':>12}")
    for kind in ("stream", "nvme_tcp"):
        for job, r in report["transport"][kind].items():
            print(f"{kind:<10}{job:<6}{r['iops']:>9}{r['mean_us']:>10}{r['p99_us']:>10}"
                  f"{r['sender_cpu_us_per_io']:>17}{r['cpu_us_per_io_b']:>12}")
    for job, q in report["transport"]["stream_vs_nvme_tcp"].items():
        print(f"  stream/nvme_tcp {job}: mean latency x{q['mean_us']}, sender CPU per write "
              f"x{q['sender_cpu_us_per_io']}, node b CPU per write x{q['cpu_us_per_io_b']}")


# --- the run ----------------------------------------------------------------------------------

def node_config(work: Path, name: str, etcd_url: str, peer_port: int, pool_size: str) -> str:
    d = work / name
    d.mkdir()
    extra = (f'[cluster]\netcd = ["{etcd_url}"]\nnode = "{name}"\n'
             f'peer_address = "127.0.0.1:{peer_port}"\nlease_ttl = {LEASE_TTL}\n'
             f'prefix = "/bench"\n')
    return write_config(str(d), pool_size=pool_size, extra=extra)


def run(args: argparse.Namespace, work: Path, children: Children,
        daemons: dict[str, Daemon], report: dict[str, Any], etcd: EtcdServer) -> None:
    size = args.size_mib << 20
    qds = [int(q) for q in args.qd.split(",")]
    mine = sorted(os.sched_getaffinity(0))
    cpu_a, cpu_b = (str(mine[0]), str(mine[1])) if len(mine) > 1 else (None, None)
    report["pinning"] = {"etcd": None, "node_a_and_transport": cpu_a, "node_b_and_load": cpu_b}
    print(f"etcd {etcd.url}", flush=True)
    # Node a's pool is the larger: placement ranks by free space, so one copy lands there.
    pool_mib = 4 * args.size_mib + 512
    for name, cpu, pool in (("a", cpu_a, pool_mib + 256), ("b", cpu_b, pool_mib)):
        cfg = node_config(work, name, etcd.url, free_port(), f"{pool}M")
        daemons[name] = start_daemon(cfg, cpu)
        print(f"node {name}: pid {daemons[name].pid}, NVMe/TCP port "
              f"{daemons[name].nvme_port}, CPU {cpu}", flush=True)
    a, b = daemons["a"], daemons["b"]
    wait_for("both nodes live", lambda: sum(n["live"] for n in api(a, "GET", "/v1/cluster")
                                            ["nodes"]) == 2)

    vols = {"single": create_on(a, "single", size, 1, "a"),
            "rep": create_on(a, "rep", size, 2, "a")}
    nqns = {v: NQN_PREFIX + v for v in VOLUMES}
    for v in VOLUMES:
        export(a, nqns[v], vols[v]["name"])
    api(b, "POST", "/v1/volumes", {"name": "local-b", "size_bytes": size})
    export(b, NQN_PREFIX + "b", "local-b")
    report["volumes"] = {v: {k: vols[v][k] for k in ("name", "uuid", "replicas", "primary",
                                                       "epoch", "placement_attempts")}
                         for v in VOLUMES}
    for v in VOLUMES:
        print(f"volume {vols[v]['name']}: replicas {vols[v]['replicas']}, primary "
              f"{vols[v]['primary']}, epoch {vols[v]['epoch']}, exported as {nqns[v]}",
              flush=True)

    fills = {}
    for port, nqn in [(a.nvme_port, nqns["single"]), (a.nvme_port, nqns["rep"]),
                      (b.nvme_port, NQN_PREFIX + "b")]:
        wait_writable(port, nqn)
        t0 = time.monotonic()
        r = children.run(loadgen_cmd(port, nqn, cpu_b, rw="write", bs=128 << 10, qd=16,
                                     seconds=600, span_bytes=size,
                                     max_ios=size // (128 << 10)), 660)
        fills[nqn] = {"mb_per_s": r["mb_per_s"], "seconds": round(time.monotonic() - t0, 1)}
        print(f"filled {nqn}: {r['mb_per_s']:.0f} MB/s", flush=True)
    report["fill"] = fills
    report["idle_cpu_ms_per_s"] = idle_cpu(daemons)

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        f"4k-randwrite-qd{qd}": {v: [] for v in VOLUMES} for qd in qds}
    for rnd in range(args.repeat):
        order = VOLUMES if rnd % 2 == 0 else VOLUMES[::-1]
        for qd in qds:
            job = f"4k-randwrite-qd{qd}"
            for v in order:
                r = load(children, daemons, nqns[v], cpu_b, rw="randwrite", bs=IO_BYTES, qd=qd,
                         seconds=args.seconds, span_bytes=size, engine=args.load_engine,
                         seed=rnd + 1)
                r["round"] = rnd
                runs[job][v].append(r)
                print(f"round {rnd} {job} {v:<7} {r['iops']:8.0f} IOPS mean "
                      f"{r['lat_us']['mean']:7.1f} us p99 {r['lat_us']['p99']:7.1f} us | CPU/w "
                      f"a {r['cpu_us_per_io_a']:.1f} us b {r['cpu_us_per_io_b']:.1f} us",
                      flush=True)
    report["runs"] = runs
    report["host"] = {}
    for job, by_vol in runs.items():
        row = {v: summarize(by_vol[v]) for v in VOLUMES}
        row["rep/single"] = ratio(row["rep"], row["single"])
        report["host"][job] = row

    # The replica's epoch as node b knows it (the current primary's).
    rep = wait_for("rep healthy", lambda: healthy(b, vols["rep"]["name"]))
    peer_port = int(next(n["peer_address"] for n in api(b, "GET", "/v1/cluster")["nodes"]
                         if n["name"] == "b").rsplit(":", 1)[1])
    spec = {"qds": qds, "seconds": args.seconds, "slots": size // IO_BYTES, "b_pid": b.pid,
            "peer_port": peer_port, "uuid": rep["uuid"], "epoch": rep["epoch"],
            "nvme_port": b.nvme_port, "nqn": NQN_PREFIX + "b"}
    cmd = [*pinned(cpu_a), sys.executable, os.path.abspath(__file__), "--transport-child",
           json.dumps(spec)]
    report["transport"] = children.run(cmd, 2 * len(qds) * args.seconds + 60)
    report["transport"]["stream_vs_nvme_tcp"] = {
        job: {"mean_us": round(s["mean_us"] / max(report["transport"]["nvme_tcp"][job]["mean_us"],
                                                  1e-9), 3),
              "sender_cpu_us_per_io": round(s["sender_cpu_us_per_io"] / max(
                  report["transport"]["nvme_tcp"][job]["sender_cpu_us_per_io"], 1e-9), 3),
              "cpu_us_per_io_b": round(s["cpu_us_per_io_b"] / max(
                  report["transport"]["nvme_tcp"][job]["cpu_us_per_io_b"], 1e-9), 3)}
        for job, s in report["transport"]["stream"].items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="length of each run")
    p.add_argument("--repeat", type=int, default=3, help="runs per volume and queue depth")
    p.add_argument("--qd", default="1,32")
    p.add_argument("--size-mib", type=int, default=128, help="each volume's size")
    p.add_argument("--load-engine", choices=["fast", "poll"], default="fast",
                   help="perf/loadgen.py --engine (poll busy-polls node b's CPU)")
    p.add_argument("--dir", default="/var/tmp", help="where the pools go (a disk, not tmpfs)")
    p.add_argument("--json", default=os.path.join(ROOT, "perf", "results", "cluster.json"))
    p.add_argument("--transport-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.transport_child:
        return transport_child(args.transport_child)
    if not os.access(ETCD, os.X_OK):
        print(f"no etcd at {ETCD} (Debian: apt-get install etcd-server)", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)

    work = Path(tempfile.mkdtemp(prefix="sbs-cluster-", dir=args.dir))
    report: dict[str, Any] = {
        "machine": platform.node(), "cpus": os.cpu_count(), "kernel": platform.release(),
        "python": platform.python_version(), "time": time.time(),
        "seconds": args.seconds, "repeat": args.repeat, "io_bytes": IO_BYTES,
        "size_bytes": args.size_mib << 20, "load_engine": args.load_engine,
        "lease_ttl": LEASE_TTL, "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    children = Children()
    daemons: dict[str, Daemon] = {}
    etcd = EtcdServer(work / "etcd")
    failed = True
    try:
        etcd.start()
        run(args, work, children, daemons, report, etcd)
        assert etcd.proc is not None
        report["etcd_cpu_s_total"] = round(cpu_seconds(etcd.proc.pid), 2)
        failed = False
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        children.kill_all()
        report["daemon_exit"] = {n: d.stop() for n, d in daemons.items()}
        etcd.stop()
        if failed:
            for n, d in daemons.items():
                print(f"===== node {n} (last lines)\n" + "\n".join(list(d.lines)[-30:]),
                      file=sys.stderr)
            print("===== etcd\n" + etcd.log_tail()[-1500:], file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print_report(report)
    busy = max(report["loadavg_before"] + report["loadavg_after"]) > (os.cpu_count() or 2) / 2
    print(f"\n1-minute load average before/after: {report['loadavg_before'][0]} / "
          f"{report['loadavg_after'][0]}" + (" (the machine was busy: figures are rough)"
                                             if busy else ""))
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:  # everything started was stopped on the way out
        print(f"interrupted ({exc or 'Ctrl-C'}): no results written", file=sys.stderr)
        sys.exit(130)
