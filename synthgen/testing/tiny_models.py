"""Tiny seeded random-weight diffusion and SAM models, saved the way ``from_pretrained`` reads them.

Shared by the tests and the benchmarks (``benchmarks/diffusion.py --smoke``, ``benchmarks/gpu_check.sh
--smoke``), so neither imports the other's code. Nothing here is used by a run.

The tests exercise synthgen's real loading code (``from_pretrained`` on a folder) without any
download: each builder makes the same classes as the real checkpoints, only small (the SD1.5
UNet has ~1.1 M parameters, the whole folder ~9 MB), and writes them with ``save_pretrained``::

    root/
      base/            model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/
                       (sdxl adds text_encoder_2/ + tokenizer_2/; flux has transformer/ instead
                       of unet/ and a T5 text_encoder_2/)
      controlnet-0/    config.json + diffusion_pytorch_model.safetensors
      controlnet-1/    ...

The base folder is saved as the plain text-to-image pipeline (StableDiffusionPipeline, ...), the
layout of the real base checkpoints. The CLIP tokenizer is a byte-level BPE with no merges
(every character is a token) and the T5 tokenizer a character-level Unigram model, both written
here: no tokenizer download either. ControlNets start as ``from_unet``/``from_transformer``
copies whose zero-initialised output projections get random weights, so that control images
visibly change the result. Builders are deterministic: the same seed writes the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["IMAGE_SIZE", "TINY_VOCAB_SIZE", "build_tiny_flux", "build_tiny_sam", "build_tiny_sd15", "build_tiny_sdxl",
           "build_tiny_vae", "byte_level_vocab", "t5_tokenizer", "write_clip_tokenizer"]

# 256 byte characters + their end-of-word forms + <|startoftext|> + <|endoftext|>
TINY_VOCAB_SIZE = 2 * 256 + 2
TOKENIZER_LENGTH = 77  # CLIP's context length; the tiny text encoders use the same


def _byte_characters() -> list[str]:
    """The 256 printable characters GPT-2/CLIP BPE uses to stand for the 256 byte values.

    Printable Latin-1 bytes stand for themselves; the others are shifted to code points 256+.
    """
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, shift = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + shift)
            shift += 1
    return [chars[b] for b in range(256)]


def byte_level_vocab() -> dict[str, int]:
    """token -> id: the byte characters, then their ``</w>`` forms, then the two specials."""
    chars = _byte_characters()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def word_merges(words) -> list[tuple[str, str]]:
    """BPE merges, learnt from ``words`` (lower-case letters) until each is one token: with them a
    prompt costs about one token per word and punctuation mark, as with CLIP's real vocabulary,
    instead of one per character. Learnt by the ``tokenizers`` library's BPE trainer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    words = sorted({w.lower() for w in words if w.isascii() and w.isalpha()})
    if not words:
        return []
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(words, trainers.BpeTrainer(vocab_size=1_000_000, end_of_word_suffix="</w>",
                                                      min_frequency=0, show_progress=False))
    return [tuple(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]


def prompt_words(*folders: Path) -> list[str]:
    """The words of every YAML file in ``folders`` (prompt templates, recipes' negative prompts)."""
    import re

    words: set[str] = set()
    for folder in folders:
        for path in sorted(Path(folder).glob("*.yaml")):
            words.update(re.findall(r"[a-z]+", path.read_text().lower()))
    return sorted(words)


def write_clip_tokenizer(folder: Path, words=()):
    """Write vocab.json + merges.txt into ``folder`` and return the loaded ``CLIPTokenizer``.

    Byte-level: every character is a token; ``words``: also one token per listed word (see
    :func:`word_merges`), appended after the two special tokens (whose ids stay 512 and 513)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = byte_level_vocab()
    merges = word_merges(words)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=TOKENIZER_LENGTH)


def _text_config(hidden: int = 32, projection: int | None = None, vocab: int = TINY_VOCAB_SIZE):
    from transformers import CLIPTextConfig

    extra = {"projection_dim": projection} if projection else {}
    return CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=37,
                          num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=TOKENIZER_LENGTH, bos_token_id=TINY_VOCAB_SIZE - 2,
                          eos_token_id=TINY_VOCAB_SIZE - 1, pad_token_id=TINY_VOCAB_SIZE - 1,
                          hidden_act="gelu", layer_norm_eps=1e-5, **extra)


def _vae():
    from diffusers import AutoencoderKL

    # four blocks -> three downsamples -> the 8x latent scale factor of the real SD VAEs
    return AutoencoderKL(block_out_channels=(8, 8, 16, 16), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4,
                         latent_channels=4, norm_num_groups=8, layers_per_block=1, sample_size=64)


def _flux_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 8, 16, 16), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4,
                         norm_num_groups=8, layers_per_block=1, sample_size=64,
                         use_quant_conv=False, use_post_quant_conv=False,
                         shift_factor=0.0609, scaling_factor=1.5035)


def build_tiny_vae(folder: str | Path, family: str = "sdxl", seed: int = 5) -> str:
    """A stand-alone AutoencoderKL of ``family``'s tiny shape (for ``backend.controlnet.vae``),
    seeded apart from the base model's own VAE so that using it changes the image."""
    torch.manual_seed(seed)
    vae = _flux_vae() if family == "flux" else _vae()
    vae.save_pretrained(str(folder), safe_serialization=True)
    return str(folder)


def _controlnets(unet, count: int) -> list:
    from diffusers import ControlNetModel

    nets = []
    for i in range(count):
        torch.manual_seed(100 + i)
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
        # from_unet zero-initialises the output convolutions and the last layer of the control
        # image's embedding (a fresh ControlNet ignores its control image), and the default init
        # of that embedding's small convolutions lets their biases drown the image (two different
        # depth maps barely change the hint: benchmarks/README.md). He-initialised embedding weights with
        # zero biases make the control image change every residual by a large fraction (the
        # tests assert > 1 %).
        with torch.no_grad():
            for block in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
                block.weight.normal_(0.0, 0.5)
            for conv in net.controlnet_cond_embedding.modules():
                if isinstance(conv, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(conv.weight)
                    conv.bias.zero_()
        nets.append(net)
    return nets


def _save(root: Path, pipe, controlnets: list) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(root / "base"), safe_serialization=True)
    folders = []
    for i, net in enumerate(controlnets):
        folder = root / f"controlnet-{i}"
        net.save_pretrained(str(folder), safe_serialization=True)
        folders.append(str(folder))
    return {"base": str(root / "base"), "controlnets": folders}


def _scheduler():
    from diffusers import DDIMScheduler

    # the SD1.5 / SDXL training schedule
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def build_tiny_sd15(root: str | Path, num_controlnets: int = 2, seed: int = 0, words=()) -> dict:
    """Write a tiny SD1.5 base + ``num_controlnets`` ControlNets under ``root``.

    Returns ``{"base": folder, "controlnets": [folder, ...]}``.
    """
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    root = Path(root)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=8,
                                in_channels=4, out_channels=4, norm_num_groups=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=32, attention_head_dim=8)
    torch.manual_seed(seed + 1)
    vae = _vae()
    torch.manual_seed(seed + 2)
    tokenizer = write_clip_tokenizer(root / "_tokenizer", words)
    text_encoder = CLIPTextModel(_text_config(vocab=len(tokenizer)))
    controlnets = _controlnets(unet, num_controlnets)
    # saved as the plain text-to-image pipeline, like the real base checkpoints
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    return _save(root, pipe, controlnets)


