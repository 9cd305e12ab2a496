"""Cached softmax statistics: each row's log-sum-exp, kept where its attention was exact.

A policy with `softmax_statistics = "cached"` has a non-refreshed query row update its context
as `C_old + exp(q K[A]^T / sqrt(D) - lse) dV[A]`, with `lse` the row's softmax log-sum-exp per
head from the last time its attention was computed exactly, instead of scoring every key for a
fresh normaliser (docs/sparse-step.md). The cache keeps `lse` per layer ([B, L, H] float32,
`CacheManager(softmax_statistics=True)`); it is written

* by a dense step, for every row: `StatisticsSink` wraps the cache as the forward's sink and
  derives the statistics from the layer's queries and keys (one extra score pass per layer, paid
  only with the option on; the forward's own fused attention does not return them);
* by a sparse step, for the refreshed (exact) rows: the saliency attention kernel writes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dyllm.cache import CacheManager
from dyllm.kernels.primitives import attention_logsumexp
from dyllm.models.transformer import LayerActivations
from dyllm.policies.base import SaliencyPolicy


def uses_cached_statistics(policy: SaliencyPolicy) -> bool:
    """Whether `policy` asks for cached softmax statistics (its value checked)."""
    choice = getattr(policy, "softmax_statistics", "exact")
    if choice not in ("exact", "cached"):
        raise ValueError(
            f"policy {policy.name!r}: softmax_statistics must be 'exact' or 'cached', got "
            f"{choice!r}"
        )
    if choice == "cached" and policy.attention != "approximate":
        raise ValueError(
            f"policy {policy.name!r}: softmax_statistics='cached' changes the approximate "
            f"attention update only, but its attention is {policy.attention!r}; use "
            "softmax_statistics='exact'"
        )
    return choice == "cached"


@dataclass
class StatisticsSink:
    """A dense forward's sink that fills the cache and each row's softmax log-sum-exps."""

    cache: CacheManager
    key_mask: torch.Tensor | None
    """Bool [B, L] (True = real token), as the forward masks its keys; None: every key."""

    def record(self, layer: int, activations: LayerActivations) -> None:
        self.cache.record(layer, activations)
        if activations.query is None:
            raise ValueError(
                "this model's layers do not hand their queries to the cache sink, which "
                "softmax_statistics='cached' needs to derive each row's log-sum-exp; use "
                "softmax_statistics='exact' with this model"
            )
        lse = attention_logsumexp(activations.query, activations.key, self.key_mask)  # [B, H, L]
        self.cache.record_statistics(layer, lse.transpose(1, 2))
