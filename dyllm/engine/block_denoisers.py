"""Block denoisers over a `DiffusionTransformer`: the reference's recomputation, and an exact cache.

Both run the one forward with `block_length` (block-causal attention over position ids) and return
the logits of each requested row's current block ([A, W, V]).

`RecomputeBlockDenoiser` is the reference's cost: each step runs the whole window, columns
[0, (b + 1) * W), of every requested row. Rows at different blocks have windows of different
lengths; each is aligned to end at the longest one's end, the columns before it padding (masked
as keys, position 0), so one logit range (the last W columns) holds every row's block.

`CachedBlockDenoiser` uses what block causality allows and the reference does not do: a finished
block's tokens never change and its rows attend only to blocks <= its own, so its K/V never change
either. Per layer it keeps K and V [B, KV, T + 1, D] (column = position; the last column is a
scratch slot) and a per-row count of final columns. A step computes only the rows not final yet,
[final_r, (b_r + 1) * W): the current block, plus at a block's first step the block just finished
(now with its final tokens) or, at the first step, the prompt. Each layer writes those rows' K/V
into the cache and attends to the cache's columns [0, longest window) with the block-causal mask
built from positions, so a query sees exactly the keys it sees in the reference (the unfinished
columns of a row are those it just wrote). After the step, every column before the row's current
block is final. Rows needing fewer query rows than the longest are left-padded with copies of
their last query (same position, so they see keys and give no NaN) whose K/V go to the scratch
column, which no query sees.

The cached path computes, per step, the current block instead of the whole window: the same
float32 arithmetic on fewer rows, so its logits equal the recomputed ones to rounding (the
attention sums run over the same keys; matmul shapes differ) and greedy tokens match
(`tests/test_block_diffusion.py`).
"""

from __future__ import annotations

from typing import Any

import torch

from dyllm.generation.block_denoiser import BlockDenoiser, BlockRequest
from dyllm.models import DiffusionTransformer


class RecomputeBlockDenoiser(BlockDenoiser):
    """Each step recomputes every requested row's whole window, as the reference does."""

    def __init__(self, model: DiffusionTransformer) -> None:
        super().__init__()
        self.model = model
        self.rows_computed = 0

    def __call__(self, request: BlockRequest) -> torch.Tensor:
        ends = request.window_ends
        width = max(ends)
        canvas = request.canvas
        rows = torch.tensor(request.rows, device=canvas.device)
        if len(set(ends)) == 1:
            ids, mask, positions = canvas.index_select(0, rows)[:, :width], None, None
        else:
            ids, mask, positions = _right_aligned(canvas, request.rows, ends, width)
        logits = self.model(
            ids,
            attention_mask=mask,
            position_ids=positions,
            logit_range=(width - request.block_length, width),
            block_length=request.block_length,
        )
        self.nfe += 1
        self.last_rows_computed = ends
        self.rows_computed += sum(ends)
        return logits

    def extra_stats(self) -> dict[str, Any]:
        return {"block_diffusion": {"block_cache": False, "rows_computed": self.rows_computed}}


