"""The HumanWild path end to end on tiny real components: prompts -> ControlNet -> SAM -> shards."""

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from synthgen.data import load_shards  # noqa: E402
from synthgen.run import generate  # noqa: E402
from tests.fixtures.recipes import small_recipe  # noqa: E402
from synthgen.testing.tiny_models import build_tiny_sd15  # noqa: E402
from synthgen.testing.tiny_models import build_tiny_sam  # noqa: E402


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return build_tiny_sd15(root / "sd15", num_controlnets=2), build_tiny_sam(root / "sam")


def _recipe(models, batch_size=3, **extra):
    sd, sam = models
    backend = {"kind": "controlnet", "controlnet": {
        "family": "sd15", "base_model": str(sd["base"]), "steps": 2, "guidance": 5.0, "dtype": "fp32",
        "batch_size": batch_size, "device": "cpu", "local_files_only": True, "scheduler": "unipc",
        "controlnets": [{"model": str(sd["controlnets"][0]), "layer": "normal", "scale": 1.0},
                        {"model": str(sd["controlnets"][1]), "layer": "skeleton", "scale": 0.5}]}}
    # random-weight SAM masks are meaningless: thresholds at 0 keep every sample, scores still recorded
    flt = {"sam": {"model": str(sam), "min_iou": 0.0, "min_keypoints_in_mask": 0.0}}
    return small_recipe(num_samples=6, image={"width": 64, "height": 64}, backend=backend, filter=flt,
                        output={"shard_size": batch_size}, **extra)  # whole batches per shard


def test_controlnet_and_sam_write_images_prompts_and_scores(tmp_path, tiny_models):
    manifest = generate(_recipe(tiny_models), tmp_path / "a", workers=1, progress=False)
    assert manifest["complete"] and manifest["num_samples_written"] == 6
    samples = list(load_shards(tmp_path / "a"))
    assert [s["labels"]["index"] for s in samples] == list(range(6))
    for s in samples:
        labels = s["labels"]
        assert s["image"].shape == (64, 64, 3) and s["image"].std() > 0
        assert labels["prompt"] and labels["negative_prompt"]
        assert 0.0 <= labels["filter"]["sam_iou"] <= 1.0 and labels["filter"]["accepted"]
        assert labels["appearance"]["backend"] == "controlnet"
    assert len({s["labels"]["prompt"] for s in samples}) > 1
    assert "device_input_wait_fraction" in manifest["stats"]


def test_batch_size_and_loader_workers_do_not_change_a_sample(tmp_path, tiny_models):
    generate(_recipe(tiny_models, batch_size=3), tmp_path / "a", workers=1, loader_workers=0, progress=False)
    generate(_recipe(tiny_models, batch_size=2), tmp_path / "b", workers=2, progress=False)
    a, b = list(load_shards(tmp_path / "a")), list(load_shards(tmp_path / "b"))
    for x, y in zip(a, b):
        assert x["labels"]["prompt"] == y["labels"]["prompt"]
        assert x["labels"]["instances"] == y["labels"]["instances"]
        # pixels agree to +-1 before encoding (CPU kernels block batched sums differently; see
        # test_controlnet.test_batching_does_not_change_images); JPEG's 8x8 DCT quantisation can
        # spread such a step over its block (one coefficient crossing a quantisation step moves
        # a block's pixels by up to ~a dozen levels), so the decoded images agree closely, not exactly
        difference = np.abs(x["image"].astype(int) - y["image"].astype(int))
        assert difference.mean() < 0.5 and difference.max() <= 16


def test_same_batch_size_gives_identical_bytes_for_any_fill_and_workers(tmp_path, tiny_models):
    """Every pipeline call has the recipe's batch shape (short batches padded), so the images do
    not depend on which samples share a batch: one run, and a run that makes shard 1 alone
    (its own stream, loader workers) after shard 0 was deleted, write identical shard bytes."""
    recipe = _recipe(tiny_models, batch_size=3)
    generate(recipe, tmp_path / "a", workers=1, loader_workers=0, progress=False)
    generate(recipe.model_copy(update={"num_samples": 3}), tmp_path / "b", workers=1, loader_workers=0,
             progress=False)  # shard 0 alone
    generate(recipe, tmp_path / "b", workers=2, progress=False)  # then shard 1 alone, in loader workers
    for name in ("shard-000000.tar", "shard-000001.tar"):
        assert (tmp_path / "a" / "shards" / name).read_bytes() == (tmp_path / "b" / "shards" / name).read_bytes()


def test_rejected_samples_are_listed_and_kept_aside(tmp_path, tiny_models):
    recipe = _recipe(tiny_models)
    strict = recipe.model_copy(update={"filter": recipe.filter.model_copy(update={
        "sam": recipe.filter.sam.model_copy(update={"min_iou": 1.0}), "write_rejected": True})})
    manifest = generate(strict, tmp_path / "c", workers=1, progress=False)
    # a random-weight SAM never reproduces the rendered silhouette exactly: every draw of every
    # index is rejected (filter.max_attempts draws each)
    attempts = strict.filter.max_attempts
    assert manifest["num_rejected"] == 6 * attempts and manifest["num_samples_written"] == 0
    assert {r["reason"] for r in manifest["rejected"]} <= {"sam_iou", "keypoints_outside_sam_mask"}
    rejected = sorted((tmp_path / "c" / "rejected").glob("shard-*.tar"))
    assert len(rejected) == 2
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["rejected"][0]["index"] == 0
