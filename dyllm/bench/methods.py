"""Methods a benchmark compares: a registered policy name and its parameters.

On the command line a method is `NAME[:KEY=VALUE,...]`, e.g. `dense`, `dyllm:tau=0.99`,
`topk:k=0.25`, `adaptive:target_fraction=0.25`, `dllm-cache:gen_interval=7`, or any policy a
plugin registers (`--plugin my_policy.py --method mine:knob=3`). Names and parameters are the
policy registry's (`dyllm.policies.registry`), read through the policy's type hints, so a bad
method is refused before the benchmark starts, with the valid parameters named.

A policy whose builder asks for the model and prompts (`adaptive` with `target_fraction`
calibrates per-layer taus) is built on prompts from the training stream, never on the held-out
problems it is scored on, at one token per step: the policy built there serves every decoding
setting (with 4 tokens per step or threshold decoding a 24-token answer takes too few steps to
leave a sparse step after 4 warm-up steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dyllm.policies import SaliencyPolicy
from dyllm.policies.arguments import format_value, parse_policy_text
from dyllm.policies.registry import BuildContext, registered_policy

BASELINE = "dense"
"""The method every speed-up is measured against (the reference full forward)."""

DEFAULT_TAUS = {"llada": (0.98, 0.99, 0.995), "dream": (0.99, 0.995, 0.9975)}
"""DyLLM's tau grid per family: the paper's two settings and one looser point."""


@dataclass(frozen=True)
class MethodSpec:
    """One point set of the benchmark: `policy` (a registered name) with `params`."""

    policy: str
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        registered_policy(self.policy).arguments(dict(self.params))  # refuses unknown names

    @property
    def label(self) -> str:
        """`dyllm tau=0.99`: the policy name and its parameters, as tables and plots show it."""
        return " ".join(
            [self.policy, *(f"{key}={format_value(value)}" for key, value in self.params)]
        )

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "policy": self.policy, "params": dict(self.params)}

    def build(
        self, model, calibration_prompts: Sequence[Any], options: dict[str, Any]
    ) -> SaliencyPolicy:
        """The policy to run (`dense`: `Dense()`, which `generate` runs as the full forward).

        calibration_prompts, options: the prompts and generation options a builder that
        calibrates on the model receives (its `prompts` and `generation_options`).
        """
        context = BuildContext(
            family=model.config.family,
            model=model,
            prompts=list(calibration_prompts),
            generation_options=options,
        )
        return registered_policy(self.policy).build(dict(self.params), context)


def parse_method(text: str) -> MethodSpec:
    """`NAME[:KEY=VALUE,...]` -> MethodSpec; a ValueError says what is malformed."""
    try:
        name, raw = parse_policy_text(text)
        params = registered_policy(name).arguments(raw)
    except ValueError as error:
        raise ValueError(f"method {text!r}: {error}") from None
    return MethodSpec(name, tuple(params.items()))


def default_methods(family: str) -> list[MethodSpec]:
    """Dense; DyLLM at several tau; top-k; layer-adaptive; Fast-dLLM prefix and dual; dLLM-Cache.

    top-k and layer-adaptive recompute a quarter of the query rows per layer, about what DyLLM's
    default tau recomputes on the reference models.
    """
    taus = DEFAULT_TAUS.get(family, DEFAULT_TAUS["llada"])
    return [
        MethodSpec(BASELINE),
        *(MethodSpec("dyllm", (("tau", tau),)) for tau in taus),
        MethodSpec("topk", (("k", 0.25),)),
        MethodSpec("adaptive", (("target_fraction", 0.25),)),
        MethodSpec("fast-prefix"),
        MethodSpec("fast-dual"),
        MethodSpec("dllm-cache"),
    ]
