"""DyLLM's saliency attention shaped for a CPU, held to `saliency_attention_reference`.

The reference forms the approximate update `softmax(q K^T / sqrt(D))[:, A] dV[A]` as one fused
attention whose values are a full-length dV, zero outside the refreshed columns A: it pays the
score matmul over every key and then a `P V` matmul over every key, although only |A| columns of
`P` meet a nonzero value. This path pays the score matmul once and takes from it only what the
update needs, on chunks of (sequence, key/value head) pairs whose [G * Q, L] score blocks (G query
heads per key/value head) together stay in a CPU core's cache (`SCORE_BLOCK`):

    scores = q K^T / sqrt(D) + mask bias       one batched matmul (baddbmm: the bias rides along)
    lse    = logsumexp(scores)                 the row's normaliser over every key
    update = exp(scores[:, A] - lse) dV[A]     |A| columns gathered, one small matmul

Materialising the whole batch's probabilities and gathering from them measured about 2x slower
than the fused reference on a CPU (the [B, H, Q, L] block streams through memory several
times); in cache-sized chunks it is faster (docs/sparse-step.md, bench/micro), except on small
shapes, where per-call costs dominate and the fused form is kept (`FUSED_BELOW`). With
cached softmax statistics (`row_lse`) the update needs no score over all keys at all and is the
reference's O(|A|) form; exact rows are computed as the reference computes them.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange

from dyllm.kernels.dispatch import register
from dyllm.kernels.primitives import attention
from dyllm.kernels.reference_saliency_attention import (
    cached_statistics_update,
    check_row_lse,
    columns_to_full_length,
    exact_rows_and_signal,
)
from dyllm.kernels.row_sets import PaddedRows

SCORE_BLOCK = 1 << 17
"""Scores per chunk of the approximate update (512 KiB of float32): enough (sequence, head) pairs
per matmul that small shapes are not dominated by per-call overhead, few enough that the block
stays in a CPU core's L2 cache."""


FUSED_BELOW = 1 << 18
"""Below this many scores (B x H x Q x L) the approximate update takes the reference's fused form:
there a call's fixed costs outweigh the P dV product it saves (measured at the reference models'
shape, batch 16 x 4 heads x 52 x 52 scores: the fused form about 5% faster; at 2 x 4 x 256 x 256
and above the chunked form wins, 25% at 16 x 16 x 256 x 384)."""


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
        elif q.shape[0] * q.shape[1] * q.shape[2] * key.shape[2] < FUSED_BELOW:
            update = fused_update(q, key, delta_columns, delta_value, key_mask)
        else:
            update = columns_update(q, key, delta_columns, delta_value, key_mask)
        context_new = context_old.float() + rearrange(update, "b h q d -> b q (h d)")
    else:
        context_new = context_old.float().clone()
    return exact_rows_and_signal(
        q, key, value, context_old, context_new, exact, key_mask, row_lse, partial_sums
    )


def fused_update(
    q: torch.Tensor,
    key: torch.Tensor,
    columns: PaddedRows,
    delta_value: torch.Tensor,
    key_mask: torch.Tensor | None,
) -> torch.Tensor:
    """The reference's form of `columns_update`: one fused attention over a full-length dV that is
    zero outside A. [B, H, Q, D] float32."""
    full_delta = columns_to_full_length(delta_value.float(), columns, key.shape[2])
    return attention(q, key, full_delta, key_mask)


def columns_update(
    q: torch.Tensor,
    key: torch.Tensor,
    columns: PaddedRows,
    delta_value: torch.Tensor,
    key_mask: torch.Tensor | None,
    block_scores: int = SCORE_BLOCK,
) -> torch.Tensor:
    """`softmax(q K^T / sqrt(D))[:, A] dV[A]` for every query row: [B, H, Q, D] float32.

    q: [B, H, Q, D] and key [B, KV, L, D] float32; columns: A's positions (index/valid [B, S]);
    delta_value: [B, KV, S, D]. Padding slots and masked keys contribute nothing. The (sequence,
    key/value head) pairs are taken in chunks of about `block_scores` scores each.
    """
    batch, heads, rows, head_dim = q.shape
    kv_heads, length = key.shape[1], key.shape[2]
    group, pairs, width = heads // kv_heads, batch * kv_heads, columns.width
    bias = torch.zeros(batch, length, dtype=torch.float32, device=q.device)
    if key_mask is not None:
        bias.masked_fill_(~key_mask, float("-inf"))
    column_bias = bias.gather(1, columns.index).masked_fill_(~columns.valid, float("-inf"))
    # one row per (sequence, key/value head) pair: the group's query heads share its keys
    grouped_q = q.reshape(pairs, group * rows, head_dim)
    keys_t = key.reshape(pairs, length, head_dim).transpose(1, 2)
    deltas = delta_value.float().reshape(pairs, width, head_dim)
    pair_bias = bias.repeat_interleave(kv_heads, dim=0)[:, None, :]  # [P, 1, L]
    pair_column_bias = column_bias.repeat_interleave(kv_heads, dim=0)[:, None, :]  # [P, 1, S]
    pair_index = columns.index.repeat_interleave(kv_heads, dim=0)[:, None, :]
    update = torch.empty(pairs, group * rows, head_dim, dtype=torch.float32, device=q.device)
    chunk = max(1, block_scores // max(1, group * rows * length))
    scale = 1.0 / math.sqrt(head_dim)
    for start in range(0, pairs, chunk):
        part = slice(start, start + chunk)
        scores = torch.baddbmm(pair_bias[part], grouped_q[part], keys_t[part], alpha=scale)
        lse = torch.logsumexp(scores, dim=2, keepdim=True)  # [c, G * Q, 1]
        index = pair_index[part].expand(-1, group * rows, -1)
        weights = scores.gather(2, index).add_(pair_column_bias[part]).sub_(lse).exp_()
        torch.bmm(weights, deltas[part], out=update[part])
    return update.view(batch, heads, rows, head_dim)
