"""The transformer's parameterised pieces as modules: RMSNorm and SwiGLU.

The arithmetic is `dyllm.kernels.primitives` (shared with the sparse step's kernel references);
these modules only hold the weights under the names the key maps use.
"""

from __future__ import annotations

import torch
from torch import nn

from dyllm.kernels.primitives import rms_norm, swiglu


class RMSNorm(nn.Module):
    """`weight * cast(x * rsqrt(mean(x^2) + eps))`, the statistic taken in float32."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class SwiGLU(nn.Module):
    """Gated FFN `down(silu(gate(x)) * up(x))` (LLaDA names: ff_proj, up_proj, ff_out)."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swiglu(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)
