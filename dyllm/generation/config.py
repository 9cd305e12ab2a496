"""Generation options under the reference samplers' names, and how unset ones get their values.

Options left as None are filled at `resolve_config` time, in this order: the option itself, the
checkpoint's `generation_config.json` (`model.generation_defaults`), the family default.
Only the answer length (`gen_length`, or Hugging Face's `max_new_tokens`) and the sampling knobs
`alg, eps, temperature, alg_temp, top_p, top_k` are read from generation_config.json. Its `steps`
is never used: Dream ships `steps=512`, which would run 512 steps over the default 128-token
answer (most of them committing nothing) and is not even a valid schedule for shorter answers;
`steps` defaults to `gen_length` instead (one token per step).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SAMPLERS = ("llada", "dream")
REMASKING_RULES = ("low_confidence", "random")
DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")

DEFAULT_GEN_LENGTH = 128
"""Answer length when neither the call nor the checkpoint gives one (LLaDA's examples use 128)."""

LLADA_BLOCK_LENGTH = 32
"""LLaDA's usual block length; used when it divides gen_length, else one block."""
DREAM_EPS = 1e-3
DREAM_ALG = "origin"

CHECKPOINT_KEYS = ("alg", "eps", "temperature", "alg_temp", "top_p", "top_k")
"""Keys of generation_config.json that become defaults (see the module docstring)."""

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
    (or `max_new_tokens`) in generation_config.json, else 128."""
    steps: int | None = None
    """Denoising steps over the whole answer; None = gen_length. Ignored with threshold/factor."""
    block_length: int | None = None
    """Semi-autoregressive block size; None = 32 for LLaDA (one block if 32 does not divide
    gen_length), gen_length for Dream (one block, the reference)."""
    temperature: float | None = None
    """0 = greedy; None = the checkpoint's value, else 0."""
    seed: int = 0
    """Seeds the one torch.Generator behind every random draw."""
    threshold: float | None = None
    """Fast-dLLM parallel decoding: commit every masked token of the block with confidence
    >= threshold (always the most confident one)."""
    factor: float | None = None
    """Fast-dLLM factor rule: commit the longest confidence-sorted prefix with
    c_n >= 1 - factor / (n + 1)."""
    stop_at_eos: bool = False
    """Stop once every row's text is final (an EOS with nothing masked before it)."""
    progress: bool = False
    """Show a tqdm bar over steps."""
    sampler: str | None = None
    """"llada" or "dream"; None = the model's family."""
    cfg_scale: float = 0.0
    """LLaDA classifier-free guidance: logits = un + (cfg_scale + 1) * (cond - un)."""
    remasking: str = "low_confidence"
    """LLaDA: rank masked positions by "low_confidence" (prob of the chosen token) or "random"."""
    logits_eos_inf: bool = False
    """LLaDA: never generate EOS (its logit set to -inf before sampling)."""
    confidence_eos_eot_inf: bool = False
    """LLaDA: the reference's confidence tweak; see `token_sampling.llada_propose`."""
    alg: str | None = None
    """Dream unmasking order: origin | maskgit_plus | topk_margin | entropy."""
    alg_temp: float | None = None
    """Dream: sample the k positions from softmax(confidence / alg_temp) instead of top-k."""
    top_p: float | None = None
    """Dream nucleus filtering of the token distribution."""
    top_k: int | None = None
    """Dream top-k filtering of the token distribution."""
    eps: float | None = None
    """Dream: the last timestep of linspace(1, eps, steps + 1)."""

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
        check_option_names(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def option_names() -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(GenerationConfig))


def check_option_names(options: Mapping[str, Any]) -> None:
    """Raise a ValueError for any name that is not a GenerationConfig field."""
    valid = option_names()
    for name in options:
        if name in valid:
            continue
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown generation option {name!r}.{hint} Valid options: {', '.join(valid)}."
        )


def resolve_config(
    config: GenerationConfig, family: str, generation_defaults: Mapping[str, Any]
) -> GenerationConfig:
    """Fill every None that has a default, after refusing options the chosen sampler ignores.

    family: `model.config.family`; generation_defaults: `model.generation_defaults`.
    """
    if config.gen_length is None:
        checkpoint_length = generation_defaults.get(
            "gen_length", generation_defaults.get("max_new_tokens", DEFAULT_GEN_LENGTH)
        )
        config = dataclasses.replace(config, gen_length=checkpoint_length)
    sampler = config.sampler if config.sampler is not None else family
    if sampler not in SAMPLERS:
        if config.sampler is None:
            raise ValueError(
                f"model.config.family is {family!r}, which has no sampler; pass "
                f"sampler='llada' or sampler='dream'."
            )
        raise unknown_choice_error("sampler", sampler, SAMPLERS)
    _refuse_foreign_options(config, sampler)

    def from_checkpoint(name: str, fallback: Any) -> Any:
        value = getattr(config, name)
        if value is not None:
            return value
        return generation_defaults.get(name, fallback)

    resolved: dict[str, Any] = {
        "sampler": sampler,
        "steps": config.steps if config.steps is not None else config.gen_length,
        "block_length": _default_block_length(config, sampler),
        "temperature": from_checkpoint("temperature", 0.0),
    }
    if sampler == "dream":
        resolved["alg"] = from_checkpoint("alg", DREAM_ALG)
        resolved["eps"] = from_checkpoint("eps", DREAM_EPS)
        for name in ("alg_temp", "top_p", "top_k"):
            resolved[name] = from_checkpoint(name, None)
    return dataclasses.replace(config, **resolved)


def _default_block_length(config: GenerationConfig, sampler: str) -> int | None:
    if config.block_length is not None:
        return config.block_length
    if sampler == "dream":
        return config.gen_length
    if isinstance(config.gen_length, int) and config.gen_length % LLADA_BLOCK_LENGTH == 0:
        return LLADA_BLOCK_LENGTH
    return config.gen_length


def _refuse_foreign_options(config: GenerationConfig, sampler: str) -> None:
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
