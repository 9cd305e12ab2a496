"""Lay prompts out on one canvas: left padding, then `gen_length` mask tokens per row.

When prompts differ in length, shorter ones are left-padded with `pad_token_id`, and the model
gets a key-padding mask (True on real tokens, the generation region included) and position ids
counted from each row's first real token (`cumsum(mask) - 1`, clamped at 0 on the padding), so
each row sees exactly what it would see alone. When all prompts have the same length both are
None and the forward is exactly the reference's `model(x)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PromptBatch:
    """The starting canvas and what the model needs to read it."""

    canvas: torch.Tensor
    """LongTensor [B, P + G]: left-padded prompts, then G mask tokens."""
    attention_mask: torch.Tensor | None
    """BoolTensor [B, P + G] (True = real token) or None when nothing is padded."""
    position_ids: torch.Tensor | None
    """LongTensor [B, P + G] or None when nothing is padded."""
    prompt_length: int
    """P: columns before the generation region (the longest prompt)."""
    prompt_lengths: tuple[int, ...]
    """Unpadded length of each prompt."""

    @property
    def batch_size(self) -> int:
        return self.canvas.shape[0]


def build_prompt_batch(
    prompt_ids: list[list[int]],
    gen_length: int,
    pad_token_id: int,
    mask_token_id: int,
    device: torch.device,
) -> PromptBatch:
    """Canvas, padding mask and position ids for `prompt_ids` on `device`."""
    lengths = tuple(len(ids) for ids in prompt_ids)
    prompt_length = max(lengths)
    batch_size = len(prompt_ids)
    canvas = torch.full(
        (batch_size, prompt_length + gen_length), mask_token_id, dtype=torch.long, device=device
    )
    canvas[:, :prompt_length] = pad_token_id
    for row, ids in enumerate(prompt_ids):
        canvas[row, prompt_length - len(ids) : prompt_length] = torch.tensor(
            ids, dtype=torch.long, device=device
        )
    if len(set(lengths)) == 1:
        return PromptBatch(canvas, None, None, prompt_length, lengths)
    columns = torch.arange(prompt_length + gen_length, device=device)
    starts = torch.tensor([prompt_length - n for n in lengths], device=device)
    attention_mask = columns.unsqueeze(0) >= starts.unsqueeze(1)  # [B, P + G]
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    return PromptBatch(canvas, attention_mask, position_ids, prompt_length, lengths)
