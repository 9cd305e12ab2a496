"""`SaliencyDenoiser`: the generation loop's logits function, driven by a `SaliencyPolicy`.

It owns the `CacheManager` of one generate call (allocated at the first step, for the batch the
sampler passes: 2B rows under classifier-free guidance) and, each step, asks the policy for a
plan, then runs either the dense step (the model's one forward, filling every cache through its
activation sink; with a policy's cached softmax statistics, `StatisticsSink` also fills each
row's log-sum-exps) or the sparse step, and keeps the per-layer statistics. Logits are computed for
the columns the sampler reads (`ctx.logit_start` to `ctx.logit_end`); a plan whose queries do not
cover them is refused.

Host synchronisations of a sparse step with planned capacities (the default off the CPU): one
when it starts (query and refresh counts, and whether the queries form one span: every shape the
step needs, known before layer 0) and one when it ends (the counts for the statistics and the
capacity check); none inside the layer loop. A step whose guessed capacity overflowed runs once
more (see `sparse_step`), adding one more read-back at its end. On the CPU the default reads each
layer's row counts back instead (`row_capacity_mode`), which costs nothing there.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from dyllm.cache import CacheManager
from dyllm.engine.softmax_statistics import StatisticsSink, uses_cached_statistics
from dyllm.engine.sparse_step import (
    Capacities,
    QueryRows,
    SparseStep,
    StepOutcome,
    check_same_rows,
)
from dyllm.engine.statistics import RecomputeStatistics
from dyllm.generation.denoiser import Denoiser
from dyllm.generation.step import StepContext
from dyllm.models.config import ModelConfig
from dyllm.models.transformer import ActivationSink, DiffusionTransformer
from dyllm.policies.base import SaliencyPolicy, StepPlan

ROW_CAPACITY_MODES = ("auto", "planned", "read-back")
"""`DYLLM_ROW_CAPACITY`: how a sparse step sizes its row sets. `planned`: capacities fixed before
the step (no read-back inside the layer loop: what a GPU needs); `read-back`: each layer's count
read back as it runs (exact; free on the CPU); `auto` (default): read-back on the CPU, planned
elsewhere."""

GUESS_MARGIN = 1.5
"""A guessed capacity is this many times the most rows a sequence needed at that layer in the
previous sparse step (as a fraction of its query rows) ..."""
GUESS_SLACK = 8
"""... plus this many rows, capped at the query count."""


class SaliencyDenoiser(Denoiser):
    """Dense or sparse steps as `policy` plans them, over caches it allocates once.

    trace: keep per-step, per-layer recompute fractions (see `RecomputeStatistics.trace`);
    check_invariants: assert the cache's written-row bookkeeping (a debugging aid that reads a
    flag back to the host at every layer).
    """

    def __init__(
        self,
        model: DiffusionTransformer,
        policy: SaliencyPolicy,
        trace: bool = False,
        check_invariants: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.policy = policy
        self.check_invariants = check_invariants
        self.cache: CacheManager | None = None
        self.cached_statistics = uses_cached_statistics(policy)
        self.statistics = RecomputeStatistics(
            model.config.num_layers, trace=trace, experts_per_row=experts_per_row(model.config)
        )
        self.capacity_retries = 0
        self._needed_fraction: list[float] | None = None
        policy.reset(model.config.num_layers)

    def __call__(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        batch, length = x.shape
        if self.cache is None:
            self.cache = CacheManager(
                self.model.config,
                batch,
                length,
                x.device,
                self.model.dtype,
                self.check_invariants,
                num_heads=self.model.num_heads,
                num_kv_heads=self.model.num_kv_heads,
                softmax_statistics=self.cached_statistics,
            )
        plan = self._plan(ctx)
        self.nfe += 2 if ctx.classifier_free_guidance else 1
        self.last_step_dense = plan.dense
        if plan.dense:
            return self._dense(x, ctx)
        return self._sparse(x, ctx, plan)

    def _plan(self, ctx: StepContext) -> StepPlan:
        plan = self.policy.plan(ctx)
        if not isinstance(plan, StepPlan):
            raise ValueError(
                f"policy {self.policy.name!r}: plan must return a StepPlan, got "
                f"{type(plan).__name__}"
            )
        return plan

    def _dense(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """The model's forward over every row, filling every cache (its activation sink)."""
        self.statistics.record_dense(ctx.step, x.numel())
        sink: ActivationSink = self._cache()
        if self.cached_statistics:
            mask = None if ctx.attention_mask is None else ctx.attention_mask.bool()
            sink = StatisticsSink(self._cache(), mask)
        return self.model(
            x,
            attention_mask=ctx.attention_mask,
            position_ids=ctx.position_ids,
            logit_range=(ctx.logit_start, ctx.logit_end),
            sink=sink,
        )

    def _rows_seen(self, x: torch.Tensor, ctx: StepContext) -> int:
        """The rows a dense step of the sampler computes, the statistics' denominator."""
        return x.numel()

    def _cache(self) -> CacheManager:
        assert self.cache is not None, "the cache is allocated at the first step"
        return self.cache

    def _sparse(self, x: torch.Tensor, ctx: StepContext, plan: StepPlan) -> torch.Tensor:
        assert self.cache is not None
        queries, refresh = self._checked_plan(plan, x)
        if self.check_invariants:  # under tensor parallelism: the same plan on every process
            name = self.policy.name
            check_same_rows(self.model, queries, f"the plan's queries at step {ctx.step}", name)
            check_same_rows(self.model, refresh, f"the plan's refresh at step {ctx.step}", name)
        query_rows, most_refreshed = self._query_rows(queries, refresh, ctx)
        # the window's columns are all queries, so in each row they are consecutive slots of the
        # (ascending) query positions, starting after the queries left of the window
        first_slot = (query_rows.index < ctx.logit_start).sum(dim=1, keepdim=True)  # [B, 1]
        logit_rows = first_slot + torch.arange(ctx.logit_end - ctx.logit_start, device=x.device)
        capacities = self._capacities(ctx, query_rows.count, most_refreshed)  # checks budgets
        if row_capacity_mode(x.device) == "read-back":
            capacities = Capacities.read_back_counts(self.model.config.num_layers)
        written = self.cache.written_state() if capacities.guessed else []
        while True:
            step = SparseStep(
                self.model, self.cache, self.policy, ctx, query_rows, refresh & queries, capacities
            )
            logits = step.run(x, logit_rows)  # [B, W, V]
            outcome = step.finish()
            layer = outcome.overflowing_layer(capacities)
            if layer is None:
                break
            if not capacities.guessed:
                raise ValueError(self._budget_broken(ctx, layer, outcome, capacities))
            step.undo()
            self.cache.restore_written(written)
            self.capacity_retries += 1
            capacities = Capacities.every_query(len(capacities.select), query_rows.count)
        self._remember(outcome, query_rows.count)
        self.statistics.record_sparse(
            ctx.step,
            self._rows_seen(x, ctx),
            query_rows.index.numel(),
            outcome.refreshed,
            outcome.selected,
        )
        return logits

    def _budget_broken(
        self, ctx: StepContext, layer: int, outcome: StepOutcome, capacities: Capacities
    ) -> str:
        picked = max(outcome.most_refreshed[layer], outcome.most_selected[layer])
        room = max(capacities.refresh[layer], capacities.select[layer])
        return (
            f"policy {self.policy.name!r} picked {picked} rows of a sequence at layer {layer} "
            f"of step {ctx.step}, more than its row_budget allows ({room}); row_budget must "
            "bound what rows_to_refresh and select return at that layer (or return None)"
        )

    def _checked_plan(self, plan: StepPlan, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.policy.name
        if plan.queries is None or plan.refresh is None:
            raise ValueError(f"policy {name!r} planned a sparse step without query or refresh rows")
        for label, rows in (("queries", plan.queries), ("refresh", plan.refresh)):
            if rows.dtype != torch.bool or rows.shape != x.shape:
                raise ValueError(
                    f"policy {name!r}: the plan's {label} must be a bool mask of shape "
                    f"{list(x.shape)}, got {rows.dtype} of shape {list(rows.shape)}"
                )
        return plan.queries, plan.refresh

    def _query_rows(
        self, queries: torch.Tensor, refresh: torch.Tensor, ctx: StepContext
    ) -> tuple[QueryRows, int]:
        """The query rows and the most layer-0 refreshed rows in a sequence (one host sync)."""
        length = queries.shape[1]
        columns = torch.arange(length, device=queries.device)
        counts = queries.sum(dim=1)  # [B]
        start = queries.int().argmax(dim=1)  # first query column of each sequence
        inside = (columns >= start[:, None]) & (columns < (start + counts)[:, None])
        one_span = (queries == inside).all() & (start == start[0]).all()
        covers_window = queries[:, ctx.logit_start : ctx.logit_end].all()
        most_refreshed = (refresh & queries).sum(dim=1).max()
        outside = (
            (queries & ~ctx.block_rows).any() if ctx.block_causal else torch.zeros_like(one_span)
        )
        facts = torch.stack([one_span, covers_window, most_refreshed, start[0], outside]).long()
        values = torch.cat([facts, counts]).tolist()
        one_span, covers_window, most_refreshed, first, outside = values[:5]
        counts_per_sequence = values[5:]
        if outside:
            raise ValueError(
                f"policy {self.policy.name!r} planned query rows outside the current block "
                f"(columns {ctx.block_start}..{ctx.block_end - 1}) under block diffusion, where "
                "only that block's rows can change and the sparse step attends as the current "
                "block does; keep a sparse plan's queries inside step.block_rows when "
                "step.block_causal (or return a block_diffusion_refusal)"
            )
        if not covers_window:
            raise ValueError(
                f"policy {self.policy.name!r} left rows out of its queries whose logits the "
                f"sampler reads (columns {ctx.logit_start}..{ctx.logit_end - 1}: the current "
                "block, one column earlier for models with a logit shift)"
            )
        if len(set(counts_per_sequence)) != 1:
            raise ValueError(
                f"policy {self.policy.name!r}: query rows must number the same in every sequence "
                f"of the batch; got {counts_per_sequence}"
            )
        count = counts_per_sequence[0]
        order = torch.sort((~queries).to(torch.int8), dim=1, stable=True).indices
        span = (first, first + count) if one_span and count else None
        return QueryRows(queries, order[:, :count], span), most_refreshed

    def _capacities(self, ctx: StepContext, query_count: int, most_refreshed: int) -> Capacities:
        """Rows per sequence each layer's refresh set and selection can hold.

        A policy that keeps the default `rows_to_refresh` refreshes at layer l what it selected
        at layer l - 1 (layer 0: the plan's rows, `most_refreshed` of them at most), so its
        refresh capacities follow its selection capacities exactly; any other policy's
        `row_budget` bounds both sets.
        """
        layers = self.model.config.num_layers
        select, guessed = [], False
        for layer in range(layers):
            budget = self.policy.row_budget(ctx, layer, query_count)
            if budget is not None and (
                isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget != budget
            ):
                raise ValueError(
                    f"policy {self.policy.name!r}: row_budget must return a number of rows or "
                    f"None, got {budget!r} at layer {layer}"
                )
            if budget is None:
                budget = self._guess(layer, query_count)
                guessed = guessed or budget < query_count
            select.append(min(max(int(budget), 0), query_count))
        if _refreshes_what_it_selected(self.policy):
            refresh = [most_refreshed, *select[:-1]]
        else:
            refresh = [max(select[0], most_refreshed), *select[1:]]
        return Capacities(refresh, select, guessed)

    def _guess(self, layer: int, query_count: int) -> int:
        """A capacity from what the previous sparse step needed (every row before there is one)."""
        if self._needed_fraction is None:
            return query_count
        rows = math.ceil(self._needed_fraction[layer] * query_count * GUESS_MARGIN) + GUESS_SLACK
        return min(rows, query_count)

    def _remember(self, outcome: StepOutcome, query_count: int) -> None:
        needed = map(max, outcome.most_refreshed, outcome.most_selected)
        self._needed_fraction = [most / max(query_count, 1) for most in needed]

    def new_batch(self) -> None:
        """The next batch of the call: caches and policy state start afresh (the statistics and
        NFE keep counting, over the whole call)."""
        self.cache = None
        self._needed_fraction = None
        self.policy.reset(self.model.config.num_layers)

    def extra_stats(self) -> dict[str, Any]:
        stats = self.statistics.summary()
        stats["policy"] = self.policy.describe()
        stats["cache_bytes"] = 0 if self.cache is None else self.cache.nbytes
        stats["capacity_retries"] = self.capacity_retries
        return stats


def _refreshes_what_it_selected(policy: SaliencyPolicy) -> bool:
    """Whether `policy` keeps the default `rows_to_refresh` (the previous layer's selection)."""
    return type(policy).rows_to_refresh is SaliencyPolicy.rows_to_refresh


def row_capacity_mode(device: torch.device) -> str:
    """ "planned" or "read-back" for tensors on `device`, as `DYLLM_ROW_CAPACITY` says."""
    choice = os.environ.get("DYLLM_ROW_CAPACITY", "auto")
    if choice not in ROW_CAPACITY_MODES:
        raise ValueError(
            f"DYLLM_ROW_CAPACITY={choice!r}; choose one of {', '.join(ROW_CAPACITY_MODES)}"
        )
    if choice == "auto":
        return "read-back" if device.type == "cpu" else "planned"
    return choice


def experts_per_row(config: ModelConfig) -> list[int] | None:
    """Per layer, the experts one row's FFN runs through: top-k routed plus the shared expert on
    a mixture-of-experts layer, 0 on a dense one; None for a model without experts."""
    experts = config.experts
    if experts is None:
        return None
    per_row = experts.num_experts_per_tok + (experts.shared_expert_intermediate_size is not None)
    return [per_row if moe else 0 for moe in experts.moe_layers]
