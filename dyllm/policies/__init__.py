"""Saliency policies: which rows each denoising step recomputes (see `base.SaliencyPolicy`), and
the registry that names them for the command line and the benchmark (`registry`, `plugins`)."""

from dyllm.generation.step import StepContext
from dyllm.policies.adaptive import LayerAdaptive
from dyllm.policies.base import AttentionSignals, LayerSignals, SaliencyPolicy, StepPlan
from dyllm.policies.cosine import DEFAULT_TAU, CosineThreshold
from dyllm.policies.dense import Dense, EveryRow
from dyllm.policies.dllm_cache import DLLMCache
from dyllm.policies.fast_dllm import BlockCache, DualCache, PrefixCache
from dyllm.policies.plugins import load_plugins
from dyllm.policies.query_schedule import DyLLMSchedule
from dyllm.policies.registry import (
    BuildContext,
    build_policy,
    policy_names,
    register_policy,
    unregister_policy,
)
from dyllm.policies.topk import TopK

__all__ = [
    "DEFAULT_TAU",
    "AttentionSignals",
    "BlockCache",
    "BuildContext",
    "CosineThreshold",
    "DLLMCache",
    "Dense",
    "DualCache",
    "DyLLMSchedule",
    "EveryRow",
    "LayerAdaptive",
    "LayerSignals",
    "PrefixCache",
    "SaliencyPolicy",
    "StepContext",
    "StepPlan",
    "TopK",
    "build_policy",
    "load_plugins",
    "policy_names",
    "register_policy",
    "unregister_policy",
]
