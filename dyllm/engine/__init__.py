"""The saliency engine: joins model, policy, cache and kernels.

`generate` (the public one, re-exported as `dyllm.generate`) picks a denoiser for a policy and
runs the sampler; `SaliencyDenoiser` plans each step with the policy and runs it dense (the
model's one forward, filling the cache) or sparse (`sparse_step`); `calibrate_taus` derives
`LayerAdaptive`'s per-layer thresholds; `RecomputeStatistics` counts what each step recomputed.
"""

from dyllm.engine.calibration import calibrate_taus
from dyllm.engine.denoiser import SaliencyDenoiser
from dyllm.engine.generate import generate, make_denoiser
from dyllm.engine.statistics import RecomputeStatistics

__all__ = [
    "RecomputeStatistics",
    "SaliencyDenoiser",
    "calibrate_taus",
    "generate",
    "make_denoiser",
]
