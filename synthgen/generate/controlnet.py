"""The ``controlnet`` image backend: diffusers ControlNet pipelines (SD1.5, SDXL, FLUX).

A recipe names a base model and one or more ControlNets, each bound to a rendered layer with
its conditioning scale (several = multi-ControlNet, e.g. GenZoo's canny 0.2 + depth 0.65)::

    backend:
      kind: controlnet
      controlnet:
        family: sd15
        base_model: stable-diffusion-v1-5/stable-diffusion-v1-5    # hub id or local folder
        controlnets:
          - {model: lllyasviel/control_v11p_sd15_normalbae, layer: normal, scale: 1.0}

Use it in two steps:

1. :func:`synthgen.generate.pipelines.check_models_available` before any work: it looks for
   every model on disk (a local folder, or the Hugging Face cache) without loading anything and
   raises one :class:`~synthgen.errors.MissingModelError` naming each missing model and how to
   fetch it.
2. :class:`ControlNetBackend` loads the pipeline once per process; ``generate(samples)``
   returns one (H, W, 3) uint8 RGB image per sample.

Determinism: each image's initial noise is drawn up front on the CPU from its own generator
seeded from its sample's seed and moved to the device once per call; noise drawn at each step
(DDIM with eta > 0, ancestral samplers) comes from per-image generators too (on CUDA, device
generators: no copy per step; see ``ControlNetBackend._noise``), so a sample's noise never depends
on its batch. Every pipeline call has exactly
``batch_size`` images (a short batch is padded with copies, each sample in slot
``index % batch_size``), so compiled graphs keep one shape and a sample's pixels are the same
bits whichever samples share its batch; across batch sizes they agree up to float rounding of
batched kernels (see ``tests/generate/test_controlnet.py``, ``tests/generate/test_controlnet_batches.py``).
Images leave the device as uint8 (``output_type="pt"``, converted there). ``speed`` options: see
:mod:`synthgen.generate.speed`. Prompts over 77 CLIP tokens (sd15, sdxl) are
encoded whole by compel (:class:`~synthgen.generate.long_prompts.LongPrompts`), padded to 154, 308 or 616 tokens (few shapes for
compiled graphs), and run in groups of equal embedding length.

What a ControlNet sees is computed in the render stage from the unit's ``encoding``
(``layers["controls"][i]``, see :mod:`synthgen.render.layers`); the table below is the fallback
for render dicts without it.

Which layer feeds a ControlNet (:data:`LAYER_SOURCES`; shapes from :mod:`synthgen.render`):

==========  ==================  ===========================================================
layer       render key          what the ControlNet sees, (H, W, 3) uint8 RGB
==========  ==================  ===========================================================
normal      ``normal_rgb``      encoded normals (``render.normal_convention``)
depth       ``depth_control``   inverted normalised depth, near bright, grey in 3 channels
edges       ``edges``           Canny edges of the normal render, white on black
skeleton    ``skeleton``        OpenPose-18 stick figure on black
mask        ``mask``            subject silhouette, white on black
==========  ==================  ===========================================================
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from synthgen.errors import UserError
from synthgen.generate.long_prompts import LongPrompts
from synthgen.generate.model_check import WantedModel, hub_offline, locate
from synthgen.generate.pipelines import FAMILIES, SCHEDULERS, check_models_available, wanted_models
from synthgen.generate.speed import DeviceClock, apply_speed, fp16_variant, resolve_device, to_host, to_uint8
from synthgen.recipe import ControlNetConfig, Recipe

log = logging.getLogger(__name__)

__all__ = ["LAYER_SOURCES", "control_image", "ControlNetBackend"]

# recipe layer name -> key of the render dict (see synthgen.render.render_layers)
LAYER_SOURCES = {"normal": "normal_rgb", "depth": "depth_control", "edges": "edges",
                 "skeleton": "skeleton", "mask": "mask"}

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


# --- control images ----------------------------------------------------------------------------
def control_image(layers: dict, layer_name: str, index: int | None = None) -> np.ndarray:
    """The (H, W, 3) uint8 RGB image a ControlNet bound to ``layer_name`` sees.

    layers: the render dict of one sample (:func:`synthgen.render.render_layers` plus
    ``skeleton``); layer_name: one of :data:`LAYER_SOURCES`; index: the ControlNet's position in
    the recipe. When the render stage encoded each ControlNet's input (``layers["controls"]``,
    per the unit's ``encoding``), that image is used as it is; otherwise the layer's stored form.
    One-channel layers (depth, edges, mask) are repeated into three channels, the way the
    ControlNet annotators save them.
    """
    controls = layers.get("controls")
    if index is not None and controls is not None:
        image = np.asarray(controls[index])
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"layers['controls'][{index}] must be (H, W, 3) uint8, got "
                             f"{image.shape} {image.dtype}")
        return image
    if layer_name not in LAYER_SOURCES:
        raise ValueError(f"control layer {layer_name!r} is not one of {sorted(LAYER_SOURCES)}")
    key = LAYER_SOURCES[layer_name]
    if key not in layers:
        raise KeyError(f"control layer {layer_name!r} needs render layer {key!r}, which this sample "
                       f"lacks (it has {sorted(layers)})")
    image = np.asarray(layers[key])
    if image.dtype != np.uint8:
        raise ValueError(f"render layer {key!r} must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"render layer {key!r} must be (H, W) or (H, W, 3), got {image.shape}")
    return np.ascontiguousarray(image)


# --- the backend -------------------------------------------------------------------------------
def _resolve_dtype(config: ControlNetConfig, device: str):
    import torch

    name = config.dtype
    if device == "cpu" and name == "fp16":
        log.info("backend.controlnet.dtype=fp16 runs as fp32 on CPU (CPU fp16 is slow and lossy)")
        name = "fp32"
    return getattr(torch, _DTYPES[name])


def _dtype_kwarg() -> str:
    """diffusers 0.42 renamed ``torch_dtype`` to ``dtype`` (the old name warns)."""
    import diffusers
    from packaging.version import Version

    return "dtype" if Version(diffusers.__version__).release >= (0, 42) else "torch_dtype"


@contextlib.contextmanager
def _loading_bars_off():
    """Hide diffusers'/transformers' per-component loading bars, then restore their setting."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    states = [(m, m.is_progress_bar_enabled()) for m in (diffusers_logging, transformers_logging)]
    for module, _ in states:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module, was_enabled in states:
            if was_enabled:
                module.enable_progress_bar()


