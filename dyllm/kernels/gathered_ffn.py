"""The sparse step's FFN on selected rows only: eager reference.

For the rows a policy selected after attention, read by index from the query rows' residual
stream, compute the layer's `down(silu(gate(n)) * up(n))` with `n = ffn_norm(h)` and write the
results by index into the FFN-output cache; the other rows keep their cached output. Nothing is
computed full-size and masked afterwards: N selected rows cost N rows of the three matmuls.

The operations are those of `RMSNorm` and `SwiGLU` in `dyllm.models.layers`, op for op, so the
eager path gives bit for bit what `DecoderLayer.feed_forward` gives on the gathered rows. Kernels
know nothing of modules: the layer's weights arrive as `FeedForwardWeights`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dyllm.kernels.dispatch import register
from dyllm.kernels.row_sets import FlatRows


@dataclass(frozen=True)
class FeedForwardWeights:
    """One layer's FFN: the norm before it and the SwiGLU matrices ([out, in], no biases)."""

    norm_weight: torch.Tensor
    """[d] RMSNorm weight."""
    norm_eps: float
    gate: torch.Tensor
    """[F, d] (LLaDA: ff_proj)."""
    up: torch.Tensor
    """[F, d]."""
    down: torch.Tensor
    """[d, F] (LLaDA: ff_out)."""


@register("gathered_ffn", "eager")
def gathered_ffn_reference(
    hidden: torch.Tensor,
    rows: FlatRows,
    positions: torch.Tensor,
    weights: FeedForwardWeights,
    ffn_out: torch.Tensor,
) -> None:
    """Write `FFN(hidden[rows])` into `ffn_out` at (rows.batch_index, positions), in place.

    hidden: [B, Q, d] the query rows' residual stream; rows: N rows of it (batch index, slot);
    positions: long [N] each row's position in the cache; ffn_out: [B, L, d] the FFN-output cache.
    """
    selected = rows.gather(hidden)  # [N, d]
    as_float = selected.float()
    inverse_rms = torch.rsqrt(as_float.pow(2).mean(-1, keepdim=True) + weights.norm_eps)
    normed = weights.norm_weight * (as_float * inverse_rms).to(selected.dtype)
    activated = F.silu(F.linear(normed, weights.gate)) * F.linear(normed, weights.up)  # [N, F]
    ffn_out[rows.batch_index, positions] = F.linear(activated, weights.down)
