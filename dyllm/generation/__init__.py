"""The denoising loop: blocks, steps, unmasking rules, batching, early stop and statistics.

`generate(model, prompts, **options)` runs LLaDA's or Dream's reference sampler (chosen by the
model's family, or `sampler=`) over a `Denoiser`, the seam where a step's logits are computed:
`DenseDenoiser` runs the full forward, the saliency engine supplies its own. This package knows
nothing of how a step is computed, only what to do with its logits.
"""

from dyllm.generation.api import DenoiserFactory, generate
from dyllm.generation.config import GenerationConfig
from dyllm.generation.context import Denoiser, DenseDenoiser, StepContext
from dyllm.generation.result import GenerationResult, GenerationStats

__all__ = [
    "Denoiser",
    "DenoiserFactory",
    "DenseDenoiser",
    "GenerationConfig",
    "GenerationResult",
    "GenerationStats",
    "StepContext",
    "generate",
]
