"""The sparse step's kernel operations as typed functions.

Each call dispatches inside (`dispatch.implementation`) to the eager reference or the Triton
kernel, as `DYLLM_KERNELS` or the `backend` argument says; the signatures and the semantics are
the references' (`reference_*.py`), which the Triton
kernels are tested against. Shapes: B sequences, Q query rows, L canvas positions, H query heads,
KV key/value heads of width D, d the model width; N flat rows, C a padded capacity.
"""

from __future__ import annotations

import torch

from dyllm.kernels.dispatch import implementation
from dyllm.kernels.reference_gathered_ffn import FeedForwardWeights
from dyllm.kernels.row_sets import FlatRows, PaddedRows


def kv_update(
    key_rows: torch.Tensor,
    value_rows: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    rows: FlatRows,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    full_precision: bool,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Rotate the keys, write the valid K/V rows into the caches, return dV [N, KV, D].

    key_rows, value_rows: [N, KV*D]; cos, sin: float32 [N, R] (R = D, or the rotary dims of a
    partial RoPE, which always runs the eager reference); key_cache, value_cache: [B, KV, L, D]
    (written in place).
    """
    if backend is None and cos.shape[-1] != key_cache.shape[-1]:
        backend = "eager"  # partial RoPE (LLaDA2): the Triton kernel rotates whole heads only
    run = implementation("kv_update", key_rows.device, backend)
    return run(key_rows, value_rows, cos, sin, rows, key_cache, value_cache, full_precision)


def saliency_attention(
    q: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context_old: torch.Tensor,
    exact: PaddedRows,
    delta_columns: PaddedRows,
    delta_value: torch.Tensor,
    key_mask: torch.Tensor | None,
    *,
    approximate: bool = True,
    partial_sums: bool = False,
    row_lse: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """New contexts [B, Q, H*D] of the query rows and their float32 cosine [B, Q] to the old.

    q: [B, H, Q, D] after RoPE; key, value: [B, KV, L, D]; context_old: [B, Q, H*D]; exact: the
    query slots computed exactly; delta_columns / delta_value [B, KV, C, D]: the refreshed key
    positions and their dV; key_mask: bool [B, L] or None.
    partial_sums: return, instead of the cosine, float32 [3, B, Q] holding (new.old, new.new,
    old.old) summed over these H heads; a process holding some of the heads adds these over the
    processes and combines them (`primitives.cosine_from_partial_sums`).
    row_lse: float32 [B, Q, H], the query rows' cached softmax log-sum-exps per head: when given,
    approximate rows use them as their normalisers (an O(|A|) update, no score over every key)
    and the exact rows' entries are overwritten in place with their new log-sum-exps.
    """
    run = implementation("saliency_attention", q.device, backend)
    return run(
        q,
        key,
        value,
        context_old,
        exact,
        delta_columns,
        delta_value,
        key_mask,
        approximate=approximate,
        partial_sums=partial_sums,
        row_lse=row_lse,
    )


def gathered_ffn(
    hidden: torch.Tensor,
    rows: FlatRows,
    positions: torch.Tensor,
    weights: FeedForwardWeights,
    ffn_out: torch.Tensor,
    *,
    backend: str | None = None,
) -> None:
    """Write the FFN of the valid `rows` of `hidden` [B, Q, d] into `ffn_out` [B, L, d] at
    (rows.batch_index, positions [N]), in place."""
    run = implementation("gathered_ffn", hidden.device, backend)
    run(hidden, rows, positions, weights, ffn_out)
