"""The saliency engine: runs a `SaliencyPolicy` over the model with one `CacheManager`."""

from dyllm.engine.denoiser import SaliencyDenoiser
from dyllm.engine.statistics import RecomputeStatistics

__all__ = ["RecomputeStatistics", "SaliencyDenoiser"]
