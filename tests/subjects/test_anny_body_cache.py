"""Anny's model-data cache: one process builds it while the others wait, and an interrupted build
never leaves files that look complete."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from synthgen.subjects import anny_body
from synthgen.subjects.anny_body import build_once

BUILD_SECONDS = 2.0


def _stand_in_build(folder: Path) -> None:
    """A slow build that records each run and marks completion with an atomic rename."""
    with open(folder / "builds.log", "a") as log_file:
        log_file.write(f"{os.getpid()}\n")
    time.sleep(BUILD_SECONDS)
    (folder / "result.partial").write_text("built")
    os.replace(folder / "result.partial", folder / "result")


def _build_in_process(folder: str, start, results) -> None:
    """Child process: wait for the sibling, then race it through ``build_once``."""
    folder = Path(folder)
    handler = logging.FileHandler(folder / f"log-{os.getpid()}.txt")
    logging.getLogger("synthgen").addHandler(handler)
    logging.getLogger("synthgen").setLevel(logging.INFO)
    start.wait()
    built = build_once(folder, lambda: (folder / "result").exists(), lambda: _stand_in_build(folder),
                       what="the stand-in", every=0.5)
    handler.close()
    results.put((os.getpid(), built, (folder / "result").read_text()))


def _run_two(ctx, target, args, timeout: float) -> list:
    """Start ``target(*args(results))`` in two processes; their results, once both exited cleanly."""
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=args(results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    out = [results.get(timeout=timeout) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    return out


def test_two_processes_build_once(tmp_path: Path):
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    outcomes = _run_two(ctx, _build_in_process, lambda results: (str(tmp_path), start, results), 120)
    assert (tmp_path / "builds.log").read_text().split() == [str(p) for p, built, _ in outcomes if built]
    assert sorted(built for _, built, _ in outcomes) == [False, True]
    assert all(text == "built" for _, _, text in outcomes)
    waiter = next(pid for pid, built, _ in outcomes if not built)
    assert "waiting for another process to finish building the stand-in" in \
        (tmp_path / f"log-{waiter}.txt").read_text()


def test_build_once_skips_a_finished_build(tmp_path: Path):
    calls = []
    assert build_once(tmp_path, lambda: True, lambda: calls.append(1)) is False
    assert calls == []


def test_failed_build_releases_the_lock(tmp_path: Path):
    def broken():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_once(tmp_path, lambda: False, broken)
    done = []
    assert build_once(tmp_path, lambda: bool(done), lambda: done.append(1)) is True


def test_build_that_finishes_incomplete_is_an_error(tmp_path: Path):
    with pytest.raises(RuntimeError, match="without a complete result"):
        build_once(tmp_path, lambda: False, lambda: None)


def _compact(folder: Path, name: str = "build_compact_model_data_abc.safetensors") -> Path:
    path = folder / anny_body.data_version_dir() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"x": torch.arange(1000, dtype=torch.float32)}, str(path))
    return path


def test_truncated_compact_file_is_not_built(tmp_path: Path):
    path = _compact(tmp_path)
    assert anny_body.cache_is_built(tmp_path)
    path.write_bytes(path.read_bytes()[:2000])
    assert not anny_body.cache_is_built(tmp_path)


class _FakeAnny:
    """Stands in for ``anny.Anny``: writes intermediate and compact files into Anny's cache path."""

    fail = False

    def __init__(self):
        import anny.paths

        cache = anny.paths.get_anny_cache_path()
        _compact(cache, "build_model_data_abc.safetensors")
        if self.fail:
            raise RuntimeError("killed mid-build")
        _compact(cache)


@pytest.fixture
def fake_anny(monkeypatch):
    """``anny.Anny`` replaced by ``_FakeAnny``; Anny's global cache path restored afterwards."""
    import anny
    import anny.paths

    monkeypatch.setattr(anny.paths, "_ANNY_CACHE_DIR", list(anny.paths._ANNY_CACHE_DIR))
    monkeypatch.setattr(anny, "Anny", _FakeAnny)
    return monkeypatch


def test_build_cache_renames_only_finished_files(tmp_path: Path, fake_anny):
    anny_body.build_cache(tmp_path)
    version = tmp_path / anny_body.data_version_dir()
    assert [p.name for p in version.iterdir()] == ["build_compact_model_data_abc.safetensors"]
    assert not list(tmp_path.glob(".build-*"))
    assert anny_body.cache_is_built(tmp_path)


def test_interrupted_build_leaves_nothing_that_looks_built(tmp_path: Path, fake_anny):
    import anny

    fake_anny.setattr(anny, "Anny", type("Killed", (_FakeAnny,), {"fail": True}))
    with pytest.raises(RuntimeError, match="killed mid-build"):
        anny_body.build_cache(tmp_path)
    assert not list(tmp_path.glob(".build-*"))
    assert not anny_body.cache_is_built(tmp_path)


def test_cache_dir_under_a_file_is_a_user_error(tmp_path: Path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.delenv("ANNY_CACHE_DIR", raising=False)
    monkeypatch.setenv("SYNTHGEN_CACHE_DIR", str(tmp_path / "file"))
    with pytest.raises(anny_body.UserError, match="SYNTHGEN_CACHE_DIR"):
        anny_body.usable_cache_dir()


def _load_in_process(cache: str, results) -> None:
    """Child process: load Anny from ``cache`` (cold or warm) and report the face count."""
    os.environ["SYNTHGEN_CACHE_DIR"] = cache
    os.environ.pop("ANNY_CACHE_DIR", None)
    logging.basicConfig(level=logging.INFO, filename=str(Path(cache) / f"log-{os.getpid()}.txt"))
    results.put(int(anny_body.load_anny_model().faces.shape[0]))


@pytest.mark.slow
def test_two_processes_cold_start_build_anny_once(tmp_path: Path):
    """Real cold build (~50 s of CPU): two processes, one build, both get the model."""
    ctx = multiprocessing.get_context("spawn")
    counts = _run_two(ctx, _load_in_process, lambda results: (str(tmp_path), results), 900)
    logs = [p.read_text() for p in tmp_path.glob("log-*.txt")]
    assert counts[0] == counts[1] > 0
    assert sum("Building Anny's model data once" in text for text in logs) == 1
    assert any("waiting for another process" in text for text in logs)
    assert anny_body.cache_is_built(tmp_path / "anny")
    assert not list((tmp_path / "anny").glob(".build-*"))
    assert not list((tmp_path / "anny").glob("v*/build_model_data_*"))
