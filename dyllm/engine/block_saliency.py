"""`SaliencyBlockDenoiser`: saliency policies (DyLLM, top-k, EveryRow, ...) under LLaDA2's block
diffusion, on top of the exact cache of finished blocks.

Why it is exact where it must be. LLaDA2's samplers run the model on the window
x[:, :(b + 1) * W] with the block-causal mask. A finished block's rows never see later rows, so
their K/V are final once their block is done; the current block's rows see every key of the
window. So a sparse step whose query rows are only the current block's, with the key mask the
window (`StepContext.attention_mask`), computes for those rows what the block-causal forward
computes, through the one `SparseStep` (bidirectional attention over the allowed keys). Every
step of a row is therefore one of:

* **dense** (a block's first step, forced: the previous block's rows changed since their K/V
  were last written; or whenever the policy plans a dense step): the block-causal forward over
  the rows not final yet, [final, (b + 1) * W) (the block just finished with its final tokens
  and the current block, or at the first step the prompt too), attending to the cached K/V of
  everything before them (`forward(..., block_length=W, kv_store=...)`, the computation of
  `CachedBlockDenoiser`) and recording K, V, context and FFN output of those rows into the
  saliency cache;
* **sparse**: `SaliencyDenoiser`'s sparse step with `StepContext.block_causal` set: the policy
  plans queries inside the current block (`step.block_rows`; the engine refuses a plan that
  strays), selects salient rows among them, and attends to the window's keys.

With `EveryRow` (every block row refreshed and selected) a sparse step equals the block-causal
forward, so tokens equal the dense run's and logits agree to float32 rounding
(`tests/test_block_saliency.py`).

Batches: the LLaDA2 samplers keep rows in different blocks at the same step, and a row's plan,
cache and capacity guesses depend on its own block and history. So each canvas row has its own
state and batch-1 cache (`_RowDenoiser`, a `SaliencyDenoiser`), and a call runs one forward per
requested row: each row gets the tokens it gets alone, at the cost of batching. `nfe` counts one
per call (one step over the batch, the other block denoisers' count). The statistics' rows are
those the reference computes (each row's window per step), so `computed_token_ratio` is the
share of the reference's FFN rows this run computed.
"""

from __future__ import annotations

from typing import Any

import torch

from dyllm.cache import CacheManager
from dyllm.engine.denoiser import SaliencyDenoiser, experts_per_row
from dyllm.engine.statistics import RecomputeStatistics
from dyllm.generation.block_denoiser import BlockDenoiser, BlockRequest
from dyllm.generation.step import StepContext
from dyllm.models.transformer import DiffusionTransformer, LayerActivations
from dyllm.policies.base import SaliencyPolicy, StepPlan


def block_diffusion_policy_error(policy: SaliencyPolicy) -> str | None:
    """Why `policy` does not run under LLaDA2's block diffusion, or None when it does."""
    reason = policy.block_diffusion_refusal()
    if reason is None:
        return None
    return f"policy {policy.name!r} does not apply to LLaDA2's block diffusion: {reason}"


class SaliencyBlockDenoiser(BlockDenoiser):
    """A `BlockDenoiser` whose steps a `SaliencyPolicy` plans, one row (and cache) at a time."""

    def __init__(
        self,
        model: DiffusionTransformer,
        policy: SaliencyPolicy,
        trace: bool = False,
        check_invariants: bool = False,
    ) -> None:
        super().__init__()
        error = block_diffusion_policy_error(policy)
        if error is not None:
            raise ValueError(error)
        self.model = model
        self.policy = policy
        self.check_invariants = check_invariants
        self.statistics = RecomputeStatistics(
            model.config.num_layers, trace=trace, experts_per_row=experts_per_row(model.config)
        )
        self.rows: dict[int, _RowDenoiser] = {}
        self.rows_computed = 0
        self.window_rows = 0
        self.capacity_retries = 0
        self.cache_bytes = 0

    def begin(self, batch_size: int, width: int) -> None:
        self._retire_rows()
        self.policy.reset(self.model.config.num_layers)

    def __call__(self, request: BlockRequest) -> torch.Tensor:
        if len(request.prompt_lengths) != len(request.rows):
            raise ValueError(
                "SaliencyBlockDenoiser needs each row's prompt length in the BlockRequest "
                "(prompt_lengths); the LLaDA2 samplers pass them"
            )
        outputs, computed = [], []
        canvas, width = request.canvas, request.block_length
        for row, block, prompt_length in zip(
            request.rows, request.blocks, request.prompt_lengths, strict=True
        ):
            denoiser = self.rows.get(row)
            if denoiser is None:
                denoiser = _RowDenoiser(
                    self.model, self.policy, self.statistics, self.check_invariants
                )
                self.rows[row] = denoiser
            logits = denoiser.block_step(canvas[row : row + 1], block, width, prompt_length)
            outputs.append(logits[0])  # [W, V]
            computed.append(denoiser.last_rows_computed)
        self.nfe += 1
        self.last_rows_computed = tuple(computed)
        self.rows_computed += sum(computed)
        self.window_rows += sum(request.window_ends)
        return torch.stack(outputs)

    def _retire_rows(self) -> None:
        """Keep the finished canvas's counts; drop its rows' caches."""
        for denoiser in self.rows.values():
            self.capacity_retries += denoiser.capacity_retries
            self.cache_bytes = max(self.cache_bytes, _bytes(denoiser.cache))
        self.rows = {}

    def extra_stats(self) -> dict[str, Any]:
        retries = self.capacity_retries + sum(row.capacity_retries for row in self.rows.values())
        current = sum(_bytes(row.cache) for row in self.rows.values())
        stats = self.statistics.summary()
        stats["policy"] = self.policy.describe()
        stats["cache_bytes"] = max(self.cache_bytes, current)
        stats["capacity_retries"] = retries
        stats["block_diffusion"] = {
            "block_cache": True,
            "rows_computed": self.rows_computed,
            "rows_the_reference_computes": self.window_rows,
        }
        return stats


