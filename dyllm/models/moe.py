"""The mixture-of-experts FFN of LLaDA-MoE and LLaDA2: the `ffn` of a MoE layer.

`MoEFeedForward(experts, hidden_size, split)` holds one MoE layer's weights, the router
(`gate`), the optional expert bias, the routed experts and the shared expert, and computes, for
x [..., d]:

* LLaDA-MoE (`router == "softmax"`): router logits `x @ gate^T` in x's dtype, softmax in float32
  over all experts (+ expert bias, which also weights), top-k without renormalisation, weights
  cast to x's dtype, the weighted expert sum in x's dtype, plus the shared expert (unweighted)
  when the config has one.
* LLaDA2 (`router == "sigmoid_grouped"`): router logits in float32, the grouped sigmoid router
  with routed scaling, the weighted expert sum in float32 cast back to x's dtype, plus the
  shared expert, always.

The arithmetic is `dyllm.kernels.moe` (rows grouped by expert, one matmul per active expert).
`DecoderLayer` (`dyllm.models.transformer`) holds one as its `ffn` on the layers the config
makes MoE layers, so its `feed_forward` stage (the dense forward's and the sparse step's) runs
it. Parameter names follow the checkpoints' per-layer suffixes (`gate.weight`, `experts.{e}.*`);
where each family keeps the expert bias and the shared expert is `dyllm.models.keymaps`. The
expert bias is a parameter (never trained) so that the loader reads it like any weight.

Tensor parallelism (`split` > 1 processes, docs/tensor-parallel.md): the router and the expert
bias are whole on every process, so every process routes each row to the same experts with the
same weights; each expert and the shared expert hold 1/split of their columns (gate/up rows,
down columns), so `forward` returns this process's part of the output, a partial sum that the
layer's sum over processes (`DecoderLayer.feed_forward`) completes. The weighted sum over
experts is linear in each expert's output, so weighting the partial sums and adding them over
processes is the single-process result up to the order of the additions.
"""

from __future__ import annotations

import torch
from torch import nn

from dyllm.kernels.moe import grouped_experts, route_sigmoid_grouped, route_softmax_topk
from dyllm.models.layers import SwiGLU
from dyllm.models.moe_config import ExpertConfig


class MoEFeedForward(nn.Module):
    """One MoE layer's FFN: router, experts and shared expert of a LLaDA-MoE / LLaDA2 config."""

    expert_bias: nn.Parameter | None

    def __init__(self, config: ExpertConfig, hidden_size: int, split: int = 1) -> None:
        """split: processes the experts' columns are divided among (1: the whole layer)."""
        super().__init__()
        self.config = config
        d = hidden_size
        self.gate = nn.Linear(d, config.num_experts, bias=False)
        if config.expert_bias:
            bias = torch.zeros(config.num_experts)
            self.expert_bias = nn.Parameter(bias, requires_grad=False)
        else:
            self.expert_bias = None
        self.experts = nn.ModuleList(
            SwiGLU(d, config.expert_intermediate_size // split) for _ in range(config.num_experts)
        )
        shared = config.shared_expert_intermediate_size
        self.shared_expert = SwiGLU(d, shared // split) if shared is not None else None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [N, k] float32, expert indices [N, k]) for the rows x [N, d]."""
        c = self.config
        if c.router == "softmax":
            return route_softmax_topk(
                torch.nn.functional.linear(x, self.gate.weight),
                c.num_experts_per_tok,
                self.expert_bias,
            )
        assert self.expert_bias is not None  # LLaDA2 always has one
        return route_sigmoid_grouped(
            torch.nn.functional.linear(x.float(), self.gate.weight.float()),
            c.num_experts_per_tok,
            self.expert_bias,
            c.n_group,
            c.topk_group,
            c.routed_scaling_factor,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d] -> [..., d] in x's dtype (with `split` > 1: this process's partial sum)."""
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        if rows.shape[0] == 0:
            return torch.zeros_like(x)
        weights, indices = self.route(rows)
        experts = [(e.gate_proj.weight, e.up_proj.weight, e.down_proj.weight) for e in self.experts]
        if self.config.router == "softmax":
            out = grouped_experts(rows, indices, weights.to(x.dtype), experts)
        else:
            out = grouped_experts(rows, indices, weights, experts, accumulate_dtype=torch.float32)
        if self.shared_expert is not None:
            out = out + self.shared_expert(rows)
        return out.reshape(shape)
