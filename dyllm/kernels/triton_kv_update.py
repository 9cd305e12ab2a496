"""The K/V update of refreshed rows as one Triton kernel: RoPE, cache writes and dV in one pass.

Held to `kv_update_reference`. One program per (tile of refreshed rows, key/value head) reads
each row's projected key and value once, rotates the key, writes both into the caches at the
row's position and writes `dV = V_new - V_old` from the cached value it read just before
overwriting it. The
eager path needs a gather of the old values, the rotation (five launches), two scatters and a
subtraction; here each byte is read and written once. The K and V projections stay cuBLAS
matmuls in the caller.

RoPE precision follows the reference: with `full_precision` (LLaDA) the rotation runs in
float32 and is rounded once; otherwise (Dream) cos/sin and each product are rounded to the row
dtype where `apply_rope` rounds them, so both paths round at the same places.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dyllm.kernels.dispatch import register
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
def _rounded(x, dtype: tl.constexpr, SOFTWARE_ROUNDING: tl.constexpr):
    """float32 `x` rounded to `dtype` and read back as float32."""
    return round_to(x, dtype, SOFTWARE_ROUNDING).to(tl.float32)


@triton.jit
def _kv_update_kernel(
    key_rows_ptr,
    value_rows_ptr,
    cos_ptr,
    sin_ptr,
    batch_index_ptr,
    position_ptr,
    valid_ptr,
    key_cache_ptr,
    value_cache_ptr,
    delta_ptr,
    key_rows_stride,
    value_rows_stride,
    angle_stride,
    key_cache_stride_b,
    key_cache_stride_h,
    key_cache_stride_r,
    value_cache_stride_b,
    value_cache_stride_h,
    value_cache_stride_r,
    delta_stride_r,
    delta_stride_h,
    count,
    head_dim,
    FULL_PRECISION: tl.constexpr,
    SOFTWARE_ROUNDING: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    head = tl.program_id(1)
    row_in = rows < count
    batch = tl.load(batch_index_ptr + rows, mask=row_in, other=0)
    position = tl.load(position_ptr + rows, mask=row_in, other=0)
    valid = tl.load(valid_ptr + rows, mask=row_in, other=0) != 0
    half = head_dim // 2
    first = tl.arange(0, BLOCK_HALF)
    inside = row_in[:, None] & (first < half)[None, :]
    first = first[None, :]
    second = first + half

    key_at = key_rows_ptr + rows[:, None] * key_rows_stride + head * head_dim
    x1 = tl.load(key_at + first, mask=inside, other=0.0)
    dtype = x1.dtype
    x1 = x1.to(tl.float32)
    x2 = tl.load(key_at + second, mask=inside, other=0.0).to(tl.float32)
    angle_at = rows[:, None] * angle_stride
    cos1 = tl.load(cos_ptr + angle_at + first, mask=inside, other=0.0)
    cos2 = tl.load(cos_ptr + angle_at + second, mask=inside, other=0.0)
    sin1 = tl.load(sin_ptr + angle_at + first, mask=inside, other=0.0)
    sin2 = tl.load(sin_ptr + angle_at + second, mask=inside, other=0.0)
    # x * cos + rotate_half(x) * sin, with rotate_half(x) = (-x2, x1)
    if FULL_PRECISION:
        rotated1 = x1 * cos1 - x2 * sin1
        rotated2 = x2 * cos2 + x1 * sin2
    else:
        cos1 = _rounded(cos1, dtype, SOFTWARE_ROUNDING)
        cos2 = _rounded(cos2, dtype, SOFTWARE_ROUNDING)
        sin1 = _rounded(sin1, dtype, SOFTWARE_ROUNDING)
        sin2 = _rounded(sin2, dtype, SOFTWARE_ROUNDING)
        rotated1 = _rounded(x1 * cos1, dtype, SOFTWARE_ROUNDING) - _rounded(
            x2 * sin1, dtype, SOFTWARE_ROUNDING
        )
        rotated2 = _rounded(x2 * cos2, dtype, SOFTWARE_ROUNDING) + _rounded(
            x1 * sin2, dtype, SOFTWARE_ROUNDING
        )
    key_out = (
        key_cache_ptr
        + batch[:, None] * key_cache_stride_b
        + head * key_cache_stride_h
        + position[:, None] * key_cache_stride_r
    )
    writes = inside & valid[:, None]  # padding rows leave the caches alone and get dV = 0
    tl.store(key_out + first, round_to(rotated1, dtype, SOFTWARE_ROUNDING), mask=writes)
    tl.store(key_out + second, round_to(rotated2, dtype, SOFTWARE_ROUNDING), mask=writes)

    value_at = value_rows_ptr + rows[:, None] * value_rows_stride + head * head_dim
    value_out = (
        value_cache_ptr
        + batch[:, None] * value_cache_stride_b
        + head * value_cache_stride_h
        + position[:, None] * value_cache_stride_r
    )
    delta_out = delta_ptr + rows[:, None] * delta_stride_r + head * delta_stride_h
    for part in range(2):
        dims = first + part * half
        value = tl.load(value_at + dims, mask=inside, other=0.0)
        old = tl.load(value_out + dims, mask=inside, other=0.0)
        tl.store(value_out + dims, value, mask=writes)
        delta = tl.where(writes, value.to(tl.float32) - old.to(tl.float32), 0.0)
        tl.store(delta_out + dims, round_to(delta, dtype, SOFTWARE_ROUNDING), mask=inside)


@register("kv_update", "triton")
def kv_update_triton(
    key_rows: torch.Tensor,
    value_rows: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    rows: FlatRows,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    full_precision: bool,
) -> torch.Tensor:
    """Same contract as `kv_update_reference` (shapes and semantics there)."""
    count = len(rows)
    kv_heads, head_dim = key_cache.shape[1], key_cache.shape[3]
    device = check_device(
        {"key_rows": key_rows, "value_rows": value_rows, "cos": cos, "sin": sin}
        | {"rows.batch_index": rows.batch_index, "rows.position": rows.position}
        | {"key_cache": key_cache, "value_cache": value_cache}
    )
    check_float("key_rows", key_rows)
    for name, tensor in (("value_rows", value_rows), ("key_cache", key_cache)):
        check_float(name, tensor, key_rows.dtype)
    check_float("value_cache", value_cache, key_rows.dtype)
    check_float("cos", cos, torch.float32)
    check_float("sin", sin, torch.float32)
    if head_dim % 2:
        raise ValueError(f"RoPE rotates halves of the head dimension; got odd head_dim {head_dim}")
    check_shape("key_rows", key_rows, (count, kv_heads * head_dim))
    check_shape("value_rows", value_rows, key_rows.shape)
    check_shape("cos", cos, (count, head_dim))
    check_shape("sin", sin, cos.shape)
    check_shape("value_cache", value_cache, key_cache.shape)
    check_shape("rows.position", rows.position, (count,))
    for name, tensor in (("key_rows", key_rows), ("value_rows", value_rows), ("cos", cos)):
        check_unit_stride(name, tensor)
    for name, tensor in (("sin", sin), ("key_cache", key_cache), ("value_cache", value_cache)):
        check_unit_stride(name, tensor)
    if sin.stride() != cos.stride():
        raise ValueError(f"cos and sin must share strides, got {cos.stride()} and {sin.stride()}")

    block_rows, block_half = row_tile(count, head_dim // 2)
    if block_half < head_dim // 2:
        raise ValueError(f"head_dim {head_dim} is wider than the kernel's tile; at most 2048")
    delta = new_output((count, kv_heads, head_dim), value_rows.dtype, device)
    if count == 0:
        return delta
    _kv_update_kernel[(triton.cdiv(count, block_rows), kv_heads)](
        key_rows,
        value_rows,
        cos,
        sin,
        rows.batch_index,
        rows.position,
        as_bytes(rows.valid),
        key_cache,
        value_cache,
        delta,
        key_rows.stride(0),
        value_rows.stride(0),
        cos.stride(0),
        *key_cache.stride()[:3],
        *value_cache.stride()[:3],
        *delta.stride()[:2],
        count,
        head_dim,
        FULL_PRECISION=full_precision or key_rows.dtype == torch.float32,
        SOFTWARE_ROUNDING=software_rounding(key_rows.dtype),
        BLOCK_ROWS=block_rows,
        BLOCK_HALF=block_half,
    )
    return delta
