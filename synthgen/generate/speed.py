"""Keeping the device busy: the speed options of a loaded diffusers pipeline, images that leave
the device as uint8, device time, and fp16 weight variants.

- :func:`apply_speed` applies ``backend.controlnet.speed`` to a pipeline: channels_last, fused
  QKV projections, VAE slicing/tiling, ``torch.compile`` of the denoiser, ControlNets and VAE
  decoder (compiled kernels are cached in ``speed.compile_cache``, so the next process on the
  machine, or the next rank, warms up in seconds);
- :func:`to_uint8` turns the pipeline's ``output_type="pt"`` images into (B, H, W, 3) uint8 on
  their device, :func:`to_host` brings them back through a pinned buffer;
- :class:`DeviceClock` adds up the device time of the calls it wraps (CUDA events on a GPU,
  wall time on a CPU) for the GPU-busy fraction;
- :func:`resolve_device` names the device a stage runs on (``auto`` = CUDA when torch sees it);
- :func:`fp16_variant` says whether a model on disk (or on the hub) ships ``*.fp16.safetensors``.

Nothing here changes what a sample is: seeds, inputs and shapes stay the same; fused and
compiled kernels round differently from eager ones, so the options are part of the recipe (and
of its hash).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from synthgen.errors import UserError
from synthgen.recipe import SpeedConfig

log = logging.getLogger(__name__)

__all__ = ["DeviceClock", "apply_speed", "attention_modules", "denoisers", "fp16_variant", "fuse_qkv",
           "to_host", "to_uint8"]

BIG_IMAGE = 1024 * 1024  # pixels from which the VAE options' "auto" turns them on


def resolve_device(device: str, field: str) -> str:
    """The torch device name a stage runs on: ``auto`` -> ``cuda`` when torch sees a GPU, else
    ``cpu``; any other name as given. A CUDA device where torch sees none is a user error naming
    ``field`` (the recipe key or argument that asked for it)."""
    import torch

    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{field}={device} but torch sees no CUDA GPU here; use device: auto (or cpu)")
    return device


def _on(value: bool | str, auto: bool) -> bool:
    return auto if value == "auto" else bool(value)


def denoisers(pipe) -> list:
    """The pipeline's denoiser (``unet`` or ``transformer``) and each of its ControlNets."""
    nets = [getattr(pipe, name) for name in ("unet", "transformer") if getattr(pipe, name, None) is not None]
    controlnet = getattr(pipe, "controlnet", None)
    if controlnet is not None:
        nets += list(controlnet.nets) if hasattr(controlnet, "nets") else [controlnet]
    return nets


def attention_modules(model) -> dict[str, Any]:
    """name -> attention module of ``model``: diffusers' older ``Attention`` class (SD UNets,
    ControlNetModel, the VAE) and the newer ``AttentionModuleMixin`` ones (FLUX) that can fuse."""
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention

    return {name: module for name, module in model.named_modules()
            if isinstance(module, Attention)
            or (isinstance(module, AttentionModuleMixin) and module._supports_qkv_fusion)}


def fuse_qkv(model) -> int:
    """Fuse the query/key/value projections of every attention module of ``model`` (in place);
    returns how many are fused.

    ``model.fuse_qkv_projections()`` fuses the UNet, the VAE and FLUX's models, but in
    diffusers 0.42 ``ControlNetModel`` inherits the generic ``AttentionMixin`` version, which
    only knows the newer attention class and leaves the older ``Attention`` modules of a
    ControlNet unfused: those are fused here the way the UNet's own method does it (one
    ``to_qkv``/``to_kv`` projection, ``FusedAttnProcessor2_0``). A module whose processor is
    not diffusers' plain one (an adapter's, say) is left as it is, with a warning.
    """
    from diffusers.models.attention_processor import (Attention, AttnProcessor, AttnProcessor2_0,
                                                      FusedAttnProcessor2_0)

    model.fuse_qkv_projections()
    modules = attention_modules(model)
    for name, module in modules.items():
        if isinstance(module, Attention) and not module.fused_projections:
            if type(module.processor) not in (AttnProcessor, AttnProcessor2_0):
                log.warning("fuse_qkv: %s.%s keeps its %s unfused", type(model).__name__, name,
                            type(module.processor).__name__)
                continue
            module.fuse_projections(fuse=True)
            module.set_processor(FusedAttnProcessor2_0())
    return sum(bool(module.fused_projections) for module in modules.values())


