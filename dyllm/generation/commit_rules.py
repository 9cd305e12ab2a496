"""Which masked positions a step commits, given a confidence per position.

Three rules, each returning a BoolTensor [B, L] of positions to commit:

- `commit_most_confident`: the k most confident eligible positions of each row (the reference
  samplers, k from the transfer counts).
- `threshold_selection` (Fast-dLLM parallel decoding): every eligible position with
  confidence >= threshold, and always the most confident one, so each step makes progress.
- `factor_selection` (Fast-dLLM): sort a row's eligible confidences c_1 >= c_2 >= ...; commit the
  longest prefix in which each c_n >= 1 - factor / (n + 1); c_1 always.

Comparisons are `>=` as in Fast-dLLM's code (it drops a candidate when `c < threshold`).
Fast-dLLM's factor loop has one quirk we do not copy: when every candidate but the last passes,
it also commits the failing last one; here the prefix simply stops before it.
A row with no eligible position (its block already finished) commits nothing.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


def commit_most_confident(confidence: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """confidence [B, L] (-inf where not eligible), counts LongTensor [B] -> BoolTensor [B, L]."""
    transfer = torch.zeros_like(confidence, dtype=torch.bool)
    for row in range(confidence.shape[0]):
        count = int(counts[row])
        if count > 0:
            chosen = torch.topk(confidence[row], k=count).indices
            transfer[row, chosen] = True
    return transfer


def threshold_selection(
    confidence: torch.Tensor, eligible: torch.Tensor, threshold: float
) -> torch.Tensor:
    """confidence [B, L], eligible BoolTensor [B, L] -> BoolTensor [B, L]."""
    ranked = confidence.masked_fill(~eligible, NEG_INF)
    transfer = eligible & (ranked >= threshold)
    best = ranked.argmax(dim=-1, keepdim=True)  # [B, 1]
    has_candidate = eligible.any(dim=-1, keepdim=True)
    return transfer.scatter(-1, best, has_candidate)


def factor_selection(
    confidence: torch.Tensor, eligible: torch.Tensor, factor: float
) -> torch.Tensor:
    """confidence [B, L], eligible BoolTensor [B, L] -> BoolTensor [B, L]."""
    ranked = confidence.masked_fill(~eligible, NEG_INF)
    sorted_confidence, order = torch.sort(ranked, dim=-1, descending=True)
    rank = torch.arange(1, ranked.shape[-1] + 1, device=ranked.device, dtype=torch.float64)
    passes = sorted_confidence >= 1 - factor / (rank + 1)  # [B, L], rank n = 1, 2, ...
    passes[:, 0] = True
    candidates = eligible.sum(dim=-1, keepdim=True)  # [B, 1]
    within = torch.arange(ranked.shape[-1], device=ranked.device).unsqueeze(0) < candidates
    prefix = torch.cumprod((passes & within).long(), dim=-1).bool()
    return torch.zeros_like(eligible).scatter(-1, order, prefix)
