"""The image backends of the generate stage, and the one that a recipe names.

- ``shaded``: weight-free CG images (CPU, per sample, :mod:`synthgen.generate.shaded`).
- ``controlnet``: diffusers ControlNet pipelines (GPU when present, batched,
  :mod:`synthgen.generate.controlnet`, adapted here to this stage's interface).
- ``none``: no image; shards hold labels and conditioning layers only.

Every backend has ``batch_size`` and ``generate(samples)``, which sets ``sample["image"]`` (and
any labels of its own) on each sample of the batch.
"""

from __future__ import annotations

from typing import Any, Protocol

from synthgen.recipe import Recipe
from synthgen.seeding import attempt_seed, sample_rng


class ImageBackend(Protocol):
    batch_size: int
    uses_prompts: bool

    def generate(self, samples: list[dict[str, Any]]) -> None:
        """Set ``image`` on every sample (or ``error`` on one that cannot be made)."""


class NoImageBackend:
    batch_size = 64
    uses_prompts = False

    def generate(self, samples: list[dict[str, Any]]) -> None:
        for sample in samples:
            sample.update(image=None, appearance=None)


class ShadedBackend:
    batch_size = 32
    uses_prompts = False

    def __init__(self, recipe: Recipe, part_names: list[str]):
        self.recipe, self.part_names = recipe, part_names

    def generate(self, samples: list[dict[str, Any]]) -> None:
        from synthgen.generate.shaded import render_shaded

        for sample in samples:
            seed = attempt_seed(self.recipe.seed, sample.get("attempt", 0))
            try:
                image, appearance = render_shaded(sample["layers"], self.part_names,
                                                  sample_rng(seed, sample["index"], "appearance"),
                                                  sample_rng(seed, sample["index"], "background"),
                                                  self.recipe.backend.shaded, sample.get("world"))
            except (OSError, ValueError) as exc:  # e.g. an unreadable background image
                sample["error"] = f"{type(exc).__name__}: {exc}"
                continue
            sample.update(image=image, appearance=appearance)


class ControlNetImageBackend:
    """Adapter from :class:`synthgen.generate.controlnet.ControlNetBackend` to this stage's API."""

    uses_prompts = True

    def __init__(self, recipe: Recipe, device: str | None = None):
        from synthgen.generate.controlnet import ControlNetBackend

        self.pipeline = ControlNetBackend.for_recipe(recipe, device)
        self.config = self.pipeline.config
        self.batch_size = self.config.batch_size
        self.device = self.pipeline.device
        self.timing = self.pipeline.timing  # "diffusion" device seconds, "compile" warm-up seconds

    def generate(self, samples: list[dict[str, Any]]) -> None:
        """Also sets ``image_device``: the (H, W, 3) uint8 image still on the device, for the
        filter stage (whoever finishes the batch drops it before the sample is written)."""
        from synthgen.generate.speed import to_host

        on_device = self.pipeline.generate_tensor(samples)
        images = to_host(on_device)
        for sample, image, image_device in zip(samples, images, on_device):
            sample.update(image=image, image_device=image_device, appearance={"backend": "controlnet",
                                                   "base_model": self.config.base_model,
                                                   "vae": self.config.vae,
                                                   "controlnets": [u.model_dump() for u in self.config.controlnets],
                                                   "scheduler": self.config.scheduler, "eta": self.config.eta,
                                                   "steps": self.config.steps, "guidance": self.config.guidance})


def build_image_backend(recipe: Recipe, part_names: list[str], device: str | None = None) -> ImageBackend:
    kind = recipe.backend.kind
    if kind == "shaded":
        return ShadedBackend(recipe, part_names)
    if kind == "controlnet":
        return ControlNetImageBackend(recipe, device)
    return NoImageBackend()