def _bytes(cache: CacheManager | None) -> int:
    return 0 if cache is None else cache.nbytes


class _RowDenoiser(SaliencyDenoiser):
    """One canvas row's saliency engine under block diffusion: batch-1 caches over the row's
    columns (column = position), the count of final columns, the row's step counters."""

    def __init__(
        self,
        model: DiffusionTransformer,
        policy: SaliencyPolicy,
        statistics: RecomputeStatistics,
        check_invariants: bool,
    ) -> None:
        super().__init__(model, policy, check_invariants=check_invariants)
        self.statistics = statistics  # shared by the rows of the block denoiser
        self.final = 0
        """Columns [0, final) hold final K/V in the cache (their tokens and keys never change)."""
        self.steps = 0
        self.block = -1
        self.step_in_block = 0
        self.previous: torch.Tensor | None = None
        self.last_rows_computed = 0

    def block_step(
        self, x: torch.Tensor, block: int, width: int, prompt_length: int
    ) -> torch.Tensor:
        """Logits [1, W, V] of block `block` of this row's canvas x [1, T]."""
        if block != self.block:
            self.block, self.step_in_block = block, 0
        start, end = block * width, (block + 1) * width
        window = torch.zeros_like(x, dtype=torch.bool)
        window[:, :end] = True
        newly = None if self.previous is None else x != self.previous
        ctx = StepContext.on_canvas(
            x,
            step=self.steps,
            block=block,
            step_in_block=self.step_in_block,
            block_start=start,
            block_end=end,
            prompt_length=prompt_length,
            mask_token_id=self.model.config.mask_token_id,
            logit_shift=False,
            newly_committed=newly,
            attention_mask=window,
            block_causal=True,
        )
        unfinished = end - self.final
        logits = self(x, ctx)
        self.last_rows_computed = unfinished if self.last_step_dense else width
        self.previous = x.clone()
        self.steps += 1
        self.step_in_block += 1
        self.final = start
        return logits

    def _plan(self, ctx: StepContext) -> StepPlan:
        if self.final < ctx.block_start:  # rows before the block changed: finish them exactly
            return StepPlan.dense_step()
        return super()._plan(ctx)

    def _dense(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """The block-causal forward over the columns not final yet, [final, block_end),
        attending to the cached K/V before them; records their activations in the cache."""
        cache = self._cache()
        start, end = self.final, ctx.block_end
        self.statistics.record_dense(ctx.step, end, computed=end - start)
        rows = torch.zeros_like(ctx.masked)
        rows[:, start:end] = True
        positions = torch.arange(start, end, device=x.device)[None]
        return self.model(
            x[:, start:end],
            position_ids=positions,
            logit_range=(ctx.block_start - start, end - start),
            sink=_WindowSink(cache, start, end, rows),
            block_length=ctx.block_end - ctx.block_start,
            kv_store=_WindowStore(cache, start, end, rows),
        )

    def _rows_seen(self, x: torch.Tensor, ctx: StepContext) -> int:
        return ctx.block_end  # the window the reference recomputes at this step


class _WindowStore:
    """The `KeyValueStore` of a dense block step: writes the computed rows' K/V into the saliency
    cache's columns [start, end) and hands the layer the cache's columns [0, end)."""

    def __init__(self, cache: CacheManager, start: int, end: int, rows: torch.Tensor) -> None:
        self.cache, self.start, self.end, self.rows = cache, start, end, rows
        device = rows.device
        self.key_positions = torch.arange(end, device=device)[None]  # [1, end]
        self.key_valid = None
        self.window = torch.zeros_like(rows)
        self.window[:, :end] = True

    def extend(
        self, layer: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """key, value [1, KV, end - start, D] -> the window's keys, values [1, KV, end, D]."""
        buffers, cache = self.cache[layer], self.cache
        buffers.key[:, :, self.start : self.end] = key
        buffers.value[:, :, self.start : self.end] = value
        cache.mark_written(layer, "key", self.rows)
        cache.mark_written(layer, "value", self.rows)
        cache.assert_written(layer, "key", self.window)
        cache.assert_written(layer, "value", self.window)
        return buffers.key[:, :, : self.end], buffers.value[:, :, : self.end]


class _WindowSink:
    """The `ActivationSink` of a dense block step: the computed rows' attention context and FFN
    output into the cache's columns [start, end) (their K/V the store already wrote)."""

    def __init__(self, cache: CacheManager, start: int, end: int, rows: torch.Tensor) -> None:
        self.cache, self.start, self.end, self.rows = cache, start, end, rows

    def record(self, layer: int, activations: LayerActivations) -> None:
        buffers = self.cache[layer]
        buffers.context[:, self.start : self.end] = activations.context
        buffers.ffn_out[:, self.start : self.end] = activations.ffn_out
        self.cache.mark_written(layer, "context", self.rows)
        self.cache.mark_written(layer, "ffn_out", self.rows)
