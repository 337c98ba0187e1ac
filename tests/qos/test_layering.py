"""DESIGN.md's rules for sbstore.qos: the pure parts import no asyncio, socket, os or time (they
take ``now``), and the package imports nothing of the project but ``target.blockdev``."""
from __future__ import annotations

import ast
import pathlib
import sys

import pytest

QOS = pathlib.Path(__file__).resolve().parents[2] / "sbstore" / "qos"
PURE = ("policy.py", "bucket.py", "scheduler.py")


def imports(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


@pytest.mark.parametrize("name", PURE)
def test_pure_parts_take_time_as_an_argument(name):
    bad = {m for m in imports(QOS / name)
           if m.split(".")[0] in ("asyncio", "socket", "os", "time", "threading")}
    assert not bad


@pytest.mark.parametrize("path", sorted(QOS.glob("*.py")), ids=lambda p: p.name)
def test_only_target_blockdev_from_the_project(path):
    for m in imports(path):
        top = m.split(".")[0]
        if m.startswith("sbstore.qos") or m == "__future__" or top in sys.stdlib_module_names:
            continue
        assert m == "target.blockdev", f"{path.name} imports {m}"
