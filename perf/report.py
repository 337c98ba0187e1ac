"""A matrix result (perf/matrix.py's JSON) as a short Markdown report, and what changed
between two results.

A change counts only beyond ``NOISE``: on the 2-vCPU machines here, with other work running,
the same run twice differs by 10-20% (more at QD1, where every I/O is a wake-up); the
comparison shows every figure and marks only those outside that band.
"""
from __future__ import annotations

import datetime
from typing import Any

NOISE = 0.15  # relative change below which two figures count as the same


def _when(report: dict[str, Any]) -> str:
    return datetime.datetime.fromtimestamp(report["time"], datetime.UTC).strftime(
        "%Y-%m-%d %H:%M UTC")


def _cells(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["target"], r["job"]): r for r in report["results"]}


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base > 0 else "-"


def results_table(report: dict[str, Any]) -> list[str]:
    cells = _cells(report)
    has_raw = "raw" in report["targets"]
    head = ("| job | target | IOPS [range] | MB/s | p50 us | p99 us | p99.9 us | "
            "target CPU us/IO |")
    sep = "|---|---|---:|---:|---:|---:|---:|---:|"
    if has_raw:
        head += " IOPS vs raw |"
        sep += "---:|"
    lines = [head, sep]
    for job in report["jobs"]:
        raw = cells.get(("raw", job["name"]))
        for t in report["targets"]:
            r = cells.get((t, job["name"]))
            if r is None:
                continue
            lat = r["lat_us"]
            cpu = r.get("target_cpu_us_per_io")
            iops = f"{r['iops']:.0f}"
            if r.get("repeat", 1) > 1:  # the spread of the runs: how far to trust the median
                lo, hi = r["iops_range"]
                iops += f" [{lo:.0f}-{hi:.0f}]"
            row = (f"| {job['name']} | {t} | {iops} | {r['mb_per_s']:.1f} | "
                   f"{lat['p50']:.0f} | {lat['p99']:.0f} | {lat.get('p999', 0):.0f} | "
                   f"{'-' if cpu is None else f'{cpu:.1f}'} |")
            if has_raw:
                row += f" {_ratio(r['iops'], raw['iops']) if raw and t != 'raw' else '-'} |"
            lines.append(row)
    return lines


def _change(new: float, old: float) -> tuple[str, float]:
    if old <= 0:
        return "-", 0.0
    rel = new / old - 1
    return f"{rel:+.0%}", rel


def compare_rows(report: dict[str, Any], old: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (target, job) in both: IOPS and p99 before and after, relative changes, verdict
    (better, worse, same within NOISE: IOPS up or p99 down is better)."""
    before = _cells(old)
    rows = []
    for key, r in _cells(report).items():
        o = before.get(key)
        if o is None:
            continue
        iops_text, iops_rel = _change(r["iops"], o["iops"])
        p99_text, p99_rel = _change(r["lat_us"]["p99"], o["lat_us"]["p99"])
        if iops_rel > NOISE or p99_rel < -NOISE:
            verdict = "better"
        elif iops_rel < -NOISE or p99_rel > NOISE:
            verdict = "worse"
        else:
            verdict = "same"
        if (iops_rel > NOISE and p99_rel > NOISE) or (iops_rel < -NOISE and p99_rel < -NOISE):
            verdict = "mixed"
        rows.append({"target": key[0], "job": key[1], "iops_old": o["iops"],
                     "iops_new": r["iops"], "iops_change": iops_text,
                     "p99_old": o["lat_us"]["p99"], "p99_new": r["lat_us"]["p99"],
                     "p99_change": p99_text, "verdict": verdict})
    return rows


def compare_lines(report: dict[str, Any], old: dict[str, Any]) -> list[str]:
    """A Markdown table of what changed since ``old`` (also readable as plain text)."""
    rows = compare_rows(report, old)
    lines = [f"Compared with the run of {_when(old)} on {old.get('machine', '?')} "
             f"(changes under {NOISE:.0%} count as the same):", "",
             "| job | target | IOPS before | IOPS now | change | p99 before us | p99 now us | "
             "change | verdict |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for c in rows:
        mark = {"better": "**better**", "worse": "**worse**"}.get(c["verdict"], c["verdict"])
        lines.append(f"| {c['job']} | {c['target']} | {c['iops_old']:.0f} | {c['iops_new']:.0f} "
                     f"| {c['iops_change']} | {c['p99_old']:.0f} | {c['p99_new']:.0f} | "
                     f"{c['p99_change']} | {mark} |")
    if not rows:
        lines.append("| (no job and target in common) | | | | | | | | |")
    return lines


def markdown(report: dict[str, Any], pngs: list[str], old: dict[str, Any] | None) -> str:
    setup = report.get("setup", {})
    loadavg = report.get("loadavg") or []
    lines = [
        "# sbstore benchmark matrix", "",
        f"{_when(report)} on `{report['machine']}` ({report['cpus']} CPUs, Python "
        f"{report['python']}): {len(report['jobs'])} jobs x {len(report['targets'])} targets, "
        f"{report['seconds']:g} s per run, {report['repeat']} run(s) each (the median by "
        f"IOPS kept), {report['size'] >> 20} MiB working set; load generator engine "
        f"`{report['load_engine']}`; daemon and fio on CPU {report['pinning']['daemon_and_fio']},"
        f" load generator on CPU {report['pinning']['load']}.", "",
        "Targets:", ""]
    for t in report["targets"]:
        s = setup.get(t, {})
        extra = ""
        if "first_write" in s:
            extra = f"; first write of the whole volume {s['first_write']['mb_per_s']:.0f} MB/s"
        if s.get("engine"):
            extra += f"; `{s['engine'].strip()}`"
        lines.append(f"- `{t}`: {s.get('what', '')}{extra}")
    lines += ["", "Latency: the load generator's round trip for the sbstore targets (over "
              "loopback), fio's completion latency for `raw`. Target CPU: the daemon's CPU time "
              "per I/O (fio's own CPU is not counted for `raw`). `raw` is what O_DIRECT I/O on the file "
              "system under the pool gets: on a VM, the virtual disk, hypervisor caching "
              "included.", ""]
    busy = bool(loadavg) and max(loadavg) > (report.get("cpus") or 2)
    runs = "one short run" if report["repeat"] == 1 else \
        f"the median of {report['repeat']} short runs (their IOPS range in brackets)"
    lines += [f"**Noise.** Each cell is {runs} on a small VM that others may share: "
              f"differences under about {NOISE:.0%} are not findings. 1-minute load average "
              f"before and after: "
              f"{', '.join(f'{v:.1f}' for v in loadavg) or '?'}"
              + (" (others were using the CPUs: treat these figures as rough)." if busy
                 else "."), ""]
    lines += ["## Results", "", *results_table(report), ""]
    if old is not None:
        lines += ["## What changed", "", *compare_lines(report, old), ""]
    if pngs:
        lines += ["## Plots", ""]
        for png in pngs:
            lines += [f"![{png[:-4]}]({png})", ""]
    return "\n".join(lines)
