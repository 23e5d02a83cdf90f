"""Weighted recipe distributions and the closed adaptation loop (synthgen.adapt): real Anny samples,
real shards, a small seeded torch regressor; the target is read from tar shards with and without
its labels."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import cv2
import numpy as np
import pytest

from tests.fixtures.recipes import ROOT, small_recipe
from synthgen.errors import UserError
from synthgen.recipe import Histogram, RecipeError, draw_count, draw_weighted, recipe_from_dict

NAMES = ["nose", "left_shoulder", "right_shoulder", "left_hip", "right_hip", "left_ankle", "right_ankle"]
FACTORY = '''
import torch
from torch import nn
from synthgen.adapt import TorchKeypointRegressor

NAMES = {names!r}


class Tiny(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = k
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.head = nn.Linear(8, 2 * k)

    def forward(self, x):
        return 0.5 * torch.tanh(self.head(self.body(x).mean(dim=(2, 3)))).view(-1, self.k, 2)


def make():
    torch.manual_seed(0)
    return TorchKeypointRegressor(Tiny(len(NAMES)), NAMES, 32, feature_layer="body")
'''


# --- weighted distributions ------------------------------------------------------------------------------
def test_a_plain_range_draws_exactly_what_it_drew_before():
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert draw_weighted(a, (2.0, 85.0)) == (float(b.uniform(2.0, 85.0)), None)
    assert draw_count(a, (1, 4)) == (int(b.integers(1, 5)), None)


def test_histogram_draws_follow_the_weights_and_stay_in_their_bin():
    h = Histogram(bins=[0.0, 1.0, 3.0, 6.0], weights=[1.0, 0.0, 3.0])
    rng = np.random.default_rng(0)
    draws = [draw_weighted(rng, h) for _ in range(4000)]
    bins = np.array([k for _, k in draws])
    assert 1 not in bins  # a zero-weight bin is never drawn
    assert abs(np.mean(bins == 2) - 0.75) < 0.03
    assert all(h.bins[k] <= x < h.bins[k + 1] for x, k in draws)


def test_a_mixture_becomes_one_histogram_and_counts_use_integer_bins():
    r = recipe_from_dict({"subject": {"shape": {"age_years": {"mixture": [{"range": [0, 10], "weight": 1},
                                                                         {"range": [5, 15], "weight": 1}]}}},
                          "scene": {"people": {"bins": [1, 2, 4], "weights": [0, 1]}}})
    h = r.subject.shape.age_years
    assert h.bins == [0, 5, 10, 15] and np.allclose(h.probabilities, [0.25, 0.5, 0.25])
    rng = np.random.default_rng(1)
    assert {draw_count(rng, r.scene.people)[0] for _ in range(200)} == {2, 3}


@pytest.mark.parametrize("override, words", [
    ("camera.fov_deg={bins: [40, 30], weights: [1]}", ["camera.fov_deg", "strictly increasing"]),
    ("camera.fov_deg={bins: [30, 40, 50], weights: [1]}", ["camera.fov_deg", "one weight per bin"]),
    ("camera.fov_deg={bins: [30, 40], weights: [0]}", ["camera.fov_deg", "not all zero"]),
    ("camera.fov_deg={bins: [1, 40], weights: [1]}", ["fov_deg", "[5.0, 150.0]"]),
    ("camera.fov_deg={edges: [30, 40], weights: [1]}", ["camera.fov_deg", "bins: [edges...]"]),
    ("subject.shape.age_years={mixture: [{range: [9, 3]}]}", ["age_years", "low < high"]),
    ("scene.people={bins: [1, 2.5], weights: [1]}", ["scene.people", "whole numbers"]),
    ("camera.fov_deg={bins:[30,40],weights:[1]}", ["space after each colon"]),
])
def test_bad_weighted_values_are_one_line_errors(override, words):
    with pytest.raises(RecipeError) as err:
        recipe_from_dict({}, [override])
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value)


def test_cli_rejects_a_bad_histogram_with_exit_2():
    proc = subprocess.run([sys.executable, "-m", "synthgen", "validate", str(ROOT / "recipes" / "quickstart.yaml"),
                           "camera.elevation_deg={bins: [0, 10], weights: [1, 2]}"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "camera.elevation_deg" in proc.stderr and "Traceback" not in proc.stderr


def test_samples_record_the_bins_they_were_drawn_from():
    from synthgen.images import ImageFactory

    recipe = small_recipe(camera={"elevation_deg": {"bins": [-10, 0, 10, 30], "weights": [1, 0, 1]},
                                  "fov_deg": {"bins": [30, 45, 75], "weights": [1, 1]},
                                  "high_view_prob": 0.0, "ground_view_prob": 0.0},
                          subject={"shape": {"age_years": {"bins": [2, 10, 85], "weights": [1, 1]}}},
                          scene={"people": {"bins": [1, 2, 3], "weights": [1, 1]}})
    factory = ImageFactory(recipe, cpu_only=True)
    for sample in factory.prepared([0, 1, 2]):
        labels = sample["labels"]
        bins, cam = labels["bins"], labels["camera"]
        assert set(bins) == {"camera.elevation_deg", "camera.fov_deg", "subject.shape.age_years", "scene.people"}
        assert bins["camera.elevation_deg"] != 1
        for name, value in (("elevation_deg", cam["elevation_deg"]), ("fov_deg", cam["fov_deg"])):
            edges = getattr(recipe.camera, name).bins
            assert edges[bins[f"camera.{name}"]] - 1e-4 <= value <= edges[bins[f"camera.{name}"] + 1] + 1e-4
        age = labels["instances"][0]["params"]["age_years"]
        assert [2, 10, 85][bins["subject.shape.age_years"]] - 1e-4 <= age <= [2, 10, 85][bins["subject.shape.age_years"] + 1]
        assert len(sample["subjects"]) <= bins["scene.people"] + 1  # 1 or 2 drawn (a member may find no spot)
    plain = next(ImageFactory(small_recipe(), cpu_only=True).prepared([0]))
    assert "bins" not in plain["labels"]  # recipes without weights write what they wrote before


# --- weights ---------------------------------------------------------------------------------------------
def test_floored_weights_are_normalised_and_respect_the_floor():
    from synthgen.adapt import floored, next_weights

    rng = np.random.default_rng(0)
    for k in (2, 5, 10):
        for _ in range(20):
            raw = rng.random(k) * (rng.random(k) < 0.5)
            w = floored(raw, 0.03)
            assert abs(w.sum() - 1.0) < 1e-12 and w.min() >= 0.03 - 1e-12
            base, err, tgt = rng.dirichlet(np.ones(k)), rng.random(k), rng.dirichlet(np.ones(k))
            n = next_weights(base, err, tgt, 0.5, 0.03)
            assert abs(n.sum() - 1.0) < 1e-12 and n.min() >= 0.03 - 1e-12
    # more mass where target and error meet
    n = next_weights(np.full(4, 0.25), np.array([0.1, 0.1, 0.1, 0.9]), np.array([0.1, 0.1, 0.1, 0.7]), 0.5, 0.02)
    assert n.argmax() == 3 and n[3] > 0.5
    # a bin the base never draws (a gap between ranges) gets only the floor, however the target looks there
    n = next_weights(np.array([0.5, 0.0, 0.5]), np.ones(3), np.array([0.2, 0.6, 0.2]), 0.0, 0.01)
    assert n[1] == pytest.approx(0.01) and n[0] == pytest.approx(n[2]) and abs(n.sum() - 1.0) < 1e-12


def test_attribute_bins_carry_the_base_distribution():
    from synthgen.adapt import attribute_bins, recipe_with_weights

    recipe = recipe_from_dict({"scene": {"people": [1, 3]}})
    bins = {name: attribute_bins(recipe, name, 6) for name in
            ("camera.elevation_deg", "subject.shape.age_years", "subject.pose.library", "scene.people")}
    for b in bins.values():
        assert abs(b["base"].sum() - 1.0) < 1e-12
    elevation = bins["camera.elevation_deg"]
    high = np.array(elevation["edges"][:-1]) >= 35.0
    assert abs(elevation["base"][high].sum() - recipe.camera.high_view_prob) < 1e-12  # high views joined in
    assert bins["scene.people"]["edges"] == [1.0, 2.0, 3.0, 4.0]
    again = recipe_with_weights(recipe, bins, {n: b["base"] for n, b in bins.items()}, 3, 10)
    assert again.camera.high_view_prob == 0.0 and isinstance(again.camera.elevation_deg, Histogram)
    assert np.allclose(again.camera.elevation_deg.probabilities, elevation["base"])


def test_importance_weights_favour_probes_that_look_like_the_target():
    from synthgen.adapt import importance_weights

    rng = np.random.default_rng(0)
    probe, target = rng.normal(0, 1, (300, 4)), rng.normal(1, 1, (150, 4))
    w, info = importance_weights(probe, target)
    assert abs(w.mean() - 1.0) < 1e-9 and info["classifier_accuracy"] > 0.7
    assert np.corrcoef(w, probe.sum(axis=1))[0, 1] > 0.5


def test_bin_classifier_estimates_how_the_target_spreads_over_bins():
    """Label-shift estimate: labelled samples of 3 bins (features centred per bin), a target drawn 80% from
    bin 2: the estimated share of bin 2 rises far above its labelled share, and the estimate is a
    distribution."""
    from synthgen.adapt import target_shares

    rng = np.random.default_rng(1)
    centres = np.array([[0, 0, 0, 0], [2, 0, 0, 0], [0, 2, 0, 0]], dtype=float)
    members = rng.integers(0, 3, 600)
    labelled = centres[members] + rng.normal(0, 0.7, (600, 4))
    drawn = rng.choice(3, 200, p=[0.1, 0.1, 0.8])
    target = centres[drawn] + rng.normal(0, 0.7, (200, 4))
    plain, how = target_shares(labelled, members, 4, target, l2=1.0, min_skill=2.0)  # never adjusted
    assert not how["adjusted"] and how["skill"] > 0.3
    assert plain.shape == (4,) and abs(plain.sum() - 1.0) < 1e-9 and plain[3] == 0.0  # bin 3: no sample
    assert plain[2] > 0.6 and plain[0] < 0.2
    adjusted, how = target_shares(labelled, members, 4, target, l2=1.0)
    assert how["adjusted"] and abs(adjusted.sum() - 1.0) < 1e-9 and adjusted.min() >= 0.0
    assert abs(adjusted[2] - 0.8) < abs(plain[2] - 0.8)  # the adjusted count undoes the pull toward 1/3
    # features that carry nothing about the bins: no skill, and the estimate stays near the labelled shares
    noise, how = target_shares(rng.normal(0, 1, (600, 4)), members, 4, rng.normal(0, 1, (200, 4)), l2=1.0)
    assert not how["adjusted"] and np.abs(noise[:3] - np.bincount(members) / 600).max() < 0.05
    # a bin only a few labelled samples fell in has no usable confusion row: left out, estimated 0
    few = np.r_[members, [3, 3, 3]]
    rare, how = target_shares(np.vstack([labelled, centres[[2, 2, 2]]]), few, 4, target, l2=1.0, min_count=5)
    assert rare[3] == 0.0 and how["adjusted"] and abs(rare[2] - adjusted[2]) < 0.05


def test_keypoint_geometry_sees_proportions_not_position_or_size():
    from synthgen.adapt import keypoint_geometry

    rng = np.random.default_rng(2)
    points = rng.uniform(10, 50, (3, 6, 2))
    moved = points * 0.5 + np.array([7.0, -3.0])
    a, b = keypoint_geometry(points, 64), keypoint_geometry(moved, 64)
    assert a.shape == (3, 2 + 15)
    assert np.allclose(a[:, 1:], b[:, 1:]) and np.allclose(a[:, 0] - b[:, 0], np.log(2.0))
    stretched = points * np.array([1.0, 2.0])  # taller: the vertical/horizontal extent ratio grows
    assert (keypoint_geometry(stretched, 64)[:, 1] > a[:, 1]).all()


def test_bad_loop_settings_are_one_line_errors():
    from synthgen.adapt import AdaptConfig

    recipe = recipe_from_dict({})
    for config, words in ((AdaptConfig(floor=0.2), "--floor=0.2"), (AdaptConfig(attributes=["camera.roll"]), "camera.roll"),
                          (AdaptConfig(rounds=0), "--rounds=0"), (AdaptConfig(mix=2.0), "--mix=2.0"),
                          (AdaptConfig(estimator="guess"), "--estimator=guess"),
                          (AdaptConfig(start="target"), "--start=target"),
                          (AdaptConfig(unskilled="drop"), "--unskilled=drop")):
        with pytest.raises(UserError, match=words.replace(".", r"\.").replace("[", r"\[")):
            config.check(recipe)


# --- the loop, end to end --------------------------------------------------------------------------------
def _target_tars(tmp_path):
    """Person crops of a shifted run as two tar shards: one with each crop's labels beside it, one without."""
    from synthgen.adapt import read_probe
    from synthgen.run import generate

    run = tmp_path / "target-run"
    generate(small_recipe(seed=11, num_samples=8, subject={"shape": {"age_years": [2, 10]}},
                          camera={"high_view_prob": 1.0}, output={"shard_size": 8, "layers": []}),
             run, workers=1, progress=False)
    probe = read_probe(run, 32, 1.2, NAMES)
    out = []
    for name, with_labels in (("labelled.tar", True), ("bare.tar", False)):
        with tarfile.open(tmp_path / name, "w") as tar:
            for i, (crop, labels) in enumerate(zip(probe["crops"], probe["labels"])):
                members = {"png": cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))[1].tobytes()}
                if with_labels:
                    members["json"] = json.dumps(labels).encode()
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        out.append(tmp_path / name)
    return out


