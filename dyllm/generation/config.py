"""Generation options under the reference samplers' names, and how unset ones get their values.

Options left as None are filled at `resolve_config` time from, in order: the option itself, the
checkpoint's `generation_config.json` (`model.generation_defaults`), the sampler's default.

The sampler's defaults are its reference's. LLaDA's `generate` takes its options as arguments
(`gen_length=128`, `temperature=0`; dyllm runs `steps = gen_length`). Dream's `diffusion_generate`
builds its options with `DreamGenerationConfig.from_model_config(config)`: it reads config.json,
never generation_config.json, and under the transformers its model card pins (4.46) an unset
option takes transformers' global generation default (`temperature=1.0`, `top_p=1.0`,
`top_k=50`, `max_length=20`, so 20 new tokens) or DreamGenerationConfig's (`steps=512`,
`alg="origin"`, `alg_temp=None`, `eps=1e-3`); `DREAM_DEFAULTS` holds them.

generation_config.json: a file transformers derived from config.json (`"_from_model_config":
true`, as both released checkpoints ship) holds what transformers copied, not what the sampler
runs with, and neither reference reads it, so it is skipped. Any other file (dyllm's reference
models write one) sets the answer length (`gen_length` or Hugging Face's `max_new_tokens`),
`temperature`, and for Dream `steps`, `alg`, `eps`, `alg_temp`, `top_p`, `top_k`; a null there
means what it means in Dream's `sample_tokens`: no top-p / top-k filter, no `alg_temp`.

Explicitly off: `top_k=0` (no top-k filter; the reference's explicit `top_k=None`) and
`top_p=1.0` (no nucleus filter).

Aliases: `max_new_tokens` (Dream's and Hugging Face's name) is `gen_length`. `seed=None` draws a
fresh seed, which the result's options report; the default stays 0 so that a script, a test or
an evaluation gives the same samples every time it runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SAMPLERS = ("llada", "dream", "llada2", "llada2.1")
BLOCK_SAMPLERS = ("llada2", "llada2.1")
"""LLaDA2.0's block diffusion and LLaDA2.1's token editing (`dyllm.generation.llada2`)."""
FAMILY_SAMPLERS = {"llada": "llada", "dream": "dream", "llada_moe": "llada", "llada2": "llada2"}
"""The sampler a model family runs by default: LLaDA-MoE's official sampler is LLaDA's
`generate`, LLaDA2's is LLaDA2.0's block diffusion (REFERENCE-families.md); LLaDA2.1 checkpoints
share the family, so their token-editing sampler is `sampler="llada2.1"`."""
REMASKING_RULES = ("low_confidence", "random")
DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")

DEFAULT_GEN_LENGTH = 128
"""LLaDA's answer length when neither the call nor the checkpoint gives one (its `generate`'s)."""
LLADA_TEMPERATURE = 0.0

LLADA_BLOCK_LENGTH = 32
"""LLaDA's usual block length; used when it divides gen_length, else one block."""

DREAM_DEFAULTS: dict[str, Any] = {
    "gen_length": 20,  # transformers' max_length 20, which Dream counts after the prompt
    "steps": 512,  # DreamGenerationConfig
    "temperature": 1.0,  # transformers' global generation defaults, via config.json
    "top_p": 1.0,  # (as 1.0 filters nothing, Dream skips the filter)
    "top_k": 50,
    "alg": "origin",  # DreamGenerationConfig
    "alg_temp": None,
    "eps": 1e-3,
}
"""What Dream's `diffusion_generate` runs with when neither the caller nor config.json sets an
option (transformers 4.46, the version Dream's model card pins)."""

NO_TOP_K = 0
"""`top_k=0`: no top-k filter (`top_k` left unset is Dream's 50)."""

DREAM_NULL_MEANS: dict[str, Any] = {"top_p": 1.0, "top_k": NO_TOP_K, "alg_temp": None}
"""A null in generation_config.json for these keys: the filter (or alg_temp) is off."""

