"""A tiny random-weight SAM (transformers ``SamModel`` + ``SamProcessor``) saved like a real one.

Same classes and file layout as ``facebook/sam-vit-base`` (``config.json``, ``model.safetensors``,
``processor_config.json``), shrunk everywhere: ViT width 32 with 2 layers (one global-attention),
prompt encoder and mask decoder width 32, and a 256-pixel input (the processor's
``longest_edge``/``pad_size`` and the configs' ``image_size`` must agree: 16x16 image embeddings,
64x64 low-resolution masks). Random weights: its masks are meaningless; use it to test loading,
batching, prompts, shapes and dtypes, never mask quality.
"""

from __future__ import annotations

from pathlib import Path

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
