"""DyLLM's attention for the query rows of a sparse step: eager reference.

For each query row r of sequence b, with refreshed key columns A (this layer's salient set):

* r in A (an *exact* row):          C_new[r] = softmax(q_r K^T / sqrt(D)) V
* r not in A, approximate mode:     C_new[r] = C_old[r] + softmax(q_r K^T / sqrt(D))[A] dV[A]
* r not in A, frozen mode:          C_new[r] = C_old[r]

K and V are the layer's caches after this step's refreshed rows were written; dV = V_new - V_old
on A and zero elsewhere, so only A's columns contribute to the update (the dropped term is
dS * V_old, the change of the attention weights themselves). Also returned: the float32 cosine
similarity of C_new and C_old per row over all heads, DyLLM's saliency signal, so selection
needs no second pass over the contexts; or, with `partial_sums=True`, the three sums the cosine
is made of (new.old, new.new, old.old) over the heads given, for a caller that holds only some
of a row's heads (tensor parallelism) and adds the sums over processes before combining them.

This function is the specification the Triton kernel is held to; it favours clarity, computing in
float32 and casting the contexts back to the cache dtype.
"""

from __future__ import annotations

import torch
from einops import rearrange

from dyllm.kernels.dispatch import register
from dyllm.kernels.primitives import attention, row_cosine, row_partial_sums
from dyllm.kernels.row_sets import PaddedRows


@register("saliency_attention", "eager")
def saliency_attention_reference(
    q: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context_old: torch.Tensor,
    exact: PaddedRows,
    delta_columns: PaddedRows,
    delta_value: torch.Tensor,
    key_mask: torch.Tensor | None,
    approximate: bool = True,
    partial_sums: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """New contexts and their cosine to the old ones, for a sparse step's query rows.

    q: [B, H, Q, D] query rows after RoPE; key, value: [B, KV, L, D] updated caches;
    context_old: [B, Q, H*D]; exact: the query rows to compute exactly (slots 0..Q-1, [B, E]);
    delta_columns: the refreshed key positions per sequence (index/valid [B, S]);
    delta_value: [B, KV, S, D] = V_new - V_old at those positions (zero where not valid);
    key_mask: bool [B, L] (True = real token) or None.
    Returns context_new [B, Q, H*D] (context_old's dtype) and cosine [B, Q] float32, or with
    `partial_sums` float32 [3, B, Q]: (new.old, new.new, old.old) summed over these H heads.
    """
    q, key = q.float(), key.float()
    if approximate and delta_columns.width:
        # attention with dV as the values, dV zero outside the refreshed columns, is exactly
        # sum over refreshed j of softmax(q K^T / sqrt(D))[r, j] dV[j]: the normaliser still runs
        # over every key, and the fused attention never materialises the probabilities
        full_delta = _columns_to_full_length(delta_value.float(), delta_columns, key.shape[2])
        update = attention(q, key, full_delta, key_mask)  # [B, H, Q, D]
        context_new = context_old.float() + rearrange(update, "b h q d -> b q (h d)")
    else:
        context_new = context_old.float().clone()

    if exact.width:
        exact_q = _gather_query_rows(q, exact.index)  # [B, H, E, D]
        exact_context = attention(exact_q, key, value.float(), key_mask)
        _write_valid_rows(context_new, exact, rearrange(exact_context, "b h e d -> b e (h d)"))

    if partial_sums:
        signal = row_partial_sums(context_new, context_old)
    else:
        signal = row_cosine(context_new, context_old)
    return context_new.to(context_old.dtype), signal


def _columns_to_full_length(
    delta_value: torch.Tensor, columns: PaddedRows, length: int
) -> torch.Tensor:
    """dV [B, KV, S, D] at `columns` -> [B, KV, L, D], zero at every other position.

    Padding slots point at position 0 with zero values; adding (not assigning) them keeps a
    real dV at position 0 intact.
    """
    batch, kv_heads, _, head_dim = delta_value.shape
    full = delta_value.new_zeros(batch, kv_heads, length, head_dim)
    index = columns.index[:, None, :, None].expand(-1, kv_heads, -1, head_dim)
    return full.scatter_add_(2, index, delta_value * columns.valid[:, None, :, None])


def _gather_query_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor [B, H, Q, F], index [B, R] -> [B, H, R, F]."""
    batch, heads, _, width = tensor.shape
    expanded = index[:, None, :, None].expand(batch, heads, index.shape[1], width)
    return tensor.gather(2, expanded)


def _write_valid_rows(target: torch.Tensor, rows: PaddedRows, values: torch.Tensor) -> None:
    """Write values [B, E, F] into target [B, Q, F] at rows.index where rows.valid (padding
    entries are distinct rows of their sequence and get their own values back)."""
    index = rows.index[:, :, None].expand(-1, -1, target.shape[2])
    old = target.gather(1, index)
    target.scatter_(1, index, torch.where(rows.valid[:, :, None], values, old))
