"""examples/train_regressor.py learns from real shards: held-out PCK rises (a short CI-sized run;
the default run on 512 quickstart samples is measured in the README)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.fixtures.recipes import ROOT, small_recipe

EXAMPLE = ROOT / "examples" / "train_regressor.py"


def load_example():
    spec = importlib.util.spec_from_file_location("train_regressor", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from synthgen.run import generate

    out = tmp_path_factory.mktemp("train_run")
    recipe = small_recipe(num_samples=96, seed=3, image={"width": 160, "height": 160},
                          subject={"pose": {"noise_deg": 8}}, output={"shard_size": 48, "layers": ["mask"]})
    generate(recipe, out, workers=1, progress=False)
    return out


def test_training_raises_held_out_pck(run, tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLE), str(run), "--out", str(tmp_path / "out"),
                           "--epochs", "25", "--size", "48", "--width", "16", "--val-every", "4",
                           "--eval-every", "25"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["val_samples"] == 24 and summary["train_samples"] == 72
    assert summary["pck_after"] >= summary["pck_before"] + 0.1, summary
    assert (tmp_path / "out" / "learning_curve.png").stat().st_size > 1000
    assert "epoch 25/25" in proc.stderr  # progress goes to the log


def test_flip_augmentation_moves_keypoints_with_the_pixels():
    """A dot of its own colour at each keypoint stays under that keypoint after the augmentation's
    affine map; when the crop is mirrored, ``left_wrist`` lands on the dot of the body's right
    wrist (the one that now looks like a left wrist), as HMR2's flip permutation does."""
    ex = load_example()
    names = ["nose", "left_wrist", "right_wrist"]
    crops = np.zeros((1, ex.STORE, ex.STORE, 3), np.uint8)
    points = np.float32([[[64, 40], [40, 80], [90, 70]]])
    for k, (x, y) in enumerate(points[0]):
        crops[0, int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3, k] = 255  # nose red, left green, right blue
    data = {"crops": crops, "points": points, "vis": np.ones((1, 3), bool), "side": ex.STORE / ex.STORE_PAD}
    perm = ex.flip_permutation(names)
    assert perm.tolist() == [0, 2, 1]
    rng = np.random.default_rng(4)
    seen_cases = set()
    for _ in range(30):
        x, target, vis = ex.batch(data, np.array([0]), 64, rng, perm)
        image = x[0].numpy()
        colours = []
        for (u, v), ok in zip((target[0].numpy() + 0.5) * 64, vis[0].numpy()):
            assert ok
            row, col = int(round(v)), int(round(u))  # pixel centres at integers
            patch = image[:, max(row - 1, 0):row + 2, max(col - 1, 0):col + 2]
            colours.append(int(patch.reshape(3, -1).max(1).argmax()))
        assert colours in ([0, 1, 2], [0, 2, 1]), colours
        seen_cases.add(tuple(colours))
    assert seen_cases == {(0, 1, 2), (0, 2, 1)}  # both plain and mirrored crops were drawn


def test_not_a_run_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "manifest.json" in proc.stderr and "Traceback" not in proc.stderr
