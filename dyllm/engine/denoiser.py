"""`SaliencyDenoiser`: the generation loop's logits function, driven by a `SaliencyPolicy`.

It owns the `CacheManager` of one generate call (allocated at the first step, for the batch the
sampler passes: 2B rows under classifier-free guidance) and, each step, asks the policy for a
plan, then runs either the dense step (which refills every cache) or the sparse step, and keeps
the per-layer statistics. Logits are computed for the columns the sampler reads
(`ctx.logit_start` to `ctx.logit_end`); a plan whose queries do not cover them is refused.
"""

from __future__ import annotations

from typing import Any

import torch

from dyllm.cache import CacheManager
from dyllm.engine.statistics import RecomputeStatistics
from dyllm.generation.context import Denoiser, StepContext
from dyllm.models.sparse_step import (
    SparseStepState,
    forward_filling_cache,
    query_index_of,
    sparse_forward,
)
from dyllm.models.transformer import DiffusionTransformer
from dyllm.policies.base import SaliencyPolicy, StepInfo


class SaliencyDenoiser(Denoiser):
    """Dense or sparse steps as `policy` plans them, over caches it allocates once.

    attention_mask: bool [B, L] or None; position_ids: long [B, L] or None (0..L-1).
    trace: keep per-step, per-layer recompute fractions (see `RecomputeStatistics.trace`).
    """

    def __init__(
        self,
        model: DiffusionTransformer,
        policy: SaliencyPolicy,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        trace: bool = False,
        check_invariants: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.policy = policy
        self.attention_mask = attention_mask
        self.position_ids = position_ids
        self.check_invariants = check_invariants
        self.cache: CacheManager | None = None
        self.statistics = RecomputeStatistics(model.config.num_layers, trace=trace)
        policy.reset(model.config.num_layers)

    def __call__(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        copies = 2 if ctx.classifier_free_guidance else 1
        key_mask = _repeat_rows(self.attention_mask, copies)
        positions = _repeat_rows(self.position_ids, copies)
        batch, length = x.shape
        if positions is None:
            positions = torch.arange(length, device=x.device).expand(batch, length)
        if self.cache is None:
            self.cache = CacheManager(
                self.model.config, batch, length, x.device, self.model.dtype, self.check_invariants
            )
        step = self._step_info(x, ctx)
        plan = self.policy.plan(step)
        self.nfe += copies
        if plan.dense:
            self.statistics.record_dense(ctx.step, batch * length)
            return forward_filling_cache(
                self.model, x, key_mask, positions, self.cache, (ctx.logit_start, ctx.logit_end)
            )
        return self._sparse(x, step, plan, key_mask, positions, ctx)

    def _sparse(
        self, x, step: StepInfo, plan, key_mask, positions, ctx: StepContext
    ) -> torch.Tensor:
        if plan.queries is None or plan.refresh is None:
            raise ValueError(f"policy {self.policy.name!r} planned a sparse step without rows")
        if not bool(plan.queries[:, ctx.logit_start : ctx.logit_end].all()):
            raise ValueError(
                f"policy {self.policy.name!r} left rows out of its queries whose logits the "
                f"sampler reads (columns {ctx.logit_start}..{ctx.logit_end - 1}: the current "
                "block, one column earlier for models with a logit shift)"
            )
        query_index = query_index_of(plan.queries)
        # the window's columns are all queries, so in each row they are consecutive slots of
        # the (ascending) query positions, starting after the queries left of the window
        first_slot = (query_index < ctx.logit_start).sum(dim=1, keepdim=True)  # [B, 1]
        window = torch.arange(ctx.logit_end - ctx.logit_start, device=x.device)
        logit_rows = first_slot + window  # [B, W]
        cos, sin = self.model.rope(positions.gather(1, query_index))
        state = SparseStepState(
            cache=self.cache,
            policy=self.policy,
            step=step,
            queries=plan.queries,
            query_index=query_index,
            cos=cos,
            sin=sin,
            key_mask=key_mask,
            incoming=plan.refresh & plan.queries,
        )
        logits = sparse_forward(self.model, x, state, logit_rows)  # [B, W, V]
        batch, length = x.shape
        self.statistics.record_sparse(step.step, batch * length, query_index.numel(), state.counts)
        return logits

    def _step_info(self, x: torch.Tensor, ctx: StepContext) -> StepInfo:
        config = self.model.config
        shift = 1 if config.logit_shift else 0
        return StepInfo(
            step=ctx.step,
            block=ctx.block,
            step_in_block=ctx.step_in_block,
            first_step_in_block=ctx.first_step_in_block,
            block_start=ctx.block_start,
            block_end=ctx.block_end,
            prompt_length=ctx.prompt_length,
            response_start=max(ctx.prompt_length - shift, 0),
            length=x.shape[1],
            logit_start=ctx.logit_start,
            logit_end=ctx.logit_end,
            masked=x == config.mask_token_id,
            newly_committed=ctx.newly_committed,
        )

    def extra_stats(self) -> dict[str, Any]:
        stats = self.statistics.summary()
        stats["policy"] = self.policy.describe()
        stats["cache_bytes"] = 0 if self.cache is None else self.cache.nbytes
        return stats


def _repeat_rows(tensor: torch.Tensor | None, copies: int) -> torch.Tensor | None:
    if tensor is None or copies == 1:
        return tensor
    return torch.cat([tensor] * copies, dim=0)
