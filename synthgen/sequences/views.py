"""ControlNet images of every camera of a sequence frame.

Every camera of a sequence shares one prompt (drawn once per sequence from the "prompt" stream,
describing the body at frame 0) and each camera keeps one seed for the whole sequence, so
identity and style stay put as far as the model allows. :func:`sequence_prompt` runs with the
CPU stages; :class:`ControlNetViews` on the device.

What still flickers: diffusion has no temporal coupling, so with a fixed seed and prompt the
texture, lighting and background details still change from frame to frame as the control
images move (strongest on cloth folds, hair and the background; identity drifts less).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synthgen.recipe import Recipe
from synthgen.seeding import sample_rng
from synthgen.subjects.base import PosedSubject


def sequence_prompt(prompter, recipe: Recipe, sequence_index: int, draw: dict[str, Any],
                    vertices: np.ndarray, keypoints: np.ndarray, cameras: int) -> dict[str, Any]:
    """{"prompt", "negative_prompt", "seeds" (one per camera)} of a sequence; ``vertices``
    (V, 3) and ``keypoints`` (K, 3) are the body at frame 0, world frame."""
    params = {"age_years": draw.get("age_years"), "phenotype": draw.get("phenotype")}
    if "betas" in draw:
        params = {"body_model": {"gender": recipe.subject.smpl_gender}}
    subject = PosedSubject(vertices=vertices, keypoints_3d=keypoints, params=params)
    rng = sample_rng(recipe.seed, sequence_index, "prompt")
    prompt, negative = prompter.build({"subject": subject, "labels": {}}, rng)
    return {"prompt": prompt, "negative_prompt": negative,
            "seeds": [int(v) for v in rng.integers(0, 2**63, size=cameras)]}


class ControlNetViews:
    """The ControlNet backend applied to every camera view of a batch of frames."""

    def __init__(self, recipe: Recipe, device: str | None):
        from synthgen.generate.controlnet import ControlNetBackend

        self.pipeline = ControlNetBackend.for_recipe(recipe, device)
        self.batch_size = self.pipeline.config.batch_size

    def generate(self, samples: list[dict[str, Any]], lenses: list) -> None:
        """Sets ``view["image"]`` (H, W, 3) uint8 for every view of every frame (black outside a
        fisheye's field)."""
        views = []
        for sample in samples:
            text = sample["prompt"]
            for view, seed in zip(sample["views"], text["seeds"]):
                views.append({"layers": view["layers"], "prompt": text["prompt"],
                              "negative_prompt": text["negative_prompt"], "seed": seed})
        images = iter(self.pipeline.generate(views))
        for sample in samples:
            for view, lens in zip(sample["views"], lenses):
                image = next(images)
                if lens.valid is not None:
                    image = image.copy()
                    image[~lens.valid] = 0
                view["image"] = image
