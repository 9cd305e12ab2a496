"""What one denoising step knows: `StepContext`, shared by the sampler, the denoiser and policies.

The denoising loop builds one `StepContext` per step and passes it to the `Denoiser`; the saliency
engine hands the same object to its policy, so there is one definition of "where the loop stands"
(no copy field by field into a second type). Columns are absolute indices into the padded canvas
`[prompt (left-padded) | generation]`; every mask is bool [rows, L], where rows is the batch size,
or twice it under classifier-free guidance (the sampler stacks [conditional; unconditional]).

`StepReport` is what a step's observer (`generate(..., on_step=...)`) receives after the commit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepContext:
    """Where the denoising loop stands when it asks for logits."""

    step: int
    """Step index within this batch (0-based): the whole `generate` call, unless
    `max_batch_size` splits its prompts into batches, which then each start at step 0."""
    block: int
    """Index of the block being decoded (0-based, left to right)."""
    step_in_block: int
    """Step index within the current block (0-based)."""
    first_step_in_block: bool
    block_start: int
    """First canvas column of the current block."""
    block_end: int
    """One past the last canvas column of the current block."""
    prompt_length: int
    """Columns of the prompt (the longest prompt; shorter ones are left-padded)."""
    response_start: int
    """First column whose hidden state produces answer logits: prompt_length, or
    prompt_length - 1 for models with Dream's one-position logit shift."""
    length: int
    """Columns of the canvas, prompt and generation."""
    logit_start: int
    """First column whose logits the sampler reads this step: the block's first column, one
    earlier with Dream's logit shift (position i is predicted from i - 1)."""
    logit_end: int
    """One past the last such column."""
    masked: torch.Tensor
    """Bool [rows, L]: positions still masked in this step's input."""
    newly_committed: torch.Tensor | None
    """Bool [rows, L]: positions the previous step unmasked; None at the first step."""
    attention_mask: torch.Tensor | None = None
    """Bool [rows, L] (True = real token), or None when no prompt is padded."""
    position_ids: torch.Tensor | None = None
    """Long [rows, L] counted from each row's first real token, or None (0..L-1)."""
    classifier_free_guidance: bool = False
    """True when the input stacks [conditional; unconditional] canvases (2B rows)."""
    block_causal: bool = False
    """True under LLaDA2's block diffusion (one row of the batch, its own canvas): attention is
    block-causal, every column before `block_start` is final (its K/V cached exactly), columns
    from `block_end` on are unseen, and `attention_mask` marks the window [0, block_end) as the
    keys. Only the current block's rows (`block_rows`) can change, so a sparse step's queries must
    lie inside it; the current block sees every key of the window, so over those rows the
    bidirectional sparse step computes what the block-causal forward computes."""

    @classmethod
    def on_canvas(
        cls,
        canvas: torch.Tensor,
        *,
        step: int,
        block_start: int,
        block_end: int,
        prompt_length: int,
        mask_token_id: int,
        logit_shift: bool,
        newly_committed: torch.Tensor | None = None,
        block: int = 0,
        step_in_block: int | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        classifier_free_guidance: bool = False,
        block_causal: bool = False,
    ) -> StepContext:
        """The context of a step on `canvas` [rows, L], the derived columns filled in: the
        logit window and the response start move one column left with a logit shift.
        `step_in_block` defaults to `step`."""
        shift = 1 if logit_shift else 0
        return cls(
            step=step,
            block=block,
            step_in_block=step if step_in_block is None else step_in_block,
            first_step_in_block=(step if step_in_block is None else step_in_block) == 0,
            block_start=block_start,
            block_end=block_end,
            prompt_length=prompt_length,
            response_start=max(prompt_length - shift, 0),
            length=canvas.shape[1],
            logit_start=block_start - shift,
            logit_end=block_end - shift,
            masked=canvas == mask_token_id,
            newly_committed=newly_committed,
            attention_mask=attention_mask,
            position_ids=position_ids,
            classifier_free_guidance=classifier_free_guidance,
            block_causal=block_causal,
        )

    def columns(self, start: int, end: int | None = None) -> torch.Tensor:
        """Bool [rows, L] selecting canvas columns start..end-1 (end None = to the end)."""
        rows = torch.zeros_like(self.masked)
        rows[:, start:end] = True
        return rows

    @property
    def all_rows(self) -> torch.Tensor:
        return torch.ones_like(self.masked)

    @property
    def block_rows(self) -> torch.Tensor:
        """Rows of the current block (`block_start` to `block_end`)."""
        return self.columns(self.block_start, self.block_end)

    @property
    def logit_rows(self) -> torch.Tensor:
        """Rows whose logits the sampler reads this step (the current block, shifted)."""
        return self.columns(self.logit_start, self.logit_end)

    @property
    def response_rows(self) -> torch.Tensor:
        """Rows that produce answer logits: from `response_start` to the end."""
        return self.columns(self.response_start)


@dataclass(frozen=True)
class StepReport:
    """One finished step, as an `on_step` observer sees it."""

    context: StepContext
    committed: torch.Tensor
    """Bool [B, L]: positions this step unmasked (conditional rows only under CFG)."""
    canvas: torch.Tensor
    """Long [B, L]: the canvas after the commit (a snapshot; safe to keep)."""
    logits: torch.Tensor
    """[rows, W, V]: what the denoiser returned for the step's logit window (before the
    sampler's shift and guidance)."""
    dense: bool
    """Whether the denoiser ran this step as a full forward."""
    denoiser_seconds: float
    """Wall time of the denoiser call (the device synchronised before and after)."""
    first_row: int = 0
    """Index among the call's prompts of the canvas's first row (not 0 for the second and later
    batches when `max_batch_size` splits the prompts)."""
