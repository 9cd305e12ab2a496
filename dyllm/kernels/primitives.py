"""The transformer's primitives as plain functions: RMSNorm, RoPE, attention, SwiGLU.

They live here, at the bottom of the package graph, because both the model's modules
(`dyllm.models.layers`) and the sparse step's kernel references compute with them: one
definition, so the sparse step's eager path gives bit for bit what the model's forward gives.

Both families use the same pieces with two numerical differences that matter for reproducing
their tokens exactly:

* RoPE precision. LLaDA (`full_precision`) rotates q and k in float32 and casts the result
  back; Dream (and LLaDA-MoE, LLaDA2) compute cos/sin in float32, cast them to the hidden dtype
  and rotate there. LLaDA2 rotates only the first `rotary_dim` dims of each head.
* Everything else (RMSNorm in float32 then cast, then the weight; bidirectional softmax attention
  with scale 1/sqrt(head_dim); SwiGLU `down(silu(gate(x)) * up(x))`) is shared.

The row cosine, DyLLM's saliency signal, exists twice: `row_cosine` over a whole row, and as
partial sums (`row_partial_sums`, `cosine_from_partial_sums`) for a row whose parts live on
different processes (tensor parallelism, `dyllm.distributed`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`weight * cast(x * rsqrt(mean(x^2) + eps))`, the statistic taken in float32."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def swiglu(
    x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor
) -> torch.Tensor:
    """`down(silu(gate(x)) * up(x))` with weights [F, d], [F, d], [d, F] (no biases)."""
    return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


def rope_inverse_frequencies(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """`theta^(-arange(0, head_dim, 2) / head_dim)` in float32: [head_dim / 2]."""
    exponents = torch.arange(0, head_dim, 2, device=device, dtype=torch.int64).float() / head_dim
    return 1.0 / (theta**exponents)


def rope_angles(
    position_ids: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles, float32, each [B, L, head_dim] (halves repeated)."""
    inv_freq = rope_inverse_frequencies(head_dim, theta, position_ids.device)
    angles = position_ids.float()[..., None] * inv_freq  # [B, L, head_dim / 2]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, full_precision: bool
) -> torch.Tensor:
    """Rotate `x: [B, H, L, D]` by angles `cos, sin: [B, L, R]` (float32), R <= D even.

    The first R dims of each head are rotated (rotate-half pairs i and i + R / 2) and the other
    D - R pass through unchanged: R = D is ordinary RoPE, R < D the partial RoPE of LLaDA2.
    `full_precision` (LLaDA): rotate in float32 and cast back. Otherwise (Dream, the MoE
    families): cast cos/sin to x's dtype and rotate in that dtype.
    """
    rotary = cos.shape[-1]
    if rotary < x.shape[-1]:
        rotated = apply_rope(x[..., :rotary], cos, sin, full_precision)
        return torch.cat((rotated, x[..., rotary:]), dim=-1)
    cos, sin = cos[:, None], sin[:, None]
    if full_precision:
        return _rotated(x.float(), cos, sin).to(x.dtype)
    return _rotated(x, cos.to(x.dtype), sin.to(x.dtype))


def _rotated(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`x * cos + rotate_half(x) * sin`, rotate_half(x) = cat(-x2, x1) over the last dimension
    (the NeoX / HF-Llama half layout), without materialising rotate_half(x): element for element
    the same products and sums (`a + (-b) c` is exactly `a - b c`), in fewer passes over memory
    (the sparse step rotates every query row of every layer)."""
    half = x.shape[-1] // 2
    out = x * cos
    out[..., :half] -= x[..., half:] * sin[..., :half]
    out[..., half:] += x[..., :half] * sin[..., half:]
    return out


def expand_kv_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Repeat each key/value head for its query group: [B, KV, L, D] -> [B, H, L, D].

    Query head h reads key/value head h // (H / KV), as in grouped-query attention.
    """
    groups = num_heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
) -> torch.Tensor:
    """Attention `softmax(q k^T / sqrt(D)) v`, bidirectional unless the mask says otherwise.

    q: [B, H, Lq, D]; k, v: [B, KV, Lk, D]; key_mask: bool (True = attend), [B, Lk] (the same
    keys for every query) or [B, Lq, Lk] (per query: LLaDA2's block-causal structure), or None.
    Every query must see at least one key. Returns [B, H, Lq, D].
    """
    k = expand_kv_heads(k, q.shape[1])
    v = expand_kv_heads(v, q.shape[1])
    if key_mask is None:
        mask = None
    elif key_mask.dim() == 3:
        mask = key_mask[:, None]
    else:
        mask = key_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)


def attention_logsumexp(
    q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None
) -> torch.Tensor:
    """Each query row's softmax normaliser: `logsumexp_j(q k_j / sqrt(D))` over the attended keys.

    q: [B, H, Lq, D]; k: [B, KV, Lk, D]; key_mask: [B, Lk] bool (True = attend) or None.
    Returns float32 [B, H, Lq], computed in float32 one sequence at a time (a [H, Lq, Lk] score
    block, not the batch's). `exp(score - logsumexp)` is then the row's attention weight.
    """
    batch, heads, rows, head_dim = q.shape
    out = torch.empty(batch, heads, rows, dtype=torch.float32, device=q.device)
    keys = expand_kv_heads(k, heads)
    for b in range(batch):
        scores = torch.matmul(q[b].float(), keys[b].float().transpose(-1, -2))
        scores = scores / math.sqrt(head_dim)  # [H, Lq, Lk]
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[b], float("-inf"))
        out[b] = torch.logsumexp(scores, dim=-1)
    return out


def row_cosine(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the last dimension, float32: [..., F] x [..., F] -> [...]."""
    new, old = new.float(), old.float()
    dot = (new * old).sum(-1)
    norms = new.norm(dim=-1) * old.norm(dim=-1)
    return dot / norms.clamp_min(torch.finfo(torch.float32).tiny)


def row_partial_sums(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """The sums a cosine is made of, float32: [..., F] x [..., F] -> [3, ...] holding
    (new . old, new . new, old . old) over the last dimension.

    Sums over disjoint parts of F (one process's heads under tensor parallelism) add up to the
    sums over all of F, so the parts can be all-reduced and then combined
    (`cosine_from_partial_sums`): every process gets the same cosine.
    """
    new, old = new.float(), old.float()
    return torch.stack(((new * old).sum(-1), (new * new).sum(-1), (old * old).sum(-1)))


def cosine_from_partial_sums(partials: torch.Tensor) -> torch.Tensor:
    """Cosine from summed (new . old, new . new, old . old) [3, ...] (float32) -> [...]."""
    dot, new_square, old_square = partials.unbind(0)
    norms = new_square.sqrt() * old_square.sqrt()
    return dot / norms.clamp_min(torch.finfo(torch.float32).tiny)
