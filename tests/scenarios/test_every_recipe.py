"""Every recipe in recipes/ goes through generate -> status -> report -> load_shards.

Weight-free recipes run as they are (smaller). Recipes that name hub models run the same
settings on tiny random-weight models of their family built here (and the embedded quadruped /
meshes where they name licensed files): what is checked is the path, not the images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from synthgen.data import load_shards
from synthgen.recipe import load_recipe
from synthgen.report import run_status, write_report
from synthgen.run import generate
from tests.fixtures.recipes import ROOT

RECIPES = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))
SMALL = ["num_samples=4", "image.width=64", "image.height=64", "output.shard_size=2",
         "backend.controlnet.batch_size=2"]  # shard_size must be a multiple of the diffusion batch
# licensed or downloaded subjects swapped for the embedded ones
EMBEDDED_SUBJECTS = {"genzoo.yaml": ["subject.model=quadruped", "subject.model_path=null",
                                     "subject.animal.cluster_file=null"],
                     "dst3d.yaml": ["subject.model=builtin", "subject.object.paths=[]"]}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    pytest.importorskip("diffusers")
    from synthgen.testing.tiny_models import build_tiny_flux, build_tiny_sd15, build_tiny_sdxl, build_tiny_vae
    from synthgen.testing.tiny_models import build_tiny_sam

    root = tmp_path_factory.mktemp("tiny")
    builders = {"sd15": build_tiny_sd15, "sdxl": build_tiny_sdxl, "flux": build_tiny_flux}
    cache: dict = {}

    def models(family: str, count: int) -> dict:
        if (family, count) not in cache:
            cache[family, count] = builders[family](root / f"{family}-{count}", num_controlnets=count)
            cache[family, count]["vae"] = build_tiny_vae(root / f"{family}-{count}-vae", family, seed=5)
        return cache[family, count]

    return models, build_tiny_sam(root / "sam")


def _tiny_overrides(recipe, tiny_models) -> list[str]:
    """The recipe's own ControlNet bindings, encodings, scales, VAE override, eta and long-prompt
    handling, on tiny models of its family."""
    import json

    models, sam = tiny_models
    config = recipe.backend.controlnet
    tiny = models(config.family, len(config.controlnets))
    units = json.dumps([u.model_dump(mode="json") | {"model": path}
                        for path, u in zip(tiny["controlnets"], config.controlnets)])
    out = [f"backend.controlnet.base_model='{tiny['base']}'", f"backend.controlnet.controlnets={units}",
           "backend.controlnet.steps=2", "backend.controlnet.dtype=fp32", "backend.controlnet.device=cpu",
           "backend.controlnet.batch_size=2"]
    if config.vae is not None:
        out.append(f"backend.controlnet.vae='{tiny['vae']}'")
    if recipe.filter.sam is not None:  # random-weight SAM masks are meaningless: keep every sample
        out += [f"filter.sam.model='{sam}'", "filter.sam.min_iou=0.0", "filter.sam.min_keypoints_in_mask=0.0"]
    return out


def _pinhole(view: dict) -> bool:
    distortion = view["labels"].get("distortion") or {}
    return not (distortion.get("model") == "fisheye" and distortion.get("applied"))


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_generates_and_reads_back(name, tmp_path, request):
    path = ROOT / "recipes" / name
    overrides = SMALL + EMBEDDED_SUBJECTS.get(name, [])
    recipe = load_recipe(path, overrides)
    if recipe.sequence is not None:
        recipe = load_recipe(path, overrides + ["sequence.frames=2"])
    if recipe.backend.kind == "controlnet":
        recipe = load_recipe(path, overrides + _tiny_overrides(recipe, request.getfixturevalue("tiny_models")))
    out = tmp_path / "run"
    manifest = generate(recipe, out, workers=1, progress=False)
    assert manifest["complete"]

    status = run_status(out)
    assert status["done"] == status["total"] == 4 and status["shards_done"] == 2
    assert status["written"] + status["gave_up"] == 4  # rejected draws were drawn again
    page = Path(write_report(out)).read_text()
    assert "contact sheet" in page

    items = list(load_shards(out))
    assert len(items) == manifest["num_samples_written"]
    for item in items:
        assert item["labels"]["recipe_hash"] == manifest["recipe_hash"]
        for view_name, view in item["views"].items():
            record = (item["labels"]["views"][view_name] if "views" in item["labels"] else item["labels"])
            view["labels"] = record
            assert view["instances"] and view["instances"][0]["id"] == 1
            if "instance" in view:  # the id layer: instances[].id where the subject is seen
                seen = view["instance"] == view["instances"][0]["id"]
                assert seen.any() == (view["instances"][0]["bbox"][2] > 0)
            if not _pinhole(view):
                continue
            for instance in view["instances"]:
                X = instance["keypoints_3d"].astype(np.float64)
                front = X[:, 2] > 1e-3
                uv = X[front] @ view["cam_int"].astype(np.float64).T
                np.testing.assert_allclose(uv[:, :2] / uv[:, 2:], instance["keypoints_2d"][front, :2], atol=1e-2)
