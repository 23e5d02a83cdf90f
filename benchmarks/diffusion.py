"""How far synthgen's whole loop is from a plain diffusers pipeline, per model configuration.

Each configuration is one of the shipped recipes, run on architecture-accurate random weights
(built here from the public configs, saved in the ``from_pretrained`` layout; nothing is
downloaded), with the recipe's own scheduler, prompts (compel where the recipe reads long
prompts whole) and SAM thresholds:

==========  ===========================  ===============================================
config      recipe                       models
==========  ===========================  ===============================================
sd15_1cn    recipes/humanwild_sd15.yaml  SD1.5 + its first ControlNet (normal), 512², 20 UniPC
sd15_2cn    recipes/humanwild_sd15.yaml  SD1.5 + 2 ControlNets (normal, skeleton): the recipe as
                                         shipped, SAM thresholds included (redraws)
sdxl_1cn    recipes/humanwild.yaml       SDXL + 1 ControlNet, 1024², 50 steps, compel prompts
flux_2cn    recipes/genzoo.yaml          FLUX.1-dev + 2 ControlNets, 1024², 28 steps (the
                                         embedded quadruped instead of the SMAL files)
==========  ===========================  ===============================================

Two measurements per configuration, each in a fresh ``torch._dynamo`` state (``reset()``
between them, the recompiles of each counted from dynamo's compilation metrics):

(a) ``reference``: the plain diffusers ControlNet pipeline on the same weights, with exactly
    the speed options synthgen applies (:func:`synthgen.generate.speed.apply_speed` with the
    recipe's ``backend.controlnet.speed``: the same fused projections, channels_last and
    compile, or all off), the recipe's scheduler, steps, guidance and scales, batch ``--batch``,
    ``output_type="pt"``, the prompts synthgen made for the same samples (compel-encoded as one
    batch where the recipe uses compel), control images already on the device, noise drawn on
    the device (no per-image CPU generators): the ceiling.
    One warm-up call, then ``--batches`` timed calls: images / their total wall time.
(b) ``end_to_end``: ``synthgen generate`` of the recipe (Anny humans or the quadruped, the
    recipe's rasteriser, SAM on the device with the recipe's thresholds, the writer thread), one
    batch per shard. The steady window runs from the moment the last warm-up shard's sidecar
    was written to the moment the last shard's was (the sidecar is written when its shard is
    complete): ``end_to_end_img_s`` is every image diffused in that window (first draws and
    redraws of rejected samples) over its wall time, ``accepted_img_s`` the images written.
    Device busy: the union of the CUDA kernels' intervals (``torch.profiler``) inside the window
    over its length (``busy_source: "profiler"``); if the profiler fails, the CUDA-event time of
    the pipeline and SAM calls from the sidecars (``"cuda-events"``); on a CPU, that wall time of
    the pipeline and SAM calls (``"cpu-wall"``: says nothing about a GPU).

Random weights: SAM's masks mean nothing, so how many samples are rejected and redrawn is not a
property of synthgen. ``sd15_2cn`` keeps the recipe's SAM thresholds and reports its redraws in
their own fields (``redraws``, ``rejected``, ``gave_up``; redraw batches are padded to the fixed
batch shape); the other configurations set them to 0 so that every image is written and the
writer is measured. ``end_to_end_img_s`` counts every diffused image, so the ratio compares the
device's work either way. Tokenizers: byte-level with merges learnt from synthgen's prompt words
(see :func:`synthgen.testing.tiny_models.word_merges`): prompts are about as many tokens as with
CLIP's vocabulary, so compel runs where it would with the real models.

    python benchmarks/diffusion.py --smoke                     # CPU, tiny models, minutes
    python benchmarks/diffusion.py --configs sd15_1cn          # a GPU (or benchmarks/gpu_check.sh)

Each configuration's row is printed as one JSON line when it finishes (stdout); a table at the
end (stderr).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

log = logging.getLogger("benchmarks.diffusion")


@dataclass(frozen=True)
class Setting:
    """One configuration: its recipe, family, how many of the recipe's ControlNets it keeps, and
    whether SAM keeps the recipe's thresholds (``"recipe"``: rejected samples are redrawn) or
    keeps every sample (``"zero"``: every image is written, so the writer is measured too)."""

    recipe: str
    family: str
    controlnets: int
    sam_thresholds: str = "zero"
    overrides: dict = field(default_factory=dict)  # dotted key -> value, applied to the recipe


QUADRUPED = {"subject.model": "quadruped", "subject.model_path": None, "subject.animal.cluster_file": None}
CONFIGS = {"sd15_1cn": Setting("recipes/humanwild_sd15.yaml", "sd15", 1),
           "sd15_2cn": Setting("recipes/humanwild_sd15.yaml", "sd15", 2, "recipe"),
           "sdxl_1cn": Setting("recipes/humanwild.yaml", "sdxl", 1),
           "flux_2cn": Setting("recipes/genzoo.yaml", "flux", 2, overrides=QUADRUPED)}
SMOKE = {"size": 64, "steps": 2}
REQUIRED = ("config", "reference_img_s", "end_to_end_img_s", "ratio", "gpu_busy", "busy_source",
            "sam_ms_per_img", "write_ms_per_img", "recompiles")


# --- models ---------------------------------------------------------------------------------------
def models_for(name: str, root: Path, smoke: bool, device: str) -> dict:
    """The configuration's model folders under ``root`` (built once, reused by later runs)."""
    setting = CONFIGS[name]
    folder = root / (("tiny-" if smoke else "") + f"{setting.family}-{setting.controlnets}cn")
    done = folder / "models.json"
    if done.is_file():
        models = json.loads(done.read_text())
    else:
        if smoke:
            from synthgen.testing import tiny_models

            builder = getattr(tiny_models, f"build_tiny_{setting.family}")
            from benchmarks.full_size import words

            models = builder(folder, num_controlnets=setting.controlnets, words=words())
        else:
            from benchmarks.full_size import build_full_size

            models = build_full_size(setting.family, setting.controlnets, folder, device)
        ship_scheduler(Path(models["base"]), setting.family)
        done.write_text(json.dumps(models))
    models["sam"] = str(sam_for(root, smoke))
    return models


