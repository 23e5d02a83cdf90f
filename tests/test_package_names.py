"""Names in the package mean one thing: no two classes share a name."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "synthgen"


def _trees() -> dict[str, ast.Module]:
    return {str(path.relative_to(PACKAGE.parent)): ast.parse(path.read_text(), str(path))
            for path in sorted(PACKAGE.rglob("*.py"))}


def class_names(trees: dict[str, ast.Module]) -> dict[str, list[str]]:
    """Class name -> the modules defining a class of that name (nested classes included)."""
    where: dict[str, list[str]] = defaultdict(list)
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                where[node.name].append(module)
    return where


def test_class_names_finds_a_repeated_name():
    trees = {"a.py": ast.parse("class Family: pass"), "b.py": ast.parse("class Family:\n  class Inner: pass")}
    assert class_names(trees) == {"Family": ["a.py", "b.py"], "Inner": ["b.py"]}


def test_no_two_classes_in_the_package_share_a_name():
    repeated = {name: modules for name, modules in class_names(_trees()).items() if len(modules) > 1}
    assert not repeated, f"classes sharing a name: {repeated}"
