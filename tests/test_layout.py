"""The test tree mirrors the package: the tests of ``synthgen/a/b.py`` are ``tests/a/test_b.py`` (and,
when one file would mix concerns, ``tests/a/test_b_<aspect>.py``); tests spanning many modules live in
``tests/scenarios/``, the tests of ``benchmarks/x.py`` in ``tests/benchmarks/test_x.py``, shared test
code in ``tests/fixtures/``. Tests and benchmarks use the package's public names only, and import
conftest.py never (pytest alone loads it; the tests are packages, so every import is ``tests.…``)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
PACKAGE = ROOT / "synthgen"

# folders of tests/ that do not mirror a package of synthgen/
OWN_FOLDERS = {"scenarios", "fixtures", "benchmarks"}
# test files whose name is not one module's, and why
EXCEPTIONS = {
    "tests/test_layout.py": "the layout of tests/ itself",
    "tests/test_package_names.py": "class names across the whole package",
    "tests/render/test_raster.py": "both rasterisers (raster_torch, raster_gl), against geometry and each other",
}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _test_files() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def _mirrored_module(test: Path) -> Path | None:
    """The module ``test`` mirrors: ``tests/a/test_b_x.py`` -> ``synthgen/a/b.py`` (longest name that exists)."""
    folder = test.parent.relative_to(TESTS)
    base = ROOT / "benchmarks" if folder.parts[:1] == ("benchmarks",) else PACKAGE / folder
    words = test.stem.removeprefix("test_").split("_")
    for n in range(len(words), 0, -1):
        name = "_".join(words[:n])
        for candidate in (base / f"{name}.py", base / f"{name}.sh"):
            if candidate.is_file():
                return candidate
    return None


def test_every_test_file_sits_at_the_path_of_the_module_it_tests():
    misplaced = []
    for test in _test_files():
        folder = test.parent.relative_to(TESTS).parts
        if _rel(test) in EXCEPTIONS or folder[:1] == ("scenarios",):
            continue
        if folder[:1] == ("fixtures",) or _mirrored_module(test) is None:
            misplaced.append(_rel(test))
    assert not misplaced, f"test files that mirror no module (move them, or add to EXCEPTIONS): {misplaced}"


def test_every_test_folder_mirrors_a_package_and_is_a_package():
    for folder in sorted(p for p in TESTS.rglob("*") if p.is_dir() and p.name != "__pycache__"):
        rel = folder.relative_to(TESTS)
        assert (folder / "__init__.py").is_file(), f"{_rel(folder)} has no __init__.py (tests are packages)"
        if rel.parts[0] not in OWN_FOLDERS:
            assert (PACKAGE / rel / "__init__.py").is_file(), f"{_rel(folder)} mirrors no package of synthgen/"
    assert (TESTS / "__init__.py").is_file()


def _sources() -> list[Path]:
    return sorted(TESTS.rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str) -> list[str]:
    """Private names of synthgen a module uses: imported (``from synthgen.x import _y``,
    ``import synthgen._x``), read from a synthgen module (``x._y``) or patched on one
    (``setattr(x, "_y", ...)``, ``monkeypatch.setattr(x, "_y", ...)``)."""
    tree = ast.parse(source)
    modules: dict[str, str] = {}  # local name -> the synthgen module it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "synthgen":
            found += [f"{node.module}.{a.name}" for a in node.names
                      if _private(a.name) or any(_private(p) for p in node.module.split("."))]
            for a in node.names:
                if _is_module(f"{node.module}.{a.name}"):
                    modules[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "synthgen":
                    found += [a.name] if any(_private(p) for p in a.name.split(".")) else []
                    modules[a.asname or a.name] = a.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = ast.unparse(node.value)
            if base in modules:
                found.append(f"{modules[base]}.{node.attr}")
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("setattr") and len(node.args) >= 2:
            base, attr = ast.unparse(node.args[0]), node.args[1]
            if base in modules and isinstance(attr, ast.Constant) and _private(str(attr.value)):
                found.append(f"{modules[base]}.{attr.value}")
    return sorted(set(found))


def test_the_private_name_check_finds_each_kind_of_use():
    source = ("import synthgen.engine.streams as streams\nfrom synthgen.filter import _scores, mask_iou\n"
              "from synthgen.subjects import anny_body\nanny_body._cache()\nstreams.loader_stream\n"
              "def t(monkeypatch):\n    monkeypatch.setattr(streams, '_hidden', 1)\n")
    assert private_uses(source) == ["synthgen.engine.streams._hidden", "synthgen.filter._scores",
                                    "synthgen.subjects.anny_body._cache"]


def test_tests_and_benchmarks_use_public_names_of_the_package_only():
    uses = {_rel(f): private_uses(f.read_text()) for f in _sources()}
    uses = {f: names for f, names in uses.items() if names}
    assert not uses, f"private names of synthgen used outside it (make them public or test through the API): {uses}"


def _private_members_of_the_package() -> set[str]:
    """Private names synthgen defines: functions, methods, classes, and attributes set on ``self``."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                    ast.unparse(node.value) == "self":
                names.add(node.attr)
    return {name for name in names if _private(name)}


def test_tests_and_benchmarks_reach_no_private_member_of_the_package_objects():
    """``obj._name`` where synthgen defines ``_name`` (a method or attribute of its classes) and the
    test file does not (its own helpers and vendored code keep their private names)."""
    private, found = _private_members_of_the_package(), {}
    for path in _sources():
        tree = ast.parse(path.read_text())
        own = {n.name for n in ast.walk(tree)
               if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        own |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
        uses = sorted({ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in private
                       and n.attr not in own and ast.unparse(n.value) not in ("self", "cls")})
        if uses:
            found[_rel(path)] = uses
    assert not found, f"private members of synthgen objects used outside it (make them public): {found}"


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module or "")
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def test_conftest_is_never_imported_and_test_code_is_shared_through_fixtures_only():
    for path in _sources():
        imported = _imported_modules(path)
        assert not {m for m in imported if m.split(".")[-1] == "conftest"}, f"{_rel(path)} imports conftest"
        if path.is_relative_to(ROOT / "benchmarks"):
            assert not {m for m in imported if m.split(".")[0] == "tests"}, f"{_rel(path)} imports test code"
        else:
            others = {m for m in imported if m.split(".")[0] == "tests" and m.split(".")[1:2] != ["fixtures"]}
            assert not others, f"{_rel(path)} imports test modules {others}: shared test code lives in tests/fixtures/"
