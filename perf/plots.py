"""Plots of a matrix result (perf/matrix.py's JSON), small PNGs for a report and a repository.

- ``iops.png``, ``bandwidth.png``: one group of bars per job, a bar per target, the yardstick
  (``raw``, fio on the disk) grey beside the sbstore targets;
- ``latency.png``: p50, p99 and p99.9 per job and target (log scale);
- ``latency_cdf.png``: per job, the fraction of I/Os completed within a latency, per target,
  from the percentile points each source kept (perf/percentiles.py).

matplotlib with the Agg backend (no display); 8-bit palette PNGs at a modest DPI keep each file
well under 100 KB.
"""
from __future__ import annotations

import io
import math
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

COLORS = {"raw": "#9e9e9e", "pool": "#1f77b4", "ram": "#ff7f0e"}
OTHER_COLORS = ("#2ca02c", "#d62728", "#9467bd", "#8c564b")
LABELS = {"raw": "raw disk (fio, yardstick)", "pool": "sbstore pool volume",
          "ram": "sbstore RAM device"}
DPI = 80


def _color(target: str, index: int) -> str:
    return COLORS.get(target, OTHER_COLORS[index % len(OTHER_COLORS)])


def _ordered_targets(report: dict[str, Any]) -> list[str]:
    """The yardstick first, so it stands beside the others in every group."""
    names = list(report["targets"])
    return sorted(names, key=lambda n: (n != "raw", names.index(n)))


def _cell(report: dict[str, Any], target: str, job: str) -> dict[str, Any] | None:
    cells: list[dict[str, Any]] = report["results"]
    return next((r for r in cells if r["target"] == target and r["job"] == job), None)


def _save(fig: Figure, path: str) -> str:
    """Write ``fig`` as a palette PNG (a quarter the size of RGBA for flat charts)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    try:
        from PIL import Image
        buf.seek(0)
        Image.open(buf).convert("RGB").quantize(colors=64).save(path, optimize=True)
    except ImportError:  # pillow comes with matplotlib; keep the plain PNG if it does not
        with open(path, "wb") as f:
            f.write(buf.getvalue())
    return path


def _human(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}"


def bars(report: dict[str, Any], key: str, ylabel: str, title: str, path: str) -> str:
    """Grouped bars of ``key`` (iops, mb_per_s): jobs along x, a bar per target."""
    jobs = [j["name"] for j in report["jobs"]]
    targets = _ordered_targets(report)
    width = 0.8 / max(len(targets), 1)
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, t in enumerate(targets):
        xs, ys = [], []
        for x, job in enumerate(jobs):
            cell = _cell(report, t, job)
            if cell is not None:
                xs.append(x - 0.4 + width * (i + 0.5))
                ys.append(cell[key])
        drawn = ax.bar(xs, ys, width, label=LABELS.get(t, t), color=_color(t, i))
        ax.bar_label(drawn, labels=[_human(y) for y in ys], fontsize=7, padding=1)
    ax.set_xticks(range(len(jobs)), jobs, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def latency_bars(report: dict[str, Any], path: str) -> str:
    """p50, p99 and p99.9 per job and target, one panel each, log scale."""
    jobs = [j["name"] for j in report["jobs"]]
    targets = _ordered_targets(report)
    width = 0.8 / max(len(targets), 1)
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    for ax, (key, label) in zip(axes, (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9"))):
        for i, t in enumerate(targets):
            xs, ys = [], []
            for x, job in enumerate(jobs):
                cell = _cell(report, t, job)
                if cell is not None and cell["lat_us"].get(key, 0) > 0:
                    xs.append(x - 0.4 + width * (i + 0.5))
                    ys.append(cell["lat_us"][key])
            ax.bar(xs, ys, width, label=LABELS.get(t, t), color=_color(t, i))
        ax.set_yscale("log")
        ax.set_ylabel(f"{label} latency (us)", fontsize=8)
        ax.grid(axis="y", alpha=0.3, which="both")
    axes[0].set_title("Latency percentiles per job (log scale)", fontsize=10)
    axes[0].legend(fontsize=8)
    axes[-1].set_xticks(range(len(jobs)), jobs, rotation=20, ha="right", fontsize=8)
    return _save(fig, path)


def latency_cdf(report: dict[str, Any], path: str) -> str:
    """Per job, the share of I/Os completed within x microseconds, a line per target."""
    jobs = [j["name"] for j in report["jobs"]]
    targets = _ordered_targets(report)
    cols = min(4, len(jobs))
    rows = math.ceil(len(jobs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.6 * rows), squeeze=False)
    for n, job in enumerate(jobs):
        ax = axes[n // cols][n % cols]
        for i, t in enumerate(targets):
            cell = _cell(report, t, job)
            points = sorted((float(p), us) for p, us in (cell or {}).get("lat_pct_us",
                                                                         {}).items() if us > 0)
            if points:
                ax.plot([us for _, us in points], [p for p, _ in points], marker=".",
                        markersize=3, linewidth=1.2, color=_color(t, i), label=LABELS.get(t, t))
        ax.set_xscale("log")
        ax.set_ylim(0, 100)
        ax.set_title(job, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
        if n % cols == 0:
            ax.set_ylabel("% of I/Os", fontsize=7)
        if n // cols == rows - 1:
            ax.set_xlabel("latency (us)", fontsize=7)
    for n in range(len(jobs), rows * cols):
        axes[n // cols][n % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(len(labels), 1), fontsize=7)
    fig.suptitle("Latency CDF (completion latency at the kept percentiles)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, path)


def draw_all(report: dict[str, Any], out: str) -> list[str]:
    """Every plot of ``report`` into directory ``out``; the paths written."""
    return [
        bars(report, "iops", "IOPS", "IOPS per job (fio on the raw disk beside sbstore)",
             os.path.join(out, "iops.png")),
        bars(report, "mb_per_s", "MB/s", "Bandwidth per job (MB/s)",
             os.path.join(out, "bandwidth.png")),
        latency_bars(report, os.path.join(out, "latency.png")),
        latency_cdf(report, os.path.join(out, "latency_cdf.png")),
    ]
