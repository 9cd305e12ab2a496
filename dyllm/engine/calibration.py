"""Calibration of `LayerAdaptive`: per-layer taus from a short generation on the user's prompts.

The run uses top-k at each layer's target fraction and records the context cosines every layer
saw on its sparse steps; each layer's tau is then the quantile that would have selected the
target fraction of that layer's query rows. Use the generation settings you will deploy.

`adaptive_policy` is the registry's `adaptive`: LayerAdaptive with the per-layer taus or budgets
given, or with taus calibrated here (`target_fraction`) on the model and prompts the caller passes.
It is registered here because calibration needs the engine, which policies/ may not import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from dyllm.engine.generate import generate
from dyllm.generation.prompts import PromptInput
from dyllm.generation.step import StepContext
from dyllm.models import DiffusionTransformer
from dyllm.policies import AttentionSignals, LayerAdaptive, TopK
from dyllm.policies.base import AttentionMode, SoftmaxStatistics
from dyllm.policies.registry import register_policy
from dyllm.policies.topk import fraction_of, least_similar


def calibrate_taus(
    model: DiffusionTransformer,
    prompts: PromptInput,
    target_fraction: float | Sequence[float],
    warmup_steps: int = 4,
    prompt_refresh_every: int = 4,
    attention: AttentionMode = "approximate",
    softmax_statistics: SoftmaxStatistics = "exact",
    **generation_options: Any,
) -> LayerAdaptive:
    """A `LayerAdaptive` whose taus recompute about `target_fraction` of query rows per layer.

    target_fraction: one fraction for every layer or one per layer, each in (0, 1).
    """
    layers = model.config.num_layers
    targets = (
        [float(target_fraction)] * layers
        if isinstance(target_fraction, (int, float))
        else [float(t) for t in target_fraction]
    )
    if len(targets) != layers or not all(0.0 < t < 1.0 for t in targets):
        raise ValueError(f"target_fraction needs {layers} values in (0, 1), got {targets}")
    recorder = CosineRecorder(targets, warmup_steps, prompt_refresh_every, softmax_statistics)
    generate(model, prompts, policy=recorder, **generation_options)
    cosines = recorder.cosines
    if not cosines[0]:
        raise ValueError(
            "the calibration run had no sparse step; give more steps than warmup_steps"
        )
    taus = []
    for layer, target in enumerate(targets):
        seen = torch.cat(cosines[layer])
        taus.append(float(torch.quantile(seen.double(), target)))
    return LayerAdaptive(
        taus=taus,
        warmup_steps=warmup_steps,
        prompt_refresh_every=prompt_refresh_every,
        attention=attention,
        softmax_statistics=softmax_statistics,
    )


class CosineRecorder(TopK):
    """Top-k at each layer's target fraction, keeping the query rows' context cosines."""

    def __init__(
        self,
        targets: list[float],
        warmup_steps: int,
        prompt_refresh_every: int,
        softmax_statistics: SoftmaxStatistics = "exact",
    ) -> None:
        super().__init__(
            k=targets[0],
            warmup_steps=warmup_steps,
            prompt_refresh_every=prompt_refresh_every,
            softmax_statistics=softmax_statistics,
        )
        self.targets = targets
        self.seen: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in targets]

    @property
    def cosines(self) -> list[list[torch.Tensor]]:
        """Per layer, the query rows' context cosines of every sparse step (float32 [n])."""
        return [[cosine[queries] for cosine, queries in layer] for layer in self.seen]

    def select(self, layer: int, signals: AttentionSignals) -> torch.Tensor:
        # kept whole on the device (picking the query rows out would read a count back)
        self.seen[layer].append((signals.context_cosine, signals.queries))
        k = fraction_of(signals.query_count, self.targets[layer])
        return least_similar(signals.context_cosine, signals.queries, k)

    def row_budget(self, step: StepContext, layer: int, query_count: int) -> int:
        return fraction_of(query_count, self.targets[layer])


@register_policy("adaptive")
def adaptive_policy(
    target_fraction: float | Sequence[float] | None = None,
    taus: Sequence[float] | None = None,
    budgets: Sequence[float] | None = None,
    warmup_steps: int = 4,
    prompt_refresh_every: int = 4,
    attention: AttentionMode = "approximate",
    softmax_statistics: SoftmaxStatistics = "exact",
    model: DiffusionTransformer | None = None,
    prompts: PromptInput | None = None,
    generation_options: Mapping[str, Any] | None = None,
) -> LayerAdaptive:
    """Per-layer taus or budgets, or taus calibrated on the prompts to recompute target_fraction.

    model, prompts, generation_options: filled by the caller (the command line: the prompts being
    generated; the benchmark: its calibration prompts), used only with `target_fraction`.
    """
    given = [
        name
        for name, value in (
            ("target_fraction", target_fraction),
            ("taus", taus),
            ("budgets", budgets),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise ValueError(
            "the adaptive policy needs one of target_fraction (calibrated on the prompts, e.g. "
            "target_fraction=0.25), taus or budgets (one per layer)"
            + (f"; got {' and '.join(given)}" if given else "")
        )
    if target_fraction is None:
        return LayerAdaptive(
            taus, budgets, warmup_steps, prompt_refresh_every, attention, softmax_statistics
        )
    if model is None or prompts is None:
        raise ValueError(
            "adaptive with target_fraction calibrates on a model and prompts: call "
            "dyllm.engine.calibrate_taus(model, prompts, target_fraction) in Python"
        )
    return calibrate_taus(
        model,
        prompts,
        target_fraction,
        warmup_steps,
        prompt_refresh_every,
        attention,
        softmax_statistics,
        **(generation_options or {}),
    )