def _right_aligned(
    canvas: torch.Tensor, rows: tuple[int, ...], ends: tuple[int, ...], width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids, key mask, positions [A, width]: row i's window canvas[rows[i], :ends[i]] in the last
    ends[i] columns, padding (its first token, masked as a key, position 0) before it."""
    count = len(rows)
    device = canvas.device
    ids = torch.empty(count, width, dtype=torch.long, device=device)
    mask = torch.zeros(count, width, dtype=torch.bool, device=device)
    positions = torch.zeros(count, width, dtype=torch.long, device=device)
    for i, (row, end) in enumerate(zip(rows, ends, strict=True)):
        pad = width - end
        ids[i, :pad] = canvas[row, 0]
        ids[i, pad:] = canvas[row, :end]
        mask[i, pad:] = True
        positions[i, pad:] = torch.arange(end, device=device)
    return ids, mask, positions


class CachedBlockDenoiser(BlockDenoiser):
    """Exact K/V cache of finished blocks: each step computes only the rows not final yet."""

    def __init__(self, model: DiffusionTransformer) -> None:
        super().__init__()
        self.model = model
        self.final: list[int] = []
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.width = 0
        self.rows_computed = 0
        self.window_rows = 0

    def begin(self, batch_size: int, width: int) -> None:
        self.final = [0] * batch_size
        self.keys, self.values = {}, {}
        self.width = width

    def __call__(self, request: BlockRequest) -> torch.Tensor:
        if len(self.final) != request.canvas.shape[0] or self.width != request.canvas.shape[1]:
            raise RuntimeError(
                "CachedBlockDenoiser was called on a canvas it was not started on; call "
                "begin(batch_size, width) before each canvas"
            )
        canvas, width = request.canvas, request.block_length
        ends = request.window_ends
        starts = [self.final[row] for row in request.rows]
        spans = [end - start for start, end in zip(starts, ends, strict=True)]
        queries = max(spans)
        device = canvas.device
        count = len(request.rows)
        ids = torch.empty(count, queries, dtype=torch.long, device=device)
        positions = torch.empty(count, queries, dtype=torch.long, device=device)
        columns = torch.full((count, queries), self.width, dtype=torch.long, device=device)
        for i, (row, start, end) in enumerate(zip(request.rows, starts, ends, strict=True)):
            pad = queries - (end - start)
            ids[i, :pad] = canvas[row, end - 1]
            positions[i, :pad] = end - 1
            ids[i, pad:] = canvas[row, start:end]
            positions[i, pad:] = torch.arange(start, end, device=device)
            columns[i, pad:] = positions[i, pad:]
        store = _CacheView(self, request.rows, columns, max(ends))
        logits = self.model(
            ids,
            position_ids=positions,
            logit_range=(queries - width, queries),
            block_length=width,
            kv_store=store,
        )
        for row, block in zip(request.rows, request.blocks, strict=True):
            self.final[row] = block * width
        self.nfe += 1
        self.last_rows_computed = tuple(spans)
        self.rows_computed += sum(spans)
        self.window_rows += sum(ends)
        return logits

    def extra_stats(self) -> dict[str, Any]:
        return {
            "block_diffusion": {
                "block_cache": True,
                "rows_computed": self.rows_computed,
                "rows_the_reference_computes": self.window_rows,
            }
        }


class _CacheView:
    """The `KeyValueStore` one step's forward sees: writes the fresh K/V of the computed rows,
    returns the cache's first `keys` columns of the requested rows."""

    def __init__(
        self,
        cache: CachedBlockDenoiser,
        rows: tuple[int, ...],
        columns: torch.Tensor,
        keys: int,
    ) -> None:
        self.cache = cache
        self.columns = columns  # [A, Q]: cache column of each query row (scratch for padding)
        device = columns.device
        self.rows = torch.tensor(rows, device=device)
        self.all_rows = rows == tuple(range(len(cache.final)))
        self.key_count = keys
        self.key_positions = torch.arange(keys, device=device).expand(len(rows), keys)
        self.key_valid = None

    def extend(
        self, layer: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """key, value [A, KV, Q, D] -> this layer's cached keys, values [A, KV, keys, D]."""
        cache = self.cache
        if layer not in cache.keys:
            batch, heads, dim = len(cache.final), key.shape[1], key.shape[3]
            shape = (batch, heads, cache.width + 1, dim)
            cache.keys[layer] = key.new_zeros(shape)
            cache.values[layer] = value.new_zeros(shape)
        outputs = []
        for store, fresh in ((cache.keys[layer], key), (cache.values[layer], value)):
            store[self.rows[:, None], :, self.columns] = fresh.transpose(1, 2)
            if self.all_rows:
                outputs.append(store[:, :, : self.key_count])
            else:
                outputs.append(store.index_select(0, self.rows)[:, :, : self.key_count])
        return outputs[0], outputs[1]
