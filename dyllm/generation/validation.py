"""Checks on a resolved `GenerationConfig`, run before any tensor is built.

Every message names the offending value and what to pass instead, so a bad option fails in
milliseconds with advice rather than minutes later inside torch.
"""

from __future__ import annotations

import math
from typing import Any

from dyllm.generation.config import (
    BLOCK_SAMPLERS,
    DREAM_ALGS,
    REMASKING_RULES,
    GenerationConfig,
    unknown_choice_error,
)
from dyllm.generation.model import SamplerConfig

MAX_SEED = 2**64 - 1
"""The largest seed a torch.Generator takes."""


def validate_config(config: GenerationConfig, model_config: SamplerConfig) -> None:
    """Raise ValueError for option values the samplers cannot run.

    config: resolved (see `resolve_config`); model_config: `model.config` (token ids).
    """
    _check_int("gen_length", config.gen_length, minimum=1)
    _check_int("block_length", config.block_length, minimum=1)
    _check_int("seed", config.seed, minimum=0)
    if config.seed > MAX_SEED:
        raise ValueError(f"seed={config.seed} must be at most 2**64 - 1 ({MAX_SEED}).")
    if config.max_batch_size is not None:
        _check_int("max_batch_size", config.max_batch_size, minimum=1, hint=" (None: one batch)")
    for name in ("stop_at_eos", "progress", "eos_early_stop"):
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"{name} must be True or False, got {getattr(config, name)!r}.")
    if config.sampler in BLOCK_SAMPLERS:
        _check_block_diffusion(config, model_config)
        return
    if config.gen_length % config.block_length:
        raise ValueError(
            f"gen_length={config.gen_length} is not a multiple of block_length="
            f"{config.block_length}; pass a block_length that divides it (e.g. "
            f"{_divisors_hint(config.gen_length)}) or change gen_length."
        )
    _check_number("temperature", config.temperature, minimum=0.0)
    _check_parallel_decoding(config)
    if not config.adaptive:
        _check_steps(config)
    if config.sampler == "llada":
        _check_llada(config, model_config)
    else:
        _check_dream(config)
    if config.stop_at_eos and model_config.eos_token_id is None:
        raise ValueError(
            "stop_at_eos=True needs model.config.eos_token_id, which is None; set it or drop "
            "stop_at_eos."
        )


def _check_steps(config: GenerationConfig) -> None:
    _check_int("steps", config.steps, minimum=1)
    blocks = config.num_blocks
    if config.steps % blocks:
        lower = config.steps // blocks * blocks
        upper = lower + blocks
        options = f"steps={lower} or steps={upper}" if lower >= blocks else f"steps={upper}"
        raise ValueError(
            f"steps={config.steps} must be a multiple of the number of blocks ({blocks} = "
            f"gen_length {config.gen_length} / block_length {config.block_length}), so that each "
            f"block gets the same number of steps; use {options}, or change block_length."
        )


def _check_parallel_decoding(config: GenerationConfig) -> None:
    if config.threshold is not None and config.factor is not None:
        raise ValueError(
            "threshold and factor are two alternative parallel-decoding rules; pass only one."
        )
    if config.threshold is not None:
        _check_number("threshold", config.threshold)
        if not 0.0 < config.threshold <= 1.0:
            raise ValueError(
                f"threshold={config.threshold} must be in (0, 1] (a token probability); "
                "Fast-dLLM uses 0.9."
            )
    if config.factor is not None:
        _check_number("factor", config.factor)
        if config.factor <= 0:
            raise ValueError(
                f"factor={config.factor} must be > 0 (Fast-dLLM's rule commits the n-th most "
                "confident token when c_n >= 1 - factor / (n + 1)); try factor=1.0."
            )


