"""DyLLM's attention for the query rows of a sparse step: eager reference.

For each query row r of sequence b, with refreshed key columns A (this layer's salient set):

* r in A (an *exact* row):          C_new[r] = softmax(q_r K^T / sqrt(D)) V
* r not in A, approximate mode:     C_new[r] = C_old[r] + softmax(q_r K^T / sqrt(D))[A] dV[A]
* r not in A, frozen mode:          C_new[r] = C_old[r]

With *cached softmax statistics* (`row_lse` given: float32 [B, Q, H], each query row's
log-sum-exp per head from its last exact computation) an approximate row takes its normaliser
from the cache instead of scoring every key, so its update costs O(|A|) instead of O(L):

* r not in A, approximate, cached:  C_new[r] = C_old[r] + exp(q_r K[A]^T / sqrt(D) - lse[r]) dV[A]

and the exact rows' entries of `row_lse` are overwritten, in place, with the log-sum-exp their
exact attention row just had (the statistic the next approximate update of that row reads).

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

import math

import torch
from einops import rearrange

from dyllm.kernels.dispatch import register
from dyllm.kernels.primitives import (
    attention,
    attention_logsumexp,
    expand_kv_heads,
    row_cosine,
    row_partial_sums,
)
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
    row_lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """New contexts and their cosine to the old ones, for a sparse step's query rows.

    q: [B, H, Q, D] query rows after RoPE; key, value: [B, KV, L, D] updated caches;
    context_old: [B, Q, H*D]; exact: the query rows to compute exactly (slots 0..Q-1, [B, E]);
    delta_columns: the refreshed key positions per sequence (index/valid [B, S]);
    delta_value: [B, KV, S, D] = V_new - V_old at those positions (zero where not valid);
    key_mask: bool [B, L] (True = real token) or None.
    Returns context_new [B, Q, H*D] (context_old's dtype) and cosine [B, Q] float32, or with
    `partial_sums` float32 [3, B, Q]: (new.old, new.new, old.old) summed over these H heads.
    row_lse: float32 [B, Q, H] cached softmax statistics (module docstring), or None to score
    every key; when given, its exact rows are updated in place.
    """
    check_row_lse(row_lse, q)
    q, key = q.float(), key.float()
    if approximate and delta_columns.width and row_lse is not None:
        update = cached_statistics_update(q, key, delta_columns, delta_value, key_mask, row_lse)
        context_new = context_old.float() + rearrange(update, "b h q d -> b q (h d)")
    elif approximate and delta_columns.width:
        # attention with dV as the values, dV zero outside the refreshed columns, is exactly
        # sum over refreshed j of softmax(q K^T / sqrt(D))[r, j] dV[j]: the normaliser still runs
        # over every key, and the fused attention never materialises the probabilities
        full_delta = columns_to_full_length(delta_value.float(), delta_columns, key.shape[2])
        update = attention(q, key, full_delta, key_mask)  # [B, H, Q, D]
        context_new = context_old.float() + rearrange(update, "b h q d -> b q (h d)")
    else:
        context_new = context_old.float().clone()
    return exact_rows_and_signal(
        q, key, value, context_old, context_new, exact, key_mask, row_lse, partial_sums
    )


def exact_rows_and_signal(
    q: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context_old: torch.Tensor,
    context_new: torch.Tensor,
    exact: PaddedRows,
    key_mask: torch.Tensor | None,
    row_lse: torch.Tensor | None,
    partial_sums: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What every form of the operation shares once the approximate rows are updated: the exact
    rows written into `context_new` (float32 [B, Q, H*D], in place; their log-sum-exp into
    `row_lse` when given), then the cast back and the signal (cosine or partial sums) against
    `context_old`. q and key float32, as the callers hold them."""
    if exact.width:
        exact_q = gather_query_rows(q, exact.index)  # [B, H, E, D]
        exact_context = attention(exact_q, key, value.float(), key_mask)
        write_valid_rows(context_new, exact, rearrange(exact_context, "b h e d -> b e (h d)"))
        if row_lse is not None:
            exact_lse = attention_logsumexp(exact_q, key, key_mask)  # [B, H, E]
            write_valid_rows(row_lse, exact, exact_lse.transpose(1, 2))

    if partial_sums:
        signal = row_partial_sums(context_new, context_old)
    else:
        signal = row_cosine(context_new, context_old)
    return context_new.to(context_old.dtype), signal


def check_row_lse(row_lse: torch.Tensor | None, q: torch.Tensor) -> None:
    """`row_lse` must be float32 [B, Q, H] for q [B, H, Q, D] (or None)."""
    if row_lse is None:
        return
    batch, heads, rows, _ = q.shape
    if row_lse.dtype != torch.float32 or tuple(row_lse.shape) != (batch, rows, heads):
        raise ValueError(
            f"row_lse must be a float32 [batch, query rows, heads] = [{batch}, {rows}, {heads}] "
            f"tensor of cached log-sum-exps, got a {row_lse.dtype} tensor of shape "
            f"{list(row_lse.shape)}"
        )


def cached_statistics_update(
    q: torch.Tensor,
    key: torch.Tensor,
    columns: PaddedRows,
    delta_value: torch.Tensor,
    key_mask: torch.Tensor | None,
    row_lse: torch.Tensor,
) -> torch.Tensor:
    """`exp(q K[A]^T / sqrt(D) - lse) dV[A]` per query row and head: [B, H, Q, D] float32.

    q: [B, H, Q, D] and key [B, KV, L, D] float32; columns: A's positions (index/valid [B, S]);
    delta_value: [B, KV, S, D]; row_lse: float32 [B, Q, H]. Padding slots and masked keys
    contribute nothing.
    """
    heads, head_dim = q.shape[1], q.shape[-1]
    index = columns.index[:, None, :, None].expand(-1, key.shape[1], -1, head_dim)
    column_keys = expand_kv_heads(key.gather(2, index), heads)  # [B, H, S, D]
    scores = torch.matmul(q, column_keys.transpose(-1, -2)) / math.sqrt(head_dim)  # [B, H, Q, S]
    contributes = columns.valid
    if key_mask is not None:
        contributes = contributes & key_mask.gather(1, columns.index)
    weights = torch.exp(scores - row_lse.transpose(1, 2)[..., None])
    weights = weights * contributes[:, None, None, :]
    return torch.matmul(weights, expand_kv_heads(delta_value.float(), heads))


def columns_to_full_length(
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


def gather_query_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor [B, H, Q, F], index [B, R] -> [B, H, R, F]."""
    batch, heads, _, width = tensor.shape
    expanded = index[:, None, :, None].expand(batch, heads, index.shape[1], width)
    return tensor.gather(2, expanded)


def write_valid_rows(target: torch.Tensor, rows: PaddedRows, values: torch.Tensor) -> None:
    """Write values [B, E, F] into target [B, Q, F] at rows.index where rows.valid (padding
    entries are distinct rows of their sequence and get their own values back)."""
    index = rows.index[:, :, None].expand(-1, -1, target.shape[2])
    old = target.gather(1, index)
    target.scatter_(1, index, torch.where(rows.valid[:, :, None], values, old))
