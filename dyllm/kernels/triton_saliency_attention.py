"""DyLLM's saliency attention as one Triton kernel, held to `saliency_attention_reference`.

One program handles one (sequence, head, block of query rows). Per row it computes the softmax
normaliser over every key with an online softmax (a running maximum and sum over key blocks),
then:

* exact rows (in the incoming salient set): `P V`, accumulated in the same pass;
* other rows, approximate mode: `C_old + P[:, A] dV[A]`, a second short pass over the refreshed
  columns A only (their keys gathered by index), once the normaliser is final;
* other rows, frozen mode: `C_old` (the launcher passes no columns, so the second pass is empty).

Rows are visited exact-first (a stable sort of the exact flags per sequence), so the costly
`P V` product, skipped in a block without exact rows, runs in as few blocks as possible: with
5% exact rows among 256 and blocks of 64, one block in four instead of nearly all of them.

The cosine of new against old context spans all heads of a row, but a program sees one head:
each program writes its head's partial sums (new.old, new.new, old.old) and the launcher adds
them over heads. That keeps B x H x ceil(Q / 64) programs in flight (LLaDA-8B, batch 1, 256
query rows: 128, about one wave on a 132-SM GPU) where one program per row block looping over
heads would leave 4 and most of the GPU idle; the sum runs over 3 x B x H x Q floats. With
`partial_sums=True` the launcher returns those sums over its heads ([3, B, Q]) uncombined, as the
reference does, for tensor parallelism (`dyllm.distributed`).

All arithmetic is float32: products on half-precision tiles accumulate in float32, and the
probabilities are rounded to the value dtype for `P V` as flash attention does.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from dyllm.kernels.dispatch import register
from dyllm.kernels.primitives import cosine_from_partial_sums
from dyllm.kernels.row_sets import PaddedRows
from dyllm.kernels.triton_launch import (
    as_bytes,
    block_size,
    check_device,
    check_float,
    check_shape,
    check_unit_stride,
    dot_in_float32,
    dot_precision,
    new_output,
)
from dyllm.kernels.triton_rounding import round_to, software_rounding

MASKED_SCORE_FLOOR = tl.constexpr(-1.0e30)
"""Start of the running maximum: finite, so a block of masked keys never yields inf - inf."""


@triton.jit
def _saliency_attention_kernel(
    q_ptr,
    key_ptr,
    value_ptr,
    old_ptr,
    exact_ptr,
    order_ptr,
    column_ptr,
    column_valid_ptr,
    delta_ptr,
    key_mask_ptr,
    new_ptr,
    partial_ptr,
    q_stride_b,
    q_stride_h,
    q_stride_r,
    key_stride_b,
    key_stride_h,
    key_stride_r,
    value_stride_b,
    value_stride_h,
    value_stride_r,
    old_stride_b,
    old_stride_r,
    new_stride_b,
    new_stride_r,
    delta_stride_b,
    delta_stride_h,
    delta_stride_r,
    exact_stride_b,
    column_stride_b,
    column_valid_stride_b,
    key_mask_stride_b,
    heads,
    group,
    num_rows,
    length,
    update_columns,
    head_dim,
    scale,
    HAS_KEY_MASK: tl.constexpr,
    DOT_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SOFTWARE_ROUNDING: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    batch_head = tl.program_id(1)
    batch = (batch_head // heads).to(tl.int64)  # int64: batch x stride may pass 2^31
    head = batch_head % heads
    kv_head = head // group

    slots = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    slot_in = slots < num_rows
    rows = tl.load(order_ptr + batch * num_rows + slots, mask=slot_in, other=0)
    exact_flag = tl.load(exact_ptr + batch * exact_stride_b + rows, mask=slot_in, other=0)
    exact = slot_in & (exact_flag != 0)
    wants_update = slot_in & (exact_flag == 0) & (update_columns > 0)
    has_exact = tl.max(exact.to(tl.int32), axis=0) > 0
    has_update = tl.max(wants_update.to(tl.int32), axis=0) > 0

    dims = tl.arange(0, BLOCK_D)
    dim_in = dims < head_dim
    row_dim_in = slot_in[:, None] & dim_in[None, :]
    q = tl.load(
        q_ptr + batch * q_stride_b + head * q_stride_h + rows[:, None] * q_stride_r + dims[None, :],
        mask=row_dim_in,
        other=0.0,
    )
    if DOT_FP32:
        q = q.to(tl.float32)
    context_columns = head * head_dim + dims
    old = tl.load(
        old_ptr + batch * old_stride_b + rows[:, None] * old_stride_r + context_columns[None, :],
        mask=row_dim_in,
        other=0.0,
    ).to(tl.float32)

    # pass 1: softmax statistics over every key; P V accumulated when the block has exact rows
    running_max = tl.full([BLOCK_Q], MASKED_SCORE_FLOOR, tl.float32)
    running_sum = tl.zeros([BLOCK_Q], tl.float32)
    weighted_values = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)
    if has_exact | has_update:
        for start in range(0, length, BLOCK_L):
            keys_at = start + tl.arange(0, BLOCK_L)
            key_in = keys_at < length
            keys = tl.load(
                key_ptr
                + batch * key_stride_b
                + kv_head * key_stride_h
                + keys_at[None, :] * key_stride_r
                + dims[:, None],
                mask=dim_in[:, None] & key_in[None, :],
                other=0.0,
            )
            if DOT_FP32:
                keys = keys.to(tl.float32)
            scores = tl.dot(q, keys, input_precision=DOT_PRECISION) * scale
            attend = key_in
            if HAS_KEY_MASK:
                real = tl.load(key_mask_ptr + batch * key_mask_stride_b + keys_at, mask=key_in)
                attend = attend & (real != 0)
            scores = tl.where(attend[None, :], scores, float("-inf"))
            new_max = tl.maximum(running_max, tl.max(scores, axis=1))
            rescale = tl.exp(running_max - new_max)
            probs = tl.exp(scores - new_max[:, None])
            running_sum = running_sum * rescale + tl.sum(probs, axis=1)
            running_max = new_max
            if has_exact:
                values = tl.load(
                    value_ptr
                    + batch * value_stride_b
                    + kv_head * value_stride_h
                    + keys_at[:, None] * value_stride_r
                    + dims[None, :],
                    mask=key_in[:, None] & dim_in[None, :],
                    other=0.0,
                )
                if DOT_FP32:
                    values = values.to(tl.float32)
                weighted_values = weighted_values * rescale[:, None] + tl.dot(
                    probs.to(values.dtype), values, input_precision=DOT_PRECISION
                )
    inverse_sum = 1.0 / tl.where(running_sum > 0, running_sum, 1.0)
    context = tl.where(exact[:, None], weighted_values * inverse_sum[:, None], old)

    # pass 2: C_old + P[:, A] dV[A] over the refreshed columns A, for the non-exact rows
    if has_update:
        for start in range(0, update_columns, BLOCK_S):
            column_slots = start + tl.arange(0, BLOCK_S)
            column_in = column_slots < update_columns
            columns = tl.load(
                column_ptr + batch * column_stride_b + column_slots, mask=column_in, other=0
            )
            valid = tl.load(
                column_valid_ptr + batch * column_valid_stride_b + column_slots,
                mask=column_in,
                other=0,
            )
            contributes = column_in & (valid != 0)
            if HAS_KEY_MASK:
                real = tl.load(key_mask_ptr + batch * key_mask_stride_b + columns, mask=column_in)
                contributes = contributes & (real != 0)
            keys = tl.load(
                key_ptr
                + batch * key_stride_b
                + kv_head * key_stride_h
                + columns[None, :] * key_stride_r
                + dims[:, None],
                mask=dim_in[:, None] & column_in[None, :],
                other=0.0,
            )
            if DOT_FP32:
                keys = keys.to(tl.float32)
            scores = tl.dot(q, keys, input_precision=DOT_PRECISION) * scale
            probs = tl.exp(scores - running_max[:, None]) * inverse_sum[:, None]
            probs = tl.where(wants_update[:, None] & contributes[None, :], probs, 0.0)
            deltas = tl.load(
                delta_ptr
                + batch * delta_stride_b
                + kv_head * delta_stride_h
                + column_slots[:, None] * delta_stride_r
                + dims[None, :],
                mask=column_in[:, None] & dim_in[None, :],
                other=0.0,
            )
            if DOT_FP32:
                deltas = deltas.to(tl.float32)
            context += tl.dot(probs.to(deltas.dtype), deltas, input_precision=DOT_PRECISION)

    tl.store(
        new_ptr + batch * new_stride_b + rows[:, None] * new_stride_r + context_columns[None, :],
        round_to(context, new_ptr.dtype.element_ty, SOFTWARE_ROUNDING),
        mask=row_dim_in,
    )
    plane = tl.num_programs(1) * num_rows
    partial_at = partial_ptr + batch_head * num_rows + rows
    tl.store(partial_at, tl.sum(context * old, axis=1), mask=slot_in)
    tl.store(partial_at + plane, tl.sum(context * context, axis=1), mask=slot_in)
    tl.store(partial_at + 2 * plane, tl.sum(old * old, axis=1), mask=slot_in)


@register("saliency_attention", "triton")
def saliency_attention_triton(
    q: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context_old: torch.Tensor,
    exact_rows: PaddedRows,
    delta_columns: PaddedRows,
    delta_value: torch.Tensor,
    key_mask: torch.Tensor | None,
    approximate: bool = True,
    partial_sums: bool = False,
    row_lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `saliency_attention_reference` (shapes and semantics there), without
    cached softmax statistics (`row_lse`), which it refuses before computing anything."""
    if row_lse is not None:
        raise ValueError(
            "the Triton saliency attention does not support cached softmax statistics "
            "(row_lse, a policy's softmax_statistics='cached'); use softmax_statistics='exact', "
            "or run the reference kernels with DYLLM_KERNELS=eager"
        )
    batch, heads, num_rows, head_dim = q.shape
    exact = exact_rows.mask(num_rows)  # the kernel reads exact rows as a [B, Q] mask
    kv_heads, length = key.shape[1], key.shape[2]
    width = delta_columns.width
    check_device(
        {"q": q, "key": key, "value": value, "context_old": context_old, "exact": exact}
        | {"delta_columns.index": delta_columns.index, "delta_value": delta_value}
        | ({} if key_mask is None else {"key_mask": key_mask})
    )
    for name, tensor in (("key", key), ("value", value), ("delta_value", delta_value)):
        check_float(name, tensor, q.dtype)
    check_float("q", q)
    check_float("context_old", context_old)
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"q's {heads} heads must be a multiple of key's {kv_heads} heads")
    check_shape("key", key, (batch, kv_heads, length, head_dim))
    check_shape("value", value, key.shape)
    check_shape("context_old", context_old, (batch, num_rows, heads * head_dim))
    check_shape("exact", exact, (batch, num_rows))
    check_shape("delta_columns.index", delta_columns.index, (batch, width))
    check_shape("delta_value", delta_value, (batch, kv_heads, width, head_dim))
    if key_mask is not None:
        check_shape("key_mask", key_mask, (batch, length))
    for name, tensor in (("q", q), ("key", key), ("value", value)):
        check_unit_stride(name, tensor)
    for name, tensor in (("context_old", context_old), ("delta_value", delta_value)):
        check_unit_stride(name, tensor)

    context_new = new_output(context_old.shape, context_old.dtype, q.device)
    partials = new_output((3, batch, heads, num_rows), torch.float32, q.device)
    if batch * num_rows == 0:
        if partial_sums:
            return context_new, torch.zeros(3, batch, num_rows, device=q.device)
        return context_new, torch.ones(batch, num_rows, device=q.device)
    exact_bytes = as_bytes(exact)
    # exact rows first in each sequence, in position order: see the module docstring
    order = torch.sort((~exact).to(torch.int8), dim=1, stable=True).indices.to(torch.int32)
    column_index = delta_columns.index.contiguous()
    column_valid = as_bytes(delta_columns.valid)
    mask_bytes = exact_bytes if key_mask is None else as_bytes(key_mask)

    block_q = block_size(num_rows, 64)
    block_d = block_size(head_dim, 256)
    grid = (triton.cdiv(num_rows, block_q), batch * heads)
    _saliency_attention_kernel[grid](
        q,
        key,
        value,
        context_old,
        exact_bytes,
        order,
        column_index,
        column_valid,
        delta_value,
        mask_bytes,
        context_new,
        partials,
        *q.stride()[:3],
        *key.stride()[:3],
        *value.stride()[:3],
        *context_old.stride()[:2],
        *context_new.stride()[:2],
        *delta_value.stride()[:3],
        exact_bytes.stride(0),
        column_index.stride(0),
        column_valid.stride(0),
        mask_bytes.stride(0),
        heads,
        heads // kv_heads,
        num_rows,
        length,
        width if approximate else 0,
        head_dim,
        1.0 / math.sqrt(head_dim),
        HAS_KEY_MASK=key_mask is not None,
        DOT_FP32=dot_in_float32(q.dtype),
        DOT_PRECISION=dot_precision(q.dtype),
        SOFTWARE_ROUNDING=software_rounding(context_old.dtype),
        BLOCK_Q=block_q,
        BLOCK_L=block_size(length, 64),
        BLOCK_S=block_size(width, 64),
        BLOCK_D=block_d,
        num_warps=8 if block_q * block_d >= 64 * 128 else 4,
    )
    summed = partials.sum(dim=2)  # [3, B, Q]: over this launch's heads
    if partial_sums:
        return context_new, summed
    return context_new, cosine_from_partial_sums(summed)
