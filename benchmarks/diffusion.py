"""How far synthgen's whole loop is from the plain diffusers ceiling, per model configuration.

For each configuration the same nets, steps, image size and batch are timed three ways:

(a) ``reference``: a plain diffusers ControlNet pipeline (``from_pretrained``, fp16 on a GPU,
    channels_last, ``torch.compile`` of the denoiser, ControlNets and VAE decoder when
    ``--compile``), batch ``--batch``, ``output_type="pt"``, the same prompts every call: the
    ceiling the hardware allows for these nets;
(b) ``backend``: synthgen's :class:`~synthgen.generate.controlnet.ControlNetBackend` alone
    (``generate_tensor``: padded fixed-shape batches, uint8 on the device, per-image seeds);
(c) ``end_to_end``: ``synthgen generate`` of a recipe with these nets (Anny humans, the torch
    rasteriser, the SAM filter on the device, shards written by the writer thread), one shard
    per batch; the first ``--warmup`` shards are dropped, the next ``--batches`` are measured
    from their sidecars: images/s, device-busy fraction (CUDA-event time of the pipeline and
    SAM over wall time; NVML's utilisation alongside when ``pynvml`` is installed), input
    wait, SAM / encode / write ms per image, peak device memory, compile (warm-up) seconds.

Configurations (architecture-accurate random weights from the public configs, built here and
saved in the ``from_pretrained`` layout; nothing is downloaded): ``sd15_1cn`` SD1.5 + 1
ControlNet 512^2/20 steps; ``sd15_2cn`` SD1.5 + 2 ControlNets 512^2/20; ``sdxl_1cn`` SDXL + 1
ControlNet 1024^2/50; ``flux_2cn`` FLUX.1-dev + 2 ControlNets 1024^2/28 (its T5-XXL and 12 B
transformer need ~40 GB of disk and GPU memory). ``--smoke`` runs the same three measurements on
the tiny models of ``tests/`` on the CPU (64^2, 2 steps, batch 2): minutes, for CI and to check
the script; its numbers say nothing about a GPU.

The last stdout line is JSON: per configuration, and at the top level the first
configuration's ``reference_img_s``, ``end_to_end_img_s``, ``ratio``, ``gpu_busy``,
``sam_ms_per_img``, ``write_ms_per_img``::

    python benchmarks/diffusion.py --smoke                         # CPU, tiny models
    python benchmarks/diffusion.py --configs sd15_1cn,sdxl_1cn     # a GPU (benchmarks/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from synthgen.generate.controlnet import ControlNetBackend  # noqa: E402
from synthgen.recipe import ControlNetConfig, recipe_from_dict  # noqa: E402
from tiny_diffusion import write_clip_tokenizer  # noqa: E402

log = logging.getLogger("benchmarks.diffusion")

# Stable Diffusion 1.5 (stable-diffusion-v1-5/stable-diffusion-v1-5), component configs
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5,
    act_fn="silu", flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
    mid_block_scale_factor=1, center_input_sample=False)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32, act_fn="silu", sample_size=512, scaling_factor=0.18215)
SD15_TEXT = dict(  # CLIP ViT-L/14 text tower
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
    projection_dim=768)
SD15_SCHEDULER = dict(  # the base model's PNDM training schedule; the run switches to UniPC
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)

# SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0), component configs
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32, act_fn="silu")
SDXL_VAE = SD15_VAE | dict(sample_size=1024, scaling_factor=0.13025, force_upcast=False)
SDXL_TEXT_2 = dict(  # OpenCLIP ViT-bigG/14 text tower
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
    num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
# FLUX.1-dev, component configs; ControlNets shaped like InstantX/FLUX.1-dev-Controlnet-Canny
FLUX_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                        attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                        pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
FLUX_CONTROLNET = dict(num_layers=5, num_single_layers=10)
FLUX_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, act_fn="silu",
                sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                use_post_quant_conv=False)
FLUX_T5 = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
               feed_forward_proj="gated-gelu", decoder_start_token_id=0)


@dataclass(frozen=True)
class Setting:
    """One configuration: family, ControlNets (their layers), image side, steps, guidance."""

    family: str
    layers: tuple[str, ...]
    size: int
    steps: int
    guidance: float


CONFIGS = {"sd15_1cn": Setting("sd15", ("normal",), 512, 20, 7.5),
           "sd15_2cn": Setting("sd15", ("normal", "skeleton"), 512, 20, 7.5),
           "sdxl_1cn": Setting("sdxl", ("normal",), 1024, 50, 5.0),
           "flux_2cn": Setting("flux", ("edges", "depth"), 1024, 28, 3.5)}
SMOKE = dict(size=64, steps=2)
PROMPTS = ["a person in a park", "a person on a beach", "a person in a kitchen", "a person in the snow",
           "a person on a street", "a person in a forest", "a person in an office", "a person at a lake"]


# --- models ----------------------------------------------------------------------------------------
def _text(config: dict, tokenizer, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(CLIPTextConfig(**config, bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1,
                              pad_token_id=len(tokenizer) - 1))


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**{k: v for k, v in SD15_SCHEDULER.items() if k != "skip_prk_steps"})


def build_full_size(family: str, count: int, root: Path, device: str) -> dict:
    """Random-weight full-size ``family`` base + ``count`` ControlNets saved under ``root``.

    Built on ``device`` in fp16 (a GPU initialises billions of weights in seconds)."""
    import diffusers
    from transformers import T5Config, T5EncoderModel

    tokenizer = write_clip_tokenizer(root / "_tokenizer")
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.device(device):
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float16 if device != "cpu" else torch.float32)
        try:
            if family == "flux":
                transformer = diffusers.FluxTransformer2DModel(**FLUX_TRANSFORMER)
                nets = [diffusers.FluxControlNetModel.from_transformer(transformer, **FLUX_CONTROLNET)
                        for _ in range(count)]
                from tiny_diffusion import _t5_tokenizer

                t5_tokenizer = _t5_tokenizer(root / "_t5")
                pipe = diffusers.FluxPipeline(
                    scheduler=diffusers.FlowMatchEulerDiscreteScheduler(
                        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                        base_image_seq_len=256, max_image_seq_len=4096),
                    vae=diffusers.AutoencoderKL(**FLUX_VAE), text_encoder=_text(SD15_TEXT, tokenizer),
                    tokenizer=tokenizer, text_encoder_2=T5EncoderModel(T5Config(**FLUX_T5)),
                    tokenizer_2=t5_tokenizer, transformer=transformer)
            elif family == "sdxl":
                unet = diffusers.UNet2DConditionModel(**SDXL_UNET)
                nets = [diffusers.ControlNetModel.from_unet(unet) for _ in range(count)]
                pipe = diffusers.StableDiffusionXLPipeline(
                    vae=diffusers.AutoencoderKL(**SDXL_VAE),
                    text_encoder=_text(SD15_TEXT | {"projection_dim": 768}, tokenizer),
                    text_encoder_2=_text(SDXL_TEXT_2, tokenizer, projection=True), tokenizer=tokenizer,
                    tokenizer_2=tokenizer, unet=unet, scheduler=_scheduler(), add_watermarker=False)
            else:
                unet = diffusers.UNet2DConditionModel(**SD15_UNET)
                nets = [diffusers.ControlNetModel.from_unet(unet) for _ in range(count)]
                pipe = diffusers.StableDiffusionPipeline(
                    vae=diffusers.AutoencoderKL(**SD15_VAE), text_encoder=_text(SD15_TEXT, tokenizer),
                    tokenizer=tokenizer, unet=unet, scheduler=_scheduler(), safety_checker=None,
                    feature_extractor=None, requires_safety_checker=False)
        finally:
            torch.set_default_dtype(default)
    log.info("built random-weight %s + %d ControlNets in %.0f s", family, count, time.perf_counter() - start)
    pipe.save_pretrained(str(root / "base"))
    folders = []
    for i, net in enumerate(nets):
        net.save_pretrained(str(root / f"controlnet-{i}"))
        folders.append(str(root / f"controlnet-{i}"))
    del pipe, nets
    gc.collect()
    return {"base": str(root / "base"), "controlnets": folders}


def build_full_size_sam(folder: Path) -> Path:
    """A random-weight SAM ViT-B (facebook/sam-vit-base's architecture, 1024^2 input)."""
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    torch.manual_seed(0)
    SamModel(SamConfig()).save_pretrained(folder)
    SamProcessor(SamImageProcessorPil()).save_pretrained(folder)
    return folder


def models_for(name: str, setting: Setting, root: Path, smoke: bool, device: str) -> dict:
    """The configuration's model folders under ``root`` (built once, reused by later runs)."""
    folder = root / (("tiny-" if smoke else "") + name)
    done = folder / "models.json"
    if done.is_file():
        return json.loads(done.read_text())
    if smoke:
        import tiny_diffusion

        builder = getattr(tiny_diffusion, f"build_tiny_{setting.family}")
        models = builder(folder, num_controlnets=len(setting.layers))
    else:
        models = build_full_size(setting.family, len(setting.layers), folder, device)
    sam = root / ("tiny-sam" if smoke else "sam-vit-base")
    if not (sam / "config.json").is_file():
        if smoke:
            from tiny_sam import build_tiny_sam

            build_tiny_sam(sam)
        else:
            build_full_size_sam(sam)
    models["sam"] = str(sam)
    done.write_text(json.dumps(models))
    return models


# --- samples --------------------------------------------------------------------------------------
def make_samples(count: int, size: int, layers: tuple[str, ...]) -> list[dict]:
    """Samples whose ControlNet inputs are a shaded ellipsoid 'body' (one per ControlNet)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    samples = []
    for i in range(count):
        nx, ny = (xx - 0.5 - 0.01 * i) / 0.18, (yy - 0.5) / 0.4
        inside = nx ** 2 + ny ** 2 < 1
        nz = np.sqrt(np.clip(1 - nx ** 2 - ny ** 2, 0, 1))
        rgb = np.where(inside[..., None], (np.stack([nx, -ny, nz], -1) + 1) * 127.5, 0).astype(np.uint8)
        samples.append({"layers": {"controls": [rgb] * len(layers)}, "prompt": PROMPTS[i % len(PROMPTS)],
                        "negative_prompt": "blurry", "seed": 1000 + i})
    return samples


# --- (a) the reference ----------------------------------------------------------------------------
def reference(models: dict, setting: Setting, args, samples: list[dict]) -> dict:
    """A plain diffusers pipeline, batch ``args.batch``, ``output_type="pt"``, compiled.

    Images/s of (a), (b) and (c) are from the median batch (shard) time: on a shared or paused
    machine one slow batch does not decide the figure; the fractions are over all steady batches."""
    import diffusers

    from synthgen.generate.controlnet import FAMILIES

    family = FAMILIES[setting.family]
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    nets = [getattr(diffusers, family.controlnet).from_pretrained(p, dtype=dtype) for p in models["controlnets"]]
    controlnet = nets[0] if len(nets) == 1 else getattr(diffusers, family.multi)(nets)
    pipe = getattr(diffusers, family.pipeline).from_pretrained(models["base"], controlnet=controlnet, dtype=dtype,
                                                               **dict(family.load_kwargs)).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    if args.device == "cuda":
        for module in (getattr(pipe, "unet", None) or pipe.transformer, *nets, pipe.vae):
            module.to(memory_format=torch.channels_last)
    if args.compile:
        for module in (getattr(pipe, "unet", None) or pipe.transformer, *nets):
            module.compile(dynamic=False)
        pipe.vae.decode = torch.compile(pipe.vae.decode, dynamic=False)
    batch = samples[:args.batch]
    controls = [torch.from_numpy(np.stack([s["layers"]["controls"][k] for s in batch])).permute(0, 3, 1, 2)
                .float().div(255) for k in range(len(setting.layers))]
    kwargs = dict(prompt=[s["prompt"] for s in batch], height=setting.size, width=setting.size,
                  num_inference_steps=setting.steps, guidance_scale=setting.guidance, output_type="pt")
    scales = [unit["scale"] for unit in controlnet_config(models, setting, args)["controlnets"]]
    kwargs[family.image_arg] = controls if len(controls) > 1 else controls[0]
    kwargs["controlnet_conditioning_scale"] = scales if len(scales) > 1 else scales[0]
    if family.negative_prompt:
        kwargs["negative_prompt"] = [s["negative_prompt"] for s in batch]
    t0 = time.perf_counter()
    pipe(**kwargs)  # warm-up (compiles)
    _sync(args.device)
    warm = time.perf_counter() - t0
    seconds = []
    for _ in range(args.batches):
        t0 = time.perf_counter()
        pipe(**kwargs)
        _sync(args.device)
        seconds.append(time.perf_counter() - t0)
    del pipe, nets, controlnet
    _free(args.device)
    return {"img_s": args.batch / float(np.median(seconds)), "warmup_s": warm}


# --- (b) synthgen's backend alone -----------------------------------------------------------------
def controlnet_config(models: dict, setting: Setting, args) -> dict:
    units = [{"model": path, "layer": layer, "scale": 1.0 if setting.family != "flux" else [0.2, 0.65][k]}
             for k, (path, layer) in enumerate(zip(models["controlnets"], setting.layers))]
    return {"family": setting.family, "base_model": models["base"], "controlnets": units,
            "scheduler": "default", "steps": setting.steps, "guidance": setting.guidance,
            "dtype": "fp16" if args.device == "cuda" else "fp32", "batch_size": args.batch,
            "device": args.device, "local_files_only": True, "speed": {"compile": args.compile}}


def backend_alone(models: dict, setting: Setting, args, samples: list[dict]) -> dict:
    t0 = time.perf_counter()
    backend = ControlNetBackend(ControlNetConfig(**controlnet_config(models, setting, args)),
                                setting.size, setting.size)
    load = time.perf_counter() - t0
    if not args.compile:
        backend.generate_tensor(samples[:args.batch])  # warm-up
    seconds = []
    for k in range(args.batches):
        _sync(args.device)
        t0 = time.perf_counter()
        backend.generate_tensor(samples[k * args.batch:(k + 1) * args.batch])
        _sync(args.device)
        seconds.append(time.perf_counter() - t0)
    del backend
    _free(args.device)
    return {"img_s": args.batch / float(np.median(seconds)), "load_s": load}


# --- (c) synthgen generate, end to end ------------------------------------------------------------
def end_to_end(models: dict, setting: Setting, args, out: Path) -> dict:
    """``synthgen generate`` of ``warmup + batches`` one-batch shards; the steady ones measured."""
    from synthgen.run import generate

    prompts = out / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    controlnet = controlnet_config(models, setting, args)
    recipe = recipe_from_dict({
        "name": "bench", "seed": 0, "num_samples": (args.warmup + args.batches) * args.batch,
        "image": {"width": setting.size, "height": setting.size}, "render": {"backend": "torch"},
        "backend": {"kind": "controlnet", "controlnet": controlnet},
        "prompt": {"prompts_file": str(prompts), "negative": "blurry", "describe_pose": False},
        # random-weight SAM: thresholds at 0 keep every sample (no redraws), the work is the same
        "filter": {"sam": {"model": models["sam"], "min_iou": 0.0, "min_keypoints_in_mask": 0.0}},
        "output": {"shard_size": args.batch}})
    data = out / "dataset"
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    nvml = _NvmlSampler() if args.device == "cuda" else None
    generate(recipe, data, workers=1, progress=False, loader_workers=args.loader_workers)
    nvml_util = nvml.stop() if nvml else None
    sidecars = [json.loads(p.read_text()) for p in sorted((data / "shards").glob("shard-*.json"))]
    steady = sidecars[args.warmup:]
    total = lambda key: sum(s.get(key, 0.0) for s in steady)  # noqa: E731
    images, seconds = sum(s["samples"] for s in steady), total("seconds")
    median = float(np.median([s["seconds"] for s in steady]))  # a paused or shared machine: the typical shard
    peak = (torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return {"img_s": args.batch / median, "gpu_busy": (total("diffusion_seconds") + total("sam_seconds")) / seconds,
            "input_wait": total("input_wait_seconds") / seconds,
            "sam_ms_per_img": 1000 * total("sam_seconds") / images,
            "encode_ms_per_img": 1000 * total("writer_encode_seconds") / images,
            "write_ms_per_img": 1000 * total("writer_write_seconds") / images,
            "peak_memory_gib": peak, "compile_s": sum(s.get("compile_seconds", 0.0) for s in sidecars),
            "nvml_util": nvml_util, "images": images}


class _NvmlSampler:
    """GPU utilisation from NVML every 100 ms while the run goes (None without pynvml)."""

    def __init__(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle, self.nvml = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device()), pynvml
        except Exception:  # not installed, or no NVML: the CUDA-event figure stands alone
            self.handle = None
        self.samples: list[int] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.handle is not None and not self.done.wait(0.1):
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)

    def stop(self) -> float | None:
        self.done.set()
        self.thread.join()
        return float(np.mean(self.samples)) / 100 if self.samples else None


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# --- the run ----------------------------------------------------------------------------------------
def run_config(name: str, args, root: Path) -> dict:
    setting = CONFIGS[name]
    if args.smoke:
        setting = Setting(setting.family, setting.layers, SMOKE["size"], SMOKE["steps"], setting.guidance)
    models = models_for(name, setting, root, args.smoke, args.device)
    samples = make_samples(args.batches * args.batch, setting.size, setting.layers)
    ref = reference(models, setting, args, samples)
    log.info("%s reference: %.3f img/s", name, ref["img_s"])
    ours = backend_alone(models, setting, args, samples)
    log.info("%s backend: %.3f img/s", name, ours["img_s"])
    out = root / f"run-{name}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    e2e = end_to_end(models, setting, args, out)
    log.info("%s end to end: %.3f img/s", name, e2e["img_s"])
    return {"config": name, "family": setting.family, "controlnets": len(setting.layers), "size": setting.size,
            "steps": setting.steps, "batch": args.batch, "reference_img_s": round(ref["img_s"], 4),
            "backend_img_s": round(ours["img_s"], 4), "end_to_end_img_s": round(e2e["img_s"], 4),
            "ratio": round(e2e["img_s"] / ref["img_s"], 3), "gpu_busy": round(e2e["gpu_busy"], 3),
            "nvml_util": e2e["nvml_util"], "input_wait": round(e2e["input_wait"], 3),
            "sam_ms_per_img": round(e2e["sam_ms_per_img"], 2), "encode_ms_per_img": round(e2e["encode_ms_per_img"], 2),
            "write_ms_per_img": round(e2e["write_ms_per_img"], 2), "peak_memory_gib": round(e2e["peak_memory_gib"], 2),
            "compile_s": round(e2e["compile_s"], 1), "steady_images": e2e["images"]}


def print_table(rows: list[dict], device: str) -> None:
    columns = [("config", "config", "{}"), ("ref img/s", "reference_img_s", "{:.3f}"),
               ("backend img/s", "backend_img_s", "{:.3f}"), ("e2e img/s", "end_to_end_img_s", "{:.3f}"),
               ("e2e/ref", "ratio", "{:.2f}"), ("busy", "gpu_busy", "{:.2f}"), ("wait", "input_wait", "{:.2f}"),
               ("SAM ms", "sam_ms_per_img", "{:.1f}"), ("enc ms", "encode_ms_per_img", "{:.1f}"),
               ("write ms", "write_ms_per_img", "{:.1f}"), ("peak GiB", "peak_memory_gib", "{:.2f}"),
               ("compile s", "compile_s", "{:.0f}")]
    print(f"\n{device}, torch {torch.__version__}")
    print(" | ".join(title for title, _, _ in columns))
    print(" | ".join("---" for _ in columns))
    for row in rows:
        print(" | ".join(fmt.format(row[key]) for _, key, fmt in columns))


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU (minutes)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {list(CONFIGS)}")
    parser.add_argument("--batch", type=int, help="images per batch (default 16 on a GPU, 2 with --smoke)")
    parser.add_argument("--batches", type=int, default=8, help="steady batches measured (default 8)")
    parser.add_argument("--warmup", type=int, default=1, help="end-to-end shards dropped first (default 1)")
    parser.add_argument("--loader-workers", type=int, default=None,
                        help="CPU-stage processes of the end-to-end run (default 4 on a GPU, 0 = a thread)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile (default: on with CUDA, off with --smoke: inductor takes "
                             "minutes per graph on a CPU)")
    parser.add_argument("--out", default=str(Path.home() / ".cache" / "synthgen" / "bench-diffusion"),
                        help="models (kept, reused) and run folders")
    args = parser.parse_args()
    args.device = "cuda" if cuda and not args.smoke else "cpu"
    args.batch = args.batch or (2 if args.smoke else 16)
    args.compile = (args.device == "cuda") if args.compile is None else args.compile
    args.loader_workers = (0 if args.smoke else 4) if args.loader_workers is None else args.loader_workers
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("diffusers", "transformers", "synthgen"):
        logging.getLogger(name).setLevel(logging.WARNING)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        parser.error(f"--configs: unknown {unknown}; choose from {list(CONFIGS)}")
    root = Path(args.out).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    rows = [run_config(name, args, root) for name in names]
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {os.cpu_count()} cores (smoke)"
    print_table(rows, device)
    first = rows[0]
    keys = ("reference_img_s", "end_to_end_img_s", "ratio", "gpu_busy", "sam_ms_per_img", "write_ms_per_img")
    print(json.dumps({"device": device, "smoke": args.smoke, "compile": args.compile,
                      **{k: first[k] for k in keys}, "configs": rows}))


if __name__ == "__main__":
    main()
