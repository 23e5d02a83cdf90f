"""The commands a new user runs: generate, rerun (resume), preview."""

import json
import subprocess
import sys

import cv2

from tests.fixtures.recipes import ROOT

SMALL = ["image.width=128", "image.height=128", "output.shard_size=3", "render.backend=torch"]


def _synthgen(*args):
    return subprocess.run([sys.executable, "-m", "synthgen", *args], capture_output=True, text=True, cwd=ROOT)


def test_generate_then_rerun_then_preview(tmp_path):
    out = tmp_path / "ds"
    first = _synthgen("generate", "recipes/quickstart.yaml", "--out", str(out), "--num-samples", "5",
                      "--workers", "1", "--no-progress", *SMALL)
    assert first.returncode == 0, first.stderr
    assert "initialized" not in first.stdout + first.stderr  # no Warp banner (Anny's skinning kernels)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and [s["samples"] for s in manifest["shards"]] == [3, 2]
    again = _synthgen("generate", "recipes/quickstart.yaml", "--out", str(out), "--num-samples", "5",
                      "--workers", "1", "--no-progress", *SMALL)
    assert again.returncode == 0 and "0 of 2 shards to write" in again.stderr

    sheet = tmp_path / "sheet.png"
    result = _synthgen("preview", "recipes/quickstart.yaml", "--out", str(sheet), "-n", "2", *SMALL)
    assert result.returncode == 0, result.stderr
    image = cv2.imread(str(sheet))
    assert image.shape[0] > 2 * 256 and image.shape[1] == 7 * 256
