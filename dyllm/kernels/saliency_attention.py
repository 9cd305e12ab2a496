"""DyLLM's attention for the query rows of a sparse step: eager reference.

For each query row r of sequence b, with refreshed key columns A (this layer's salient set):

* r in A (an *exact* row):          C_new[r] = softmax(q_r K^T / sqrt(D)) V
* r not in A, approximate mode:     C_new[r] = C_old[r] + softmax(q_r K^T / sqrt(D))[A] dV[A]
* r not in A, frozen mode:          C_new[r] = C_old[r]

K and V are the layer's caches after this step's refreshed rows were written; dV = V_new - V_old
on A and zero elsewhere, so only A's columns contribute to the update (the dropped term is
dS * V_old, the change of the attention weights themselves). Also returned: the float32 cosine
similarity of C_new and C_old per row over all heads, DyLLM's saliency signal, so selection
needs no second pass over the contexts.

This function is the specification the Triton kernel is held to; it favours clarity, computing in
float32 and casting the contexts back to the cache dtype.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange

from dyllm.kernels.dispatch import register
from dyllm.kernels.row_sets import PaddedRows
from dyllm.models.layers import expand_kv_heads


def row_cosine(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the last dimension, float32: [..., F] x [..., F] -> [...]."""
    new, old = new.float(), old.float()
    dot = (new * old).sum(-1)
    norms = new.norm(dim=-1) * old.norm(dim=-1)
    return dot / norms.clamp_min(torch.finfo(torch.float32).tiny)


@register("saliency_attention", "eager")
def saliency_attention_reference(
    q: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context_old: torch.Tensor,
    exact: torch.Tensor,
    delta_columns: PaddedRows,
    delta_value: torch.Tensor,
    key_mask: torch.Tensor | None,
    approximate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """New contexts and their cosine to the old ones, for a sparse step's query rows.

    q: [B, H, Q, D] query rows after RoPE; key, value: [B, KV, L, D] updated caches;
    context_old: [B, Q, H*D]; exact: bool [B, Q] rows to compute exactly;
    delta_columns: the refreshed key positions per sequence (index/valid [B, S]);
    delta_value: [B, KV, S, D] = V_new - V_old at those positions (zero where not valid);
    key_mask: bool [B, L] (True = real token) or None.
    Returns context_new [B, Q, H*D] (context_old's dtype) and cosine [B, Q] float32.
    """
    heads, head_dim = q.shape[1], q.shape[-1]
    keys = expand_kv_heads(key, heads).float()
    context_new = context_old.float().clone()
    exact_rows = PaddedRows.from_mask(exact)
    update_rows = PaddedRows.from_mask(~exact) if approximate and delta_columns.width else None

    def scores_of(rows: PaddedRows) -> torch.Tensor:
        """Scaled, masked q K^T of the given query rows: [B, H, R, L], float32."""
        rows_q = _gather_query_rows(q, rows.index).float() / math.sqrt(head_dim)
        scores = torch.einsum("bhrd,bhkd->bhrk", rows_q, keys)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        return scores

    if exact_rows.width:
        probs = scores_of(exact_rows).softmax(dim=-1)  # [B, H, E, L]
        values = expand_kv_heads(value, heads).float()
        exact_context = rearrange(probs @ values, "b h e d -> b e (h d)")
        _scatter_rows(context_new, exact_rows, exact_context)

    if update_rows is not None and update_rows.width:
        # P[r, j] for the refreshed columns j only: exp(score - logsumexp over all keys)
        scores = scores_of(update_rows)  # [B, H, A, L]
        normalizer = scores.logsumexp(dim=-1, keepdim=True)
        column_index = delta_columns.index[:, None, None, :].expand(-1, heads, scores.shape[2], -1)
        column_probs = (scores.gather(3, column_index) - normalizer).exp()  # [B, H, A, S]
        deltas = expand_kv_heads(delta_value, heads).float()
        deltas = deltas * delta_columns.valid[:, None, :, None]
        update = rearrange(column_probs @ deltas, "b h a d -> b a (h d)")
        old = torch.gather(
            context_new, 1, update_rows.index[..., None].expand(-1, -1, update.shape[-1])
        )
        _scatter_rows(context_new, update_rows, old + update)

    cosine = row_cosine(context_new, context_old)
    return context_new.to(context_old.dtype), cosine


def _gather_query_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor [B, H, Q, F], index [B, R] -> [B, H, R, F]."""
    batch, heads, _, width = tensor.shape
    expanded = index[:, None, :, None].expand(batch, heads, index.shape[1], width)
    return tensor.gather(2, expanded)


def _scatter_rows(target: torch.Tensor, rows: PaddedRows, values: torch.Tensor) -> None:
    """Write values [B, R, F] into target [B, Q, F] at rows.index where rows.valid."""
    batch_index, slot = rows.valid.nonzero(as_tuple=True)
    target[batch_index, rows.index[batch_index, slot]] = values[batch_index, slot]
