"""Scale-out: two ranks under the documented launch command, SIGKILL + resume, status and report."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import webdataset as wds

from tests.fixtures.recipes import ROOT

ARGS = ["image.width=96", "image.height=96", "output.shard_size=2", "render.backend=torch", "seed=11"]


def _labels(out):
    """{index: json bytes} of every complete shard, checking each shard is whole."""
    found = {}
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else None
    for tar in sorted((out / "shards").glob("shard-*.tar")):
        side = json.loads(tar.with_suffix(".json").read_text())
        records = list(wds.WebDataset(str(tar), shardshuffle=False, empty_check=False))
        assert len(records) == side["samples"]  # never partial
        assert side["samples"] + len(side["errors"]) + len(side["rejected"]) == side["stop"] - side["start"]
        for r in records:
            assert int(r["__key__"]) not in found
            found[int(r["__key__"])] = r["json"]
    return found, manifest


def _generate(out, n, *extra, **popen):
    cmd = [sys.executable, "-m", "synthgen", "generate", "recipes/quickstart.yaml", "--out", str(out),
           "--num-samples", str(n), "--no-progress", *extra, *ARGS]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    proc = _generate(out, 12, "--workers", "1")
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()
    return _labels(out)[0]


def test_sigkill_at_random_points_then_resume_equals_uninterrupted_run(tmp_path, reference):
    out = tmp_path / "killed"
    rng = random.Random(3)
    for _ in range(4):
        proc = _generate(out, 12, "--workers", "2", start_new_session=True)
        time.sleep(rng.uniform(2.0, 7.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: main process and its workers
        proc.wait()
        _labels(out)  # whatever is visible after a kill is whole
    proc = _generate(out, 12, "--workers", "2")
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()
    labels, manifest = _labels(out)
    assert labels == reference
    assert manifest["complete"] and manifest["num_samples_written"] == 12


def test_two_ranks_under_accelerate_launch_match_one_rank(tmp_path, reference):
    if shutil.which("accelerate") is None:
        pytest.skip("accelerate's launcher is not on PATH")
    out = tmp_path / "ranks"
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "synthgen", "generate",
           "recipes/quickstart.yaml", "--out", str(out), "--num-samples", "12", "--workers", "1",
           "--no-progress", *ARGS]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_CPU="1")
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1/2" in result.stderr and "rank 0/2" in result.stderr
    labels, manifest = _labels(out)
    assert labels == reference
    assert manifest["stats"]["world_size"] == 2


def test_status_and_report_describe_the_run(tmp_path):
    out = tmp_path / "run"
    proc = _generate(out, 6, "--workers", "1")
    assert proc.wait(timeout=600) == 0
    status = subprocess.run([sys.executable, "-m", "synthgen", "status", str(out)], cwd=ROOT,
                            capture_output=True, text=True)
    assert status.returncode == 0 and "6/6 done" in status.stdout and "3/3 complete" in status.stdout
    report = subprocess.run([sys.executable, "-m", "synthgen", "report", str(out)], cwd=ROOT,
                            capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    page = (out / "report.html").read_text()
    for figure in ("contact sheet", "age (years)", "height (m)", "pose", "focal length (px)",
                   "distance (m)", "azimuth (deg)", "elevation (deg)", "acceptance rate", "throughput"):
        assert figure in page
    missing = subprocess.run([sys.executable, "-m", "synthgen", "status", str(tmp_path / "nope")], cwd=ROOT,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no manifest.json" in missing.stderr


def test_failing_samples_are_recorded_and_the_budget_stops_the_run(tmp_path):
    import cv2
    import numpy as np

    backgrounds = tmp_path / "bg"
    backgrounds.mkdir()
    cv2.imwrite(str(backgrounds / "good.png"), np.full((64, 64, 3), 90, np.uint8))
    (backgrounds / "broken.jpg").write_bytes(b"not an image at all")
    # the backdrop folder is read where no scene geometry is drawn (the quickstart's default draws one)
    folder = ["backend.shaded.background=folder", f"backend.shaded.background_dir={backgrounds}", "scene.geometry=none"]

    tolerant = tmp_path / "tolerant"
    proc = _generate(tolerant, 8, "--workers", "1", "output.max_errors=0.9", *folder)
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()
    manifest = json.loads((tolerant / "manifest.json").read_text())
    assert manifest["complete"] and 0 < manifest["num_errors"] < 8
    assert manifest["num_samples_written"] + manifest["num_errors"] == 8
    assert all("cannot be decoded" in e["error"] for e in manifest["errors"])
    written = _labels(tolerant)[0]
    assert not set(written) & {e["index"] for e in manifest["errors"]}

    strict = tmp_path / "strict"
    proc = _generate(strict, 8, "--workers", "1", "output.max_errors=0", *folder)
    assert proc.wait(timeout=600) == 1
    assert "output.max_errors" in proc.stderr.read().decode()
    _labels(strict)  # shards finished before the stop are whole


# the end of a multi-rank run is polled on disk
def test_rank_zero_polls_the_markers_of_every_rank(tmp_path):
    from synthgen.engine.launch import clear_rank_markers, mark_rank_done, wait_for_ranks
    from synthgen.engine.run_folder import RunFolder

    folder = RunFolder(tmp_path)
    mark_rank_done(folder, 1, {"old": True})  # an earlier run's marker
    clear_rank_markers(folder)
    mark_rank_done(folder, 0, {"samples": 4})
    polls = []
    late = threading.Thread(target=lambda: (time.sleep(0.3), mark_rank_done(folder, 1, {"samples": 2},
                                                                           "ErrorBudgetExceeded: 3 failed")))
    late.start()
    infos = wait_for_ranks(folder, 2, poll_s=0.02, on_poll=lambda: polls.append(1))
    late.join()
    assert sorted(infos) == [0, 1] and infos[1]["stats"] == {"samples": 2}
    assert infos[1]["failure"].startswith("ErrorBudgetExceeded") and polls  # it waited, by polling
    assert json.loads((tmp_path / "logs" / "rank-0.done").read_text())["rank"] == 0
