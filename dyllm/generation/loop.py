"""State both samplers share: the canvas, the denoiser call, commits, early stop, progress.

A sampler decides *what* to commit; this object does the bookkeeping around it: it builds the
`StepContext` for each denoiser call, asks for the logits of the current block only (the sampler
never reads others: LLaDA gives every position outside the block -inf confidence, Dream's blocks
likewise), applies Dream's one-position logit shift (block column c reads the logits of position
c - 1, as `cat(logits[:, :1], logits[:, :-1])` does in the reference), records which positions
each step committed (the next step's `newly_committed`), counts steps, and handles
`stop_at_eos`.

Early stop: a row's text is final once it holds an EOS with no mask before it, since committed
tokens never change and the text ends at the first EOS. When every row is final the loop stops
and fills the remaining masks with EOS. Rows that finish early stay in the batch and keep being
denoised until all are final, so the others see the same batch (Dream's step size averages the
mask count over rows) and produce the same tokens as without early stop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from dyllm.generation.batching import PromptBatch
from dyllm.generation.denoiser import Denoiser
from dyllm.generation.model import SamplerConfig
from dyllm.generation.step import StepContext, StepReport

StepObserver = Callable[[StepReport], None]
"""Called after every step's commit with what the step did (`generate(..., on_step=...)`)."""


