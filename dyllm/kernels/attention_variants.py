"""Attention pieces of the MoE families that LLaDA-8B and Dream lack, as plain functions.

From the official modeling code of LLaDA-MoE and LLaDA2.x (facts: REFERENCE-families.md):

* `qk_norm`: RMSNorm over each head's head_dim slice with one [head_dim] weight shared by all
  heads, applied to q and k after the projection (and LLaDA2's QKV split) and *before* RoPE.
* `apply_partial_rope`: NeoX rotate-half RoPE on the first `rotary_dim` dims of each head only
  (pairs i and i + rotary_dim / 2), the remaining dims pass through; inverse frequencies over
  rotary_dim (`theta^(-2i / rotary_dim)`). cos/sin are computed in float32 and cast to the
  activation dtype, the rotation is done in that dtype (both families).
* `split_fused_qkv`: LLaDA2's `query_key_value` output, rows all Q heads, then all K heads, then
  all V heads, each head's head_dim contiguous.
* `block_causal_mask`: LLaDA2's block-diffusion mask, query q sees key k iff
  k // block_length <= q // block_length.
"""

from __future__ import annotations

import torch

from dyllm.kernels.primitives import rms_norm, rope_angles, rotate_half


def qk_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-head RMSNorm: x [B, H, L, D] (or any [..., D]), weight [D] -> x's shape and dtype."""
    if weight.shape != (x.shape[-1],):
        raise ValueError(
            f"the QK-norm weight must have shape ({x.shape[-1]},) (head_dim), "
            f"got {tuple(weight.shape)}"
        )
    return rms_norm(x, weight, eps)


def rotary_dimension(head_dim: int, partial_rotary_factor: float) -> int:
    """`int(head_dim * partial_rotary_factor)`, checked to be even and in [2, head_dim]."""
    rotary = int(head_dim * partial_rotary_factor)
    if rotary < 2 or rotary > head_dim or rotary % 2:
        raise ValueError(
            f"partial_rotary_factor {partial_rotary_factor} gives {rotary} rotary dims of "
            f"head_dim {head_dim}; it must be an even number in [2, {head_dim}]"
        )
    return rotary


def partial_rope_angles(
    position_ids: torch.Tensor, rotary_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin over the rotary dims, float32, each [B, L, rotary_dim] (halves repeated)."""
    return rope_angles(position_ids, rotary_dim, theta)


def apply_partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first rotary_dim dims of x [B, H, L, D] by cos, sin [B, L, rotary_dim].

    cos/sin (float32) are cast to x's dtype and the rotation is done in that dtype; dims
    rotary_dim..D-1 are returned unchanged. rotary_dim == D is ordinary full RoPE.
    """
    rotary_dim = cos.shape[-1]
    if rotary_dim > x.shape[-1] or rotary_dim % 2:
        raise ValueError(f"rotary_dim {rotary_dim} must be even and <= head_dim {x.shape[-1]}")
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    rotated = rotated * cos + rotate_half(rotated) * sin
    return torch.cat((rotated, passed), dim=-1) if passed.shape[-1] else rotated


def split_fused_qkv(
    qkv: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, L, (H + 2 KV) * D] -> q [B, H, L, D], k [B, KV, L, D], v [B, KV, L, D]."""
    batch, length, width = qkv.shape
    if width != (num_heads + 2 * num_kv_heads) * head_dim:
        raise ValueError(
            f"fused QKV width {width} is not (heads {num_heads} + 2 x kv heads {num_kv_heads}) "
            f"x head_dim {head_dim}"
        )
    heads = qkv.view(batch, length, num_heads + 2 * num_kv_heads, head_dim)
    q, k, v = heads.split([num_heads, num_kv_heads, num_kv_heads], dim=2)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def block_causal_mask(length: int, block_length: int, device: torch.device) -> torch.Tensor:
    """[length, length] bool, True where query q may attend key k: k's block <= q's block."""
    if block_length < 1:
        raise ValueError(f"block_length must be >= 1, got {block_length}")
    blocks = torch.arange(length, device=device) // block_length
    return blocks[None, :] <= blocks[:, None]
