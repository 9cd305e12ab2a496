"""The seam between the denoising loop and whatever computes a step's logits: `Denoiser`.

Samplers never call the model. They call a `Denoiser` with the current canvas and the step's
`StepContext` (which also carries the batch's padding mask and position ids). `DenseDenoiser` runs
the full forward every step, as the reference samplers do (the LM head only on the columns the
sampler reads); the saliency engine (`dyllm.engine.SaliencyDenoiser`) recomputes only the rows
that changed, from the same context.

NFE (number of function evaluations) counts forward passes of the network over the batch: a
step costs one, and a classifier-free-guidance step costs two, because the sampler stacks the
conditional and the unconditional canvases into one call of 2B rows and that call does the work
of two full passes. Counting it as one would flatter CFG's tokens-per-forward by 2x.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from dyllm.generation.step import StepContext


class Denoiser(ABC):
    """Computes logits for a canvas; counts its forward passes in `nfe`.

    Subclasses call `super().__init__()`, implement `__call__` (adding the forward passes it did
    to `self.nfe` and setting `last_step_dense`), and may override `extra_stats` to report numbers
    of their own (for example per-layer recompute fractions), which land in
    `GenerationStats.extra`.
    """

    def __init__(self) -> None:
        self.nfe = 0
        self.last_step_dense = True

    @abstractmethod
    def __call__(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """x: long [rows, L] -> logits [rows, W, V] of columns logit_start..logit_end-1.

        Only the sampler's window gets logits: the LM head (126k x 4096 for LLaDA) is never
        applied to rows nobody reads. Unshifted, in the model dtype.
        """

    def extra_stats(self) -> dict[str, Any]:
        """Statistics beyond the common ones; JSON-serialisable values."""
        return {}

    def new_batch(self) -> None:
        """Called before every batch after the first when `max_batch_size` splits a call's
        prompts: drop what belongs to the previous batch's canvas (caches sized for it), keep
        the counts (`nfe`, statistics), which then cover the whole call. A denoiser that keeps
        nothing per canvas (this base class, `DenseDenoiser`) has nothing to drop."""
        return None


class DenseDenoiser(Denoiser):
    """Full forward pass of `model` at every step (the reference samplers' cost).

    The padding mask and position ids come with each step's context; both are None when no
    prompt is padded, so the call is exactly the reference's `model(x)`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def __call__(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        logits = self.model(
            x,
            attention_mask=ctx.attention_mask,
            position_ids=ctx.position_ids,
            logit_range=(ctx.logit_start, ctx.logit_end),
        )
        self.nfe += 2 if ctx.classifier_free_guidance else 1
        return logits