class DenoisingLoop:
    """The canvas `x` [B, P + G] and everything a step needs besides the unmasking rule."""

    def __init__(
        self,
        batch: PromptBatch,
        block_length: int,
        denoiser: Denoiser,
        generator: torch.Generator,
        model_config: SamplerConfig,
        *,
        stop_at_eos: bool = False,
        progress: bool = False,
        planned_steps: int | None = None,
        on_step: StepObserver | None = None,
        first_row: int = 0,
        progress_label: str = "denoising",
    ) -> None:
        self.x = batch.canvas.clone()  # [B, P + G]
        self.attention_mask = batch.attention_mask
        self.position_ids = batch.position_ids
        self.prompt_length = batch.prompt_length
        self.gen_length = self.x.shape[1] - batch.prompt_length
        self.block_length = block_length
        self.denoiser = denoiser
        self.generator = generator
        self.mask_token_id: int = model_config.mask_token_id
        self.eos_token_id: int | None = model_config.eos_token_id
        self.eot_token_id: int | None = model_config.eot_token_id
        self.logit_shift = bool(model_config.logit_shift)
        self.stop_at_eos = stop_at_eos
        self.steps_run = 0
        self.wall_time = 0.0
        """Seconds the sampler ran on this canvas (set by `run_sampler`)."""
        self.done = False
        self._newly_committed: torch.Tensor | None = None
        self._on_step = on_step
        self._first_row = first_row
        self._last_step: tuple[StepContext, torch.Tensor, float] | None = None
        self._progress = tqdm(
            total=planned_steps, disable=not progress, desc=progress_label, unit="step"
        )

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    def block_bounds(self, block: int) -> tuple[int, int]:
        """Absolute canvas columns [start, end) of `block`."""
        start = self.prompt_length + block * self.block_length
        return start, start + self.block_length

    def block_has_mask(self, block: int) -> bool:
        start, end = self.block_bounds(block)
        return bool((self.x[:, start:end] == self.mask_token_id).any())

    def block_continues(self, block: int, step_in_block: int, steps: int, adaptive: bool) -> bool:
        """Whether `block` gets another step: `steps` of them, or (adaptive) until no mask.

        Adaptive rules commit at least one token per unfinished row and step, so a block never
        needs more than `block_length` steps; more means a rule stopped making progress.
        """
        if not adaptive:
            return step_in_block < steps
        if not self.block_has_mask(block):
            return False
        if step_in_block >= self.block_length:
            raise RuntimeError(
                f"parallel decoding made no progress in block {block} after {step_in_block} "
                "steps: a row still has masks. Either a selection rule committed nothing, or the "
                "model keeps proposing the mask token itself (committing it leaves the position "
                "masked; trained models do not, randomly initialised ones can)"
            )
        return True

    def logits(
        self, block: int, step_in_block: int, unconditional: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits of the current block's columns, shifted when the model needs it.

        Without `unconditional`: logits [B, W, V], W the block length, row w for canvas column
        block_start + w. With it (CFG, a [B, P + G] canvas whose prompt is masked): one call on
        the stack [x; unconditional], logits [2B, W, V].
        """
        guidance = unconditional is not None
        copies = 2 if guidance else 1
        canvas = torch.cat([self.x, unconditional], dim=0) if guidance else self.x
        newly_committed = _stacked(self._newly_committed, copies)
        start, end = self.block_bounds(block)
        context = StepContext.on_canvas(
            canvas,
            step=self.steps_run,
            block=block,
            step_in_block=step_in_block,
            block_start=start,
            block_end=end,
            prompt_length=self.prompt_length,
            mask_token_id=self.mask_token_id,
            logit_shift=self.logit_shift,
            newly_committed=newly_committed,
            attention_mask=_stacked(self.attention_mask, copies),
            position_ids=_stacked(self.position_ids, copies),
            classifier_free_guidance=guidance,
        )
        if self._on_step is None:
            logits = self.denoiser(canvas, context)
        else:
            synchronize(canvas.device)
            began = time.perf_counter()
            logits = self.denoiser(canvas, context)
            synchronize(canvas.device)
            self._last_step = (context, logits, time.perf_counter() - began)
        expected = (canvas.shape[0], end - start)
        if logits.dim() != 3 or tuple(logits.shape[:2]) != expected:
            raise ValueError(
                f"{type(self.denoiser).__name__} returned logits of shape {list(logits.shape)}; "
                f"a denoiser returns [rows, W, V] = [{expected[0]}, {expected[1]}, V] for the "
                f"columns {context.logit_start}..{context.logit_end - 1} (see StepContext)"
            )
        return logits

    def commit(self, transfer: torch.Tensor, proposals: torch.Tensor) -> None:
        """Write `proposals` [B, P + G] where `transfer` [B, P + G] is True; end the step."""
        self.x = torch.where(transfer, proposals, self.x)
        self._newly_committed = transfer
        self.steps_run += 1
        self._progress.update(1)
        if self._on_step is not None and self._last_step is not None:
            context, logits, seconds = self._last_step
            report = StepReport(
                context=context,
                committed=transfer,
                canvas=self.x.clone(),
                logits=logits,
                dense=self.denoiser.last_step_dense,
                denoiser_seconds=seconds,
                first_row=self._first_row,
            )
            self._on_step(report)
        if self.stop_at_eos and self._every_row_final():
            self._fill_masks_with_eos()
            self.done = True

    def commit_block(self, block: int, transfer: torch.Tensor, proposals: torch.Tensor) -> None:
        """`commit` for block-local tensors: transfer, proposals [B, W] of `block`'s columns."""
        start, end = self.block_bounds(block)
        full_transfer = torch.zeros_like(self.x, dtype=torch.bool)
        full_transfer[:, start:end] = transfer
        full_proposals = self.x.clone()
        full_proposals[:, start:end] = proposals
        self.commit(full_transfer, full_proposals)

    def block_masked(self, block: int) -> torch.Tensor:
        """BoolTensor [B, W]: masked positions of `block`."""
        start, end = self.block_bounds(block)
        return self.x[:, start:end] == self.mask_token_id

    def close(self) -> None:
        self._progress.close()

    def generated(self) -> torch.Tensor:
        """LongTensor [B, G]: the generation region of the canvas."""
        return self.x[:, self.prompt_length :]

    def _every_row_final(self) -> bool:
        generated = self.generated()
        first_eos = _first_index(generated == self.eos_token_id)
        first_mask = _first_index(generated == self.mask_token_id)
        return bool((first_eos < first_mask).all())

    def _fill_masks_with_eos(self) -> None:
        generated = self.generated()
        self.x[:, self.prompt_length :] = generated.masked_fill(
            generated == self.mask_token_id, self.eos_token_id
        )


def _stacked(tensor: torch.Tensor | None, copies: int) -> torch.Tensor | None:
    """`tensor` [B, ...] repeated `copies` times along the batch (CFG stacks two canvases)."""
    if tensor is None or copies == 1:
        return tensor
    return torch.cat([tensor] * copies, dim=0)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _first_index(hits: torch.Tensor) -> torch.Tensor:
    """hits BoolTensor [B, G] -> LongTensor [B]: first True column, G when there is none."""
    width = hits.shape[1]
    first = hits.int().argmax(dim=1)
    return torch.where(hits.any(dim=1), first, torch.full_like(first, width))
