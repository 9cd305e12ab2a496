"""`LayerAdaptive`: a threshold or a budget per layer, and a calibration that derives them.

Layers differ: in the reference models (and in the DyLLM paper's traces) deeper layers see more
rows move, so one tau recomputes too much in some layers and too little in others. A per-layer
tau (`taus`) or fraction of query rows (`budgets`) evens that out. `dyllm.engine.calibrate_taus`
derives the taus from a short generation on the user's prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dyllm.generation.step import StepContext
from dyllm.policies.base import AttentionMode, AttentionSignals, SoftmaxStatistics
from dyllm.policies.query_schedule import DyLLMSchedule
from dyllm.policies.topk import fraction_of, least_similar


class LayerAdaptive(DyLLMSchedule):
    """Per-layer cosine thresholds (`taus`) or per-layer fractions of query rows (`budgets`)."""

    name = "adaptive"

    def __init__(
        self,
        taus: Sequence[float] | None = None,
        budgets: Sequence[float] | None = None,
        warmup_steps: int = 4,
        prompt_refresh_every: int = 4,
        attention: AttentionMode = "approximate",
        softmax_statistics: SoftmaxStatistics = "exact",
    ) -> None:
        super().__init__(warmup_steps, prompt_refresh_every, attention, softmax_statistics)
        if (taus is None) == (budgets is None):
            raise ValueError("give exactly one of taus (per-layer thresholds) or budgets")
        if budgets is not None and not all(0.0 < b <= 1.0 for b in budgets):
            raise ValueError(f"budgets are fractions of query rows in (0, 1], got {list(budgets)}")
        self.taus = None if taus is None else [float(t) for t in taus]
        self.budgets = None if budgets is None else [float(b) for b in budgets]

    def reset(self, num_layers: int) -> None:
        given = self.taus if self.taus is not None else self.budgets
        assert given is not None
        if len(given) != num_layers:
            kind = "taus" if self.taus is not None else "budgets"
            raise ValueError(f"{len(given)} {kind} given for a model of {num_layers} layers")

    def select(self, layer: int, signals: AttentionSignals) -> torch.Tensor:
        if self.taus is not None:
            return signals.queries & (signals.context_cosine < self.taus[layer])
        assert self.budgets is not None
        k = fraction_of(signals.query_count, self.budgets[layer])
        return least_similar(signals.context_cosine, signals.queries, k)

    def row_budget(self, step: StepContext, layer: int, query_count: int) -> int | None:
        if self.budgets is None:
            return None
        # the layer refreshes what the previous layer selected, and selects its own budget
        fractions = self.budgets[max(layer - 1, 0) : layer + 1]
        return max(fraction_of(query_count, fraction) for fraction in fractions)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "taus": self.taus, "budgets": self.budgets}
