"""LLaDA2.0 and LLaDA2.1 block-diffusion samplers (greedy, batch of one).

`llada2_generate` is LLaDA2.0's (`LLaDA2MoeModelLM.generate`), written from the reference's
behaviour (REFERENCE-families.md, "LLaDA2.0 sampler"):

1. `steps = min(steps, gen_length // minimal_topk)`. With P prompt tokens the canvas holds
   `ceil((P + gen_length) / block_length)` blocks: the prompt, then mask_id everywhere else;
   positions are absolute, 0..total-1.
2. Attention is block-causal: a query in block b sees keys of blocks <= b
   (`dyllm.kernels.attention_variants.block_causal_mask`).
3. Blocks made only of prompt (those before P // block_length) are never denoised. For each later
   block b the model runs on the window `x[:(b + 1) * block_length]` (the reference recomputes the
   whole prefix every step; caching finished blocks' K/V is the engine's job, not the sampler's).
   Prompt tokens sharing the first denoised block are not masks and stay fixed.
4. Per block the transfer schedule is n[s] = block_length // steps, plus one for the first
   block_length % steps steps (from block_length even when the block holds fewer masks).
5. Each step (the block stops as soon as it has no mask): x0 = argmax of the block's logits,
   p = softmax probability of x0 (float32, full vocabulary), confidence = p at masks, -inf
   elsewhere. If at least n[s] masks have confidence > threshold, **all** of them are committed
   (possibly more than n[s]); otherwise the min(n[s], masks) most confident are. Committed tokens
   are never revisited.
6. After a block, if eos_id appears anywhere in x[P : end of the block], generation stops (later
   blocks stay masks).
7. The answer is x[P : P + gen_length], cut after its first eos_id (eos included).

`eos_early_stop` follows ZHZisZZ/dllm's copy of the sampler (after a step that commits an eos, if
every position between the prompt and the first eos is filled, return x[P : first eos + 1]);
whether the Hugging Face file does exactly this is not verified. Sampling (temperature > 0,
top-k, top-p) is refused: the reference's sampled branch (and how its confidence is taken) was not
exercised against the official code, so it is not guessed here. Batches of more than one prompt
are refused too (the reference takes one); padding-invariant batches are left to the engine.

`llada21_generate` is LLaDA2.1's token-editing sampler (REFERENCE-families.md, "LLaDA2.1
sampler", verified there against ZHZisZZ/dllm's copy, whose fidelity to the Hugging Face file is
not verified). Canvas, mask, windows and prompt handling are 2.0's; `steps` has no effect. Per
block, with `post = 0`, each step: old = the block's tokens, masks = old == mask_id; if there is
no mask, post += 1, and the block ends once post > max_post_steps; x0 = argmax, p = its softmax
probability; commit = (p > threshold) & masks if that holds for at least num_to_transfer masks,
else the num_to_transfer most confident masks; edit = positions that are neither masks nor prompt
with p > editing_threshold and x0 != old; x0 is written at commit | edit; the block ends when it
had no mask before the step and nothing was edited. No EOS stop between blocks; the answer is cut
after its first EOS as in 2.0. Its `eos_early_stop` is refused: when it is checked was not
established.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from dyllm.kernels.attention_variants import block_causal_mask

BlockDiffusionModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""`model(input_ids [1, W], attention [W, W] bool (True = may attend), position_ids [1, W])`
-> logits [1, W, V]: one forward over the window with the block-causal mask."""

NEG_INF = float("-inf")


@dataclass
class BlockDiffusionResult:
    """The answer's token ids and what the run cost."""

    tokens: list[int]
    """x[P : P + gen_length] cut after the first eos (eos included)."""
    forward_calls: int = 0
    blocks_denoised: int = 0
    window_lengths: list[int] = field(default_factory=list)
    """The window each forward call ran on (the reference recomputes the whole prefix)."""


def llada2_transfer_schedule(block_length: int, steps: int) -> list[int]:
    """n[s] for s < steps: block_length // steps, one more for the first block_length % steps."""
    base, extra = divmod(block_length, steps)
    return [base + (1 if s < extra else 0) for s in range(steps)]