def build_tiny_sdxl(root: str | Path, num_controlnets: int = 1, seed: int = 0, words=()) -> dict:
    """Write a tiny SDXL base (two text encoders, the second with a projection) + ControlNets."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    root = Path(root)
    hidden, projection, time_dim = 32, 32, 8
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4,
        out_channels=4, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        cross_attention_dim=2 * hidden,  # the two encoders' hidden states are concatenated
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        # pooled projection of text_encoder_2 + 6 micro-conditioning numbers (sizes, crop)
        projection_class_embeddings_input_dim=projection + 6 * time_dim)
    torch.manual_seed(seed + 1)
    vae = _vae()
    torch.manual_seed(seed + 2)
    tokenizer = write_clip_tokenizer(root / "_tokenizer", words)
    text_encoder = CLIPTextModel(_text_config(hidden, vocab=len(tokenizer)))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(hidden, projection, vocab=len(tokenizer)))
    controlnets = _controlnets(unet, num_controlnets)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=_scheduler(), add_watermarker=False)
    return _save(root, pipe, controlnets)


def t5_tokenizer(folder: Path):
    """A character-level T5 (Unigram) tokenizer built in memory: printable ASCII pieces."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(chr(c), -2.0) for c in range(33, 127)]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=TOKENIZER_LENGTH)
    tokenizer.save_pretrained(str(folder))
    return T5Tokenizer.from_pretrained(str(folder))


