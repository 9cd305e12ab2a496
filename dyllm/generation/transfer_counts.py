"""How many tokens each step unmasks: LLaDA's even split and Dream's timestep schedule.

LLaDA (linear noise schedule): a block with `masked` masks and `s` steps unmasks
`masked // s` per step, the first `masked % s` steps one more (10 over 4 -> 3, 3, 2, 2).

Dream: `timesteps = linspace(1, eps, steps + 1)` in float32; at step i with t = ts[i] and
s = ts[i + 1] it unmasks `int(m * (1 - s / t))`, m being the mask count averaged over the
batch rows as a float32 tensor, and `int(m)` at the last step. The float32 rounding matters: with
steps = gen_length the first step's product is just under 1 and unmasks nothing, and the last
step unmasks 2.
"""

from __future__ import annotations

import torch


def llada_transfer_counts(block_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to unmask per row and step.

    block_masked: BoolTensor [B, block_length] (masked positions of the block)
    -> LongTensor [B, steps]
    """
    masked = block_masked.sum(dim=1, keepdim=True)  # [B, 1]
    base = masked // steps
    remainder = masked % steps
    step_index = torch.arange(steps, device=block_masked.device).unsqueeze(0)  # [1, steps]
    return base + (step_index < remainder).long()


def dream_timesteps(steps: int, eps: float, device: torch.device) -> torch.Tensor:
    """FloatTensor [steps + 1], float32, from 1 down to eps."""
    return torch.linspace(1, eps, steps + 1, device=device)


def dream_transfer_count(
    masked_total: torch.Tensor, batch_size: int, t: torch.Tensor, s: torch.Tensor, last: bool
) -> int:
    """Tokens every row unmasks at this step (the same k for all rows, as in the reference).

    masked_total: 0-dim integer tensor, masks summed over the batch (current block only);
    t, s: 0-dim float32 timesteps of this step and the next.
    """
    mean_masked = masked_total / batch_size  # float32 tensor, the reference's rounding
    if last:
        return int(mean_masked)
    return int(mean_masked * (1 - s / t))
