"""fio's JSON report, read into the figures the benchmarks and plots use.

    python3 perf/fio_json.py fio-results/*.json     # one line per job: IOPS, MB/s, latency

fio writes one report per run (``--output-format=json``), possibly after notes on stdout, with
a ``jobs`` list; each job has ``read``, ``write`` (and ``trim``) sides, or one ``mixed`` side
under ``unified_rw_reporting=mixed``. A side's ``clat_ns.percentile`` maps fio's percentile
keys ("99.000000") to nanoseconds; ``lat_ns.percentile`` is there too with lat_percentiles=1.
"""
from __future__ import annotations

import json
import sys
from typing import Any

SIDES = ("read", "write", "trim", "mixed")


def load_report(text: str) -> dict[str, Any]:
    """The JSON object in fio's output, skipping anything fio printed before it."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object in fio's output")
    report = json.loads(text[start:])
    if not isinstance(report, dict) or not isinstance(report.get("jobs"), list):
        raise ValueError("fio's JSON has no jobs list")
    return report


def side_summary(side: dict[str, Any]) -> dict[str, Any]:
    """One direction of a job: IOPS, MB/s, latency (us) with every percentile fio gave."""
    clat = side.get("clat_ns") or {}
    pct = {k: round(v / 1000.0, 2) for k, v in (clat.get("percentile") or {}).items()}
    out = {"ios": int(side.get("total_ios", 0)), "iops": round(float(side.get("iops", 0)), 1),
           "mb_per_s": round(side.get("bw_bytes", 0) / 1e6, 2),
           "lat_us": {"mean": round(clat.get("mean", 0) / 1000.0, 2),
                      "p50": pct.get("50.000000", 0.0), "p99": pct.get("99.000000", 0.0),
                      "p999": pct.get("99.900000", 0.0),
                      "max": round(clat.get("max", 0) / 1000.0, 2)},
           "lat_pct_us": pct}
    total = (side.get("lat_ns") or {}).get("percentile")
    if total:
        out["total_lat_pct_us"] = {k: round(v / 1000.0, 2) for k, v in total.items()}
    return out


def job_summary(job: dict[str, Any]) -> dict[str, Any]:
    """A job's sides that did I/O, and the job's totals: IOPS and MB/s summed over the sides;
    latency from the side that did most I/O (the one a mixed job reports under unified
    reporting)."""
    sides = {name: side_summary(job[name]) for name in SIDES
             if isinstance(job.get(name), dict) and job[name].get("io_bytes")}
    main = max(sides.values(), key=lambda s: s["ios"]) if sides else side_summary({})
    return {"name": job.get("jobname", ""), "error": int(job.get("error", 0)),
            "ios": sum(s["ios"] for s in sides.values()),
            "iops": round(sum(s["iops"] for s in sides.values()), 1),
            "mb_per_s": round(sum(s["mb_per_s"] for s in sides.values()), 2),
            "lat_us": main["lat_us"], "lat_pct_us": main["lat_pct_us"], "sides": sides,
            "usr_cpu_pct": job.get("usr_cpu"), "sys_cpu_pct": job.get("sys_cpu")}


def parse(text: str) -> list[dict[str, Any]]:
    """Every job of one fio report, summarized."""
    return [job_summary(job) for job in load_report(text)["jobs"]]


def line(s: dict[str, Any]) -> str:
    lat = s["lat_us"]
    return (f"{s['name']:24s} {s['iops']:>10.0f} IOPS {s['mb_per_s']:>9.1f} MB/s  lat mean "
            f"{lat['mean']:.0f} p50 {lat['p50']:.0f} p99 {lat['p99']:.0f} p99.9 "
            f"{lat['p999']:.0f} us" + (f"  ERROR {s['error']}" if s["error"] else ""))


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    status = 0
    for path in paths:
        with open(path) as f:
            for s in parse(f.read()):
                print(line(s))
                status |= 1 if s["error"] else 0
    return status


if __name__ == "__main__":
    raise SystemExit(main())
