"""Mixture-of-experts arithmetic as plain functions: both routers and the grouped expert FFN.

Two routers, written from the official modeling code's behaviour (docs: REFERENCE-families.md,
"MoE routing" of LLaDA-MoE and of LLaDA2):

* `route_softmax_topk` (LLaDA-MoE, an OLMoE block): softmax over all experts in float32; an
  optional expert bias is added to the probabilities and the biased values are used both to choose
  the experts and as their weights; top-k; no renormalisation, no routed scaling.
* `route_sigmoid_grouped` (LLaDA2.x, Ling/Bailing-MoE-V2): sigmoid scores in float32; the expert
  bias is added only to choose; experts are split into `n_group` contiguous groups scored by the
  sum of their two largest biased scores, only the `topk_group` best groups stay eligible; top-k
  of the biased scores; the weights are the *unbiased* scores of the chosen experts, renormalised
  (when k > 1, with 1e-20 added to the sum) and multiplied by `routed_scaling_factor`.

`grouped_experts` computes `sum_k w_k * expert_{idx_k}(x)` like an engine: the (row, slot) pairs
are sorted by expert and each active expert runs one SwiGLU matmul over its rows; the weighted
outputs are added back with `index_add_`. `naive_experts` is the per-row loop it is tested against.
`grouped_experts` reads the rows-per-expert counts back to the host once per call (the loop over
experts is sized by them): on a GPU that is one synchronisation per MoE layer and forward, the
one the sparse step makes inside its layer loop on these models (docs/architecture.md).
Shapes: x [N, d] (callers flatten batch and length), router logits [N, E], indices and weights
[N, k].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dyllm.kernels.primitives import swiglu

ExpertWeights = Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""Per expert: (gate [F, d], up [F, d], down [d, F]), the SwiGLU weights."""


