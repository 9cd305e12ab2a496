"""The gathered FFN on the GPU: Triton kernels for the memory-bound parts, cuBLAS for the matmuls.

Held to `gathered_ffn_reference`. Five launches for N selected rows:

1. `_gather_rms_norm_kernel`: read the N rows by index (a tile of rows per program), RMSNorm
   them (statistic in float32), write them compact [N, d]; the eager path needs a gather plus
   six elementwise launches;
2. gate and up projections: two cuBLAS matmuls on the compact rows;
3. `_silu_mul_kernel`: `silu(gate) * up` in one pass over [N, F] instead of three;
4. down projection: one cuBLAS matmul (under tensor parallelism its partial rows are then
   summed over the processes by `FeedForwardWeights.reduce`);
5. `_scatter_rows_kernel`: the valid result rows written by index into the FFN-output cache
   (padding rows, `valid` False, are computed and dropped).

The matmuls carry nearly all of the FLOPs and run at cuBLAS speed on the compact rows. Fusing
the gather into the gate/up matmul's prologue and the scatter into the down matmul's epilogue
would save one write and one read of [N, d] per layer (2 x N x d x 2 bytes: 16 KB per row at
LLaDA-8B, next to the 3 x d x F x 2 = 288 MB of weights the matmuls stream); whether a Triton
matmul then keeps cuBLAS's speed is a question for a GPU profile, so this module keeps the
simple split until one has measured it. Intermediate results are rounded to the model dtype
where the reference rounds them, so the two paths differ by rounding mode only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from dyllm.kernels.dispatch import register
from dyllm.kernels.reference_gathered_ffn import FeedForwardWeights
from dyllm.kernels.row_sets import FlatRows
from dyllm.kernels.triton_launch import (
    as_bytes,
    check_device,
    check_float,
    check_shape,
    check_unit_stride,
    new_output,
    row_tile,
)
from dyllm.kernels.triton_rounding import round_to, software_rounding


@triton.jit
def _gather_rms_norm_kernel(
    hidden_ptr,
    batch_index_ptr,
    slot_ptr,
    weight_ptr,
    normed_ptr,
    hidden_stride_b,
    hidden_stride_r,
    normed_stride_r,
    count,
    width,
    eps,
    SOFTWARE_ROUNDING: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLUMNS: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_in = rows < count
    batch = tl.load(batch_index_ptr + rows, mask=row_in, other=0)
    slot = tl.load(slot_ptr + rows, mask=row_in, other=0)
    source = hidden_ptr + batch[:, None] * hidden_stride_b + slot[:, None] * hidden_stride_r
    squares = tl.zeros([BLOCK_ROWS, BLOCK_COLUMNS], tl.float32)
    for start in range(0, width, BLOCK_COLUMNS):
        columns = start + tl.arange(0, BLOCK_COLUMNS)
        inside = row_in[:, None] & (columns < width)[None, :]
        x = tl.load(source + columns[None, :], mask=inside, other=0.0).to(tl.float32)
        squares += x * x
    inverse_rms = tl.rsqrt(tl.sum(squares, axis=1) / width + eps)
    for start in range(0, width, BLOCK_COLUMNS):
        columns = start + tl.arange(0, BLOCK_COLUMNS)
        inside = row_in[:, None] & (columns < width)[None, :]
        x = tl.load(source + columns[None, :], mask=inside, other=0.0)
        normed = round_to(x.to(tl.float32) * inverse_rms[:, None], x.dtype, SOFTWARE_ROUNDING)
        weight = tl.load(weight_ptr + columns, mask=columns < width, other=0.0).to(tl.float32)
        result = round_to(weight[None, :] * normed.to(tl.float32), x.dtype, SOFTWARE_ROUNDING)
        target = normed_ptr + rows[:, None] * normed_stride_r + columns[None, :]
        tl.store(target, result, mask=inside)


@triton.jit
def _silu_mul_kernel(
    gate_ptr, up_ptr, out_ptr, count, SOFTWARE_ROUNDING: tl.constexpr, BLOCK: tl.constexpr
):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < count
    gate = tl.load(gate_ptr + offsets, mask=inside, other=0.0)
    up = tl.load(up_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    gate32 = gate.to(tl.float32)
    silu = round_to(gate32 * tl.sigmoid(gate32), gate.dtype, SOFTWARE_ROUNDING).to(tl.float32)
    tl.store(out_ptr + offsets, round_to(silu * up, gate.dtype, SOFTWARE_ROUNDING), mask=inside)


@triton.jit
def _scatter_rows_kernel(
    rows_ptr,
    batch_index_ptr,
    position_ptr,
    valid_ptr,
    target_ptr,
    rows_stride_r,
    target_stride_b,
    target_stride_r,
    count,
    width,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLUMNS: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_in = rows < count
    batch = tl.load(batch_index_ptr + rows, mask=row_in, other=0)
    position = tl.load(position_ptr + rows, mask=row_in, other=0)
    row_in = row_in & (tl.load(valid_ptr + rows, mask=row_in, other=0) != 0)
    destination = (
        target_ptr + batch[:, None] * target_stride_b + position[:, None] * target_stride_r
    )
    for start in range(0, width, BLOCK_COLUMNS):
        columns = start + tl.arange(0, BLOCK_COLUMNS)
        inside = row_in[:, None] & (columns < width)[None, :]
        values = tl.load(rows_ptr + rows[:, None] * rows_stride_r + columns[None, :], mask=inside)
        tl.store(destination + columns[None, :], values, mask=inside)


@register("gathered_ffn", "triton")
def gathered_ffn_triton(
    hidden: torch.Tensor,
    rows: FlatRows,
    positions: torch.Tensor,
    weights: FeedForwardWeights,
    ffn_out: torch.Tensor,
) -> None:
    """Same contract as `gathered_ffn_reference` (shapes and semantics there)."""
    count, width = len(rows), hidden.shape[-1]
    device = check_device(
        {"hidden": hidden, "rows.batch_index": rows.batch_index, "positions": positions}
        | {"norm_weight": weights.norm_weight, "gate": weights.gate, "up": weights.up}
        | {"down": weights.down, "ffn_out": ffn_out}
    )
    check_float("hidden", hidden)
    for name in ("norm_weight", "gate", "up", "down"):
        check_float(name, getattr(weights, name), hidden.dtype)
    check_float("ffn_out", ffn_out, hidden.dtype)
    intermediate = weights.gate.shape[0]
    check_shape("norm_weight", weights.norm_weight, (width,))
    check_shape("gate", weights.gate, (intermediate, width))
    check_shape("up", weights.up, (intermediate, width))
    check_shape("down", weights.down, (width, intermediate))
    check_shape("positions", positions, (count,))
    if hidden.dim() != 3 or ffn_out.dim() != 3 or ffn_out.shape[::2] != hidden.shape[::2]:
        raise ValueError(
            f"hidden must be [B, Q, d] and ffn_out [B, L, d] with the same B and d; got "
            f"{tuple(hidden.shape)} and {tuple(ffn_out.shape)}"
        )
    check_unit_stride("hidden", hidden)
    check_unit_stride("ffn_out", ffn_out)
    if count == 0:
        return

    block_rows, block_columns = row_tile(count, width)
    row_blocks = (triton.cdiv(count, block_rows),)
    normed = new_output((count, width), hidden.dtype, device)
    _gather_rms_norm_kernel[row_blocks](
        hidden,
        rows.batch_index,
        rows.position,
        weights.norm_weight,
        normed,
        hidden.stride(0),
        hidden.stride(1),
        normed.stride(0),
        count,
        width,
        weights.norm_eps,
        SOFTWARE_ROUNDING=software_rounding(hidden.dtype),
        BLOCK_ROWS=block_rows,
        BLOCK_COLUMNS=block_columns,
    )
    gate, up = F.linear(normed, weights.gate), F.linear(normed, weights.up)  # [N, F] each
    activated = new_output(gate.shape, gate.dtype, device)
    elementwise_block = 1024
    _silu_mul_kernel[(triton.cdiv(gate.numel(), elementwise_block),)](
        gate,
        up,
        activated,
        gate.numel(),
        SOFTWARE_ROUNDING=software_rounding(gate.dtype),
        BLOCK=elementwise_block,
    )
    result = F.linear(activated, weights.down)  # [N, d]
    if weights.reduce is not None:  # tensor parallelism: sum the partial rows over processes
        result = weights.reduce(result)
    _scatter_rows_kernel[row_blocks](
        result,
        rows.batch_index,
        positions,
        as_bytes(rows.valid),
        ffn_out,
        result.stride(0),
        ffn_out.stride(0),
        ffn_out.stride(1),
        count,
        width,
        BLOCK_ROWS=block_rows,
        BLOCK_COLUMNS=block_columns,
    )
