"""Imports flow one way: root scripts -> cli -> methods -> trainers / evaluation -> retrieval -> modeling ->
preprocess -> rewards. A module may import its own package and any package on a LOWER floor, never one on its own
floor or above -- including imports inside functions (a lazy import is still a dependency)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Top floor first. Packages on one floor do not import each other.
FLOORS = [
    ("cli",),
    ("methods",),
    ("trainers", "evaluation"),
    ("retrieval",),
    ("modeling",),
    ("preprocess",),
    ("rewards",),
]
FLOOR_OF = {pkg: depth for depth, pkgs in enumerate(FLOORS) for pkg in pkgs}


def _imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level project package) of every absolute import in ``path``, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, n.split(".")[0]) for n in names if n.split(".")[0] in FLOOR_OF]
    return found


def _package_modules():
    for pkg in FLOOR_OF:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            yield pkg, path


def test_every_package_is_on_a_floor():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench", "scripts"}
    assert packages <= set(FLOOR_OF), f"packages without a floor in FLOORS: {sorted(packages - set(FLOOR_OF))}"


@pytest.mark.parametrize("pkg,path", list(_package_modules()), ids=lambda x: str(x).replace(str(ROOT) + "/", ""))
def test_imports_flow_down(pkg, path):
    upward = [f"{path.relative_to(ROOT)}:{line} imports {other} (floor {FLOOR_OF[other]} >= own {FLOOR_OF[pkg]})"
              for line, other in _imported_packages(path) if other != pkg and FLOOR_OF[other] <= FLOOR_OF[pkg]]
    assert not upward, "\n".join(upward)
