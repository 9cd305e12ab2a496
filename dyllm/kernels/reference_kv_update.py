"""The sparse step's K/V update for refreshed rows, after their projections: eager reference.

Given the refreshed rows' freshly projected keys and values, rotate the keys (RoPE, in the
model's precision), write both into the layer's caches at the rows' positions and return
`dV = V_new - V_old`, which the saliency attention needs for the approximate rows. The
projections themselves stay matmuls in the caller; this is the part a kernel can fuse (one read
of each row, one write of each cache row, dV in the same pass).

Rows arrive as `FlatRows` with a `valid` flag (see `row_sets`): invalid entries are padding,
computed but not written (their cache rows are written back unchanged) and given dV = 0.
RoPE precision follows `dyllm.kernels.primitives.apply_rope`.
"""

from __future__ import annotations

import torch

from dyllm.kernels.dispatch import register
from dyllm.kernels.primitives import apply_rope
from dyllm.kernels.row_sets import FlatRows


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
    """Rotate and write the valid K/V rows into the caches; return dV [N, KV, D].

    key_rows, value_rows: [N, KV*D] projections before RoPE; cos, sin: float32 [N, D] at the
    rows' positions; rows: the N cache rows (batch index, position, valid), all distinct;
    key_cache, value_cache: [B, KV, L, D], written in place (keys stored after RoPE).
    """
    kv_heads, head_dim = key_cache.shape[1], key_cache.shape[3]
    keys = key_rows.view(-1, kv_heads, 1, head_dim)
    keys = apply_rope(keys, cos[:, None], sin[:, None], full_precision)[:, :, 0]
    values = value_rows.view(-1, kv_heads, head_dim)
    valid = rows.valid[:, None, None]
    old_keys = key_cache[rows.batch_index, :, rows.position]  # [N, KV, D]
    old_values = value_cache[rows.batch_index, :, rows.position]
    key_cache[rows.batch_index, :, rows.position] = torch.where(valid, keys, old_keys)
    value_cache[rows.batch_index, :, rows.position] = torch.where(valid, values, old_values)
    return torch.where(valid, values - old_values, torch.zeros_like(values))
