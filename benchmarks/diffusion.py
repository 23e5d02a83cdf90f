"""Images/s of synthgen's ControlNet backend against a plain one-image-at-a-time diffusers loop.

No weights are downloaded: the script builds the FULL-SIZE Stable Diffusion 1.5 architecture
(UNet 859 M, ControlNet 361 M, VAE 84 M, CLIP ViT-L text encoder 123 M parameters) from the
public configs written below, with random weights - the same FLOPs as the real checkpoints -
saves it in the layout ``from_pretrained`` reads, and then times, on the same samples, seeds and
settings (UniPC, guidance 7.5 with a negative prompt, one ControlNet on the normal layer):

- synthgen: ``ControlNetBackend(...).generate(samples)``: batches of ``--batch`` images, one
  seeded generator per image;
- baseline: a plain diffusers loop, ``StableDiffusionControlNetPipeline.from_pretrained`` and
  one ``pipe(prompt, image=PIL image, generator=torch.Generator().manual_seed(seed))`` call
  per image, the way the model cards show it.

Both loops are loaded side by side and warmed up (untimed) with one call each, then timed in
turns, batch by batch, over ``--images`` (a shared machine's drifting speed hits both alike).
It also reports how far the two loops' images are apart (same seeds: they should agree up to
float rounding). The CPU run takes minutes (a 512x512 step of ControlNet + UNet is ~5-7 s, a
VAE decode ~11 s on 2 cores), hence the CPU defaults of 1 step and 2 images::

    python benchmarks/diffusion.py                   # CPU: 512x512, 1 step, 2 images, batch 2
    python benchmarks/diffusion.py --steps 20 --images 16 --batch 4   # on a GPU (fp16)
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from synthgen.generate.controlnet import ControlNetBackend, control_image  # noqa: E402
from synthgen.recipe import ControlNetConfig  # noqa: E402
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

PROMPT = "a photo of a person standing in a living room, best quality, extremely detailed"
NEGATIVE = "lowres, bad anatomy, worst quality, low quality, blurry"


def build_full_size_sd15(root: Path) -> dict:
    """Random-weight SD1.5 + one ControlNet saved under ``root``; returns their folders."""
    from diffusers import (AutoencoderKL, ControlNetModel, PNDMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = write_clip_tokenizer(root / "_tokenizer")
    torch.manual_seed(0)
    start = time.perf_counter()
    unet = UNet2DConditionModel(**SD15_UNET)
    controlnet = ControlNetModel.from_unet(unet)  # default conditioning embedding (16, 32, 96, 256)
    vae = AutoencoderKL(**SD15_VAE)
    text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT, bos_token_id=len(tokenizer) - 2,
                                        eos_token_id=len(tokenizer) - 1,
                                        pad_token_id=len(tokenizer) - 1))
    counts = {name: sum(p.numel() for p in m.parameters()) / 1e6
              for name, m in [("unet", unet), ("controlnet", controlnet), ("vae", vae),
                              ("text_encoder", text)]}
    log.info("built random-weight SD1.5 in %.0f s: %s M parameters", time.perf_counter() - start,
             {k: round(v) for k, v in counts.items()})
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    start = time.perf_counter()
    pipe.save_pretrained(str(root / "base"))
    controlnet.save_pretrained(str(root / "controlnet"))
    log.info("saved to %s in %.0f s", root, time.perf_counter() - start)
    return {"base": str(root / "base"), "controlnet": str(root / "controlnet"), "params_m": counts}


def make_samples(count: int, size: int) -> list[dict]:
    """Samples with a normal layer (a shaded ellipsoid 'body'), a prompt and a seed."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    samples = []
    for i in range(count):
        cx, cy = 0.5 + 0.05 * i, 0.5
        nx, ny = (xx - cx) / 0.18, (yy - cy) / 0.4
        inside = nx ** 2 + ny ** 2 < 1
        nz = np.sqrt(np.clip(1 - nx ** 2 - ny ** 2, 0, 1))
        rgb = np.stack([nx, -ny, nz], -1) * inside[..., None]
        normal_rgb = np.where(inside[..., None], (rgb + 1) * 127.5, 0).astype(np.uint8)
        samples.append({"layers": {"normal_rgb": normal_rgb}, "prompt": PROMPT,
                        "negative_prompt": NEGATIVE, "seed": 1000 + i})
    return samples


def load_synthgen(models: dict, args):
    """synthgen's backend, as the pipeline builds it from a recipe."""
    config = ControlNetConfig(family="sd15", base_model=models["base"],
                              controlnets=[{"model": models["controlnet"], "layer": "normal"}],
                              scheduler="unipc", steps=args.steps, guidance=7.5,
                              dtype=args.dtype, batch_size=args.batch, device=args.device)
    backend = ControlNetBackend(config, args.resolution, args.resolution)
    return backend.generate


