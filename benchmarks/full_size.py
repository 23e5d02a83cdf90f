"""Full-size random-weight models for the diffusion benchmark: the public configs of SD1.5, SDXL base
1.0, FLUX.1-dev (+ ControlNets shaped like the ones the recipes name) and SAM ViT-B, built on the
device and saved in the ``from_pretrained`` layout. Nothing is downloaded; the tokenizers are the
byte-level ones of :mod:`synthgen.testing.tiny_models` (prompt lengths in tokens differ from CLIP's
BPE: roughly one token per character, so long prompts reach compel sooner, never later).
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

import torch

from synthgen.testing.tiny_models import prompt_words, t5_tokenizer, write_clip_tokenizer

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("benchmarks.full_size")

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


def words() -> list[str]:
    """The words of synthgen's prompt templates and the recipes: one token each (see
    :func:`synthgen.testing.tiny_models.word_merges`), so prompts are about as long in tokens as with
    CLIP's real vocabulary and go through compel exactly when they would."""
    return prompt_words(ROOT / "synthgen" / "assets" / "prompts", ROOT / "recipes")


def _text(config: dict, tokenizer, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(CLIPTextConfig(**config, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.eos_token_id))


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**{k: v for k, v in SD15_SCHEDULER.items() if k != "skip_prk_steps"})


def build_full_size(family: str, count: int, root: Path, device: str) -> dict:
    """Random-weight full-size ``family`` base + ``count`` ControlNets saved under ``root``.

    Built on ``device`` in fp16 (a GPU initialises billions of weights in seconds)."""
    import diffusers
    from transformers import T5Config, T5EncoderModel

    tokenizer = write_clip_tokenizer(root / "_tokenizer", words())
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
                t5 = t5_tokenizer(root / "_t5")
                pipe = diffusers.FluxPipeline(
                    scheduler=diffusers.FlowMatchEulerDiscreteScheduler(
                        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                        base_image_seq_len=256, max_image_seq_len=4096),
                    vae=diffusers.AutoencoderKL(**FLUX_VAE), text_encoder=_text(SD15_TEXT, tokenizer),
                    tokenizer=tokenizer, text_encoder_2=T5EncoderModel(T5Config(**FLUX_T5)),
                    tokenizer_2=t5, transformer=transformer)
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
