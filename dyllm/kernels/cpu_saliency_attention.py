"""DyLLM's saliency attention shaped for a CPU, held to `saliency_attention_reference`.

The reference forms the approximate update `softmax(q K^T / sqrt(D))[:, A] dV[A]` as one fused
attention whose values are a full-length dV, zero outside the refreshed columns A: it pays the
score matmul over every key and then a `P V` matmul over every key, although only |A| columns of
`P` meet a nonzero value. This path pays the score matmul once and takes from it only what the
update needs, per (sequence, key/value head), on a [G * Q, L] score block (G query heads per
key/value head) small enough to stay in the CPU's caches:

    scores = q K^T / sqrt(D) + mask bias       one matmul (addmm: the bias rides along)
    lse    = logsumexp(scores)                 the row's normaliser over every key
    update = exp(scores[:, A] - lse) dV[A]     |A| columns gathered, one small matmul

Materialising the whole batch's probabilities and gathering from them measured about 2x slower
than the fused reference on a CPU (the [B, H, Q, L] block streams through memory several
times); blocked per head it is faster (docs/kernels.md, bench/micro). With cached softmax
statistics (`row_lse`) the update needs no score over all keys at all and is the reference's
O(|A|) form; exact rows are computed as the reference computes them.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange

from dyllm.kernels.dispatch import register
from dyllm.kernels.primitives import attention, attention_logsumexp, row_cosine, row_partial_sums
from dyllm.kernels.reference_saliency_attention import (
    cached_statistics_update,
    check_row_lse,
    gather_query_rows,
    write_valid_rows,
)
from dyllm.kernels.row_sets import PaddedRows


@register("saliency_attention", "cpu")
def saliency_attention_cpu(
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
    """Same contract as `saliency_attention_reference` (shapes and semantics there)."""
    check_row_lse(row_lse, q)
    q, key = q.float(), key.float()
    if approximate and delta_columns.width:
        if row_lse is not None:
            update = cached_statistics_update(q, key, delta_columns, delta_value, key_mask, row_lse)
        else:
            update = columns_update(q, key, delta_columns, delta_value, key_mask)
        context_new = context_old.float() + rearrange(update, "b h q d -> b q (h d)")
    else:
        context_new = context_old.float().clone()

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


def columns_update(
    q: torch.Tensor,
    key: torch.Tensor,
    columns: PaddedRows,
    delta_value: torch.Tensor,
    key_mask: torch.Tensor | None,
) -> torch.Tensor:
    """`softmax(q K^T / sqrt(D))[:, A] dV[A]` for every query row: [B, H, Q, D] float32.

    q: [B, H, Q, D] and key [B, KV, L, D] float32; columns: A's positions (index/valid [B, S]);
    delta_value: [B, KV, S, D]. Padding slots and masked keys contribute nothing.
    """
    batch, heads, rows, head_dim = q.shape
    kv_heads, length = key.shape[1], key.shape[2]
    group = heads // kv_heads
    bias = torch.zeros(batch, length, dtype=torch.float32, device=q.device)
    if key_mask is not None:
        bias.masked_fill_(~key_mask, float("-inf"))
    column_bias = bias.gather(1, columns.index).masked_fill_(~columns.valid, float("-inf"))
    delta_value = delta_value.float()
    update = torch.empty(batch, heads, rows, head_dim, dtype=torch.float32, device=q.device)
    scale = 1.0 / math.sqrt(head_dim)
    for b in range(batch):
        row_bias, index = bias[b][None, :], columns.index[b]
        for kv_head in range(kv_heads):
            heads_of = slice(kv_head * group, (kv_head + 1) * group)
            group_q = q[b, heads_of].reshape(group * rows, head_dim)  # the group's rows share K
            scores = torch.addmm(row_bias, group_q, key[b, kv_head].t(), alpha=scale)
            lse = torch.logsumexp(scores, dim=1, keepdim=True)  # [G * Q, 1]
            weights = scores.index_select(1, index).add_(column_bias[b]).sub_(lse).exp_()
            out = update[b, heads_of].view(group * rows, head_dim)
            torch.mm(weights, delta_value[b, kv_head], out=out)
    return update
