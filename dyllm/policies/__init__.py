"""Saliency policies: which rows each denoising step recomputes (see `base.SaliencyPolicy`)."""

from dyllm.generation.step import StepContext
from dyllm.policies.adaptive import LayerAdaptive
from dyllm.policies.base import AttentionSignals, LayerSignals, SaliencyPolicy, StepPlan
from dyllm.policies.cosine import DEFAULT_TAU, CosineThreshold
from dyllm.policies.dense import Dense, EveryRow
from dyllm.policies.dllm_cache import DLLMCache
from dyllm.policies.fast_dllm import BlockCache, DualCache, PrefixCache
from dyllm.policies.query_schedule import DyLLMSchedule
from dyllm.policies.topk import TopK

__all__ = [
    "DEFAULT_TAU",
    "AttentionSignals",
    "BlockCache",
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
]
