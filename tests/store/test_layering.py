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


def test_engines_import_only_the_standard_library() -> None:
    """The I/O engines too (a pure-Python io_uring over ctypes, not a binding), and nothing
    of the store above them: the store uses the engines, not the other way round."""
    paths = sorted((STORE / "engines").glob("*.py"))
    assert {p.stem for p in paths} >= {"__init__", "base", "uring", "threads", "buffered",
                                       "buffers"}
    for path in paths:
        foreign = {m for m in imports(path) if m not in sys.stdlib_module_names}
        assert not foreign, f"engines/{path.name} imports {foreign}"
        tree = ast.parse(path.read_text())
        upward = [n.module for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.level > 1]
        assert not upward, f"engines/{path.name} imports from the store above it: {upward}"


def test_pure_modules_do_no_io() -> None:
    for name in PURE:
        used = imports(STORE / f"{name}.py") & NO_IO
        assert not used, f"{name}.py imports {used}"
