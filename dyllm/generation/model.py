"""What the samplers read of a model, as typed protocols.

The generation package never builds or inspects a network: it needs a callable that maps a
canvas to logits (through a `Denoiser`), the token ids of its config, its tokenizer and its
checkpoint's generation defaults. `dyllm.models.DiffusionTransformer` satisfies these protocols;
so does any stand-in with the same attributes (the tests' mock models do).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import torch


class SamplerConfig(Protocol):
    """The fields of `model.config` the samplers and their checks read."""

    family: str
    """The model family: which reference sampler runs by default (`config.FAMILY_SAMPLERS`)."""
    vocab_size: int
    mask_token_id: int
    eos_token_id: int | None
    eot_token_id: int | None
    pad_token_id: int
    logit_shift: bool
    """Dream: position i's logits predict position i + 1."""
    max_position_embeddings: int


class PromptTokenizer(Protocol):
    """The tokenizer calls prompt encoding and answer decoding make."""

    has_chat_template: bool

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str: ...

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str: ...


class GenerativeModel(Protocol):
    """A model the samplers can run: config, tokenizer (or None), checkpoint defaults."""

    config: SamplerConfig
    tokenizer: PromptTokenizer | None
    generation_defaults: Mapping[str, Any]
    """generation_config.json's entries (empty when the folder has none)."""

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logit_range: tuple[int, int] | None = None,
    ) -> torch.Tensor: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...
