"""The store imports the standard library only, and its pure modules no I/O at all (DESIGN.md)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

STORE = Path(__file__).resolve().parents[2] / "sbstore" / "store"
PURE = {"layout", "space", "pagetree", "errors"}
NO_IO = {"asyncio", "os", "socket", "fcntl", "concurrent"}


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out - {"__future__"}


def test_store_imports_only_the_standard_library() -> None:
    for path in STORE.glob("*.py"):
        foreign = {m for m in imports(path) if m not in sys.stdlib_module_names}
        assert not foreign, f"{path.name} imports {foreign}"


def test_pure_modules_do_no_io() -> None:
    for name in PURE:
        used = imports(STORE / f"{name}.py") & NO_IO
        assert not used, f"{name}.py imports {used}"