def test_the_loop_is_deterministic_and_never_reads_target_labels(tmp_path):
    from synthgen.adapt import AdaptConfig, adapt, floored, load_regressor
    from synthgen.cli import main
    from synthgen.run import generate

    factory = tmp_path / "tiny_regressor.py"
    factory.write_text(FACTORY.format(names=NAMES))
    labelled, bare = _target_tars(tmp_path)
    recipe = small_recipe(output={"shard_size": 4, "layers": []})
    reference = tmp_path / "reference"  # labelled synthetic samples: teach the estimate before round 0
    generate(small_recipe(seed=5, num_samples=8, output={"shard_size": 8, "layers": []}), reference, workers=1,
             progress=False)
    config = AdaptConfig(rounds=2, probe=8, bins=4, seed=3)
    first = adapt(recipe, load_regressor(f"{factory}:make"), tmp_path / "a", config, target=labelled,
                  reference=[reference])

    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(json.dumps(recipe.model_dump(mode="json")))
    code = main(["adapt", str(recipe_file), "--out", str(tmp_path / "b"), "--regressor", f"{factory}:make",
                 "--target", str(bare), "--rounds", "2", "--probe", "8", "--bins", "4", "--seed", "3",
                 "--reference", str(reference)])
    assert code == 0
    for name in ("adapt.json", "recipe.yaml", "round-1/recipe.yaml", "round-1/probe/shards/shard-000001.tar"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

    assert first["target"]["images"] == 8 and len(first["rounds"]) == 2
    for record in first["rounds"]:
        assert record["probe_samples"] == 8 and 0.0 <= record["probe_pck"] <= 1.0
        for name, attr in record["attributes"].items():
            w = np.array(attr["next_weights"])
            assert abs(w.sum() - 1.0) < 1e-5 and w.min() >= config.floor - 1e-6, name
            assert abs(sum(attr["target"]) - 1.0) < 1e-5 and sum(attr["count"]) == 8 * (record["round"] + 1)
            assert isinstance(attr["adjusted"], bool) and attr["skill"] <= 1.0  # how the estimate was made
            assert attr["target_used"] == attr["adjusted"]
    # round 0 was drawn from the estimate taught on the reference run (flat error), floored and normalised
    assert first["reference_samples"] == 8
    assert first["rounds"][0]["probe_weights"] == {n: a["weights"] for n, a in first["start"].items()}
    for name, attr in first["start"].items():
        w, base = np.array(attr["weights"]), np.array(first["bins"][name]["base"])
        # an estimate without skill is not used: no evidence that the target differs from the base there
        assert attr["target_used"] == attr["adjusted"]
        focus = np.array(attr["target"]) / sum(attr["target"]) if attr["target_used"] else base
        assert np.allclose(w, floored(config.mix * base + (1 - config.mix) * focus, config.floor), atol=1e-5), name
    # the next round's probes were drawn from the weights the previous round wrote
    assert first["rounds"][1]["probe_weights"] == {n: a["next_weights"] for n, a in first["rounds"][0]["attributes"].items()}


def test_cli_adapt_errors_are_one_line(tmp_path, capsys):
    from synthgen.cli import main

    recipe = str(ROOT / "recipes" / "quickstart.yaml")
    assert main(["adapt", recipe, "--out", str(tmp_path), "--regressor", "nowhere.py:make"]) == 2
    assert main(["adapt", recipe, "--out", str(tmp_path), "--regressor", "x:y", "--floor", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "nowhere.py" in err[0] and "--floor=0.5" in err[1]


def test_hmr2_adapter_feeds_4d_humans_crops_and_reads_its_outputs():
    """HMR2's I/O contract (no weights here): (B, 3, 256, 192) ImageNet-normalised input; 44 keypoints
    in [-0.5, 0.5] of the 256 crop; features from ``backbone``."""
    import torch

    from synthgen.adapt import HMR2Regressor

    class FourDHumansShaped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Conv2d(3, 5, 16, 16)

        def forward(self, batch):
            x = batch["img"]
            assert x.shape[1:] == (3, 256, 192)
            centre = x.mean(dim=(1, 2, 3))[:, None, None].expand(-1, 44, 2)
            return {"pred_keypoints_2d": torch.zeros(len(x), 44, 2) + 0.0 * centre}

    reg = HMR2Regressor(FourDHumansShaped(), batch_size=2)
    images = np.random.default_rng(0).integers(0, 255, (3, 256, 256, 3), dtype=np.uint8)
    points = reg.predict(images)
    assert points.shape == (3, 44, 2) and np.allclose(points, 127.5)  # crop centre in pixel-centre units
    assert reg.features(images).shape == (3, 5) and len(reg.keypoint_names) == 44


def test_the_example_prints_its_json_line(tmp_path):
    """examples/adapt_regressor.py at a CI size (the figures in the README come from its defaults)."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "adapt_regressor.py"), "--out", str(out),
                           "--seeds", "0", "--init", "24", "--budget", "16", "--test", "8", "--rounds", "2",
                           "--epochs", "1", "--finetune-epochs", "1", "--image", "128"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("uniform_pck", "adapted_pck", "base_uniform_pck", "base_adapted_pck", "rounds", "seeds",
                "last_round_weights"):
        assert key in summary, key
    assert summary["rounds"] == 2 and summary["seeds"] == [0] and (out / "weights_across_rounds.png").is_file()
    for weights in summary["last_round_weights"].values():
        assert abs(sum(weights) - 1.0) < 1e-5


def test_without_a_target_the_rounds_follow_the_errors(tmp_path):
    from synthgen.adapt import AdaptConfig, adapt, load_regressor

    factory = tmp_path / "tiny_regressor.py"
    factory.write_text(FACTORY.format(names=NAMES))
    config = AdaptConfig(rounds=1, probe=8, bins=3, attributes=["camera.fov_deg"], mix=0.0, floor=0.05, shrink=0.0)
    manifest = adapt(small_recipe(output={"shard_size": 8, "layers": []}), load_regressor(f"{factory}:make"),
                     tmp_path / "out", config)
    attr = manifest["rounds"][0]["attributes"]["camera.fov_deg"]
    assert manifest["target"] is None and attr["target"] is None
    base = np.array(manifest["bins"]["camera.fov_deg"]["base"])
    expected = 0.05 + (1 - 3 * 0.05) * base * np.array(attr["error"]) / (base * np.array(attr["error"])).sum()
    assert np.allclose(attr["next_weights"], expected, atol=1e-6)