def build_tiny_flux(root: str | Path, num_controlnets: int = 1, seed: int = 0, words=()) -> dict:
    """Write a tiny FLUX.1-dev-like base (CLIP + T5 text encoders, a 1+1-block transformer with
    guidance embedding, a 4-channel VAE with FLUX's shift/scale) + InstantX-style ControlNets."""
    from diffusers import (FlowMatchEulerDiscreteScheduler, FluxControlNetModel,
                           FluxPipeline, FluxTransformer2DModel)
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    latent = 4
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * latent,  # latents are packed 2x2 -> 4x channels
        num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8))
    torch.manual_seed(seed + 1)
    vae = _flux_vae()
    torch.manual_seed(seed + 2)
    tokenizer = write_clip_tokenizer(root / "_tokenizer", words)
    text_encoder = CLIPTextModel(_text_config(vocab=len(tokenizer)))
    torch.manual_seed(seed + 3)
    tokenizer_2 = t5_tokenizer(root / "_t5")
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=32, d_kv=8,
                                             d_ff=37, num_layers=2, num_heads=4,
                                             decoder_start_token_id=0))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True,
                                                base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    nets = []
    for i in range(num_controlnets):
        torch.manual_seed(200 + i)
        net = FluxControlNetModel.from_transformer(transformer, num_layers=1, num_single_layers=1,
                                                   attention_head_dim=16, num_attention_heads=2)
        with torch.no_grad():  # un-zero the output projections and the control input (see _controlnets)
            for block in [*net.controlnet_blocks, *net.controlnet_single_blocks, net.controlnet_x_embedder]:
                block.weight.normal_(0.0, 0.5)
        nets.append(net)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                        tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                        tokenizer_2=tokenizer_2, transformer=transformer)
    return _save(root, pipe, nets)


# --- SAM ------------------------------------------------------------------------------------------
# A tiny random-weight SAM (transformers ``SamModel`` + ``SamProcessor``) saved like a real one: same
# classes and file layout as ``facebook/sam-vit-base`` (``config.json``, ``model.safetensors``,
# ``processor_config.json``), shrunk everywhere: ViT width 32 with 2 layers (one global-attention),
# prompt encoder and mask decoder width 32, and a 256-pixel input (the processor's
# ``longest_edge``/``pad_size`` and the configs' ``image_size`` must agree: 16x16 image embeddings,
# 64x64 low-resolution masks). Random weights: its masks are meaningless; use it to test loading,
# batching, prompts, shapes and dtypes, never mask quality.
IMAGE_SIZE = 256


def build_tiny_sam(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny SAM into ``folder`` with ``save_pretrained``; returns the folder."""
    import torch
    from transformers import (SamConfig, SamMaskDecoderConfig, SamModel, SamProcessor,
                              SamPromptEncoderConfig, SamVisionConfig)
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    vision = SamVisionConfig(hidden_size=32, output_channels=32, num_hidden_layers=2,
                             num_attention_heads=2, mlp_dim=64, global_attn_indexes=[1],
                             image_size=IMAGE_SIZE, window_size=4, num_pos_feats=16)
    prompt = SamPromptEncoderConfig(hidden_size=32, image_size=IMAGE_SIZE, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2,
                                   iou_head_hidden_dim=32)
    config = SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                       mask_decoder_config=decoder.to_dict())
    torch.manual_seed(seed)
    model = SamModel(config).eval()
    processor = SamProcessor(SamImageProcessorPil(size={"longest_edge": IMAGE_SIZE},
                                                  pad_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}))
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
