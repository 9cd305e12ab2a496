"""What `generate` returns: the tokens, their text, and the numbers a benchmark reports.

Generated tokens are counted per row up to and excluding the first EOS (the prompt never
counts), as throughput is reported for diffusion LMs. NFE counts forward passes over the batch
(CFG steps count two, see `context.py`); `tokens_per_forward` is all rows' generated tokens over
NFE. Denoisers with numbers of their own (the saliency engine's per-layer recompute fractions)
put them in `GenerationStats.extra`, a JSON-ready dict, rather than subclassing.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

from dyllm.generation.config import GenerationConfig


@dataclass
class GenerationStats:
    """Counts and timings of one `generate` call."""

    generated_tokens: int
    """Tokens before the first EOS, summed over rows."""
    generated_tokens_per_row: list[int]
    nfe: int
    """Forward passes of the network over the batch."""
    steps_run: int
    """Denoising steps (denoiser calls)."""
    wall_time_s: float
    """Seconds spent in the denoising loop (tokenization and decoding excluded)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Numbers a custom denoiser reports (`Denoiser.extra_stats`)."""

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    @property
    def tokens_per_forward(self) -> float:
        return self.generated_tokens / self.nfe if self.nfe > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["tokens_per_second"] = self.tokens_per_second
        values["tokens_per_forward"] = self.tokens_per_forward
        return values


@dataclass
class GenerationResult:
    """Output of `generate`, one entry per prompt in the order given."""

    token_ids: list[list[int]]
    """The whole generation region of each row (gen_length tokens, EOS padding included)."""
    texts: list[str] | None
    """Each row decoded up to its first EOS, special tokens skipped; None without a tokenizer."""
    stats: GenerationStats
    options: GenerationConfig | None = None
    """The options the call ran with, every default resolved (a drawn `seed` included)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "token_ids": self.token_ids,
            "texts": self.texts,
            "stats": self.stats.to_dict(),
            "options": None if self.options is None else self.options.to_dict(),
        }


ANSWER_END_TOKENS = ("<|dlm_pad|>",)
"""Tokens that end an answer as EOS does, when the model's tokenizer has them.

DiffuCoder-7B-Instruct was trained to fill a fixed length with a new pad token, `<|dlm_pad|>`
(its id is whatever its tokenizer's added_tokens give; it was not seen), and its official demo
(apple/ml-diffucoder inference_demo.py) cuts the decoded answer at the first `<|dlm_pad|>`.
Tokenizers without the token (LLaDA, Dream-v0) are unaffected."""


def tokens_before_eos(
    token_ids: list[int], eos_token_id: int | None, end_token_ids: Collection[int] = ()
) -> list[int]:
    """The tokens of one row up to and excluding its first EOS or end token (all of them
    without one)."""
    ends = set(end_token_ids) | ({eos_token_id} if eos_token_id is not None else set())
    for index, token in enumerate(token_ids):
        if token in ends:
            return token_ids[:index]
    return list(token_ids)


def answer_end_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """The ids of `ANSWER_END_TOKENS` that `tokenizer` knows (via its `token_to_id`, if any)."""
    lookup = getattr(tokenizer, "token_to_id", None)
    if lookup is None:
        return ()
    ids = (lookup(token) for token in ANSWER_END_TOKENS)
    return tuple(token_id for token_id in ids if token_id is not None)
