"""LLaDA2.0 and LLaDA2.1 block-diffusion samplers (greedy), on a batch of prompts.

LLaDA2.0's sampler (`LLaDA2MoeModelLM.generate`), from the reference's behaviour
(REFERENCE-families.md, "LLaDA2.0 sampler", and the official file the fixtures ran):

1. `steps = min(steps, gen_length // minimal_topk)`. With P prompt tokens the canvas holds
   `ceil((P + gen_length) / block_length)` blocks: the prompt, then mask_id everywhere else;
   positions are absolute, 0..total-1.
2. Attention is block-causal: a query in block b sees keys of blocks <= b.
3. Blocks made only of prompt (those before P // block_length) are never denoised. For each later
   block b the model runs on the window `x[:(b + 1) * block_length]` (the reference recomputes the
   whole prefix every step; `dyllm.engine.block_denoisers` caches it exactly). Prompt tokens
   sharing the first denoised block are not masks and stay fixed.
4. Per block the transfer schedule is n[s] = block_length // steps, plus one for the first
   block_length % steps steps (from block_length even when the block holds fewer masks).
5. Each step (the block stops as soon as it has no mask, or after `steps` steps): p = softmax of
   the block's logits in their dtype (the reference's `F.softmax`: bfloat16 probabilities for a
   bfloat16 model), x0 = argmax p, confidence = p[x0] at masks, -inf elsewhere. If at least n[s]
   masks have confidence > threshold, **all** of them are committed (possibly more than n[s]);
   otherwise the min(n[s], masks) most confident are. Committed tokens are never revisited.
6. After a block, if eos_id appears anywhere in x[P : end of the block], generation stops (later
   blocks stay masks).
7. The answer is x[P : P + gen_length], cut after its first eos_id (eos included).

`eos_early_stop` (2.0): after a step that committed an eos, the reference finds the first eos in
the whole window, prompt included, and if nothing between the prompt and it is a mask it returns
x[P : that eos + 1] at once. Two consequences, both reproduced or refused here: a prompt that
contains eos_id makes that search land in the prompt and the reference return an *empty* answer
(clearly a bug: dyllm refuses such a prompt with eos_early_stop, see `check_eos_early_stop`), and
an eos committed in the last block's columns past P + gen_length is returned with everything
before it, so the answer can be longer than gen_length (reproduced: it is what the reference
returns).

LLaDA2.1's token-editing sampler (REFERENCE-families.md, "LLaDA2.1 sampler"; official file of
ZHZisZZ/dllm). Canvas, mask, windows and prompt handling are 2.0's; `steps` and `minimal_topk`
have no effect (refused by `generate`). Per block, with `post = 0`, each step: old = the block's
tokens, masks = old == mask_id; if there is no mask, post += 1, and the block ends once
post > max_post_steps; x0, p as in 2.0; commit = (p > threshold) & masks if that holds for at
least num_to_transfer masks, else the num_to_transfer most confident masks; edit = positions that
are neither masks nor prompt with p > editing_threshold and x0 != old; x0 is written at
commit | edit; the block ends when it had no mask before the step and nothing was edited. No EOS
stop between blocks unless `eos_early_stop`: then generation stops after a block when x[P : end
of the block] has no mask and contains eos_id. The answer is cut after its first EOS as in 2.0.

Batches: the reference takes one prompt; here each row keeps its own state (block, step, post
counter, answer) and every step asks the `BlockDenoiser` for the current block of each row still
running, in one call. Rows never see each other, so each gets the tokens it gets alone. The rules
read a few values back to the host per row and step (counts, the EOS checks).

Sampling (temperature > 0, top-k, top-p) is refused: the reference's sampled branch was not run
against the official code, so it is not guessed here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from dyllm.generation.block_denoiser import (
    BlockDenoiser,
    BlockRequest,
    WindowBlockDenoiser,
    WindowModel,
)

NEG_INF = float("-inf")
BLOCK_SAMPLERS = ("llada2", "llada2.1")
"""Sampler names of the block-diffusion samplers (`generate(..., sampler=...)`)."""


@dataclass(frozen=True)
class BlockDiffusionOptions:
    """What one LLaDA2 run needs, every value resolved (official names and defaults)."""

    sampler: str
    """"llada2" (LLaDA2.0) or "llada2.1" (token editing)."""
    mask_id: int
    eos_id: int
    gen_length: int = 2048
    block_length: int = 32
    steps: int = 32
    threshold: float = 0.95
    minimal_topk: int = 1
    eos_early_stop: bool = False
    editing_threshold: float = 0.9
    max_post_steps: int = 16
    num_to_transfer: int = 1


@dataclass(frozen=True)
class BlockStepReport:
    """One step of a block-diffusion run, as an `on_step` observer sees it."""

    step: int
    """Step index within this batch (0-based)."""
    rows: tuple[int, ...]
    """Rows of the call's prompts this step served (the batch's first row offset included)."""
    blocks: tuple[int, ...]
    """Each row's current block."""
    window_ends: tuple[int, ...]
    """Each row's window length: the prefix the reference recomputes, (block + 1) * W."""
    rows_computed: tuple[int, ...]
    """Query rows the denoiser computed for each row (the window, or fewer with the cache)."""
    written: torch.Tensor
    """Bool [A, W]: block positions written this step (commits, and 2.1's edits)."""
    canvas: torch.Tensor
    """Long [B, T]: the right-padded canvas after the step (a snapshot)."""
    logits: torch.Tensor
    """[A, W, V]: the current blocks' logits the denoiser returned."""
    denoiser_seconds: float


