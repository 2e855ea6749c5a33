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
    "errors": 0,
    "config": 1,
    "records": 1,
    "runs": 1,
    "hardware": 2,
    "models": 2,
    "data": 2,
    "quant": 3,
    "metrics": 3,
    "schemes": 4,
    "export": 5,
    "backends": 6,
    "sweep": 6,
    "executors": 7,
    "evaluate": 8,
    "pipeline": 9,
    "report": 10,
    "workflow": 11,
    "cli": 12,
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
                    found.append((str(path.relative_to(SRC)), _package(path), name.split(".")[1]))
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
