"""`Dense`: every row at every step, the reference samplers' cost (no cache at all);
`RecomputeQueries`: whatever rows a policy plans as queries are recomputed in full; and
`EveryRow`: the sparse machinery with every row refreshed and selected, the engine's contract
(it must reproduce the dense forward)."""

from __future__ import annotations

import torch

from dyllm.generation.step import StepContext
from dyllm.policies.base import AttentionSignals, LayerSignals, SaliencyPolicy, StepPlan


class Dense(SaliencyPolicy):
    """A full forward every step; the baseline every other policy is measured against."""

    name = "dense"

    def plan(self, step: StepContext) -> StepPlan:
        return StepPlan.dense_step()

    def select(self, layer: int, signals: AttentionSignals) -> torch.Tensor:
        return signals.queries


class RecomputeQueries(SaliencyPolicy):
    """Base of policies whose query rows are all recomputed exactly at every layer (K/V, exact
    attention, FFN): only `plan` decides which rows those are. Fast-dLLM's caches are of this
    kind, and so is `EveryRow`."""

    def rows_to_refresh(self, layer: int, signals: LayerSignals) -> torch.Tensor:
        return signals.queries

    def select(self, layer: int, signals: AttentionSignals) -> torch.Tensor:
        return signals.queries

    def row_budget(self, step: StepContext, layer: int, query_count: int) -> int:
        return query_count


class EveryRow(RecomputeQueries):
    """Sparse steps in which every row is a query, refreshed and selected at every layer.

    It exercises the whole sparse path (gathers, cache writes, exact attention rows, scatter)
    while computing what the dense forward computes; tests hold it to dense generation. Under
    block diffusion every row that can change is the current block's, so it queries those.
    """

    name = "every-row"

    def plan(self, step: StepContext) -> StepPlan:
        rows = step.block_rows if step.block_causal else step.all_rows  # every row that can move
        return StepPlan(dense=False, queries=rows, refresh=rows)
