"""The package's shape: no import cycle, routers below the app, short parameter lists."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import brinicle_etl

PACKAGE = Path(brinicle_etl.__file__).parent
ROOT = "brinicle_etl"

# brinicle's own constructor signature, kept so that changing one import is enough.
LONG_SIGNATURES_ALLOWED = {"brinicle_etl.compat.engine.VectorEngine.__init__"}
MAX_PARAMETERS = 10


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The package modules an import statement loads."""
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    else:
        base = node.module or ""
        if node.level:
            package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
            for _ in range(node.level - 1):
                package = package.rsplit(".", 1)[0]
            base = f"{package}.{base}" if base else package
        # ``from package import submodule`` loads the submodule (its parent package loads first in
        # any case); ``from package import name`` needs the package's ``__init__`` to have run.
        names = {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {name for name in names if name in MODULES}


def module_level_imports(module: str) -> set[str]:
    """Imports run when ``module`` is imported: not those inside functions or TYPE_CHECKING."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.update(_imported(module, node))
            elif isinstance(node, ast.If):
                if not _is_type_checking(node):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)

    visit(tree.body)
    return found - {module}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules() -> None:
    graph = {module: module_level_imports(module) for module in MODULES}
    assert {"brinicle_etl.server.deps", "brinicle_etl.server.brinicle_api"} <= graph["brinicle_etl.server.app"]
    assert "brinicle_etl.embed.models" not in graph["brinicle_etl.store.store"]  # under TYPE_CHECKING only
    assert cycles(graph) == []


def test_every_module_imports_first_in_alphabetical_order() -> None:
    """In one fresh interpreter, each module imported in turn: a cycle that only bites in
    some import order would fail here."""
    script = f"import importlib\nfor name in {sorted(MODULES)!r}:\n    importlib.import_module(name)\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_routers_do_not_import_the_app() -> None:
    routers = [m for m in MODULES if m.startswith("brinicle_etl.server.") and m.endswith("_api")]
    assert len(routers) >= 4
    for module in routers:
        tree = ast.parse(MODULES[module].read_text())
        everywhere = set().union(
            *(_imported(module, node) for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom))
        )
        assert "brinicle_etl.server.app" not in everywhere, module


def long_signatures() -> dict[str, int]:
    found = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())

        def visit(body: list[ast.stmt], prefix: str) -> None:
            for node in body:
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{prefix}{node.name}.")
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    a = node.args
                    named = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs) if p.arg not in ("self", "cls")]
                    if len(named) > MAX_PARAMETERS:
                        found[f"{prefix}{node.name}"] = len(named)
                    visit(node.body, f"{prefix}{node.name}.")

        visit(tree.body, f"{module}.")
    return found


def test_no_function_takes_more_than_ten_parameters() -> None:
    """Named parameters, not counting ``self``; a ``**options`` typed by a TypedDict counts as
    the one options object it is."""
    found = long_signatures()
    assert found["brinicle_etl.compat.engine.VectorEngine.__init__"] == 13  # the scan sees signatures
    assert set(found) <= LONG_SIGNATURES_ALLOWED, {k: v for k, v in found.items() if k not in LONG_SIGNATURES_ALLOWED}