def _on_disk(name: str) -> Path | None:
    """The folder model ``name`` loads from: itself when a local folder, else its cached snapshot."""
    from synthgen.generate.model_check import cached_snapshot, is_hub_id

    path = Path(name).expanduser()
    if path.is_dir():
        return path
    return cached_snapshot(name) if is_hub_id(name) else None


def _set_scheduler(pipe, name: str) -> None:
    import diffusers

    if name == "default" or (name == "euler" and "FlowMatch" in type(pipe.scheduler).__name__):
        return
    pipe.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(pipe.scheduler.config)


class ControlNetBackend:
    """A loaded ControlNet pipeline that turns rendered layers into images.

    config: the recipe's ``backend.controlnet``; width, height: the recipe's image size (every
    sample's layers must have it). Loading checks the models first (fast failure) and takes
    seconds to minutes; build one backend per process and reuse it.
    """

    @classmethod
    def for_recipe(cls, recipe: Recipe, device: str | None = None) -> ControlNetBackend:
        """``recipe``'s backend; ``device`` (the engine's, e.g. ``cuda:1``) settles ``device: auto``."""
        config = recipe.backend.controlnet
        if device is not None and config.device == "auto":
            config = config.model_copy(update={"device": "cuda" if str(device).startswith("cuda") else "cpu"})
        return cls(config, recipe.image.width, recipe.image.height)

    def __init__(self, config: ControlNetConfig, width: int, height: int):
        import diffusers
        import torch

        # 1. check the settings and that every model is on disk, before loading anything
        check_models_available(config)
        if width % 8 or height % 8:
            raise UserError(f"image size {width}x{height}: diffusion needs multiples of 8")
        self.config, self.width, self.height = config, width, height
        self.family = FAMILIES[config.family]
        self.device = resolve_device(config.device, "backend.controlnet.device")
        self.dtype = _resolve_dtype(config, self.device)
        offline = hub_offline(config.local_files_only)
        base, *units = wanted_models(config)
        vae = units.pop() if config.vae is not None else None

        def load(model: WantedModel) -> dict:
            # a model already on disk loads from there: no hub round trip, no update check
            on_disk = offline or locate(model.name, model.problems, offline=True) is None
            kwargs = {_dtype_kwarg(): self.dtype, "local_files_only": on_disk}
            if self.dtype == torch.float16:  # half the download and host memory where it ships
                variant = fp16_variant(_on_disk(model.name), model.name, on_disk)
                kwargs.update({"variant": variant} if variant else {})
            return kwargs

        with _loading_bars_off():
            # 2. the ControlNets, one per unit (several -> the family's multi-ControlNet wrapper)
            net_class = getattr(diffusers, self.family.controlnet)
            nets = [net_class.from_pretrained(unit.name, **load(unit)) for unit in units]
            controlnet = nets[0] if len(nets) == 1 else getattr(diffusers, self.family.multi)(nets)

            # 3. the VAE that replaces the base model's (e.g. SDXL's fp16-fix VAE), if any
            extra = dict(self.family.load_kwargs)
            if vae is not None:
                extra["vae"] = diffusers.AutoencoderKL.from_pretrained(vae.name, **load(vae))

            # 4. the base pipeline around them
            pipe_class = getattr(diffusers, self.family.pipeline)
            self.pipe = pipe_class.from_pretrained(base.name, controlnet=controlnet, **load(base), **extra)

        # 5. scheduler, device, speed options (see synthgen.generate.speed), progress bars
        _set_scheduler(self.pipe, config.scheduler)
        _check_eta(self.pipe, config)
        self.pipe.to(self.device)
        self.speed = apply_speed(self.pipe, config.speed, self.device, width * height)
        self.pipe.set_progress_bar_config(disable=True)
        self.batch_size = config.batch_size  # every pipeline call has this many images (padded)
        self.timing: dict[str, float] = {}   # "diffusion": device seconds, "compile": warm-up seconds
        self.clock = DeviceClock(self.device, self.timing)
        self.long_prompts = LongPrompts(self.pipe, config) if config.family != "flux" else None
        scale = self.pipe.vae_scale_factor  # (C, h, w) of one image's initial latents (sd15, sdxl)
        self.latent_shape = (None if config.family == "flux" else
                             (self.pipe.unet.config.in_channels, height // scale, width // scale))
        if not self.family.negative_prompt:
            log.info("family=%s ignores negative prompts; guidance=%s is its embedded guidance",
                     config.family, config.guidance)
        log.info("controlnet backend: %s %s + %s on %s (%s), vae %s, scheduler %s (eta %s), %d steps, "
                 "batch %d", config.family, config.base_model, [u.model for u in config.controlnets],
                 self.device, str(self.dtype).removeprefix("torch."), config.vae or "the base's",
                 type(self.pipe.scheduler).__name__, config.eta, config.steps, config.batch_size)
        self._torch = torch
        if config.speed.compile:
            self.warm_up()

    def warm_up(self) -> float:
        """One full batch of blank inputs through the pipeline: compiles every graph of the fixed
        batch shape now (once per process, and once more after an out-of-memory halving) rather
        than in the first real batch. A CUDA out-of-memory error here halves ``batch_size`` too
        (``speed.oom_halving``) and warms the new shape up. Returns seconds, also kept in
        ``timing["compile"]``."""
        blank = np.zeros((self.height, self.width, 3), np.uint8)
        sample = {"layers": {"controls": [blank] * len(self.config.controlnets)}, "prompt": "",
                  "negative_prompt": "", "seed": 0}
        start = time.perf_counter()
        while True:
            try:
                self._run([sample], None)
                break
            except self._torch.cuda.OutOfMemoryError as exc:
                message = self._oom_message(exc)  # keeps no reference to exc or its frames
            self._halve(message, "warm-up")
        seconds = time.perf_counter() - start
        self.timing["compile"] = self.timing.get("compile", 0.0) + seconds
        log.info("warm-up (torch.compile, batch %d): %.1f s", self.batch_size, seconds)
        return seconds

    def _oom_message(self, exc: BaseException) -> str:
        """The error's first line; re-raises it when halving is off or the batch is already 1."""
        if not self.config.speed.oom_halving or self.batch_size == 1:
            raise exc
        return str(exc).splitlines()[0] if str(exc) else "out of memory"

    def _halve(self, message: str, where: str) -> None:
        """Halve ``batch_size`` for the rest of the run after an out-of-memory error, logged."""
        old, self.batch_size = self.batch_size, max(1, self.batch_size // 2)
        log.warning("CUDA out of memory at batch %d during %s (%s): batch_size halved to %d for the rest "
                    "of this run; set backend.controlnet.batch_size=%d to start there", old, where, message,
                    self.batch_size, self.batch_size)
        if self._torch.cuda.is_available():
            self._torch.cuda.empty_cache()

    # -------------------------------------------------------------------------------------------
    def check_inputs(self, samples: list[dict]) -> None:
        """Each sample needs ``layers`` (with every bound layer at the recipe size), ``prompt``
        (str), ``negative_prompt`` (str, may be empty) and ``seed`` (int in [0, 2**64))."""
        if not isinstance(samples, list) or not samples:
            raise ValueError(f"samples must be a non-empty list of dicts, got {type(samples).__name__}")
        for i, sample in enumerate(samples):
            for key in ("layers", "prompt", "seed"):
                if key not in sample:
                    raise KeyError(f"samples[{i}] lacks {key!r} (it has {sorted(sample)})")
            if not isinstance(sample["prompt"], str):
                raise TypeError(f"samples[{i}]['prompt'] must be str, got {type(sample['prompt']).__name__}")
            if not isinstance(sample.get("negative_prompt", ""), str):
                raise TypeError(f"samples[{i}]['negative_prompt'] must be str")
            seed = sample["seed"]
            if not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
                raise ValueError(f"samples[{i}]['seed'] must be an int in [0, 2**64), got {seed!r}")
            for index, unit in enumerate(self.config.controlnets):
                image = control_image(sample["layers"], unit.layer, index)
                if image.shape[:2] != (self.height, self.width):
                    raise ValueError(f"samples[{i}] layer {unit.layer!r} is {image.shape[1]}x"
                                     f"{image.shape[0]}, but the recipe image is "
                                     f"{self.width}x{self.height}")

    def generate(self, samples: list[dict]) -> list[np.ndarray]:
        """One (H, W, 3) uint8 RGB image per sample, in order (NumPy, on the host)."""
        return list(to_host(self.generate_tensor(samples)))

    def generate_tensor(self, samples: list[dict]):
        """(N, H, W, 3) uint8 RGB images of ``samples`` in order, on the backend's device.

        Samples are run ``batch_size`` at a time; each image's noise comes from its own
        generator seeded with ``sample['seed']``, and every pipeline call has exactly
        ``batch_size`` images (a short batch is padded), so compiled graphs keep one shape and a
        sample's pixels do not depend on how full its batch was. A CUDA out-of-memory error
        halves ``batch_size`` for the rest of the run (``speed.oom_halving``).
        """
        # 1. check inputs
        self.check_inputs(samples)
        # 2. run the batches
        images, start = [], 0
        while start < len(samples):
            batch = samples[start:start + self.batch_size]
            log.debug("controlnet batch %d-%d of %d", start, start + len(batch) - 1, len(samples))
            images.append(self._batch_or_halve(batch))
            start += len(batch)
        return self._torch.cat(images)

    def _batch_or_halve(self, batch: list[dict]):
        """Images of ``batch`` (at most ``batch_size``); on CUDA out-of-memory, ``batch_size``
        halves, the new shape is warmed up once when compiled (:meth:`warm_up`, logged), and the
        batch runs in halves (each padded to the new size)."""
        torch = self._torch
        try:
            return self._generate_batch(batch)
        except torch.cuda.OutOfMemoryError as exc:  # the except block drops exc and its frames
            message = self._oom_message(exc)
        self._halve(message, "diffusion")
        if self.config.speed.compile:
            self.warm_up()
        return torch.cat([self._batch_or_halve(batch[i:i + self.batch_size])
                          for i in range(0, len(batch), self.batch_size)])

    def control_uint8(self, batch: list[dict]) -> list:
        """Per ControlNet, the batch's (B, H, W, 3) uint8 control images on the device: they
        cross to it as bytes (a quarter of float32), from pinned memory without blocking."""
        torch = self._torch
        out = []
        for index, unit in enumerate(self.config.controlnets):
            stack = torch.from_numpy(np.stack([control_image(s["layers"], unit.layer, index) for s in batch]))
            if self.device != "cpu":
                stack = stack.pin_memory().to(self.device, non_blocking=True)
            out.append(stack)
        return out

    def control_tensors(self, batch: list[dict]) -> list:
        """Per ControlNet, a (B, 3, H, W) float32 tensor in [0, 1] on the device, converted there
        from the uint8 images: what diffusers' control-image processor makes of RGB images
        (``/ 255`` in float32), so its own preprocessing then only checks shapes."""
        return [images.permute(0, 3, 1, 2).float() / 255.0 for images in self.control_uint8(batch)]

    def _generate_batch(self, batch: list[dict]):
        """(B, H, W, 3) uint8 images of one batch, in order, on the device. Samples whose prompts
        fit the text encoder go through the pipeline's own prompt encoding; longer ones
        (sd15/sdxl) are encoded whole by compel and run in groups of equal embedding length, so
        a sample's image never depends on the prompts it was batched with."""
        torch = self._torch
        groups: dict[int, list[int]] = {}
        encoded: dict[int, dict[str, Any]] = {}
        for i, sample in enumerate(batch):
            if self.long_prompts is not None and self.long_prompts.too_long(sample):
                encoded[i] = self.long_prompts.encode(sample)
            length = encoded[i]["prompt_embeds"].shape[1] if i in encoded else 0
            groups.setdefault(length, []).append(i)
        images = torch.empty((len(batch), self.height, self.width, 3), dtype=torch.uint8, device=self.device)
        for length, members in groups.items():
            embeds = None
            if length:
                embeds = {key: torch.cat([encoded[i][key] for i in members]) for key in encoded[members[0]]}
            images[members] = self._run([batch[i] for i in members], embeds)
        return images

    def batch_slots(self, batch: list[dict]) -> list[int]:
        """Where each sample of ``batch`` sits in the padded call: slot ``index % batch_size``
        (``index``: the sample's, else its position) when free, else the first free one. CPU
        kernels may round a row differently by its position in the batch, so a sample keeps its
        slot whichever samples fill the others (a short last batch, failed samples)."""
        size, taken, slots = max(self.batch_size, len(batch)), set(), []
        for k, sample in enumerate(batch):
            slot = int(sample.get("index", k)) % size
            if slot in taken:
                slot = min(set(range(size)) - taken)
            taken.add(slot)
            slots.append(slot)
        return slots

    def _run(self, batch: list[dict], embeds: dict[str, Any] | None):
        """One pipeline call of exactly ``batch_size`` images: each sample in its slot (see
        :meth:`batch_slots`), the free slots filled with copies of the first sample (their images are
        dropped). ``embeds``: compel's prompt embeddings (one row per sample of ``batch``), or
        None for the prompt strings. Returns (len(batch), H, W, 3) uint8 on the device."""
        torch, config, family = self._torch, self.config, self.family
        units = config.controlnets
        multi = len(units) > 1
        slots = self.batch_slots(batch)
        source = [0] * max(self.batch_size, len(batch))  # which sample of ``batch`` fills each slot
        for k, slot in enumerate(slots):
            source[slot] = k
        batch = [batch[k] for k in source]
        if embeds is not None:
            rows = torch.tensor(source)
            embeds = {key: value[rows.to(value.device)] for key, value in embeds.items()}

        # 1. control images, and each image's noise from its own generator (see _noise)
        controls = self.control_tensors(batch)
        latents, generators = self._noise(batch)

        # 2. the call's arguments (lists per ControlNet when there are several)
        kwargs: dict[str, Any] = {
            family.image_arg: controls if multi else controls[0],
            "height": self.height, "width": self.width,
            "num_inference_steps": config.steps, "guidance_scale": config.guidance,
            "controlnet_conditioning_scale": [u.scale for u in units] if multi else units[0].scale,
            "control_guidance_start": [u.start for u in units] if multi else units[0].start,
            "control_guidance_end": [u.end for u in units] if multi else units[0].end,
            "generator": generators, "output_type": "pt",
        }
        if latents is not None:
            kwargs["latents"] = latents
        if embeds is not None:
            kwargs.update({key: value.to(self.device) for key, value in embeds.items()})
        else:
            kwargs["prompt"] = [s["prompt"] for s in batch]
            if family.negative_prompt:
                kwargs["negative_prompt"] = [s.get("negative_prompt", "") for s in batch]
        if config.family == "flux":
            kwargs["max_sequence_length"] = FLUX_T5_TOKENS
        if config.eta is not None:
            kwargs["eta"] = config.eta

        # 3. denoise and decode, then to uint8 RGB on the device
        with self.clock.timing("diffusion"):
            out = self.pipe(**kwargs).images  # (B, 3, H, W) float in [0, 1]
            pixels = to_uint8(out[slots])
        return pixels


    def _noise(self, batch: list[dict]):
        """(initial latents on the device or None, generators for the pipeline) of one call.

        Each image's initial noise is drawn up front on the CPU from its own generator seeded
        with its sample's seed, exactly as diffusers' ``prepare_latents`` would draw it
        (``randn_tensor`` with the list of generators, the pipeline's dtype), and moved to the
        device once (pinned, non-blocking). Noise drawn inside the denoising loop (DDIM with
        eta > 0, ancestral samplers) comes from the generators passed to the pipeline: on a CPU
        those same generators, continuing (so the images are the bits diffusers' own drawing
        gives); on CUDA one device generator per image seeded with its sample's seed, so each
        step draws its noise on the device, with no host-to-device copy (and no wait) per step.
        A sample's noise never depends on the samples sharing its call. FLUX draws its own
        initial noise from the CPU generators (packed latents; one copy per call; its
        flow-matching sampler draws no noise in the loop).
        """
        torch = self._torch
        seeds = [int(s["seed"]) for s in batch]
        cpu = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        if self.config.family == "flux":
            return None, cpu
        from diffusers.utils.torch_utils import randn_tensor

        latents = randn_tensor((len(batch), *self.latent_shape), generator=cpu, device=torch.device("cpu"),
                               dtype=self.dtype)
        if self.device == "cpu":
            return latents, cpu
        latents = latents.pin_memory().to(self.device, non_blocking=True)
        return latents, [torch.Generator(self.device).manual_seed(seed) for seed in seeds]


FLUX_T5_TOKENS = 512  # FLUX.1-dev's T5 context: prompts are read whole up to this many tokens


def _check_eta(pipe, config: ControlNetConfig) -> None:
    """``eta`` needs a scheduler whose ``step`` takes it (DDIM)."""
    import inspect

    if config.eta is None:
        return
    if "eta" not in inspect.signature(pipe.scheduler.step).parameters:
        raise UserError(f"backend.controlnet.eta={config.eta}: the scheduler "
                        f"{type(pipe.scheduler).__name__} has no eta; set backend.controlnet.scheduler: ddim")
