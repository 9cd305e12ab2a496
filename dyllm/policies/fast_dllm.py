"""Fast-dLLM's block caches as policies: `PrefixCache` and `DualCache`.

Fast-dLLM (Wu et al., 2025) decodes block by block and reuses K/V across the steps of a block:

* at the first step of each block, a full forward refreshes every cache (a dense step here);
* **PrefixCache**: for the rest of the block, the prompt and the finished blocks are frozen (their
  K/V from the block's first step are reused, nothing of theirs is computed); the current block
  and the masked suffix are computed in full: K/V, exact attention over every key, FFN;
* **DualCache**: the masked suffix is frozen too; only the current block is computed, its K/V
  written in place into the cache the other rows keep reading.

In the policy interface: the computed rows are the queries, every query is refreshed (new K/V,
exact attention) and selected (FFN) at every layer, and rows that are not queries stay as the
block's first step left them. Nothing is approximated, so the `attention` mode never applies.

Logit shift (Dream): the sampler reads the block's logits from the hidden states one column to the
left, so the computed rows start one column before the block (`StepContext.logit_start`). That
column (the last of the prompt or of the previous block) is recomputed with the block; the
block's own columns all stay computed, so tokens committed anywhere in the block are seen by
every later step. (Fast-dLLM's Dream code computes only the block and reads the block's first
position from its own hidden state instead; dyllm keeps the model's exact shift.)

Fast-dLLM caches K/V before RoPE and rotates them again at each use; dyllm caches them after RoPE.
The positions never move, so both give the same keys.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from dyllm.generation.step import StepContext
from dyllm.policies.base import StepPlan
from dyllm.policies.dense import RecomputeQueries


class BlockCache(RecomputeQueries):
    """Dense at each block's first step; otherwise `computed_rows` in full, the rest frozen."""

    attention = "frozen"

    @abstractmethod
    def computed_rows(self, step: StepContext) -> torch.Tensor:
        """Bool [B, L]: the rows computed at the block's later steps."""

    def block_diffusion_refusal(self) -> str | None:
        return (
            f"Fast-dLLM's {self.name} cache reuses the K/V of the prompt and finished blocks "
            "while recomputing the current block exactly; under LLaDA2's block-causal attention "
            "that is exactly what the default block cache (block_cache=True) already does, with "
            "nothing left to approximate; run with policy=None for it"
        )

    def plan(self, step: StepContext) -> StepPlan:
        if step.first_step_in_block:
            return StepPlan.dense_step()
        rows = self.computed_rows(step)
        return StepPlan(dense=False, queries=rows, refresh=rows)


class PrefixCache(BlockCache):
    """Fast-dLLM PrefixCache: the current block and everything after it are computed."""

    name = "fast-prefix"

    def computed_rows(self, step: StepContext) -> torch.Tensor:
        return step.columns(min(step.logit_start, step.block_start))


class DualCache(BlockCache):
    """Fast-dLLM DualCache: only the current block is computed (one column earlier with a
    logit shift); prefix and suffix K/V stay as the block's first step wrote them."""

    name = "fast-dual"

    def computed_rows(self, step: StepContext) -> torch.Tensor:
        start = min(step.logit_start, step.block_start)
        end = max(step.logit_end, step.block_end)
        return step.columns(start, end)