def load_baseline(models: dict, args):
    """The model-card way: from_pretrained, UniPC, one pipe(...) call per image."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, UniPCMultistepScheduler
    from PIL import Image

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    if args.device == "cpu" and args.dtype == "fp16":
        dtype = torch.float32
    controlnet = ControlNetModel.from_pretrained(models["controlnet"], dtype=dtype)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        models["base"], controlnet=controlnet, dtype=dtype, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)

    def generate(samples: list[dict]) -> list[np.ndarray]:
        images = []
        for sample in samples:
            image = Image.fromarray(control_image(sample["layers"], "normal"))
            out = pipe(sample["prompt"], image=image, negative_prompt=sample["negative_prompt"],
                       num_inference_steps=args.steps, guidance_scale=7.5,
                       height=args.resolution, width=args.resolution,
                       generator=torch.Generator(args.device).manual_seed(sample["seed"]))
            images.append(np.asarray(out.images[0]))
        return images

    return generate


def run_interleaved(loops: dict, args, samples: list[dict]) -> dict:
    """Warm each loop up, then time them batch by batch in turn: on a shared machine whose
    speed drifts, both loops see the same conditions."""
    for name, generate in loops.items():  # warm-up: one full batch each (untimed)
        log.info("%s: warm-up", name)
        generate(samples[:args.batch] if name == "synthgen" else samples[:1])
    seconds = dict.fromkeys(loops, 0.0)
    images: dict[str, list] = {name: [] for name in loops}
    for start in range(0, len(samples), args.batch):
        chunk = samples[start:start + args.batch]
        for name, generate in loops.items():
            _sync(args.device)
            t0 = time.perf_counter()
            images[name] += generate(chunk)
            _sync(args.device)
            seconds[name] += time.perf_counter() - t0
            log.info("%s: %d/%d images, %.1f s", name, len(images[name]), len(samples), seconds[name])
    return {name: (seconds[name], images[name]) for name in loops}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=512, help="image side (default 512)")
    parser.add_argument("--steps", type=int, default=20 if cuda else 1,
                        help="denoising steps (default: 1 on CPU, 20 on CUDA)")
    parser.add_argument("--images", type=int, default=16 if cuda else 2,
                        help="timed images per loop (default: 2 on CPU, 16 on CUDA)")
    parser.add_argument("--batch", type=int, default=2, help="synthgen batch size (default 2)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if cuda else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp16" if cuda else "fp32",
                        help="fp16 on CUDA, fp32 on CPU by default")
    parser.add_argument("--models", help="reuse models saved by an earlier run in this folder "
                        "(created when missing; default: a temporary folder, deleted at the end)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)

    workdir = Path(args.models) if args.models else Path(tempfile.mkdtemp(prefix="synthgen-bench-"))
    try:
        if (workdir / "base" / "model_index.json").is_file():
            models = {"base": str(workdir / "base"), "controlnet": str(workdir / "controlnet")}
        else:
            models = build_full_size_sd15(workdir)
        gc.collect()
        samples = make_samples(args.images, args.resolution)
        loads, loops = {}, {}
        for name, loader in (("synthgen", load_synthgen), ("baseline", load_baseline)):
            t0 = time.perf_counter()
            loops[name] = loader(models, args)
            loads[name] = time.perf_counter() - t0
            log.info("%s loaded in %.1f s", name, loads[name])
        results = run_interleaved(loops, args, samples)
    finally:
        if not args.models:
            shutil.rmtree(workdir, ignore_errors=True)

    (ours_s, ours), (base_s, base) = results["synthgen"], results["baseline"]
    diffs = [int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) for a, b in zip(ours, base)]
    rows = [("synthgen ControlNetBackend", args.batch, loads["synthgen"], ours_s, ours),
            ("plain diffusers loop", 1, loads["baseline"], base_s, base)]
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"\nSD1.5 + 1 ControlNet (full size, random weights), {args.resolution}x{args.resolution}, "
          f"{args.steps} UniPC step(s), CFG 7.5, {args.dtype}, {device}, torch {torch.__version__}")
    header = (f"{'loop':<28} | {'batch':>5} | {'images':>6} | {'load s':>7} | {'timed s':>8} | "
              f"{'images/s':>8} | {'s/image':>7}")
    print(header + "\n" + "-" * len(header))
    for name, batch, load, seconds, images in rows:
        print(f"{name:<28} | {batch:>5} | {len(images):>6} | {load:>7.1f} | {seconds:>8.1f} | "
              f"{len(images) / seconds:>8.4f} | {seconds / len(images):>7.1f}")
    print(f"speed-up {base_s / ours_s:.2f}x; max |synthgen - baseline| per image (0-255): {diffs}")
    print(json.dumps({"resolution": args.resolution, "steps": args.steps, "batch": args.batch,
                      "images": args.images, "dtype": args.dtype, "device": device,
                      "synthgen_images_per_s": round(len(ours) / ours_s, 5),
                      "baseline_images_per_s": round(len(base) / base_s, 5)}))


if __name__ == "__main__":
    main()
