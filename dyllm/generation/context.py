"""The seam between the denoising loop and whatever computes a step's logits.

Samplers never call the model. They call a `Denoiser` with the current canvas and a
`StepContext` that says where the loop stands (step, block, what the previous step committed).
`DenseDenoiser` runs the full forward every step, as the reference samplers do (the LM head
only on the columns the sampler reads); the saliency
engine plugs in its own `Denoiser` that recomputes only the rows that changed, using the same
context (the positions committed last step are exactly its layer-0 salient set).

NFE (number of function evaluations) counts forward passes of the network over the batch: a
step costs one, and a classifier-free-guidance step costs two, because the sampler stacks the
conditional and the unconditional canvases into one call of 2B rows and that call does the work
of two full passes. Counting it as one would flatter CFG's tokens-per-forward by 2x.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class StepContext:
    """Where the denoising loop stands when it asks for logits.

    Columns are absolute indices into the padded canvas `[prompt (left-padded) | generation]`.
    """

    step: int
    """Global step index within this `generate` call (0-based)."""
    block: int
    """Index of the block being decoded (0-based, left to right)."""
    step_in_block: int
    """Step index within the current block (0-based)."""
    block_start: int
    """First canvas column of the current block."""
    block_end: int
    """One past the last canvas column of the current block."""
    prompt_length: int
    """Number of prompt columns in the canvas (the longest prompt; shorter ones are left-padded)."""
    newly_committed: torch.Tensor | None
    """BoolTensor [rows, L]: positions the previous step unmasked (rows match the denoiser's
    input, so under CFG both halves carry the same positions); None at the first step."""
    first_step_in_block: bool
    """True at the first step of each block."""
    logit_start: int
    """First canvas column whose logits the sampler reads: the block's first column, one
    earlier for models with Dream's logit shift (position i is predicted from i - 1)."""
    logit_end: int
    """One past the last such column."""
    classifier_free_guidance: bool = False
    """True when the input stacks [conditional; unconditional] canvases (2B rows)."""


class Denoiser(ABC):
    """Computes logits for a canvas; counts its forward passes in `nfe`.

    Subclasses call `super().__init__()`, implement `__call__` (adding the forward passes it
    did to `self.nfe`), and may override `extra_stats` to report numbers of their own (for
    example per-layer recompute fractions), which land in `GenerationStats.extra`.
    """

    def __init__(self) -> None:
        self.nfe = 0

    @abstractmethod
    def __call__(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """x: LongTensor [rows, L] -> logits [rows, W, V] of columns logit_start..logit_end-1.

        Only the sampler's window gets logits: the LM head (126k x 4096 for LLaDA) is never
        applied to rows nobody reads. Unshifted, in the model dtype.
        """

    def extra_stats(self) -> dict[str, Any]:
        """Statistics beyond the common ones; JSON-serialisable values."""
        return {}


class DenseDenoiser(Denoiser):
    """Full forward pass of `model` at every step (the reference samplers' cost).

    attention_mask: BoolTensor [B, L] or None (True = real token); position_ids: LongTensor
    [B, L] or None. Both are None when the batch has no padding, so the call is exactly the
    reference's `model(x)`. Under CFG the input has 2B rows and both are stacked twice.
    """

    def __init__(
        self,
        model: nn.Module,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
    ) -> None:
        super().__init__()
        self.model = model
        self.attention_mask = attention_mask
        self.position_ids = position_ids

    def __call__(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        copies = 2 if ctx.classifier_free_guidance else 1
        attention_mask = _repeat_rows(self.attention_mask, copies)
        position_ids = _repeat_rows(self.position_ids, copies)
        logits = self.model(
            x,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logit_range=(ctx.logit_start, ctx.logit_end),
        )
        self.nfe += copies
        return logits


def _repeat_rows(tensor: torch.Tensor | None, copies: int) -> torch.Tensor | None:
    if tensor is None or copies == 1:
        return tensor
    return torch.cat([tensor] * copies, dim=0)