def route_softmax_topk(
    router_logits: torch.Tensor, top_k: int, expert_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA-MoE's router: (weights [N, k] float32, expert indices [N, k] int64).

    router_logits: [N, E] (`x @ gate.weight^T`, no bias). p = softmax(logits) in float32 over
    all E experts; with `expert_bias` [E], p + bias is what is ranked *and* what weights the
    experts (as the official code does). No renormalisation, no scaling. The caller casts the
    weights to the activation dtype before the expert sum, as the official code does.
    """
    _check_router_input(router_logits, top_k, expert_bias)
    scores = torch.softmax(router_logits.float(), dim=-1)
    if expert_bias is not None:
        scores = scores + expert_bias.float()
    weights, indices = torch.topk(scores, top_k, dim=-1)
    return weights, indices


def route_sigmoid_grouped(
    router_logits: torch.Tensor,
    top_k: int,
    expert_bias: torch.Tensor,
    n_group: int,
    topk_group: int,
    routed_scaling_factor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA2's router: (weights [N, k] float32, expert indices [N, k] int64).

    router_logits: [N, E], computed by the caller in float32 (`x.float() @ gate.weight.float()^T`).
    s = sigmoid(logits); b = s + expert_bias (for the choice only). The E experts form n_group
    contiguous groups of E / n_group; a group's score is the sum of its two largest b; experts
    outside the topk_group best groups get b = -inf; indices = topk(b, top_k). Weights are
    s[indices], divided by (their sum + 1e-20) when top_k > 1, times routed_scaling_factor.
    """
    _check_router_input(router_logits, top_k, expert_bias)
    num_rows, num_experts = router_logits.shape
    if n_group < 1 or num_experts % n_group:
        raise ValueError(f"{num_experts} experts cannot be split into n_group={n_group} groups")
    per_group = num_experts // n_group
    if per_group < 2:
        raise ValueError(
            f"each of the {n_group} expert groups needs at least 2 experts (a group is scored by "
            f"its two largest scores); {num_experts} experts give {per_group}"
        )
    if not 1 <= topk_group <= n_group:
        raise ValueError(f"topk_group must be in [1, n_group={n_group}], got {topk_group}")
    if top_k > topk_group * per_group:
        raise ValueError(
            f"top_k={top_k} experts cannot be chosen from {topk_group} group(s) of {per_group}"
        )
    scores = torch.sigmoid(router_logits.float())
    biased = scores + expert_bias.float()
    grouped = biased.view(num_rows, n_group, per_group)
    group_scores = grouped.topk(2, dim=-1).values.sum(-1)  # [N, n_group]
    best_groups = group_scores.topk(topk_group, dim=-1).indices  # [N, topk_group]
    group_mask = torch.zeros_like(group_scores, dtype=torch.bool)
    group_mask.scatter_(1, best_groups, True)
    expert_mask = group_mask[:, :, None].expand(-1, -1, per_group).reshape(num_rows, num_experts)
    eligible = biased.masked_fill(~expert_mask, float("-inf"))
    indices = eligible.topk(top_k, dim=-1).indices
    weights = scores.gather(1, indices)
    if top_k > 1:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return weights * routed_scaling_factor, indices


def _check_router_input(
    router_logits: torch.Tensor, top_k: int, expert_bias: torch.Tensor | None
) -> None:
    if router_logits.dim() != 2:
        raise ValueError(
            f"router logits must be [rows, experts], got shape {tuple(router_logits.shape)}"
        )
    num_experts = router_logits.shape[1]
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in [1, {num_experts}] (the expert count), got {top_k}")
    if expert_bias is not None and tuple(expert_bias.shape) != (num_experts,):
        raise ValueError(
            f"expert_bias must have shape ({num_experts},), got {tuple(expert_bias.shape)}"
        )


def grouped_experts(
    x: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    experts: ExpertWeights,
    accumulate_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """`out[n] = sum_k weights[n, k] * expert_{indices[n, k]}(x[n])`: [N, d].

    x: [N, d]; indices, weights: [N, k]; experts[e] = (gate, up, down). The (row, slot) pairs are
    sorted by expert; each expert with rows runs one SwiGLU over exactly those rows, the outputs
    are scaled by their weights and summed per row in `accumulate_dtype` (default x's dtype;
    LLaDA2 sums in the router's float32), then cast to x's dtype. Experts with no rows cost
    nothing.
    """
    _check_expert_shapes(x, indices, weights)
    dtype = accumulate_dtype or x.dtype
    out = torch.zeros(x.shape[0], x.shape[1], dtype=dtype, device=x.device)
    flat_experts = indices.reshape(-1)
    order = torch.argsort(flat_experts, stable=True)
    rows = order // indices.shape[1]
    # The one read-back: rows per expert (the loop below is sized by them), with the count of
    # out-of-range indices in the same transfer so that bad input costs no second one.
    outside = ((flat_experts < 0) | (flat_experts >= len(experts))).sum()
    in_range = flat_experts.clamp(0, max(len(experts) - 1, 0))
    counts = torch.cat([torch.bincount(in_range, minlength=len(experts)), outside[None]]).tolist()
    if counts.pop():
        raise ValueError(f"expert indices must be in [0, {len(experts)})")
    flat_weights = weights.reshape(-1)[order].to(dtype)
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        chosen = rows[start : start + count]
        gate, up, down = experts[expert]
        y = swiglu(x[chosen], gate, up, down)
        out.index_add_(0, chosen, y.to(dtype) * flat_weights[start : start + count, None])
        start += count
    return out.to(x.dtype)


def naive_experts(
    x: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    experts: ExpertWeights,
    accumulate_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The definition, one row and one chosen expert at a time (the tests' reference)."""
    _check_expert_input(x, indices, weights, experts)
    dtype = accumulate_dtype or x.dtype
    rows = []
    for n in range(x.shape[0]):
        total = torch.zeros(x.shape[1], dtype=dtype, device=x.device)
        for slot in range(indices.shape[1]):
            gate, up, down = experts[int(indices[n, slot])]
            total = total + weights[n, slot].to(dtype) * swiglu(x[n : n + 1], gate, up, down)[0].to(
                dtype
            )
        rows.append(total)
    return torch.stack(rows).to(x.dtype)


def _check_expert_input(
    x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, experts: ExpertWeights
) -> None:
    _check_expert_shapes(x, indices, weights)
    if indices.numel() and not 0 <= int(indices.min()) <= int(indices.max()) < len(experts):
        raise ValueError(f"expert indices must be in [0, {len(experts)})")


def _check_expert_shapes(x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be [rows, hidden], got shape {tuple(x.shape)}")
    if indices.dim() != 2 or indices.shape[0] != x.shape[0]:
        raise ValueError(
            f"indices must be [rows={x.shape[0]}, k], got shape {tuple(indices.shape)}"
        )
    if weights.shape != indices.shape:
        raise ValueError(
            f"weights {tuple(weights.shape)} must have the shape of indices {tuple(indices.shape)}"
        )
