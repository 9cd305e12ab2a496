"""Attention pieces of the MoE families that LLaDA-8B and Dream lack, as plain functions.

From the official modeling code of LLaDA-MoE and LLaDA2.x (facts: REFERENCE-families.md):

* `qk_norm`: RMSNorm over each head's head_dim slice with one [head_dim] weight shared by all
  heads, applied to q and k after the projection (and LLaDA2's QKV split) and *before* RoPE.
* `block_causal_mask`: LLaDA2's block-diffusion mask, query q sees key k iff
  k // block_length <= q // block_length; `block_causal_key_mask` is the same rule over position
  ids, per batch row, for keys that may come from a cache (the forward's `block_length`).

Partial RoPE (LLaDA2 rotates the first `rotary_dim` dims of each head) is
`dyllm.kernels.primitives.apply_rope` with angles over `rotary_dim` dims; LLaDA2's fused QKV
split is `DecoderLayer.project_qkv`'s (`dyllm.models.transformer`).
"""

from __future__ import annotations

import torch

from dyllm.kernels.primitives import rms_norm


def qk_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-head RMSNorm: x [..., D] (e.g. [B, H, L, D]), weight [D] -> x's shape and dtype."""
    if weight.shape != (x.shape[-1],):
        raise ValueError(
            f"the QK-norm weight must have shape ({x.shape[-1]},) (head_dim), "
            f"got {tuple(weight.shape)}"
        )
    return rms_norm(x, weight, eps)


def block_causal_mask(length: int, block_length: int, device: torch.device) -> torch.Tensor:
    """[length, length] bool, True where query q may attend key k: k's block <= q's block."""
    if block_length < 1:
        raise ValueError(f"block_length must be >= 1, got {block_length}")
    blocks = torch.arange(length, device=device) // block_length
    return blocks[None, :] <= blocks[:, None]


def block_causal_key_mask(
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    block_length: int,
    key_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-query key mask [B, Lq, Lk] (True = may attend) of block-causal attention.

    query_positions [B, Lq], key_positions [B, Lk]: position ids (block(i) = i // block_length);
    key_valid [B, Lk] bool (False on padding or unwritten cache slots) or None. A query sees a
    key iff the key is valid and its block is not after the query's: LLaDA2's block-diffusion
    mask, for keys that need not be the queries' own rows (a cache of finished blocks).
    """
    if isinstance(block_length, bool) or not isinstance(block_length, int) or block_length < 1:
        raise ValueError(f"block_length must be an integer >= 1, got {block_length!r}")
    query_blocks = torch.div(query_positions, block_length, rounding_mode="floor")
    key_blocks = torch.div(key_positions, block_length, rounding_mode="floor")
    allowed = key_blocks[:, None, :] <= query_blocks[:, :, None]
    return allowed if key_valid is None else allowed & key_valid[:, None, :].bool()
