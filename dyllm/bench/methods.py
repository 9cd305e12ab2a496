"""Methods a benchmark compares: a policy name from the registry and its parameters.

On the command line a method is `NAME[:KEY=VALUE,...]`, e.g. `dense`, `dyllm:tau=0.99`,
`topk:k=0.25`, `adaptive:target_fraction=0.25`, `dllm-cache:gen_interval=7`. `adaptive` is
calibrated (`dyllm.engine.calibrate_taus`) on prompts from the training stream, never on the
held-out problems it is scored on, at one token per step; the per-layer taus found there serve every
decoding setting (with 4 tokens per step or threshold decoding a 24-token answer takes too few
steps to leave a sparse step after the 4 warm-up steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dyllm.engine import calibrate_taus
from dyllm.policies import SaliencyPolicy
from dyllm.policies.registry import POLICY_NAMES, make_policy

INTEGER_PARAMS = ("prompt_interval", "gen_interval", "warmup_steps", "prompt_refresh_every")
ADAPTIVE_PARAM = "target_fraction"

DEFAULT_TAUS = {"llada": (0.98, 0.99, 0.995), "dream": (0.99, 0.995, 0.9975)}
"""DyLLM's tau grid per family: the paper's two settings and one looser point."""


@dataclass(frozen=True)
class MethodSpec:
    """One point set of the benchmark: `policy` (a registry name) with `params`."""

    policy: str
    params: tuple[tuple[str, float | int], ...] = ()

    def __post_init__(self) -> None:
        if self.policy not in POLICY_NAMES:
            raise ValueError(
                f"unknown policy {self.policy!r} in a benchmark method; choose one of "
                f"{', '.join(POLICY_NAMES)}"
            )
        if self.policy == "adaptive" and ADAPTIVE_PARAM not in dict(self.params):
            raise ValueError(
                "the adaptive method needs target_fraction (e.g. adaptive:target_fraction=0.25)"
            )

    @property
    def label(self) -> str:
        """`dyllm tau=0.99`: the policy name and its parameters, as tables and plots show it."""
        if not self.params:
            return self.policy
        return self.policy + " " + " ".join(f"{key}={value:g}" for key, value in self.params)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "policy": self.policy, "params": dict(self.params)}

    def build(
        self, model, calibration_prompts: Sequence[Any], options: dict[str, Any]
    ) -> SaliencyPolicy | None:
        """The policy to run, or None for `dense` (the reference forward, no saliency engine).

        options: the generation options of adaptive's calibration run.
        """
        params = dict(self.params)
        if self.policy == "dense":
            make_policy("dense", model.config.family, **params)  # refuses stray parameters
            return None
        if self.policy == "adaptive":
            target = float(params.pop(ADAPTIVE_PARAM))
            return calibrate_taus(model, list(calibration_prompts), target, **params, **options)
        return make_policy(self.policy, model.config.family, **params)


def parse_method(text: str) -> MethodSpec:
    """`NAME[:KEY=VALUE,...]` -> MethodSpec; a ValueError says what is malformed."""
    name, _, rest = text.strip().partition(":")
    params: list[tuple[str, float | int]] = []
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key or not value:
            raise ValueError(
                f"method {text!r}: parameters are KEY=VALUE separated by commas, "
                "e.g. dyllm:tau=0.99"
            )
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"method {text!r}: {key} must be a number, got {value!r}") from None
        params.append((key.strip(), int(number) if key.strip() in INTEGER_PARAMS else number))
    return MethodSpec(name, tuple(params))


def default_methods(family: str) -> list[MethodSpec]:
    """Dense; DyLLM at several tau; top-k; layer-adaptive; Fast-dLLM prefix and dual; dLLM-Cache.

    top-k and layer-adaptive recompute a quarter of the query rows per layer, about what DyLLM's
    default tau recomputes on the reference models.
    """
    taus = DEFAULT_TAUS.get(family, DEFAULT_TAUS["llada"])
    return [
        MethodSpec("dense"),
        *(MethodSpec("dyllm", (("tau", tau),)) for tau in taus),
        MethodSpec("topk", (("k", 0.25),)),
        MethodSpec("adaptive", ((ADAPTIVE_PARAM, 0.25),)),
        MethodSpec("fast-prefix"),
        MethodSpec("fast-dual"),
        MethodSpec("dllm-cache"),
    ]
