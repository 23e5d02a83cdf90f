"""User mistakes on the command line: one ``synthgen: error:`` line on stderr, exit status 2,
nothing already on disk changed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthgen.engine.run_folder import MANIFEST, RunFolder, plan_shards
from synthgen.cli import main
from synthgen.errors import UserError
from tests.fixtures.recipes import ROOT

RECIPE = str(ROOT / "recipes" / "quickstart.yaml")
CONTENT = b"precious bytes\x00\xff\n"


def _error_line(code: int, stderr: str) -> str:
    """The single error line, after checking the exit status and the line count."""
    lines = stderr.splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("synthgen: error:"), stderr
    return lines[0]


def _cli(capsys, *argv: str) -> str:
    """Run ``synthgen ARGV`` in this process; returns its one error line."""
    code = main(list(argv))
    return _error_line(code, capsys.readouterr().err)


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_bytes(CONTENT)
    return path


def _run_folder(tmp_path: Path) -> Path:
    """A synthgen output folder with a manifest and no shards yet."""
    from synthgen.recipe import load_recipe

    recipe = load_recipe(RECIPE)
    out = tmp_path / "run"
    RunFolder(out).write_manifest(recipe, plan_shards(recipe.num_samples, recipe.output.shard_size))
    return out


def test_generate_out_existing_file_real_cli(a_file: Path):
    proc = subprocess.run([sys.executable, "-m", "synthgen", "generate", RECIPE, "--out", str(a_file),
                           "--workers", "1", "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    line = _error_line(proc.returncode, proc.stderr)
    assert str(a_file) in line and "existing file" in line
    assert a_file.read_bytes() == CONTENT


def test_generate_out_under_a_file(capsys, a_file: Path):
    out = a_file / "sub"
    line = _cli(capsys, "generate", RECIPE, "--out", str(out), "--workers", "1", "--no-progress")
    assert str(out) in line and f"{a_file} is a file" in line
    assert a_file.read_bytes() == CONTENT


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_generate_out_in_read_only_folder(capsys, tmp_path: Path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        line = _cli(capsys, "generate", RECIPE, "--out", str(locked / "run"), "--workers", "1",
                    "--no-progress")
    finally:
        locked.chmod(0o755)
    assert str(locked / "run") in line and "not writable" in line
    assert list(locked.iterdir()) == []


def test_unwritable_out_is_named(monkeypatch, tmp_path: Path):
    """The permission branch, also when running as root (who may write anywhere)."""
    from synthgen.recipe import load_recipe

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    with pytest.raises(UserError, match="not writable") as info:
        RunFolder(tmp_path / "run").prepare(load_recipe(RECIPE), [])
    assert str(tmp_path / "run") in str(info.value)
    assert not (tmp_path / "run").exists()


def test_generate_keeps_a_foreign_manifest(capsys, tmp_path: Path):
    manifest = tmp_path / MANIFEST
    manifest.write_bytes(CONTENT)
    line = _cli(capsys, "generate", RECIPE, "--out", str(tmp_path), "--workers", "1", "--no-progress")
    assert str(manifest) in line
    assert manifest.read_bytes() == CONTENT
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST]


def test_generate_missing_recipe(capsys, tmp_path: Path):
    line = _cli(capsys, "generate", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "run"))
    assert str(tmp_path / "nope.yaml") in line and "does not exist" in line
    assert not (tmp_path / "run").exists()


def test_validate_folder_as_recipe(capsys, tmp_path: Path):
    line = _cli(capsys, "validate", str(tmp_path))
    assert str(tmp_path) in line and "is a folder" in line


def test_validate_non_mapping_recipe(capsys, a_file: Path):
    a_file.write_text("just a string\n")
    line = _cli(capsys, "validate", str(a_file))
    assert str(a_file) in line and "mapping" in line


@pytest.mark.parametrize("command", ["status", "report"])
def test_missing_run_folder(capsys, tmp_path: Path, command: str):
    line = _cli(capsys, command, str(tmp_path / "nothere"))
    assert str(tmp_path / "nothere") in line and "manifest.json" in line


@pytest.mark.parametrize("command", ["status", "report"])
@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"a": 1}'])
def test_not_a_synthgen_manifest(capsys, tmp_path: Path, command: str, text: str):
    manifest = tmp_path / MANIFEST
    manifest.write_text(text)
    line = _cli(capsys, command, str(tmp_path))
    assert str(manifest) in line
    assert manifest.read_text() == text


def test_status_of_run_without_shards_works(capsys, tmp_path: Path):
    assert main(["status", str(_run_folder(tmp_path))]) == 0
    assert "0/320 done" in capsys.readouterr().out


def test_report_html_under_a_file(capsys, tmp_path: Path, a_file: Path):
    html = a_file / "report.html"
    line = _cli(capsys, "report", str(_run_folder(tmp_path)), "--html", str(html))
    assert str(html) in line and f"{a_file}: is an existing file, not a folder" in line
    assert a_file.read_bytes() == CONTENT


@pytest.mark.parametrize("name", ["notes.txt/sheet.png", "sheet.txt", "."])
def test_preview_out_unwritable_or_not_an_image(capsys, tmp_path: Path, a_file: Path, name: str):
    out = tmp_path / name
    line = _cli(capsys, "preview", RECIPE, "--out", str(out), "-n", "1")
    assert str(out) in line
    assert a_file.read_bytes() == CONTENT
