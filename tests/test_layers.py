"""The one-way import rule (docs/layout.md): a package imports only packages below it.

Imports under ``if TYPE_CHECKING:`` are annotations, not dependencies, and are not counted.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "quantsweep"
# bottom to top; a package may import the ones with a lower rank, never an equal or higher one
RANKS = {
    "core": 0,
    "models": 1,
    "data": 1,
    "quant": 2,
    "metrics": 2,
    "schemes": 3,
    "onnx_graph": 4,
    "targets": 5,
    "sensitivity": 5,
    "execution": 6,
    "evaluation": 7,
    "stages": 8,
    "report": 9,
    "workflow": 10,
    "cli": 11,
}


def _package(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return parts[0]


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.If)
            and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"
        ):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


@functools.cache
def imports() -> list[tuple[str, str, str]]:
    """(file, importing package, imported package) for every runtime import inside quantsweep."""
    return [(path, importer, module.split(".")[1]) for path, importer, module in module_imports()]


@functools.cache
def module_imports() -> list[tuple[str, str, str]]:
    """(file, importing package, imported module) for every runtime import inside quantsweep,
    at module level or inside a function."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == SRC:
            continue
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("quantsweep."):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("quantsweep.")]
            for name in names:
                if node.lineno not in skip:
                    found.append((str(path.relative_to(SRC)), _package(path), name))
    return found


def test_every_package_is_ranked() -> None:
    packages = {_package(p) for p in SRC.rglob("*.py") if p.parent != SRC or p.name != "__init__.py"}
    packages -= {"__main__"}
    assert packages <= set(RANKS), sorted(packages - set(RANKS))


@pytest.mark.parametrize("source", sorted({f for f, _, _ in imports()}))
def test_imports_point_down(source: str) -> None:
    for path, importer, imported in imports():
        if path == source and imported != importer:
            assert RANKS[imported] < RANKS[importer], f"{path}: {importer} imports {imported}"


def test_only_the_adapter_imports_ultralytics() -> None:
    readers = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if any(
            line.lstrip().startswith(("from ultralytics", "import ultralytics"))
            for line in p.read_text().splitlines()
        )
    ]
    assert readers == ["models/ultralytics_adapter.py"]


def _module_name(path: str) -> str:
    parts = Path(path).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("quantsweep", *parts))


def test_no_import_cycle_between_modules() -> None:
    """Not even through an import inside a function (how ``cli/main.py`` and ``cli/run.py`` once
    imported each other)."""
    modules = {_module_name(str(p.relative_to(SRC))) for p in SRC.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for path, _, imported in module_imports():
        target = imported
        while target not in modules and "." in target:  # "from pkg.mod import name" names the module
            target = target.rsplit(".", 1)[0]
        source = _module_name(path)
        if target not in (source, "quantsweep"):
            edges.setdefault(source, set()).add(target)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