def apply_speed(pipe, speed: SpeedConfig, device: str, pixels: int) -> dict[str, bool]:
    """Apply ``speed`` to ``pipe`` (already on ``device``), in place; returns what was turned on.

    pixels: width x height of the images, for the VAE options' ``auto`` (on from 1024x1024).
    """
    import torch

    cuda = str(device).startswith("cuda")
    nets, vae = denoisers(pipe), pipe.vae
    done = {"fuse_qkv": _on(speed.fuse_qkv, cuda), "channels_last": _on(speed.channels_last, cuda),
            "vae_slicing": _on(speed.vae_slicing, pixels >= BIG_IMAGE),
            "vae_tiling": _on(speed.vae_tiling, pixels >= BIG_IMAGE), "compile": speed.compile}
    if done["fuse_qkv"]:
        for module in [*nets, vae]:
            fuse_qkv(module)
    if done["channels_last"]:
        for module in [*nets, vae]:
            module.to(memory_format=torch.channels_last)
    if done["vae_slicing"]:
        vae.enable_slicing()
    if done["vae_tiling"]:
        vae.enable_tiling()
    if speed.compile:
        _compile(pipe, nets, speed)
    log.info("speed options on %s: %s", device, ", ".join(k for k, v in done.items() if v) or "none")
    return done


def _compile(pipe, nets: list, speed: SpeedConfig) -> None:
    """``torch.compile`` each net in place and the VAE's decode, shapes fixed (``dynamic=False``)."""
    import torch

    if speed.compile_cache:
        cache = Path(speed.compile_cache).expanduser()
        cache.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))
        os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
        os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    for net in nets:
        net.compile(mode=speed.compile_mode, dynamic=False)
    pipe.vae.decode = torch.compile(pipe.vae.decode, mode=speed.compile_mode, dynamic=False)


def to_uint8(images) -> Any:
    """(B, 3, H, W) float images in [0, 1] (diffusers' ``output_type="pt"``) -> (B, H, W, 3)
    uint8 on the same device, rounded as ``np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)``.

    Non-finite pixels (an fp16 overflow) become black (NaN, -inf) or white (+inf), with a warning.
    """
    import torch

    images = images.float()
    if not bool(torch.isfinite(images).all()):
        log.warning("NaN/inf pixels in a diffusion batch (fp16 overflow?): they become black; "
                    "try backend.controlnet.dtype=bf16 or fp32, or an fp16-safe backend.controlnet.vae")
        images = torch.nan_to_num(images, nan=0.0, posinf=1.0, neginf=0.0)
    return (images * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def to_host(images) -> np.ndarray:
    """A uint8 tensor on any device as a NumPy array; from a GPU through a pinned (page-locked)
    buffer with a non-blocking copy, waited for on its own CUDA event (not the whole device)."""
    import torch

    if images.device.type != "cuda":
        return images.numpy()
    host = torch.empty(images.shape, dtype=images.dtype, pin_memory=True)
    host.copy_(images, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    copied.synchronize()
    return host.numpy()


class DeviceClock:
    """Device seconds of the work inside ``with clock.timing(key):`` blocks, added to ``totals``.

    On a GPU, CUDA events around the block (the device's own time from the block's first kernel
    to its last, read when the block ends: the wrapped work synchronises anyway); on a CPU, the
    wall time of the block.
    """

    def __init__(self, device: str, totals: dict[str, float]):
        self.cuda = str(device).startswith("cuda")
        self.totals = totals

    def timing(self, key: str):
        return _Timed(self, key)


class _Timed:
    def __init__(self, clock: DeviceClock, key: str):
        self.clock, self.key = clock, key

    def __enter__(self):
        if self.clock.cuda:
            import torch

            self.start, self.stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.clock.cuda:
            self.stop.record()
            self.stop.synchronize()
            seconds = self.start.elapsed_time(self.stop) / 1000.0
        else:
            seconds = time.perf_counter() - self.t0
        self.clock.totals[self.key] = self.clock.totals.get(self.key, 0.0) + seconds


def fp16_variant(location: Path | None, name: str, offline: bool) -> str | None:
    """``"fp16"`` when model ``name`` ships half-precision weight files (``*.fp16.safetensors``):
    looked up in ``location`` (its folder on disk), else asked of the hub when it may be used;
    None otherwise (the full-precision files are loaded and cast)."""
    if location is not None:
        return "fp16" if any(location.rglob("*.fp16.safetensors")) else None
    if offline:
        return None
    try:
        from huggingface_hub import list_repo_files

        return "fp16" if any(f.endswith(".fp16.safetensors") for f in list_repo_files(name)) else None
    except Exception as exc:  # the hub unreachable: load the full-precision files
        log.info("could not list %s's files on the hub (%s): loading its full-precision weights", name, exc)
        return None