def llada2_generate(
    model: BlockDiffusionModel,
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
    """Run LLaDA2.0's greedy block-diffusion sampler on one prompt (token ids, [P])."""
    prompt_ids = _check_arguments(
        prompt, gen_length, block_length, steps, threshold, minimal_topk, temperature, top_k, top_p
    )
    steps = min(steps, gen_length // minimal_topk)
    if steps < 1:
        raise ValueError(
            f"gen_length={gen_length} // minimal_topk={minimal_topk} leaves no step; "
            "lower minimal_topk or raise gen_length"
        )
    length = prompt_ids.numel()
    x, attention, positions, num_blocks = _canvas(prompt_ids, gen_length, block_length, mask_id)
    schedule = llada2_transfer_schedule(block_length, steps)
    result = BlockDiffusionResult(tokens=[])

    for block in range(length // block_length, num_blocks):
        start, end = block * block_length, (block + 1) * block_length
        result.blocks_denoised += 1
        for count in schedule:
            masked = x[0, start:end] == mask_id  # [block_length]
            if not bool(masked.any()):
                break
            logits = model(x[:, :end], attention[:end, :end], positions[:, :end])
            result.forward_calls += 1
            result.window_lengths.append(end)
            block_logits = logits[0, start:end].float()  # [block_length, V]
            x0 = block_logits.argmax(-1)
            p = torch.softmax(block_logits, -1).gather(-1, x0[:, None])[:, 0]
            confidence = p.masked_fill(~masked, NEG_INF)
            above = confidence > threshold
            if int(above.sum()) >= count:
                commit = above
            else:
                commit = torch.zeros_like(masked)
                chosen = confidence.topk(min(count, int(masked.sum()))).indices
                commit[chosen] = True
            x[0, start:end] = torch.where(commit, x0, x[0, start:end])
            if eos_early_stop and bool((x0[commit] == eos_id).any()):
                early = _early_answer(x[0, length:], mask_id, eos_id)
                if early is not None:
                    result.tokens = early
                    return result
        if bool((x[0, length:end] == eos_id).any()):
            break
    result.tokens = _cut_after_eos(x[0, length : length + gen_length].tolist(), eos_id)
    return result


def llada21_generate(
    model: BlockDiffusionModel,
    prompt: Sequence[int] | torch.Tensor,
    *,
    mask_id: int,
    eos_id: int,
    threshold: float,
    gen_length: int = 2048,
    block_length: int = 32,
    editing_threshold: float = 0.9,
    max_post_steps: int = 16,
    num_to_transfer: int = 1,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> BlockDiffusionResult:
    """Run LLaDA2.1's greedy token-editing sampler on one prompt (token ids, [P]).

    `threshold` has no default here: the reference facts give none for 2.1 (the published
    example uses 0.7 with editing_threshold 0.5 and max_post_steps 16).
    """
    prompt_ids = _check_arguments(
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
    length = prompt_ids.numel()
    x, attention, positions, num_blocks = _canvas(prompt_ids, gen_length, block_length, mask_id)
    result = BlockDiffusionResult(tokens=[])
    for block in range(length // block_length, num_blocks):
        start, end = block * block_length, (block + 1) * block_length
        is_prompt = torch.arange(start, end, device=x.device) < length  # [block_length]
        result.blocks_denoised += 1
        post = 0
        while True:
            old = x[0, start:end].clone()
            masked = old == mask_id
            any_mask = bool(masked.any())
            if not any_mask:
                post += 1
            if post > max_post_steps:
                break
            logits = model(x[:, :end], attention[:end, :end], positions[:, :end])
            result.forward_calls += 1
            result.window_lengths.append(end)
            block_logits = logits[0, start:end].float()
            x0 = block_logits.argmax(-1)
            p = torch.softmax(block_logits, -1).gather(-1, x0[:, None])[:, 0]
            commit = torch.zeros_like(masked)
            if any_mask:
                above = (p > threshold) & masked
                if int(above.sum()) >= num_to_transfer:
                    commit = above
                else:
                    confidence = p.masked_fill(~masked, NEG_INF)
                    chosen = confidence.topk(min(num_to_transfer, int(masked.sum()))).indices
                    commit[chosen] = True
            edit = ~masked & ~is_prompt & (p > editing_threshold) & (x0 != old)
            x[0, start:end] = torch.where(commit | edit, x0, old)
            if not any_mask and not bool(edit.any()):
                break
    result.tokens = _cut_after_eos(x[0, length : length + gen_length].tolist(), eos_id)
    return result


def _canvas(
    prompt_ids: torch.Tensor, gen_length: int, block_length: int, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(x [1, total], block-causal attention [total, total], positions [1, total], blocks)."""
    device = prompt_ids.device
    length = prompt_ids.numel()
    num_blocks = math.ceil((length + gen_length) / block_length)
    total = num_blocks * block_length
    x = torch.full((1, total), mask_id, dtype=torch.long, device=device)
    x[0, :length] = prompt_ids
    attention = block_causal_mask(total, block_length, device)
    positions = torch.arange(total, device=device)[None]
    return x, attention, positions, num_blocks


def _cut_after_eos(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[: tokens.index(eos_id) + 1] if eos_id in tokens else tokens


def _early_answer(generated: torch.Tensor, mask_id: int, eos_id: int) -> list[int] | None:
    """generated[: first eos + 1] when nothing before the first eos is still a mask."""
    eos_positions = (generated == eos_id).nonzero()
    if eos_positions.numel() == 0:
        return None
    first = int(eos_positions[0, 0])
    if bool((generated[:first] == mask_id).any()):
        return None
    return generated[: first + 1].tolist()


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
) -> torch.Tensor:
    ids = prompt if isinstance(prompt, torch.Tensor) else torch.tensor(list(prompt))
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise ValueError(
            f"LLaDA2's sampler takes one prompt (token ids [P]), got shape {tuple(ids.shape)}; "
            "run prompts one at a time (batched block diffusion is not implemented yet)"
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
    if temperature != 0 or top_k not in (None, 0) or (top_p is not None and top_p < 1):
        raise ValueError(
            "LLaDA2's sampler runs greedy only (temperature=0, no top_k, top_p None or >= 1): "
            "its sampled branch was not checked against the official code, so dyllm does not "
            "implement it yet"
        )
    return ids.long()