# the schedulers the real base checkpoints ship (their scheduler_config.json), which a recipe's
# ``scheduler: default`` keeps: SD1.5's PNDM, SDXL base's Euler (FLUX's flow matching is built in)
SHIPPED_SCHEDULERS = {
    "sd15": ("PNDMScheduler", dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True,
                                   steps_offset=1)),
    "sdxl": ("EulerDiscreteScheduler", dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            num_train_timesteps=1000, interpolation_type="linear",
                                            prediction_type="epsilon", steps_offset=1, timestep_spacing="leading",
                                            use_karras_sigmas=False)),
}


def ship_scheduler(base: Path, family: str) -> None:
    """Give a built base folder the scheduler its real checkpoint ships (the builders save DDIM)."""
    import diffusers

    if family not in SHIPPED_SCHEDULERS:
        return
    name, config = SHIPPED_SCHEDULERS[family]
    shutil.rmtree(base / "scheduler", ignore_errors=True)
    getattr(diffusers, name)(**config).save_pretrained(str(base / "scheduler"))
    index = json.loads((base / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", name]
    (base / "model_index.json").write_text(json.dumps(index, indent=2))


def sam_for(root: Path, smoke: bool) -> Path:
    """A random-weight SAM: tiny with ``smoke``, else ViT-B (facebook/sam-vit-base's architecture)."""
    folder = root / ("tiny-sam" if smoke else "sam-vit-base")
    if not (folder / "config.json").is_file():
        if smoke:
            from synthgen.testing.tiny_models import build_tiny_sam

            build_tiny_sam(folder)
        else:
            from benchmarks.full_size import build_full_size_sam

            build_full_size_sam(folder)
    return folder


# --- the recipe -----------------------------------------------------------------------------------
def bench_recipe(name: str, models: dict, opts) -> dict:
    """The configuration's recipe dict: the shipped recipe with the models replaced by the random
    ones, ``opts.warmup + opts.shards`` one-batch shards, the device and compile set; everything
    else (scheduler, steps, guidance, scales, prompts, SAM thresholds, layers) as shipped.
    ``opts.smoke``: 64², 2 steps, fp32 (the tiny models on a CPU)."""
    setting = CONFIGS[name]
    data = yaml.safe_load((ROOT / setting.recipe).read_text())
    for key, value in setting.overrides.items():
        _set(data, key, value)
    cn = data["backend"]["controlnet"]
    cn["base_model"] = models["base"]
    cn["controlnets"] = [dict(unit, model=path) for unit, path in
                         zip(cn["controlnets"][:setting.controlnets], models["controlnets"])]
    cn.pop("vae", None)  # SDXL's fp16-fix VAE: the random base VAE has its architecture
    cn.update(batch_size=opts.batch, device=opts.device, local_files_only=True)
    cn.setdefault("speed", {})["compile"] = opts.compile
    if opts.smoke:
        data["image"] = {"width": SMOKE["size"], "height": SMOKE["size"]}
        cn.update(steps=SMOKE["steps"], dtype="fp32")
    sam = (data.get("filter") or {}).get("sam")
    if sam is not None:
        sam["model"] = models["sam"]
        if setting.sam_thresholds == "zero":
            sam.update(min_iou=0.0, min_keypoints_in_mask=0.0)
    data["num_samples"] = (opts.warmup + opts.shards) * opts.batch
    data.setdefault("output", {})["shard_size"] = opts.batch
    return data


def _set(data: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for key in path:
        data = data.setdefault(key, {})
    if value is None:
        data.pop(last, None)
    else:
        data[last] = value


def prepared_samples(recipe, count: int) -> list[dict]:
    """The first ``count`` samples' CPU stages (render, prompts) as synthgen makes them."""
    from synthgen.run import factory_class

    factory = factory_class(recipe)(recipe, cpu_only=True)
    samples = [s for s in factory.prepared(list(range(count))) if "error" not in s]
    if len(samples) < count:
        raise RuntimeError(f"{count - len(samples)} of {count} samples failed in the CPU stages")
    return samples


# --- dynamo ---------------------------------------------------------------------------------------
def fresh_dynamo() -> None:
    """Forget every compiled graph and dynamo's compilation metrics (a phase starts clean)."""
    import torch

    torch._dynamo.reset()
    from torch._dynamo import utils

    utils.clear_compilation_metrics()
    utils.counters.clear()


def recompiles() -> dict:
    """Recompilations since :func:`fresh_dynamo`: count and the first reasons (dynamo's metrics)."""
    from torch._dynamo import utils

    metrics = utils.get_compilation_metrics()
    reasons = [m.recompile_reason for m in metrics if getattr(m, "recompile_reason", None)]
    return {"compiles": len(metrics), "recompiles": len(reasons), "reasons": [r[:200] for r in reasons[:3]]}


# --- (a) the reference ----------------------------------------------------------------------------
def reference(recipe, samples: list[dict], opts) -> dict:
    """A plain diffusers pipeline with synthgen's speed options; see the module docstring."""
    import torch

    from synthgen.generate.pipelines import FAMILIES
    from synthgen.generate.speed import apply_speed

    family = FAMILIES[recipe.backend.controlnet.family]
    pipe = reference_pipeline(recipe, family, opts.device)
    speed = apply_speed(pipe, recipe.backend.controlnet.speed, opts.device, recipe.image.width * recipe.image.height)
    kwargs, prompts = _reference_kwargs(pipe, recipe, family, samples[:opts.batch], opts.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        pipe(**kwargs)  # warm-up (compiles when speed.compile)
        _sync(opts.device)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(opts.batches):
            pipe(**kwargs)
        _sync(opts.device)
    seconds = time.perf_counter() - t0
    out = {"img_s": opts.batch * opts.batches / seconds, "warmup_s": warm, "seconds": seconds,
           "speed": {k: v for k, v in speed.items() if v}, "scheduler": type(pipe.scheduler).__name__,
           "prompts": prompts}
    del pipe, kwargs
    _free(opts.device)
    return out


def reference_pipeline(recipe, family, device: str):
    """The recipe's diffusers ControlNet pipeline, as a user would load it, with the recipe's
    scheduler, on ``device`` (speed options not yet applied)."""
    import diffusers
    import torch
    from packaging.version import Version

    from synthgen.generate.pipelines import SCHEDULERS

    cfg = recipe.backend.controlnet
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.dtype]
    # diffusers 0.42 renamed torch_dtype to dtype; an unknown keyword would load fp32 silently
    typed = {"dtype" if Version(diffusers.__version__).release >= (0, 42) else "torch_dtype": dtype}
    nets = [getattr(diffusers, family.controlnet).from_pretrained(u.model, **typed) for u in cfg.controlnets]
    controlnet = nets[0] if len(nets) == 1 else getattr(diffusers, family.multi)(nets)
    pipe = getattr(diffusers, family.pipeline).from_pretrained(cfg.base_model, controlnet=controlnet, **typed,
                                                               **dict(family.load_kwargs))
    denoiser = pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer
    if denoiser.dtype != dtype:
        raise RuntimeError(f"the reference loaded in {denoiser.dtype}, not {dtype}")
    if cfg.scheduler != "default" and not (cfg.scheduler == "euler" and "FlowMatch" in type(pipe.scheduler).__name__):
        pipe.scheduler = getattr(diffusers, SCHEDULERS[cfg.scheduler]).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _reference_kwargs(pipe, recipe, family, batch: list[dict], device: str) -> tuple[dict, str]:
    """The pipeline call for ``batch`` and how its prompts go in (``"pipeline"`` or ``"compel"``):
    control images on the device as (B, 3, H, W) floats in
    [0, 1], the recipe's steps, guidance and scales, prompts (compel embeddings where synthgen
    would use compel)."""
    import torch

    cfg = recipe.backend.controlnet
    units = cfg.controlnets
    controls = [torch.from_numpy(np.stack([s["layers"]["controls"][k] for s in batch])).to(device)
                .permute(0, 3, 1, 2).float().div(255) for k in range(len(units))]
    multi = len(units) > 1
    kwargs: dict[str, Any] = {
        family.image_arg: controls if multi else controls[0],
        "height": recipe.image.height, "width": recipe.image.width,
        "num_inference_steps": cfg.steps, "guidance_scale": cfg.guidance, "output_type": "pt",
        "controlnet_conditioning_scale": [u.scale for u in units] if multi else units[0].scale,
        "control_guidance_start": [u.start for u in units] if multi else units[0].start,
        "control_guidance_end": [u.end for u in units] if multi else units[0].end}
    prompts = [s["prompt"] for s in batch]
    negatives = [s.get("negative_prompt") or "" for s in batch]
    how = "pipeline"
    if cfg.family != "flux" and cfg.long_prompts == "compel" and _too_long(pipe, prompts + negatives):
        from compel import CompelForSD, CompelForSDXL

        wrapper = (CompelForSDXL if cfg.family == "sdxl" else CompelForSD)(pipe)
        with torch.inference_mode():
            out = wrapper(prompts, negative_prompt=negatives)
        named = {"prompt_embeds": out.embeds, "negative_prompt_embeds": out.negative_embeds,
                 "pooled_prompt_embeds": getattr(out, "pooled_embeds", None),
                 "negative_pooled_prompt_embeds": getattr(out, "negative_pooled_embeds", None)}
        kwargs.update({k: v for k, v in named.items() if v is not None})
        how = "compel"
    else:
        kwargs["prompt"] = prompts
        if family.negative_prompt:
            kwargs["negative_prompt"] = negatives
    if cfg.family == "flux":
        from synthgen.generate.controlnet import FLUX_T5_TOKENS

        kwargs["max_sequence_length"] = FLUX_T5_TOKENS
    if cfg.eta is not None:
        kwargs["eta"] = cfg.eta
    return kwargs, how


def _too_long(pipe, texts: list[str]) -> bool:
    limit = int(pipe.tokenizer.model_max_length)
    return any(len(pipe.tokenizer(t, truncation=False)["input_ids"]) > limit for t in texts)


# --- (b) synthgen generate, end to end ------------------------------------------------------------
def end_to_end(recipe, out: Path, opts) -> dict:
    """``synthgen generate`` of ``opts.warmup + opts.shards`` one-batch shards; the steady window
    measured (see the module docstring)."""
    import torch

    from synthgen.run import generate

    data = out / "dataset"
    cuda = opts.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    profiler, profiler_error = (_start_profiler() if cuda else (None, None))
    t0 = time.time_ns()
    try:
        generate(recipe, data, workers=1, progress=False, loader_workers=opts.loader_workers)
    finally:
        kernels, profiler_error = _stop_profiler(profiler, profiler_error)
    sidecars = sorted((data / "shards").glob("shard-*.json"))
    infos = [json.loads(p.read_text()) for p in sidecars]
    ends = [p.stat().st_mtime_ns for p in sidecars]  # each sidecar is written when its shard is complete
    if len(infos) <= opts.warmup:
        raise RuntimeError(f"{len(infos)} shards written, need more than --warmup {opts.warmup}")
    window = (ends[opts.warmup - 1] if opts.warmup else t0, ends[-1])
    steady = infos[opts.warmup:]
    total = lambda key: sum(s.get(key, 0.0) for s in steady)  # noqa: E731
    accepted = sum(s["samples"] for s in steady)
    rejected = sum(len(s.get("rejected", [])) for s in steady)
    failed = sum(len(s.get("errors", [])) for s in steady)
    diffused = accepted + rejected + failed
    seconds = (window[1] - window[0]) / 1e9
    row = {"img_s": diffused / seconds, "accepted_img_s": accepted / seconds, "window_s": seconds,
           "diffused": diffused, "accepted": accepted, "redraws": sum(1 for s in steady for f in s.get("filter", [])
                                                                     if f.get("attempt", 0) > 0),
           "rejected": rejected, "gave_up": sum(len(s.get("gave_up", [])) for s in steady), "failed": failed,
           "input_wait": total("input_wait_seconds") / seconds,
           "sam_ms_per_img": 1000 * total("sam_seconds") / max(diffused, 1),
           "diffusion_ms_per_img": 1000 * total("diffusion_seconds") / max(diffused, 1),
           "encode_ms_per_img": 1000 * total("writer_encode_seconds") / max(accepted, 1),
           "write_ms_per_img": 1000 * total("writer_write_seconds") / max(accepted, 1),
           "compile_s": sum(s.get("compile_seconds", 0.0) for s in infos),
           "peak_memory_gib": (torch.cuda.max_memory_allocated() / 2**30 if cuda
                               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)}
    # per-shard timings cannot be cut at the window's start (the first steady shard's batches may
    # start while the writer still finishes the warm-up shard): at most the whole window
    events_busy = min(1.0, (total("diffusion_seconds") + total("sam_seconds")) / seconds)
    if kernels is not None and not (kernels[:, 0].min() < window[1] and kernels[:, 1].max() > window[0]):
        # kernel times are taken to be on the wall clock of the sidecars' file times (true of
        # torch's CPU events, checked in tests/benchmarks/test_gpu_check.py); if not, no kernel overlaps
        # the window at all: fall back, labelled
        kernels, profiler_error = None, "no kernel inside the steady window: profiler clock != wall clock?"
    if cuda and kernels is not None:
        row.update(gpu_busy=busy_fraction(kernels, *window), busy_source="profiler",
                   cuda_events_busy=events_busy)
    else:
        row.update(gpu_busy=events_busy, busy_source="cuda-events" if cuda else "cpu-wall")
        if profiler_error:
            row["profiler_error"] = profiler_error
    return row


def _start_profiler():
    """A running ``torch.profiler`` recording CUDA kernels only, or (None, the reason)."""
    try:
        from torch.profiler import ProfilerActivity, profile

        profiler = profile(activities=[ProfilerActivity.CUDA], record_shapes=False, with_stack=False)
        profiler.__enter__()
        return profiler, None
    except Exception as exc:  # CUPTI missing or busy: the CUDA-event figure, labelled
        return None, f"{type(exc).__name__}: {exc}"


def _stop_profiler(profiler, error):
    """(kernel intervals as an (N, 2) int64 array of absolute ns, error)."""
    if profiler is None:
        return None, error
    try:
        profiler.__exit__(None, None, None)
        events = profiler.profiler.kineto_results.events()
        spans = [(e.start_ns(), e.start_ns() + e.duration_ns()) for e in events
                 if e.device_type().name == "CUDA" and e.duration_ns() > 0
                 and not e.name().startswith(("Memcpy", "Memset"))]  # kernels, not copies
        if not spans:
            return None, "the profiler recorded no CUDA kernels"
        return np.asarray(spans, dtype=np.int64), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def busy_fraction(spans: np.ndarray, start_ns: int, stop_ns: int) -> float:
    """Share of [start_ns, stop_ns] covered by at least one of ``spans`` ((N, 2) ns intervals):
    overlapping kernels (several streams) count once."""
    if stop_ns <= start_ns or len(spans) == 0:
        return 0.0
    clipped = np.clip(spans, start_ns, stop_ns)
    clipped = clipped[clipped[:, 1] > clipped[:, 0]]
    if len(clipped) == 0:
        return 0.0
    clipped = clipped[np.argsort(clipped[:, 0])]
    covered, (cur_start, cur_stop) = 0, clipped[0]
    for a, b in clipped[1:]:
        if a > cur_stop:
            covered += cur_stop - cur_start
            cur_start, cur_stop = a, b
        else:
            cur_stop = max(cur_stop, b)
    covered += cur_stop - cur_start
    return float(covered) / (stop_ns - start_ns)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# --- one configuration ------------------------------------------------------------------------------
def measure(name: str, opts) -> dict:
    """Reference then end to end for configuration ``name``; one row (see :data:`REQUIRED`)."""
    from synthgen.recipe import recipe_from_dict

    root = Path(opts.models).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    models = models_for(name, root, opts.smoke, opts.device)
    recipe = recipe_from_dict(bench_recipe(name, models, opts))
    samples = prepared_samples(recipe, opts.batch)
    fresh_dynamo()
    ref = reference(recipe, samples, opts)
    ref_compiles = recompiles()
    log.info("%s reference: %.3f img/s", name, ref["img_s"])
    out = Path(opts.work) / f"run-{name}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    fresh_dynamo()
    e2e = end_to_end(recipe, out, opts)
    e2e_compiles = recompiles()
    log.info("%s end to end: %.3f img/s", name, e2e["img_s"])
    cfg = recipe.backend.controlnet
    return {"config": name, "recipe": CONFIGS[name].recipe, "device": device_name(opts.device),
            "smoke": opts.smoke, "family": cfg.family, "controlnets": len(cfg.controlnets),
            "size": recipe.image.width, "steps": cfg.steps, "batch": opts.batch, "dtype": cfg.dtype,
            "scheduler": ref["scheduler"], "prompts": ref["prompts"], "speed": ref["speed"],
            "reference_img_s": round(ref["img_s"], 4), "reference_warmup_s": round(ref["warmup_s"], 1),
            "end_to_end_img_s": round(e2e["img_s"], 4), "accepted_img_s": round(e2e["accepted_img_s"], 4),
            "ratio": round(e2e["img_s"] / ref["img_s"], 3), "gpu_busy": round(e2e["gpu_busy"], 3),
            "busy_source": e2e["busy_source"], "cuda_events_busy": _round(e2e.get("cuda_events_busy"), 3),
            "input_wait": round(e2e["input_wait"], 3), "sam_ms_per_img": round(e2e["sam_ms_per_img"], 2),
            "sam_source": "cuda-events" if opts.device == "cuda" else "cpu-wall",
            "diffusion_ms_per_img": round(e2e["diffusion_ms_per_img"], 2),
            "encode_ms_per_img": round(e2e["encode_ms_per_img"], 2),
            "write_ms_per_img": round(e2e["write_ms_per_img"], 2),
            "sam_min_iou": recipe.filter.sam.min_iou if recipe.filter.sam else None,
            "sam_thresholds": CONFIGS[name].sam_thresholds if recipe.filter.sam else None,
            "redraws": e2e["redraws"], "rejected": e2e["rejected"], "gave_up": e2e["gave_up"],
            "failed": e2e["failed"], "steady_images": e2e["diffused"], "steady_window_s": round(e2e["window_s"], 2),
            "peak_memory_gib": round(e2e["peak_memory_gib"], 2), "compile_s": round(e2e["compile_s"], 1),
            "recompiles": ref_compiles["recompiles"] + e2e_compiles["recompiles"],
            "compiles": {"reference": ref_compiles, "end_to_end": e2e_compiles},
            **({"profiler_error": e2e["profiler_error"]} if "profiler_error" in e2e else {})}


def _round(value, digits):
    return None if value is None else round(value, digits)


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU, {os.cpu_count()} cores"


def print_table(rows: list[dict], file=sys.stderr) -> None:
    """The rows as a Markdown table (on stderr: stdout holds only the JSON lines)."""
    columns = [("config", "config", "{}"), ("ref img/s", "reference_img_s", "{:.3f}"),
               ("e2e img/s", "end_to_end_img_s", "{:.3f}"), ("e2e/ref", "ratio", "{:.2f}"),
               ("busy", "gpu_busy", "{:.2f}"), ("busy from", "busy_source", "{}"),
               ("wait", "input_wait", "{:.2f}"), ("SAM ms", "sam_ms_per_img", "{:.1f}"),
               ("write ms", "write_ms_per_img", "{:.1f}"), ("redraws", "redraws", "{}"),
               ("recompiles", "recompiles", "{}")]
    print(" | ".join(title for title, _, _ in columns), file=file)
    print(" | ".join("---" for _ in columns), file=file)
    for row in rows:
        print(" | ".join(fmt.format(row[key]) for _, key, fmt in columns), file=file)


def options(argv: list[str] | None = None) -> argparse.Namespace:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU (minutes)")
    parser.add_argument("--configs", default="sd15_1cn", help=f"comma-separated, of {list(CONFIGS)}")
    parser.add_argument("--batch", type=int, help="images per batch (default 16 on a GPU, 2 with --smoke)")
    parser.add_argument("--batches", type=int, default=3, help="timed reference calls (default 3)")
    parser.add_argument("--shards", type=int, default=3, help="steady end-to-end shards of one batch (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="end-to-end shards before the window (default 1)")
    parser.add_argument("--loader-workers", type=int, default=None,
                        help="CPU-stage processes of the end-to-end run (default 4 on a GPU, 0 = a thread)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile in both measurements (default: on with CUDA, off with --smoke)")
    parser.add_argument("--models", "--out", default=None, help="where models are built and kept "
                        "(default ~/.cache/synthgen/bench-diffusion)")
    parser.add_argument("--work", default=None, help="run folders (default: under --models)")
    opts = parser.parse_args(argv)
    opts.device = "cuda" if torch.cuda.is_available() and not opts.smoke else "cpu"
    opts.batch = opts.batch or (2 if opts.smoke else 16)
    opts.compile = (opts.device == "cuda") if opts.compile is None else opts.compile
    opts.loader_workers = (0 if opts.smoke else 4) if opts.loader_workers is None else opts.loader_workers
    opts.models = opts.models or str(Path.home() / ".cache" / "synthgen" / "bench-diffusion")
    opts.work = opts.work or opts.models
    names = [n.strip() for n in opts.configs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        parser.error(f"--configs: unknown {unknown}; choose from {list(CONFIGS)}")
    opts.names = names
    return opts


def quiet_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for name in ("diffusers", "transformers", "synthgen"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main() -> None:
    opts = options()
    quiet_logging()
    rows = []
    for name in opts.names:
        row = measure(name, opts)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print_table(rows)


if __name__ == "__main__":
    main()
