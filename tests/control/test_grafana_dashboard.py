"""docs/grafana/sbstore-dashboard.json asks only for what the daemon exports.

A real daemon (per_volume = "full") serves a tenant with an IOPS limit and a volume that a host
reads, writes and flushes, so every family has samples; its /metrics is scraped. Then every
PromQL expression of the dashboard (panel queries and template variables) is taken apart: each
metric it names must be a series the daemon exported (histograms: ``_bucket``, ``_sum`` and
``_count``), each label it matches or groups by must be a label of those series (or one
Prometheus adds at scrape: job, instance), and every sbstore family must be on a panel.
"""
from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from target.host import Controller
from tests.control.conftest import NQN_1, DaemonThread, in_thread, make_config

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "sbstore-dashboard.json"
SCRAPE_LABELS = {"job", "instance"}  # added by Prometheus to every series it scrapes
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset", "inf", "nan"}
IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


# --- PromQL, taken apart just enough -------------------------------------------------------

def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)


def metric_names(expr: str) -> set[str]:
    """Every metric an expression selects: identifiers that are not functions, keywords,
    label names (inside braces or grouping clauses) or parts of numbers and durations."""
    text = _strip_strings(expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges, subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(rf"(?<![\w$.]){IDENT}", text):
        name = m.group(0)
        rest = text[m.end():].lstrip()
        if rest.startswith("(") or name.lower() in PROMQL_WORDS:
            continue  # a function or aggregation, or a keyword
        names.add(name)
    return names


def matcher_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names in its matcher braces) for each ``metric{...}`` selector."""
    text = _strip_strings(expr)
    return [(m.group(1), set(re.findall(rf"({IDENT})\s*(?:=~|!~|!=|=)", m.group(2))))
            for m in re.finditer(rf"({IDENT})\s*\{{([^}}]*)\}}", text)]


def grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    return labels


def dashboard_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            for t in p.get("targets", []):
                out.append((f"panel {p['title']!r} {t.get('refId')}", t["expr"]))
            walk(p.get("panels", []))
    walk(dash["panels"])
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip())
        assert m, f"variable {v['name']}: {query}"
        out.append((f"variable {v['name']}", m.group(1)))
        out.append((f"variable {v['name']} label", f"count by ({m.group(2)}) ({m.group(1)})"))
    return out


def test_promql_parts_are_found() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, tenant) (rate(sbstore_tenant_read_latency_'
            'seconds_bucket{tenant=~"$tenant", op!="x"}[$__rate_interval]))) / 1e3 + '
            'sum(rate(foo_total[5m] offset 1h)) or on (pool) bar')
    assert metric_names(expr) == {"sbstore_tenant_read_latency_seconds_bucket", "foo_total",
                                  "bar"}
    assert matcher_labels(expr) == [("sbstore_tenant_read_latency_seconds_bucket",
                                     {"tenant", "op"})]
    assert grouping_labels(expr) == {"le", "tenant", "pool"}


# --- the daemon's answer ---------------------------------------------------------------------

@pytest.fixture
def full_daemon(tmp_path: Path, sock_dir: Path) -> Iterator[DaemonThread]:
    d = DaemonThread(make_config(tmp_path, sock_dir, per_volume="full")).start()
    try:
        yield d
    finally:
        d.stop()


def exported(url: str) -> tuple[dict[str, set[str]], set[str]]:
    """(series name -> its label names, sbstore family names) from one scrape."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    series: dict[str, set[str]] = {}
    families = set()
    for fam in text_string_to_metric_families(text):
        if fam.name.startswith("sbstore_"):
            families.add(fam.name)
        for s in fam.samples:
            series.setdefault(s.name, set()).update(s.labels)
    return series, families


async def test_every_dashboard_query_names_exported_series(full_daemon: DaemonThread) -> None:
    daemon = full_daemon
    daemon.ok("tenant", "create", "gold", "--iops", "300", "--burst-s", "0.01")
    daemon.ok("volume", "create", "vol", "--size", "16M", "--tenant", "gold")
    daemon.ok("snapshot", "create", "vol", "snap")
    daemon.ok("export", "create", NQN_1, "--volume", "vol", "--allow-any-host")
    async with await Controller.connect("127.0.0.1", daemon.port, NQN_1) as ctrl:
        bs = ctrl.block_size(1)
        for lba in range(40):  # beyond the burst: some are throttled
            await ctrl.write(1, lba, bytes([lba]) * bs)
            await ctrl.read(1, lba, 1)
        await ctrl.flush(1)
        series, families = await in_thread(exported, daemon.metrics_url)
    for needed in ("sbstore_tenant_throttled_seconds_total", "sbstore_tenant_cpu_admitted_total",
                   "sbstore_volume_read_latency_seconds_bucket", "process_cpu_seconds_total"):
        assert needed in series, f"the daemon did not export {needed}: fixture too weak"

    dash = json.loads(DASHBOARD.read_text())
    queries = dashboard_queries(dash)
    assert len(queries) >= 40
    used: set[str] = set()
    problems = []
    for where, expr in queries:
        names = metric_names(expr)
        if not names:
            problems.append(f"{where}: no metric found in {expr!r}")
        used |= names
        for name in sorted(names - set(series)):
            problems.append(f"{where}: {name} is not exported ({expr})")
        for name, labels in matcher_labels(expr):
            for label in sorted(labels - series.get(name, set()) - SCRAPE_LABELS):
                problems.append(f"{where}: {name} has no label {label!r}")
        known = set().union(*(series.get(n, set()) for n in names)) | SCRAPE_LABELS
        for label in sorted(grouping_labels(expr) - known):
            problems.append(f"{where}: grouping by {label!r}, a label none of {names} has")
    assert not problems, "\n".join(problems)

    # Every sbstore family is on the dashboard (a histogram through any of its series).
    shown = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in used}
    missing = {f for f in families if re.sub(r"_total$", "", f) not in shown}
    assert not missing, f"families the dashboard does not show: {sorted(missing)}"


def test_dashboard_is_importable_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "pool", "tenant", "volume"} <= variables
