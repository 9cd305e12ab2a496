"""The sparse step's K/V update for refreshed rows, after their projections: eager reference.

Given the refreshed rows' freshly projected keys and values, rotate the keys (RoPE, in the
model's precision), write both into the layer's caches at the rows' positions and return
`dV = V_new - V_old`, which the saliency attention needs for the approximate rows. The
projections themselves stay matmuls in the caller; this is the part a kernel can fuse (one read
of each row, one write of each cache row, dV in the same pass).

RoPE precision follows `dyllm.models.layers.apply_rope`: LLaDA (`full_precision`) rotates in
float32 and casts back; Dream casts cos/sin to the row dtype and rotates there.
"""

from __future__ import annotations

import torch

from dyllm.kernels.dispatch import register
from dyllm.kernels.row_sets import FlatRows
from dyllm.models.layers import apply_rope


@register("kv_update", "eager")
def kv_update_reference(
    key_rows: torch.Tensor,
    value_rows: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    rows: FlatRows,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    full_precision: bool,
) -> torch.Tensor:
    """Rotate and write refreshed K/V rows into the caches; return dV [N, KV, D].

    key_rows, value_rows: [N, KV*D] projections before RoPE; cos, sin: float32 [N, D] at the
    rows' positions; rows: the N cache rows (batch index, position), all distinct;
    key_cache, value_cache: [B, KV, L, D], written in place (keys stored after RoPE).
    """
    kv_heads, head_dim = key_cache.shape[1], key_cache.shape[3]
    keys = key_rows.view(-1, kv_heads, 1, head_dim)
    keys = apply_rope(keys, cos[:, None], sin[:, None], full_precision)[:, :, 0]
    values = value_rows.view(-1, kv_heads, head_dim)
    old_values = value_cache[rows.batch_index, :, rows.position]  # [N, KV, D]
    key_cache[rows.batch_index, :, rows.position] = keys
    value_cache[rows.batch_index, :, rows.position] = values
    return values - old_values
