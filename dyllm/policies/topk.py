"""`TopK`: a fixed budget per layer, the k query rows whose context moved most.

`k` is a row count or, when a float in (0, 1], a fraction of the query rows (rounded up, at least
one row). Exactly k rows per sequence are selected at every layer of every sparse step, which
makes the cost of a step predictable: the knob benchmarks sweep.
"""

from __future__ import annotations

import math

import torch

from dyllm.generation.step import StepContext
from dyllm.policies.base import AttentionMode, AttentionSignals, SoftmaxStatistics
from dyllm.policies.query_schedule import DyLLMSchedule


class TopK(DyLLMSchedule):
    """Select the k least similar query rows (per sequence) at each layer."""

    name = "topk"

    def __init__(
        self,
        k: int | float,
        warmup_steps: int = 4,
        prompt_refresh_every: int = 4,
        attention: AttentionMode = "approximate",
        softmax_statistics: SoftmaxStatistics = "exact",
    ) -> None:
        super().__init__(warmup_steps, prompt_refresh_every, attention, softmax_statistics)
        if isinstance(k, float) and not 0.0 < k <= 1.0:
            raise ValueError(f"a fractional k must lie in (0, 1], got {k}")
        if isinstance(k, int) and k < 1:
            raise ValueError(f"k must be at least 1 row, got {k}")
        self.k = k

    def budget(self, query_rows: int) -> int:
        """Rows to select among `query_rows` query rows."""
        if isinstance(self.k, float):
            return fraction_of(query_rows, self.k)
        return min(self.k, query_rows)

    def select(self, layer: int, signals: AttentionSignals) -> torch.Tensor:
        return least_similar(
            signals.context_cosine, signals.queries, self.budget(signals.query_count)
        )

    def row_budget(self, step: StepContext, layer: int, query_count: int) -> int:
        return self.budget(query_count)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "k": self.k}


def fraction_of(rows: int, fraction: float) -> int:
    """ceil(fraction * rows), at least one row."""
    return max(1, math.ceil(fraction * rows))


def least_similar(similarity: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    """Bool [B, L]: per row of the batch, the `k` query positions of lowest similarity.

    similarity: float [B, L]; queries: bool [B, L] with at least k positions in every row.
    """
    ranked = similarity.masked_fill(~queries, float("inf"))
    chosen = ranked.topk(k, dim=-1, largest=False).indices
    selected = torch.zeros_like(queries)
    selected.scatter_(1, chosen, True)
    return selected & queries
