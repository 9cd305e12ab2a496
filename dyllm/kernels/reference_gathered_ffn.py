"""The sparse step's FFN on selected rows only: eager reference.

For the rows a policy selected after attention, read by index from the query rows' residual
stream, compute the layer's `down(silu(gate(n)) * up(n))` with `n = ffn_norm(h)` and write the
results by index into the FFN-output cache; the other rows keep their cached output. Nothing is
computed full-size and masked afterwards: a capacity of C rows per sequence costs B x C rows of
the three matmuls, however many of them are valid (see `row_sets`).

The arithmetic is `dyllm.kernels.primitives.rms_norm` and `swiglu`, the model's own, so the
eager path gives bit for bit what the layer's FFN gives on the gathered rows. Kernels know
nothing of modules: the layer's weights arrive as `FeedForwardWeights`. Under tensor parallelism
a process holds some of the FFN's columns, so its down projection is a partial sum:
`FeedForwardWeights.reduce` (the layer's all-reduce) adds the partial rows over the processes
before they are written, and the cache holds the whole FFN output on every process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dyllm.kernels.dispatch import register
from dyllm.kernels.primitives import rms_norm, swiglu
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
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    """Sums rows of partial down projections [N, d] over tensor-parallel processes (F is this
    process's share of the FFN columns); None in a single process."""


@register("gathered_ffn", "eager")
def gathered_ffn_reference(
    hidden: torch.Tensor,
    rows: FlatRows,
    positions: torch.Tensor,
    weights: FeedForwardWeights,
    ffn_out: torch.Tensor,
) -> None:
    """Write `FFN(hidden[rows])` into `ffn_out` at (rows.batch_index, positions) for the valid
    rows, in place.

    hidden: [B, Q, d] the query rows' residual stream; rows: N rows of it (batch index, slot,
    valid); positions: long [N] each row's position in the cache, distinct within a sequence;
    ffn_out: [B, L, d] the FFN-output cache.
    """
    normed = rms_norm(rows.gather(hidden), weights.norm_weight, weights.norm_eps)  # [N, d]
    fresh = swiglu(normed, weights.gate, weights.up, weights.down)
    if weights.reduce is not None:
        fresh = weights.reduce(fresh)
    rows.write_valid(ffn_out, positions, fresh)