OPTION_ALIASES: dict[str, str] = {"max_new_tokens": "gen_length"}
"""Other names an option is known by: {alias: option}."""

FRESH_SEED_BITS = 31
"""`seed=None` draws a seed below 2**31, short enough to copy from a report."""

LLADA2_DEFAULTS: dict[str, Any] = {
    "gen_length": 2048,
    "block_length": 32,
    "steps": 32,
    "temperature": 0.0,
    "threshold": 0.95,
    "minimal_topk": 1,
    "editing_threshold": 0.9,
    "max_post_steps": 16,
    "num_to_transfer": 1,
    "block_cache": True,
}
"""The official `generate` arguments' defaults of LLaDA2.0 and 2.1 (the last three 2.1's), and
dyllm's exact block cache on (`block_cache=False` recomputes the window as the reference does).
The official samplers read no generation_config.json, so neither does dyllm for them."""
LLADA20_ONLY = ("steps", "minimal_topk")
LLADA21_ONLY = ("editing_threshold", "max_post_steps", "num_to_transfer")
BLOCK_ONLY = ("minimal_topk", "editing_threshold", "max_post_steps", "num_to_transfer")
BLOCK_ONLY_SET = ("eos_id", "block_cache")

DREAM_ONLY = ("alg", "alg_temp", "top_p", "top_k", "eps")
LLADA_ONLY_DEFAULTS: dict[str, Any] = {
    "cfg_scale": 0.0,
    "remasking": "low_confidence",
    "logits_eos_inf": False,
    "confidence_eos_eot_inf": False,
}


