"""Decoding settings a benchmark sweeps: tokens per step (nu) and threshold parallel decoding.

The DyLLM paper draws one curve per method across nu = 1, 2, 4 tokens per step (steps =
gen_length / nu, the same transfer schedule for every method), and Fast-dLLM adds confidence-
threshold parallel decoding, where the number of steps adapts to the model's confidence. A
`Decoding` is one of these settings and turns itself into `generate` options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_TOKENS_PER_STEP = (1, 2, 4)
DEFAULT_THRESHOLDS = (0.9,)
"""Fast-dLLM's threshold in its GSM8K scripts."""


@dataclass(frozen=True)
class Decoding:
    """Either a fixed number of tokens per step or a confidence threshold, never both."""

    tokens_per_step: int | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        if (self.tokens_per_step is None) == (self.threshold is None):
            raise ValueError("a decoding setting is either tokens_per_step or threshold, not both")
        if self.tokens_per_step is not None and self.tokens_per_step < 1:
            raise ValueError(f"tokens per step must be at least 1, got {self.tokens_per_step}")
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"a parallel-decoding threshold lies in (0, 1], got {self.threshold}")

    @property
    def label(self) -> str:
        if self.tokens_per_step is not None:
            return f"nu={self.tokens_per_step}"
        return f"threshold={self.threshold:g}"

    def options(self, gen_length: int, block_length: int) -> dict[str, Any]:
        """`generate` options: `steps` for a fixed nu, `threshold` for parallel decoding.

        Raises ValueError when nu does not give a whole number of steps in every block.
        """
        if self.threshold is not None:
            return {"threshold": self.threshold}
        assert self.tokens_per_step is not None
        blocks = gen_length // block_length
        steps, left = divmod(gen_length, self.tokens_per_step)
        if left or steps % blocks:
            raise ValueError(
                f"{self.tokens_per_step} tokens per step does not fit gen_length {gen_length} in "
                f"{blocks} block(s) of {block_length}: each block needs a whole number of steps; "
                "choose tokens per step dividing the block length"
            )
        return {"steps": steps}

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "tokens_per_step": self.tokens_per_step,
            "threshold": self.threshold,
        }


def default_decodings(
    tokens_per_step: tuple[int, ...] = DEFAULT_TOKENS_PER_STEP,
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
) -> list[Decoding]:
    """Fixed-nu settings first (the curves), then threshold settings."""
    return [Decoding(tokens_per_step=nu) for nu in tokens_per_step] + [
        Decoding(threshold=t) for t in thresholds
    ]
