"""`CosineThreshold`: DyLLM's saliency rule.

A query row is salient at layer l when the cosine similarity between its new and its cached
attention context (over all heads, float32) falls below `tau`; salient rows go through the FFN
and have their K/V recomputed at layer l + 1. One tau for every layer; set sizes vary by layer and
step. The paper's values: 0.99 for LLaDA, 0.995 for Dream (stricter: 0.995 / 0.9975).
"""

from __future__ import annotations

import torch

from dyllm.policies.base import AttentionMode, AttentionSignals, SoftmaxStatistics
from dyllm.policies.query_schedule import DyLLMSchedule

DEFAULT_TAU = {"llada": 0.99, "dream": 0.995}


class CosineThreshold(DyLLMSchedule):
    """Recompute rows whose context moved: cosine(C_new, C_old) < tau."""

    name = "dyllm"

    def __init__(
        self,
        tau: float = 0.99,
        warmup_steps: int = 4,
        prompt_refresh_every: int = 4,
        attention: AttentionMode = "approximate",
        softmax_statistics: SoftmaxStatistics = "exact",
    ) -> None:
        super().__init__(warmup_steps, prompt_refresh_every, attention, softmax_statistics)
        if not -1.0 <= tau <= 1.0:
            raise ValueError(f"tau is a cosine similarity threshold in [-1, 1], got {tau}")
        self.tau = tau

    @classmethod
    def for_family(cls, family: str, **options: object) -> CosineThreshold:
        """DyLLM with the paper's tau for the model family (LLaDA 0.99, Dream 0.995)."""
        return cls(tau=DEFAULT_TAU[family], **options)  # type: ignore[arg-type]

    def select(self, layer: int, signals: AttentionSignals) -> torch.Tensor:
        return signals.queries & (signals.context_cosine < self.tau)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "tau": self.tau}
