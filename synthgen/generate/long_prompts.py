"""Prompts longer than CLIP's 77 tokens for the ``controlnet`` backend (sd15, sdxl), encoded whole by compel."""

from __future__ import annotations

from typing import Any

from synthgen.errors import UserError
from synthgen.recipe import ControlNetConfig

# the embedding lengths, in text-encoder windows, that long prompts are padded up to: the denoiser
# and the ControlNets see at most these few sequence lengths (one compiled graph each)
EMBED_WINDOWS = (2, 4, 8)


class LongPrompts:
    """Prompts longer than CLIP's 77 tokens, encoded whole by compel (``truncate_long_prompts=False``).

    sd15: one CLIP encoder; sdxl: both, penultimate hidden states + pooled of the second, as
    HumanWild's demo sets compel up. A prompt that fits is left to the pipeline (compel's
    embeddings of a short prompt equal the pipeline's, measured bit for bit on the tiny models).

    compel returns one 77-token window per 75 tokens of the prompt; the embeddings are then
    padded with windows of the empty prompt (compel's own padding between a prompt and its
    negative) up to the next length of :data:`EMBED_WINDOWS` (2, 4 or 8 windows: 154, 308, 616
    tokens), so that the denoiser and ControlNets see a bounded set of shapes (each new one
    would recompile them) whatever the prompts. A prompt needing more than 8 windows (about
    600 tokens) is refused with a :class:`UserError`.
    """

    def __init__(self, pipe, config: ControlNetConfig):
        self.pipe, self.config = pipe, config
        self.limit = int(pipe.tokenizer.model_max_length)
        self._compel = None
        self._empty: dict[str, Any] | None = None

    def _tokens(self, text: str) -> int:
        return len(self.pipe.tokenizer(text, truncation=False, add_special_tokens=True)["input_ids"])

    def too_long(self, sample: dict) -> bool:
        """Whether the sample's prompt or negative prompt exceeds ``limit`` tokens."""
        longest = max(self._tokens(sample["prompt"]), self._tokens(sample.get("negative_prompt") or ""))
        if longest <= self.limit:
            return False
        if self.config.long_prompts == "error":
            raise UserError(f"a prompt of {longest} tokens is longer than the text encoder's "
                            f"{self.limit}; shorten prompt.templates or set "
                            "backend.controlnet.long_prompts: compel")
        return True

    @property
    def compel(self):
        if self._compel is None:
            try:
                from compel import CompelForSD, CompelForSDXL
            except ImportError:
                raise UserError("prompts over 77 tokens need the 'compel' package: pip install "
                                "'synthgen[diffusion]' (or set backend.controlnet.long_prompts: error)") from None
            wrapper = CompelForSDXL if self.config.family == "sdxl" else CompelForSD
            self._compel = wrapper(self.pipe)
        return self._compel

    def encode_text(self, prompt: str, negative: str) -> dict[str, Any]:
        import torch

        with torch.inference_mode():
            out = self.compel(prompt, negative_prompt=negative)
        named = {"prompt_embeds": out.embeds, "negative_prompt_embeds": out.negative_embeds,
                 "pooled_prompt_embeds": out.pooled_embeds,
                 "negative_pooled_prompt_embeds": out.negative_pooled_embeds}
        return {key: value for key, value in named.items() if value is not None}

    def padded_length(self, length: int) -> int:
        """The embedding length (tokens) a compel embedding of ``length`` tokens is padded to."""
        windows = -(-length // self.limit)
        for allowed in EMBED_WINDOWS:
            if windows <= allowed:
                return allowed * self.limit
        raise UserError(f"a prompt needs {windows} text-encoder windows of {self.limit} tokens, more "
                        f"than the {EMBED_WINDOWS[-1]} synthgen pads to (about "
                        f"{EMBED_WINDOWS[-1] * (self.limit - 2)} tokens); shorten prompt.templates")

    def encode(self, sample: dict) -> dict[str, Any]:
        """Pipeline keyword arguments for one sample: ``prompt_embeds`` (1, L, D),
        ``negative_prompt_embeds`` (same L) and for sdxl the pooled ones (1, P); L is one of
        :data:`EMBED_WINDOWS` times 77."""
        import torch

        named = self.encode_text(sample["prompt"], sample.get("negative_prompt") or "")
        length = named["prompt_embeds"].shape[1]
        target = self.padded_length(length)
        if target == length:
            return named
        if self._empty is None:  # one window of the empty prompt, as compel pads
            self._empty = self.encode_text("", "")
        if length % self.limit:
            raise RuntimeError(f"compel returned {length} tokens, not a multiple of {self.limit}")
        for key in ("prompt_embeds", "negative_prompt_embeds"):
            fill = self._empty[key].to(named[key].device).repeat(1, (target - length) // self.limit, 1)
            named[key] = torch.cat([named[key], fill], dim=1)
        return named