BlockStepObserver = Callable[[BlockStepReport], None]


@dataclass
class BlockDiffusionResult:
    """The answers' token ids and what the run cost."""

    tokens: list[list[int]]
    """Per prompt: x[P : P + gen_length] cut after the first eos (eos included), or the early
    answer of eos_early_stop."""
    forward_calls: int = 0
    steps_run: int = 0
    window_lengths: list[tuple[int, ...]] = field(default_factory=list)
    """Per step, the window of each row served (what the reference recomputes)."""


class _Row:
    """One prompt's state: where it stands and, once finished, its answer."""

    def __init__(self, index: int, prompt_length: int, options: BlockDiffusionOptions) -> None:
        self.index = index
        self.prompt_length = prompt_length
        width = options.block_length
        self.num_blocks = math.ceil((prompt_length + options.gen_length) / width)
        self.block = prompt_length // width
        self.step = 0
        self.post = 0
        self.block_over = False
        self.answer: list[int] | None = None


def llada2_transfer_schedule(block_length: int, steps: int) -> list[int]:
    """n[s] for s < steps: block_length // steps, one more for the first block_length % steps."""
    base, extra = divmod(block_length, steps)
    return [base + (1 if s < extra else 0) for s in range(steps)]


class BlockDiffusionRun:
    """One canvas (a batch of prompts) through LLaDA2.0's or 2.1's sampler."""

    def __init__(
        self,
        denoiser: BlockDenoiser,
        prompts: Sequence[Sequence[int]],
        options: BlockDiffusionOptions,
        device: torch.device,
        on_step: BlockStepObserver | None = None,
        first_row: int = 0,
    ) -> None:
        self.denoiser = denoiser
        self.options = options
        self.on_step = on_step
        self.first_row = first_row
        width = options.block_length
        self.rows = [_Row(i, len(ids), options) for i, ids in enumerate(prompts)]
        columns = max(row.num_blocks for row in self.rows) * width
        self.x = torch.full(
            (len(prompts), columns), options.mask_id, dtype=torch.long, device=device
        )  # [B, T], right-padded
        for row, ids in zip(self.rows, prompts, strict=True):
            self.x[row.index, : row.prompt_length] = torch.tensor(
                list(ids), dtype=torch.long, device=device
            )
        self.steps = min(options.steps, options.gen_length // options.minimal_topk)
        self.schedule = llada2_transfer_schedule(width, max(self.steps, 1))
        self.editing = options.sampler == "llada2.1"
        self.result = BlockDiffusionResult(tokens=[])

    def run(self) -> BlockDiffusionResult:
        self.denoiser.begin(*self.x.shape)
        while True:
            ready = [row for row in self.rows if row.answer is None and self._advance(row)]
            if not ready:
                break
            self._step(ready)
        self.result.tokens = [row.answer if row.answer is not None else [] for row in self.rows]
        return self.result

    # --- per row: where it stands ----------------------------------------------------------

    def _bounds(self, row: _Row) -> tuple[int, int]:
        width = self.options.block_length
        return row.block * width, (row.block + 1) * width

    def _advance(self, row: _Row) -> bool:
        """Move `row` past finished blocks; True when it needs a forward now, False when done."""
        while True:
            start, end = self._bounds(row)
            masked = self.x[row.index, start:end] == self.options.mask_id
            any_mask = bool(masked.any())
            if self.editing:
                if not row.block_over and not any_mask:
                    row.post += 1
                if not row.block_over and row.post <= self.options.max_post_steps:
                    return True
            elif any_mask and row.step < self.steps:
                return True
            if self._end_block(row, end):
                return False

    def _end_block(self, row: _Row, end: int) -> bool:
        """The block is over: the EOS stop between blocks, then the next block. True when the
        row is finished (its answer set)."""
        options = self.options
        generated = self.x[row.index, row.prompt_length : end]
        if self.editing:
            stop = options.eos_early_stop and bool(
                (generated != options.mask_id).all() & (generated == options.eos_id).any()
            )
        else:
            stop = bool((generated == options.eos_id).any())
        row.block += 1
        row.step, row.post, row.block_over = 0, 0, False
        if stop or row.block >= row.num_blocks:
            row.answer = self._answer(row)
            return True
        return False

    def _answer(self, row: _Row) -> list[int]:
        start = row.prompt_length
        tokens = self.x[row.index, start : start + self.options.gen_length].tolist()
        eos = self.options.eos_id
        return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens

    # --- one step over the ready rows -------------------------------------------------------

    def _step(self, ready: list[_Row]) -> None:
        request = BlockRequest(
            canvas=self.x,
            rows=tuple(row.index for row in ready),
            blocks=tuple(row.block for row in ready),
            block_length=self.options.block_length,
            prompt_lengths=tuple(row.prompt_length for row in ready),
        )
        began = time.perf_counter()
        logits = self.denoiser(request)  # [A, W, V]
        seconds = time.perf_counter() - began
        width = self.options.block_length
        if logits.dim() != 3 or tuple(logits.shape[:2]) != (len(ready), width):
            raise ValueError(
                f"{type(self.denoiser).__name__} returned logits of shape {list(logits.shape)}; "
                f"a block denoiser returns [rows, block_length, V] = [{len(ready)}, {width}, V]"
            )
        probabilities = torch.softmax(logits, dim=-1)  # the logits' dtype, as the reference
        x0 = probabilities.argmax(dim=-1)  # [A, W]
        p = probabilities.gather(-1, x0[..., None])[..., 0]
        written = torch.zeros_like(x0, dtype=torch.bool)
        for i, row in enumerate(ready):
            rule = self._edit_step if self.editing else self._commit_step
            written[i] = rule(row, x0[i], p[i])
        self.result.forward_calls = self.denoiser.nfe
        self.result.steps_run += 1
        self.result.window_lengths.append(request.window_ends)
        if self.on_step is not None:
            self.on_step(
                BlockStepReport(
                    step=self.result.steps_run - 1,
                    rows=tuple(self.first_row + row.index for row in ready),
                    blocks=request.blocks,
                    window_ends=request.window_ends,
                    rows_computed=self.denoiser.last_rows_computed,
                    written=written,
                    canvas=self.x.clone(),
                    logits=logits,
                    denoiser_seconds=seconds,
                )
            )

    def _commit_step(self, row: _Row, x0: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """LLaDA2.0's step on one row's block (x0, p: [W]); returns the committed positions."""
        options = self.options
        start, end = self._bounds(row)
        block = self.x[row.index, start:end]
        masked = block == options.mask_id
        confidence = p.float().masked_fill(~masked, NEG_INF)
        count = self.schedule[row.step]
        commit = _threshold_or_top(confidence, masked, options.threshold, count)
        self.x[row.index, start:end] = torch.where(commit, x0, block)
        row.step += 1
        if options.eos_early_stop and bool((x0[commit] == options.eos_id).any()):
            window = self.x[row.index, :end]
            eos_positions = (window == options.eos_id).nonzero()
            first = int(eos_positions[0, 0])
            filled = window[row.prompt_length : first] != options.mask_id
            if bool(filled.all()):
                row.answer = window[row.prompt_length : first + 1].tolist()
        return commit

    def _edit_step(self, row: _Row, x0: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """LLaDA2.1's step on one row's block; returns the written positions (commit | edit)."""
        options = self.options
        start, end = self._bounds(row)
        old = self.x[row.index, start:end]
        masked = old == options.mask_id
        any_mask = bool(masked.any())
        p = p.float()
        commit = torch.zeros_like(masked)
        if any_mask:
            confidence = p.masked_fill(~masked, NEG_INF)
            commit = _threshold_or_top(
                confidence, masked, options.threshold, options.num_to_transfer
            )
        is_prompt = torch.arange(start, end, device=old.device) < row.prompt_length
        edit = ~masked & ~is_prompt & (p > options.editing_threshold) & (x0 != old)
        self.x[row.index, start:end] = torch.where(commit | edit, x0, old)
        if not any_mask and not bool(edit.any()):
            row.block_over = True
        return commit | edit


def _threshold_or_top(
    confidence: torch.Tensor, masked: torch.Tensor, threshold: float, count: int
) -> torch.Tensor:
    """Bool [W]: every mask with confidence > threshold when there are at least `count` of
    them, else the min(count, masks) most confident masks (confidence: -inf off the masks)."""
    above = (confidence > threshold) & masked
    if int(above.sum()) >= count:
        return above
    commit = torch.zeros_like(masked)
    chosen = confidence.topk(min(count, int(masked.sum()))).indices
    commit[chosen] = True
    return commit


def check_eos_early_stop(prompts: Sequence[Sequence[int]], eos_id: int) -> None:
    """Refuse eos_early_stop on a prompt that contains eos_id (see the module docstring)."""
    for index, ids in enumerate(prompts):
        if eos_id in ids:
            raise ValueError(
                f"prompt {index} contains eos_id {eos_id} and eos_early_stop=True: the official "
                "LLaDA2.0 sampler then finds that EOS in the prompt and returns an empty answer "
                "(its search covers the prompt), which dyllm does not reproduce; remove the EOS "
                "from the prompt or drop eos_early_stop."
            )


def run_block_diffusion(
    denoiser: BlockDenoiser,
    prompts: Sequence[Sequence[int]],
    options: BlockDiffusionOptions,
    device: torch.device | str = "cpu",
    on_step: BlockStepObserver | None = None,
    first_row: int = 0,
) -> BlockDiffusionResult:
    """Run the sampler `options.sampler` on `prompts` (token ids, one list per row) as one batch."""
    if options.sampler not in BLOCK_SAMPLERS:
        raise ValueError(
            f"unknown block-diffusion sampler {options.sampler!r}; choose one of "
            f"{', '.join(BLOCK_SAMPLERS)}"
        )
    if options.eos_early_stop and options.sampler == "llada2":
        check_eos_early_stop(prompts, options.eos_id)
    run = BlockDiffusionRun(denoiser, prompts, options, torch.device(device), on_step, first_row)
    with torch.no_grad():
        return run.run()


# --- one prompt, a plain window function: the reference's interface ---------------------------


def llada2_generate(
    model: WindowModel,
    prompt: Sequence[int] | torch.Tensor,
    *,
    mask_id: int,
    eos_id: int,
    gen_length: int = 2048,
    block_length: int = 32,
    steps: int = 32,
    threshold: float = 0.95,
    minimal_topk: int = 1,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_early_stop: bool = False,
) -> BlockDiffusionResult:
    """LLaDA2.0's greedy sampler on one prompt (token ids [P]), `model` called on each window
    as the reference calls it (`WindowModel`). `tokens` is then one answer: use `.tokens[0]`."""
    ids = _check_arguments(
        prompt, gen_length, block_length, steps, threshold, minimal_topk, temperature, top_k, top_p
    )
    if gen_length // minimal_topk < 1:
        raise ValueError(
            f"gen_length={gen_length} // minimal_topk={minimal_topk} leaves no step; "
            "lower minimal_topk or raise gen_length"
        )
    options = BlockDiffusionOptions(
        sampler="llada2",
        mask_id=mask_id,
        eos_id=eos_id,
        gen_length=gen_length,
        block_length=block_length,
        steps=steps,
        threshold=threshold,
        minimal_topk=minimal_topk,
        eos_early_stop=eos_early_stop,
    )
    return run_block_diffusion(WindowBlockDenoiser(model), [ids], options, _device(prompt))


def llada21_generate(
    model: WindowModel,
    prompt: Sequence[int] | torch.Tensor,
    *,
    mask_id: int,
    eos_id: int,
    threshold: float = 0.95,
    gen_length: int = 2048,
    block_length: int = 32,
    editing_threshold: float = 0.9,
    max_post_steps: int = 16,
    num_to_transfer: int = 1,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_early_stop: bool = False,
) -> BlockDiffusionResult:
    """LLaDA2.1's greedy token-editing sampler on one prompt (token ids [P]), `model` called on
    each window as the reference calls it. `tokens` is then one answer: use `.tokens[0]`."""
    ids = _check_arguments(
        prompt, gen_length, block_length, 1, threshold, 1, temperature, top_k, top_p
    )
    if not isinstance(editing_threshold, (int, float)) or not 0 <= editing_threshold <= 1:
        raise ValueError(f"editing_threshold must be a number in [0, 1], got {editing_threshold!r}")
    for name, value, minimum in (
        ("max_post_steps", max_post_steps, 0),
        ("num_to_transfer", num_to_transfer, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    options = BlockDiffusionOptions(
        sampler="llada2.1",
        mask_id=mask_id,
        eos_id=eos_id,
        gen_length=gen_length,
        block_length=block_length,
        threshold=threshold,
        eos_early_stop=eos_early_stop,
        editing_threshold=editing_threshold,
        max_post_steps=max_post_steps,
        num_to_transfer=num_to_transfer,
    )
    return run_block_diffusion(WindowBlockDenoiser(model), [ids], options, _device(prompt))


def _device(prompt: Sequence[int] | torch.Tensor) -> torch.device:
    return prompt.device if isinstance(prompt, torch.Tensor) else torch.device("cpu")


def _check_arguments(
    prompt: Sequence[int] | torch.Tensor,
    gen_length: int,
    block_length: int,
    steps: int,
    threshold: float,
    minimal_topk: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
) -> list[int]:
    ids = prompt if isinstance(prompt, torch.Tensor) else torch.tensor(list(prompt))
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise ValueError(
            f"llada2_generate takes one prompt (token ids [P]), got shape {tuple(ids.shape)}; "
            "for several prompts use dyllm.generate(model, prompts, sampler='llada2')"
        )
    if ids.numel() == 0:
        raise ValueError("the prompt is empty; LLaDA2's sampler needs at least one prompt token")
    for name, value in (
        ("gen_length", gen_length),
        ("block_length", block_length),
        ("steps", steps),
        ("minimal_topk", minimal_topk),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    check_greedy(temperature, top_k, top_p)
    return ids.long().tolist()


def check_greedy(temperature: float | None, top_k: int | None, top_p: float | None) -> None:
    """Refuse sampling: LLaDA2's samplers run greedy only here."""
    if temperature not in (None, 0) or top_k not in (None, 0) or (top_p is not None and top_p < 1):
        raise ValueError(
            "LLaDA2's samplers run greedy only (temperature=0, top_k None or 0, top_p None or "
            ">= 1): the official sampled branch was not checked against the official code, so "
            "dyllm does not implement it yet"
        )
