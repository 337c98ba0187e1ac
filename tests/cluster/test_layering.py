"""docs/cluster.md, "Parts": the etcd client and membership import the standard library and
their own lower parts only; the HTTP parser no I/O at all."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

CLUSTER = Path(__file__).resolve().parents[2] / "sbstore" / "cluster"
ALLOWED = {  # module -> the sbstore modules it may import
    "http_response": set(),
    "etcd": {"sbstore.cluster.http_response"},
    "membership": {"sbstore.cluster.etcd"},
}
NO_IO = {"asyncio", "socket", "os", "time", "selectors"}


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out - {"__future__"}


def test_parts_import_what_the_design_allows() -> None:
    for name, allowed in ALLOWED.items():
        found = imports(CLUSTER / f"{name}.py")
        own = {m for m in found if m.split(".")[0] == "sbstore"}
        foreign = {m for m in found - own if m.split(".")[0] not in sys.stdlib_module_names}
        assert not foreign, f"{name}.py imports {foreign}"
        assert own <= allowed, f"{name}.py imports {own - allowed}"


def test_http_parser_is_sans_io() -> None:
    found = {m.split(".")[0] for m in imports(CLUSTER / "http_response.py")}
    assert not found & NO_IO, found & NO_IO
