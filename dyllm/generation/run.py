"""`run_sampler`: prompts in, answers out, with the family's reference sampler over a denoiser.

This is the sampler half of `dyllm.generate` (which builds the denoiser from a policy and calls
this). Everything a user can get wrong is checked before the first tensor is built: option names
and values (`config.py`, `validation.py`), then prompts (`prompts.py`), all of them before the
first batch runs. Then the prompts are laid on one canvas (`batching.py`), or on one canvas per
`max_batch_size` prompts, run one after another, and the LLaDA or Dream sampler runs under
`torch.no_grad`, asking the given `Denoiser` for each step's logits. One `torch.Generator` on the
model's device, seeded with `seed`, feeds every random draw of every batch.

LLaDA2's samplers (`sampler="llada2"` / `"llada2.1"`, `dyllm.generation.llada2`) take a
`BlockDenoiser` instead: their rows move through blocks at their own pace on a right-padded
canvas, so they do not run on `DenoisingLoop`; batches, statistics and results are shared.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from dyllm.generation.batching import build_prompt_batch
from dyllm.generation.block_denoiser import BlockDenoiser
from dyllm.generation.config import (
    BLOCK_SAMPLERS,
    GenerationConfig,
    apply_aliases,
    check_option_names,
    resolve_config,
)
from dyllm.generation.denoiser import Denoiser
from dyllm.generation.dream import run_dream
from dyllm.generation.llada import run_llada
from dyllm.generation.llada2 import (
    BlockDiffusionOptions,
    check_eos_early_stop,
    run_block_diffusion,
)
from dyllm.generation.loop import DenoisingLoop, StepObserver, synchronize
from dyllm.generation.model import GenerativeModel
from dyllm.generation.prompts import PromptInput, check_prompt_ids, encode_prompts
from dyllm.generation.result import (
    GenerationResult,
    GenerationStats,
    answer_end_token_ids,
    tokens_before_eos,
)
from dyllm.generation.validation import validate_config


def run_sampler(
    model: GenerativeModel,
    prompts: PromptInput,
    denoiser: Denoiser | BlockDenoiser,
    config: GenerationConfig | None = None,
    *,
    chat: bool = False,
    on_step: StepObserver | Callable[[Any], None] | None = None,
    **options: Any,
) -> GenerationResult:
    """Generate `gen_length` tokens after each prompt, each step's logits from `denoiser`.

    prompts: a str, a list of str, a list of token ids, a list of lists of token ids (a 1-D
        or 2-D integer tensor or array is read as the last two), or conversations (a list of
        role/content messages, or a list of such lists), rendered by the chat template.
    denoiser: a fresh `Denoiser` for this call (it may keep per-call caches and counts).
    config: base options; `options` (same names as `GenerationConfig` fields) override it.
    chat: wrap each text prompt as one user message with the tokenizer's chat template.
    on_step: called after every step with a `StepReport` (canvas, committed positions, timing).

    Prompts of different lengths are left-padded and given a padding mask and position ids, so
    with greedy decoding each row gets the tokens it would get alone, and `max_batch_size`
    (batches run one after another) gives the tokens of one batch. (Dream's `origin` order and
    any temperature > 0 draw random numbers for the whole batch at once, so there the rows of a
    batch are not the draws of single-prompt runs, nor of other batch sizes.) The denoiser serves
    every batch; `Denoiser.new_batch` is called between two.

    LLaDA2's samplers need a `BlockDenoiser` (`dyllm.engine.block_denoisers`); their `on_step`
    gets a `BlockStepReport`, and `result.token_ids` holds each official answer (x[P : P +
    gen_length] cut after the first EOS, EOS included).
    """
    check_model(model)
    resolved = resolve_options(model, config, options)
    prompt_ids = encode_prompts(prompts, model.tokenizer, chat)
    if resolved.sampler in BLOCK_SAMPLERS:
        return _run_block_sampler(model, prompt_ids, denoiser, resolved, on_step)
    if not isinstance(denoiser, Denoiser):
        raise TypeError(
            f"the {resolved.sampler} sampler needs a Denoiser, got {type(denoiser).__name__}"
        )
    check_prompt_ids(prompt_ids, model.config, resolved.gen_length)

    device = _model_device(model)
    generator = torch.Generator(device=device)
    generator.manual_seed(resolved.seed)
    size = resolved.max_batch_size or len(prompt_ids)
    starts = range(0, len(prompt_ids), size)
    generated: list[list[int]] = []
    steps_run, wall_time = 0, 0.0
    for number, first in enumerate(starts):
        if number:
            denoiser.new_batch()
        label = "denoising" if len(starts) == 1 else f"batch {number + 1}/{len(starts)}"
        loop = DenoisingLoop(
            build_prompt_batch(
                prompt_ids[first : first + size],
                resolved.gen_length,
                model.config.pad_token_id,
                model.config.mask_token_id,
                device,
            ),
            resolved.block_length,
            denoiser,
            generator,
            model.config,
            stop_at_eos=resolved.stop_at_eos,
            progress=resolved.progress,
            planned_steps=None if resolved.adaptive else resolved.steps,
            on_step=on_step,
            first_row=first,
            progress_label=label,
        )
        generated += _run_batch(loop, resolved, device)
        steps_run += loop.steps_run
        wall_time += loop.wall_time
    return _result(model, generated, denoiser, steps_run, wall_time, resolved)


def _run_batch(
    loop: DenoisingLoop, resolved: GenerationConfig, device: torch.device
) -> list[list[int]]:
    """One canvas through the sampler; its generated tokens (the loop keeps the time taken)."""
    sampler = run_llada if resolved.sampler == "llada" else run_dream
    try:
        with torch.no_grad():
            synchronize(device)
            start = time.perf_counter()
            sampler(loop, resolved)
            synchronize(device)
            loop.wall_time = time.perf_counter() - start
    finally:
        loop.close()
    return loop.generated().tolist()


def check_model(model: Any) -> None:
    """A TypeError naming what was passed when `model` is not a loaded model."""
    if isinstance(model, (str, bytes, os.PathLike)):
        name = os.fsdecode(model) if not isinstance(model, str) else model
        raise TypeError(
            f"model must be a loaded model, got the {type(model).__name__} {name!r}; load it "
            f"first: model = dyllm.load({name!r})"
        )
    needed = ("config", "tokenizer", "generation_defaults", "parameters")
    missing = [name for name in needed if not hasattr(model, name)]
    if missing or not callable(model):
        raise TypeError(
            f"model must be a loaded model (what dyllm.load returns), got "
            f"{type(model).__name__}"
            + (f", which has no {', '.join(missing)}" if missing and model is not None else "")
        )


def _run_block_sampler(
    model: GenerativeModel,
    prompt_ids: list[list[int]],
    denoiser: Denoiser | BlockDenoiser,
    resolved: GenerationConfig,
    on_step: Callable[[Any], None] | None,
) -> GenerationResult:
    """LLaDA2.0 / 2.1 over `denoiser`, `max_batch_size` prompts at a time."""
    if not isinstance(denoiser, BlockDenoiser):
        raise TypeError(
            f"the {resolved.sampler} sampler needs a BlockDenoiser (block-causal logits of each "
            f"row's current block), got {type(denoiser).__name__}; dyllm.generate builds one"
        )
    options = block_options(resolved, model.config.mask_token_id)
    check_prompt_ids(prompt_ids, model.config, 0)
    _check_block_canvas(prompt_ids, resolved, model.config.max_position_embeddings)
    if options.eos_early_stop and options.sampler == "llada2":
        check_eos_early_stop(prompt_ids, options.eos_id)
    device = _model_device(model)
    size = resolved.max_batch_size or len(prompt_ids)
    progress = tqdm(disable=not resolved.progress, desc=resolved.sampler, unit="step")

    def observe(report: Any) -> None:
        progress.update(1)
        if on_step is not None:
            on_step(report)

    answers: list[list[int]] = []
    steps_run, wall_time = 0, 0.0
    try:
        for first in range(0, len(prompt_ids), size):
            synchronize(device)
            start = time.perf_counter()
            batch = run_block_diffusion(
                denoiser, prompt_ids[first : first + size], options, device, observe, first
            )
            synchronize(device)
            wall_time += time.perf_counter() - start
            answers += batch.tokens
            steps_run += batch.steps_run
    finally:
        progress.close()
    return _result(model, answers, denoiser, steps_run, wall_time, resolved, options.eos_id)


def block_options(resolved: GenerationConfig, mask_id: int) -> BlockDiffusionOptions:
    """The resolved options of a LLaDA2 sampler as `run_block_diffusion` takes them."""
    llada20 = resolved.sampler == "llada2"
    return BlockDiffusionOptions(
        sampler=str(resolved.sampler),
        mask_id=mask_id,
        eos_id=int(resolved.eos_id),  # type: ignore[arg-type]
        gen_length=int(resolved.gen_length),  # type: ignore[arg-type]
        block_length=int(resolved.block_length),  # type: ignore[arg-type]
        steps=int(resolved.steps) if llada20 else 1,  # type: ignore[arg-type]
        threshold=float(resolved.threshold),  # type: ignore[arg-type]
        minimal_topk=int(resolved.minimal_topk) if llada20 else 1,  # type: ignore[arg-type]
        eos_early_stop=resolved.eos_early_stop,
        editing_threshold=0.0 if llada20 else float(resolved.editing_threshold),  # type: ignore[arg-type]
        max_post_steps=0 if llada20 else int(resolved.max_post_steps),  # type: ignore[arg-type]
        num_to_transfer=1 if llada20 else int(resolved.num_to_transfer),  # type: ignore[arg-type]
    )


def _check_block_canvas(
    prompt_ids: list[list[int]], resolved: GenerationConfig, limit: int
) -> None:
    """The block-diffusion canvas (whole blocks) must fit the model's positions."""
    width = int(resolved.block_length)  # type: ignore[arg-type]
    for index, ids in enumerate(prompt_ids):
        total = math.ceil((len(ids) + int(resolved.gen_length)) / width) * width  # type: ignore[arg-type]
        if total > limit:
            raise ValueError(
                f"prompt {index} ({len(ids)} tokens) plus gen_length ({resolved.gen_length}), "
                f"rounded up to whole blocks of {width}, is {total} positions, more than the "
                f"model's max_position_embeddings ({limit}); shorten the prompt or gen_length."
            )


