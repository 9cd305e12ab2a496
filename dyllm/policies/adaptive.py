"""`LayerAdaptive`: a threshold or a budget per layer, and a calibration that derives them.

Layers differ: in the reference models (and in the DyLLM paper's traces) deeper layers see more
rows move, so one tau recomputes too much in some layers and too little in others. A per-layer
tau (`taus`) or fraction of query rows (`budgets`) evens that out. `LayerAdaptive.calibrate` runs
a short generation on the user's prompts with a top-k policy at the target fraction, records the
context cosines every layer saw on its sparse steps, and sets each layer's tau to the quantile
that would have selected the target fraction of that layer's query rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dyllm.policies.base import AttentionMode, LayerSignals
from dyllm.policies.schedule import DyLLMSchedule
from dyllm.policies.topk import TopK, fraction_of, least_similar


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
    ) -> None:
        super().__init__(warmup_steps, prompt_refresh_every, attention)
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

    def select(self, layer: int, signals: LayerSignals) -> torch.Tensor:
        if self.taus is not None:
            return signals.queries & (signals.context_cosine < self.taus[layer])
        assert self.budgets is not None
        fraction = self.budgets[layer]
        return least_similar(
            signals.context_cosine, signals.queries, lambda n: fraction_of(n, fraction)
        )

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "taus": self.taus, "budgets": self.budgets}

    @classmethod
    def calibrate(
        cls,
        model: torch.nn.Module,
        prompts: Any,
        target_fraction: float | Sequence[float],
        warmup_steps: int = 4,
        prompt_refresh_every: int = 4,
        **generation_options: Any,
    ) -> LayerAdaptive:
        """Per-layer taus that recompute about `target_fraction` of query rows at each layer.

        target_fraction: one fraction for every layer or one per layer. The calibration run
        generates from `prompts` with `generation_options` (use the settings you will deploy).
        """
        from dyllm.engine import SaliencyDenoiser
        from dyllm.generation import generate

        layers = model.config.num_layers
        targets = (
            [float(target_fraction)] * layers
            if isinstance(target_fraction, (int, float))
            else [float(t) for t in target_fraction]
        )
        if len(targets) != layers or not all(0.0 < t < 1.0 for t in targets):
            raise ValueError(f"target_fraction needs {layers} values in (0, 1), got {targets}")
        recorder = _CosineRecorder(targets, warmup_steps, prompt_refresh_every)
        generate(
            model,
            prompts,
            denoiser_factory=lambda m, mask, positions: SaliencyDenoiser(
                m, recorder, mask, positions
            ),
            **generation_options,
        )
        if not recorder.cosines[0]:
            raise ValueError(
                "the calibration run had no sparse step; give more steps than warmup_steps"
            )
        taus = []
        for layer, target in enumerate(targets):
            seen = torch.cat(recorder.cosines[layer])
            taus.append(float(torch.quantile(seen.double(), target)))
        return cls(taus=taus, warmup_steps=warmup_steps, prompt_refresh_every=prompt_refresh_every)


class _CosineRecorder(TopK):
    """Top-k at each layer's target fraction, keeping the query rows' context cosines."""

    def __init__(self, targets: list[float], warmup_steps: int, prompt_refresh_every: int) -> None:
        super().__init__(
            k=targets[0], warmup_steps=warmup_steps, prompt_refresh_every=prompt_refresh_every
        )
        self.targets = targets
        self.cosines: list[list[torch.Tensor]] = [[] for _ in targets]

    def select(self, layer: int, signals: LayerSignals) -> torch.Tensor:
        self.cosines[layer].append(signals.context_cosine[signals.queries].float().cpu())
        fraction = self.targets[layer]
        return least_similar(
            signals.context_cosine, signals.queries, lambda n: fraction_of(n, fraction)
        )
