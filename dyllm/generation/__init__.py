"""The denoising loop: blocks, steps, unmasking rules, batching, early stop and statistics.

`run_sampler(model, prompts, denoiser, **options)` runs LLaDA's or Dream's reference sampler
(chosen by the model's family, or `sampler=`) over a `Denoiser`, the seam where a step's logits
are computed: `DenseDenoiser` runs the full forward, the saliency engine supplies its own. This
package knows nothing of how a step is computed, only what to do with its logits. Users call
`dyllm.generate`, which picks the denoiser from a policy and calls `run_sampler`.
"""

from dyllm.generation.config import GenerationConfig
from dyllm.generation.denoiser import Denoiser, DenseDenoiser
from dyllm.generation.loop import StepObserver
from dyllm.generation.result import GenerationResult, GenerationStats
from dyllm.generation.run import run_sampler
from dyllm.generation.step import StepContext, StepReport

__all__ = [
    "Denoiser",
    "DenseDenoiser",
    "GenerationConfig",
    "GenerationResult",
    "GenerationStats",
    "StepContext",
    "StepObserver",
    "StepReport",
    "run_sampler",
]