def resolve_options(
    model: GenerativeModel, config: GenerationConfig | None, options: dict[str, Any]
) -> GenerationConfig:
    """`config` with `options` applied, every default resolved for `model`, checked."""
    if config is None:
        config = GenerationConfig()
    elif not isinstance(config, GenerationConfig):
        raise ValueError(
            f"config must be a GenerationConfig, got {type(config).__name__}; pass options as "
            "keyword arguments instead (generate(model, prompts, steps=64, ...))."
        )
    options = apply_aliases(options)
    check_option_names(options)
    requested = dataclasses.replace(config, **options)
    resolved = resolve_config(requested, model.config.family, model.generation_defaults)
    if resolved.sampler in BLOCK_SAMPLERS and resolved.eos_id is None:
        resolved = dataclasses.replace(resolved, eos_id=model.config.eos_token_id)
    validate_config(resolved, model.config)
    return resolved


def _result(
    model: GenerativeModel,
    generated: list[list[int]],
    denoiser: Denoiser,
    steps_run: int,
    wall_time: float,
    resolved: GenerationConfig,
    eos: int | None = None,
) -> GenerationResult:
    """The result of a run: answers cut at `eos` (default: the model's EOS) or another answer end
    for the texts and counts, the token ids as generated."""
    if eos is None:
        eos = model.config.eos_token_id
    ends = answer_end_token_ids(model.tokenizer)
    answers = [tokens_before_eos(row, eos, ends) for row in generated]
    counts = [len(answer) for answer in answers]
    stats = GenerationStats(
        generated_tokens=sum(counts),
        generated_tokens_per_row=counts,
        nfe=denoiser.nfe,
        steps_run=steps_run,
        wall_time_s=wall_time,
        extra=dict(denoiser.extra_stats()),
    )
    tokenizer = model.tokenizer
    texts = None
    if tokenizer is not None:
        texts = [tokenizer.decode(answer, skip_special_tokens=True) for answer in answers]
    return GenerationResult(token_ids=generated, texts=texts, stats=stats, options=resolved)


def _model_device(model: GenerativeModel) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