@dataclass(frozen=True)
class GenerationConfig:
    """Options of `generate`. None means "resolve from the model" (see `resolve_config`)."""

    gen_length: int | None = None
    """Tokens to generate per prompt (the answer canvas); None = the checkpoint's `gen_length`
    (or `max_new_tokens`) in generation_config.json, else LLaDA 128, Dream 20; LLaDA2 2048
    (its samplers read no generation_config.json)."""
    steps: int | None = None
    """Denoising steps over the whole answer; None = LLaDA gen_length, Dream the checkpoint's
    `steps`, else 512. Ignored with threshold/factor. LLaDA2.0: steps per block (32); refused
    under LLaDA2.1, where it has no effect."""
    block_length: int | None = None
    """Semi-autoregressive block size; None = 32 for LLaDA (one block if 32 does not divide
    gen_length), gen_length for Dream (one block, the reference), 32 for LLaDA2 (any
    gen_length: its canvas is rounded up to whole blocks)."""
    temperature: float | None = None
    """0 = greedy; None = the checkpoint's value, else LLaDA 0, Dream 1.0 (its reference's)."""
    seed: int | None = 0
    """Seeds the one torch.Generator behind every random draw (0 to 2**64 - 1); None draws a
    fresh one, reported in `result.options`."""
    threshold: float | None = None
    """Fast-dLLM parallel decoding: commit every masked token of the block with confidence
    >= threshold (always the most confident one). LLaDA2: its own rule (commit every mask with
    confidence > threshold when at least the step's count are, else the most confident);
    None = 0.95."""
    factor: float | None = None
    """Fast-dLLM factor rule: commit the longest confidence-sorted prefix with
    c_n >= 1 - factor / (n + 1)."""
    stop_at_eos: bool = False
    """Stop once every row's text is final (an EOS with nothing masked before it)."""
    progress: bool = False
    """Show a tqdm bar over steps."""
    max_batch_size: int | None = None
    """Most prompts run together; more are run in batches of this size, one after another
    (greedy results are those of one batch: padding never changes a row). None = one batch."""
    sampler: str | None = None
    """"llada", "dream", "llada2" (LLaDA2.0 block diffusion) or "llada2.1" (token editing);
    None = the model's family's."""
    cfg_scale: float = 0.0
    """LLaDA classifier-free guidance: logits = un + (cfg_scale + 1) * (cond - un)."""
    remasking: str = "low_confidence"
    """LLaDA: rank masked positions by "low_confidence" (prob of the chosen token) or "random"."""
    logits_eos_inf: bool = False
    """LLaDA: never generate EOS (its logit set to -inf before sampling)."""
    confidence_eos_eot_inf: bool = False
    """LLaDA: the reference's confidence tweak; see `token_sampling.llada_propose`."""
    alg: str | None = None
    """Dream unmasking order: origin | maskgit_plus | topk_margin | entropy; None = the
    checkpoint's, else origin."""
    alg_temp: float | None = None
    """Dream: sample the k positions from softmax(confidence / alg_temp) instead of top-k."""
    top_p: float | None = None
    """Dream nucleus filtering of the token distribution; 1.0 = off; None = the checkpoint's,
    else 1.0."""
    top_k: int | None = None
    """Dream top-k filtering of the token distribution; 0 = off; None = the checkpoint's, else
    50 (the reference's: greedy confidences then come from the renormalised top 50)."""
    eps: float | None = None
    """Dream: the last timestep of linspace(1, eps, steps + 1); None = the checkpoint's, else
    1e-3."""
    eos_early_stop: bool = False
    """LLaDA2: return as soon as an EOS is committed with nothing masked before it (2.0), or
    stop after a block whose answer so far is unmasked and holds an EOS (2.1)."""
    minimal_topk: int | None = None
    """LLaDA2.0: steps are capped at gen_length // minimal_topk; None = 1."""
    editing_threshold: float | None = None
    """LLaDA2.1: rewrite a generated token when the model proposes another with probability
    above this; None = 0.9."""
    max_post_steps: int | None = None
    """LLaDA2.1: editing steps after a block has no mask left; None = 16."""
    num_to_transfer: int | None = None
    """LLaDA2.1: masks committed per step when fewer are above threshold; None = 1."""
    eos_id: int | None = None
    """LLaDA2: the EOS id its samplers stop and cut at; None = model.config.eos_token_id."""
    block_cache: bool | None = None
    """LLaDA2: cache finished blocks' K/V exactly and compute only the current block (None =
    True); False recomputes the whole prefix every step, as the reference does."""

    @property
    def adaptive(self) -> bool:
        """True when a parallel-decoding rule (threshold or factor) sets the step count."""
        return self.threshold is not None or self.factor is not None

    @property
    def num_blocks(self) -> int:
        """Blocks of the resolved config."""
        if self.block_length is None:
            raise ValueError("num_blocks needs a resolved config (block_length is None)")
        return self.gen_length // self.block_length

    def replace(self, **changes: Any) -> GenerationConfig:
        """A copy with `changes` applied; unknown names raise a ValueError naming the closest."""
        changes = apply_aliases(changes)
        check_option_names(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def option_names() -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(GenerationConfig))


def draw_seed() -> int:
    """A fresh seed below 2**31 (what `seed=None` resolves to)."""
    return secrets.randbits(FRESH_SEED_BITS)


