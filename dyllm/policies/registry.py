"""Policies by name, for the command line and benchmark configurations.

`make_policy("dyllm", family="llada", tau=0.99)` builds the policy a flag names, with the
family's defaults where the caller gives none (DyLLM's tau: LLaDA 0.99, Dream 0.995). The peers'
strategies are here under their own names: `fast-prefix` and `fast-dual` (Fast-dLLM, no
parameters) and `dllm-cache` (prompt_interval, gen_interval, transfer_ratio).
"""

from __future__ import annotations

from typing import Any

from dyllm.policies.adaptive import LayerAdaptive
from dyllm.policies.base import SaliencyPolicy
from dyllm.policies.cosine import DEFAULT_TAU, CosineThreshold
from dyllm.policies.dense import Dense
from dyllm.policies.dllm_cache import DLLMCache
from dyllm.policies.fast_dllm import DualCache, PrefixCache
from dyllm.policies.topk import TopK

POLICY_NAMES = ("dense", "dyllm", "topk", "adaptive", "fast-prefix", "fast-dual", "dllm-cache")
SCHEDULE_KNOBS = ("warmup_steps", "prompt_refresh_every", "attention")
DLLM_CACHE_PARAMS = ("prompt_interval", "gen_interval", "transfer_ratio")


def make_policy(name: str, family: str, **params: Any) -> SaliencyPolicy:
    """The named policy; params left as None take their defaults.

    dyllm: tau; topk: k (rows, or a fraction when < 1); adaptive: taus or budgets (one per
    layer). Each of these also takes warmup_steps, prompt_refresh_every, attention.
    fast-prefix, fast-dual: nothing (their schedule is the block structure).
    dllm-cache: prompt_interval, gen_interval (steps), transfer_ratio (in [0, 1]).
    """
    given = {key: value for key, value in params.items() if value is not None}
    schedule = {key: given.pop(key) for key in SCHEDULE_KNOBS if key in given}
    if name == "dense":
        _refuse_extra(name, {**given, **schedule})
        return Dense()
    block_caches = {"fast-prefix": PrefixCache, "fast-dual": DualCache}
    if name in block_caches:
        _refuse_extra(name, {**given, **schedule})
        return block_caches[name]()
    if name == "dllm-cache":
        own = {key: given.pop(key) for key in DLLM_CACHE_PARAMS if key in given}
        _refuse_extra(name, {**given, **schedule})
        return DLLMCache(**own)
    if name == "dyllm":
        tau = given.pop("tau", DEFAULT_TAU.get(family, 0.99))
        _refuse_extra(name, given)
        return CosineThreshold(tau=tau, **schedule)
    if name == "topk":
        if "k" not in given:
            raise ValueError("the topk policy needs k: a row count, or a fraction below 1")
        k = given.pop("k")
        k = int(k) if float(k) >= 1 else float(k)
        _refuse_extra(name, given)
        return TopK(k=k, **schedule)
    if name == "adaptive":
        taus, budgets = given.pop("taus", None), given.pop("budgets", None)
        _refuse_extra(name, given)
        return LayerAdaptive(taus=taus, budgets=budgets, **schedule)
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")


def _refuse_extra(name: str, extra: dict[str, Any]) -> None:
    if extra:
        raise ValueError(f"the {name} policy takes no {', '.join(sorted(extra))}")
