"""The tiny diffusion models the tests build: kept in :mod:`synthgen.testing.tiny_models` (shared with
the benchmarks), imported here under their old names."""

from synthgen.testing.tiny_models import (TINY_VOCAB_SIZE, TOKENIZER_LENGTH, build_tiny_flux,  # noqa: F401
                                          build_tiny_sd15, build_tiny_sdxl, build_tiny_vae, byte_level_vocab,
                                          t5_tokenizer, write_clip_tokenizer)

__all__ = ["TINY_VOCAB_SIZE", "build_tiny_flux", "build_tiny_sd15", "build_tiny_sdxl", "build_tiny_vae",
           "byte_level_vocab", "write_clip_tokenizer"]