def apply_aliases(options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` with every alias (`max_new_tokens`) under its option's name; a ValueError when
    both names are given."""
    renamed = dict(options)
    for alias, name in OPTION_ALIASES.items():
        if alias not in renamed:
            continue
        if name in renamed:
            raise ValueError(
                f"{alias} and {name} name the same option (tokens to generate); pass only one."
            )
        renamed[name] = renamed.pop(alias)
    return renamed


UNSUPPORTED_OPTIONS = {
    "eos_penalty": (
        "Dream-Coder's generation code takes eos_penalty (its README uses 3.0), but that code "
        "ships only in its Hugging Face repository (generation_utils.py; the public GitHub "
        "repository DreamLM/Dream-Coder only passes the value through the model config for RL "
        "rollouts), so how it acts is not established and dyllm does not implement it; run "
        "without it (Dream's sampler then runs as Dream-v0's)"
    ),
}
"""Options of official samplers that dyllm knowingly does not implement, with the reason."""


def check_option_names(options: Mapping[str, Any]) -> None:
    """Raise a ValueError for any name that is not a GenerationConfig field."""
    valid = option_names() + tuple(OPTION_ALIASES)
    for name in options:
        if name in valid:
            continue
        if name in UNSUPPORTED_OPTIONS:
            raise ValueError(
                f"generation option {name!r} is not supported: {UNSUPPORTED_OPTIONS[name]}"
            )
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown generation option {name!r}.{hint} Valid options: {', '.join(valid)}."
        )


def resolve_config(
    config: GenerationConfig, family: str, generation_defaults: Mapping[str, Any]
) -> GenerationConfig:
    """Fill every None that has a default, after refusing options the chosen sampler ignores.

    family: `model.config.family`; generation_defaults: `model.generation_defaults` (the
    checkpoint's generation_config.json as read, nulls included).
    """
    sampler = config.sampler if config.sampler is not None else FAMILY_SAMPLERS.get(family, family)
    if sampler not in SAMPLERS:
        if config.sampler is None:
            raise ValueError(
                f"model.config.family is {family!r}, which has no sampler; pass "
                f"sampler='llada' or sampler='dream'."
            )
        raise unknown_choice_error("sampler", sampler, SAMPLERS)
    _refuse_foreign_options(config, sampler)
    if sampler in BLOCK_SAMPLERS:
        seed = config.seed if config.seed is not None else draw_seed()
        return dataclasses.replace(
            config, sampler=sampler, seed=seed, **_resolve_llada2(config, sampler)
        )
    checkpoint = checkpoint_defaults(generation_defaults)
    if sampler == "dream":
        resolved = _resolve_dream(config, checkpoint)
    else:
        resolved = _resolve_llada(config, checkpoint)
    config = dataclasses.replace(config, sampler=sampler, **resolved)
    seed = config.seed if config.seed is not None else draw_seed()
    return dataclasses.replace(
        config, block_length=_default_block_length(config, sampler), seed=seed
    )


def checkpoint_defaults(generation_defaults: Mapping[str, Any]) -> Mapping[str, Any]:
    """The generation_config.json entries that act as defaults: none from a file transformers
    derived from config.json (`_from_model_config`), which neither reference reads."""
    if generation_defaults.get("_from_model_config") is True:
        return {}
    return generation_defaults


def _resolve_llada(config: GenerationConfig, checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    gen_length = _first_set(config.gen_length, _checkpoint_length(checkpoint), DEFAULT_GEN_LENGTH)
    return {
        "gen_length": gen_length,
        "steps": _first_set(config.steps, gen_length),
        "temperature": _first_set(
            config.temperature, checkpoint.get("temperature"), LLADA_TEMPERATURE
        ),
    }


def _resolve_llada2(config: GenerationConfig, sampler: str) -> dict[str, Any]:
    """Every unset LLaDA2 option at its official default (those of the other version stay
    None: 2.0 has no editing options, 2.1 ignores steps and minimal_topk)."""
    unused = LLADA21_ONLY if sampler == "llada2" else LLADA20_ONLY
    return {
        name: _first_set(getattr(config, name), default)
        for name, default in LLADA2_DEFAULTS.items()
        if name not in unused
    }


def _resolve_dream(config: GenerationConfig, checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    resolved = {
        "gen_length": _first_set(
            config.gen_length, _checkpoint_length(checkpoint), DREAM_DEFAULTS["gen_length"]
        )
    }
    for name in ("steps", "temperature", "top_p", "top_k", "alg", "alg_temp", "eps"):
        resolved[name] = _dream_value(name, getattr(config, name), checkpoint)
    return resolved


def _dream_value(name: str, value: Any, checkpoint: Mapping[str, Any]) -> Any:
    """The option's value, else the checkpoint's (a null meaning "off"), else Dream's default."""
    if value is not None:
        return value
    if checkpoint.get(name) is not None:
        return checkpoint[name]
    if name in checkpoint and name in DREAM_NULL_MEANS:
        return DREAM_NULL_MEANS[name]
    return DREAM_DEFAULTS[name]


def _checkpoint_length(checkpoint: Mapping[str, Any]) -> Any:
    return _first_set(checkpoint.get("gen_length"), checkpoint.get("max_new_tokens"))


def _first_set(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


def _default_block_length(config: GenerationConfig, sampler: str) -> int | None:
    if config.block_length is not None:
        return config.block_length
    if sampler == "dream":
        return config.gen_length
    if isinstance(config.gen_length, int) and config.gen_length % LLADA_BLOCK_LENGTH == 0:
        return LLADA_BLOCK_LENGTH
    return config.gen_length


def _refuse_foreign_options(config: GenerationConfig, sampler: str) -> None:
    if sampler in BLOCK_SAMPLERS:
        _refuse_for_block_diffusion(config, sampler)
        return
    block_set = [name for name in BLOCK_ONLY + BLOCK_ONLY_SET if getattr(config, name) is not None]
    if config.eos_early_stop is not False:
        block_set.append("eos_early_stop")
    for name in block_set:
        raise ValueError(
            f"{name} is an option of the LLaDA2 samplers (llada2, llada2.1) and the {sampler} "
            f"sampler would ignore it: drop {name}, or pass sampler='llada2'."
        )
    if sampler == "llada":
        for name in DREAM_ONLY:
            if getattr(config, name) is not None:
                raise ValueError(
                    f"{name} is an option of the dream sampler and the llada sampler would ignore "
                    f"it: drop {name}, or pass sampler='dream'."
                )
        return
    for name, default in LLADA_ONLY_DEFAULTS.items():
        if getattr(config, name) != default:
            raise ValueError(
                f"{name}={getattr(config, name)!r} is an option of the llada sampler and the "
                f"dream sampler would ignore it: drop {name}, or pass sampler='llada'."
            )


def unknown_choice_error(name: str, value: Any, choices: tuple[str, ...]) -> ValueError:
    """The error for a value outside `choices`, naming the closest one."""
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown {name} {value!r}.{hint} Choose one of: {', '.join(choices)}.")


BLOCK_FOREIGN = {
    "factor": "LLaDA2's threshold rule is its own (threshold=); Fast-dLLM's factor rule is not "
    "part of it",
    "alg": "a Dream option",
    "alg_temp": "a Dream option",
    "eps": "a Dream option",
}


def _refuse_for_block_diffusion(config: GenerationConfig, sampler: str) -> None:
    """Options the LLaDA2 samplers do not have, or that the chosen version ignores."""
    for name, why in BLOCK_FOREIGN.items():
        if getattr(config, name) is not None:
            raise ValueError(
                f"{name} does not apply to the {sampler} sampler ({why}); drop {name}."
            )
    for name, default in LLADA_ONLY_DEFAULTS.items():
        if getattr(config, name) != default:
            raise ValueError(
                f"{name}={getattr(config, name)!r} is an option of the llada sampler and the "
                f"{sampler} sampler would ignore it: drop {name}."
            )
    if config.stop_at_eos is not False:
        raise ValueError(
            f"stop_at_eos does not apply to the {sampler} sampler: it stops at EOS itself after "
            "each block (2.0), and eos_early_stop=True is its official early stop; drop "
            "stop_at_eos."
        )
    if sampler == "llada2":
        unused, other, why = LLADA21_ONLY, "llada2.1", "options of LLaDA2.1's token editing"
    else:
        unused, other, why = LLADA20_ONLY, "llada2", "LLaDA2.1's sampler has no use for them"
    for name in unused:
        if getattr(config, name) is not None:
            raise ValueError(
                f"{name} has no effect in the {sampler} sampler ({', '.join(unused)}: {why}); "
                f"drop {name}, or pass sampler={other!r}."
            )
