"""The OpenAPI document is served, covers every route, and its references resolve; every route
that takes a body refuses an unknown field before anything runs."""
from __future__ import annotations

from typing import Any

from sbstore.control.api import ROUTES, openapi_document
from sbstore.control.client import ApiError
from tests.control.conftest import DaemonThread


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [node["$ref"]] if "$ref" in node else []
        for v in node.values():
            out += _refs(v)
        return out
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_document_covers_every_route_and_resolves() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.")
    ops = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert ops == {(r.method, r.path) for r in ROUTES}
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    schemas = doc["components"]["schemas"]
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas
    for path, item in doc["paths"].items():
        names = [s[1:-1] for s in path.split("/") if s.startswith("{")]
        for op in item.values():
            declared = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
            assert declared == names, path
            assert "default" not in op["responses"] and "400" in op["responses"]


def test_served_document_and_unknown_fields(daemon: DaemonThread) -> None:
    with daemon.client as c:
        assert c.get("/v1/openapi.json") == openapi_document()
        for route in ROUTES:
            if not route.body:
                continue
            target = route.path
            for seg in route.path.split("/"):
                if seg.startswith("{"):
                    target = target.replace(seg, "1" if seg in ("{id}", "{nsid}") else "x")
            try:
                c.request(route.method, target, {"no_such_field": 1})
            except ApiError as exc:
                assert exc.status == 400 and "unknown field" in exc.message, (route, exc)
            else:
                raise AssertionError(f"{route.method} {target} accepted an unknown field")


def test_docs_list_every_route() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    missing = [f"{r.method} {r.path}" for r in ROUTES if f"`{r.method} {r.path}`" not in text]
    assert not missing, f"docs/api.md does not list {missing}"