def _check_llada(config: GenerationConfig, model_config: SamplerConfig) -> None:
    if config.remasking not in REMASKING_RULES:
        raise unknown_choice_error("remasking", config.remasking, REMASKING_RULES)
    _check_number("cfg_scale", config.cfg_scale, minimum=0.0)
    for name in ("logits_eos_inf", "confidence_eos_eot_inf"):
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"{name} must be True or False, got {getattr(config, name)!r}.")
    if config.logits_eos_inf and model_config.eos_token_id is None:
        raise ValueError(
            "logits_eos_inf=True needs model.config.eos_token_id, which is None; set it or drop "
            "logits_eos_inf."
        )
    if config.confidence_eos_eot_inf and (
        model_config.eos_token_id is None or model_config.eot_token_id is None
    ):
        raise ValueError(
            "confidence_eos_eot_inf=True needs model.config.eos_token_id and eot_token_id "
            f"(got {model_config.eos_token_id} and {model_config.eot_token_id}); load the "
            "tokenizer files with the model (they name the end-of-turn token) or set "
            "model.config.eot_token_id."
        )


def _check_block_diffusion(config: GenerationConfig, model_config: SamplerConfig) -> None:
    """LLaDA2.0 / 2.1 options (resolved: the other version's are None)."""
    if (
        config.temperature != 0
        or config.top_k not in (None, 0)
        or (config.top_p is not None and config.top_p < 1)
    ):
        raise ValueError(
            f"the {config.sampler} sampler runs greedy only (temperature=0, top_k None or 0, "
            "top_p None or >= 1): the official sampled branch was not checked against the "
            "official code, so dyllm does not implement it yet; drop temperature/top_k/top_p."
        )
    for name in ("threshold", "editing_threshold"):
        value = getattr(config, name)
        if value is None:
            continue
        _check_number(name, value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}={value} must be in [0, 1] (a token probability).")
    for name, minimum in (
        ("steps", 1),
        ("minimal_topk", 1),
        ("max_post_steps", 0),
        ("num_to_transfer", 1),
    ):
        if getattr(config, name) is not None:
            _check_int(name, getattr(config, name), minimum=minimum)
    if config.sampler == "llada2" and config.gen_length // config.minimal_topk < 1:
        raise ValueError(
            f"gen_length={config.gen_length} // minimal_topk={config.minimal_topk} leaves no "
            "denoising step; lower minimal_topk or raise gen_length."
        )
    if not isinstance(config.block_cache, bool):
        raise ValueError(f"block_cache must be True or False, got {config.block_cache!r}.")
    if isinstance(config.eos_id, bool) or not isinstance(config.eos_id, int):
        raise ValueError(
            f"eos_id must be an integer token id (-1: never stop at EOS), got {config.eos_id!r}; "
            f"model.config.eos_token_id is {model_config.eos_token_id}."
        )


def _check_dream(config: GenerationConfig) -> None:
    if config.alg not in DREAM_ALGS:
        raise unknown_choice_error("alg", config.alg, DREAM_ALGS)
    _check_number("eps", config.eps)
    if not 0.0 < config.eps < 1.0:
        raise ValueError(
            f"eps={config.eps} must be in (0, 1): the timesteps run from 1 down to eps "
            "(Dream uses 1e-3)."
        )
    if config.alg_temp is not None:
        _check_number("alg_temp", config.alg_temp, minimum=0.0)
    if config.top_p is not None:
        _check_number("top_p", config.top_p)
        if not 0.0 < config.top_p <= 1.0:
            raise ValueError(
                f"top_p={config.top_p} must be in (0, 1] (1 turns the filter off); Dream's "
                "model card uses 0.95."
            )
    if config.top_k is not None:
        _check_int("top_k", config.top_k, minimum=0, hint=" (0 turns the top-k filter off)")


def _check_int(name: str, value: Any, minimum: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}{hint}.")


def _check_number(name: str, value: Any, minimum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    if math.isinf(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}.")


def _divisors_hint(number: int) -> str:
    divisors = [d for d in (8, 16, 32, 64, 128, 256) if d <= number and number % d == 0]
    shown = divisors[-3:] if divisors else [number]
    return ", ".join(str(d) for d in shown)
