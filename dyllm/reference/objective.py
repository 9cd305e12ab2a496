"""The masked diffusion training objective of LLaDA and Dream, on answer positions.

Per row a mask ratio t ~ U(eps, 1) is drawn; each answer position is replaced by the mask token
with probability t; the loss is the cross-entropy on the masked positions weighted by 1/t,
summed and divided by the number of answer positions (LLaDA's SFT normalisation). For the Dream
layout the logits are shifted by one position first: the token at i is predicted from the
hidden state at i-1, exactly the shift Dream's sampler applies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dyllm.reference.encoding import Batch

MIN_MASK_RATIO = 1e-3


def shift_logits(logits: torch.Tensor) -> torch.Tensor:
    """Dream's shift: position i gets the logits computed at i-1 (position 0 keeps its own)."""
    # logits: [B, L, V]
    return torch.cat((logits[:, :1], logits[:, :-1]), dim=1)


def mask_answers(
    batch: Batch, mask_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noised ids [B, L], masked positions [B, L] bool and the per-row ratio t [B]."""
    rows, length = batch.input_ids.shape
    ratio = MIN_MASK_RATIO + (1 - MIN_MASK_RATIO) * torch.rand(rows, generator=generator)
    draws = torch.rand((rows, length), generator=generator)
    masked = (draws < ratio[:, None]) & batch.answer_mask
    noised = torch.where(masked, torch.full_like(batch.input_ids, mask_id), batch.input_ids)
    return noised, masked, ratio


def diffusion_loss(
    model: torch.nn.Module,
    batch: Batch,
    mask_id: int,
    logit_shift: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """Scalar loss of one batch (the generator draws t and the masks; it lives on the CPU)."""
    noised, masked, ratio = mask_answers(batch, mask_id, generator)
    device = next(model.parameters()).device
    logits = model(noised.to(device), attention_mask=batch.attention_mask.to(device))
    if logit_shift:
        logits = shift_logits(logits)
    targets = batch.input_ids.to(device)
    token_loss = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    weights = masked.to(device).float() / ratio.to(device)[:, None]
    answer_positions = batch.answer_mask.sum().clamp(min=1).to(device)
    return (token_loss * weights).sum() / answer_positions
