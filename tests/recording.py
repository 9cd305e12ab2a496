"""A denoiser wrapper for tests that compare runs step by step."""

from __future__ import annotations

import torch

from dyllm.generation.context import Denoiser, StepContext


class RecordingDenoiser(Denoiser):
    """Delegates to another denoiser and keeps every step's logits."""

    def __init__(self, inner: Denoiser) -> None:
        super().__init__()
        self.inner = inner
        self.logits: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        logits = self.inner(x, ctx)
        self.nfe = self.inner.nfe
        self.logits.append(logits.clone())
        return logits

    def extra_stats(self):
        return self.inner.extra_stats()


def generate_recording(model, prompts, policy=None, **options):
    """`generate` with a dense (policy None) or saliency denoiser wrapped in a recorder.

    Returns (result, the RecordingDenoiser of the call).
    """
    from dyllm.engine import SaliencyDenoiser
    from dyllm.generation import DenseDenoiser, generate

    recorders: list[RecordingDenoiser] = []

    def factory(m, attention_mask, position_ids):
        inner = (
            DenseDenoiser(m, attention_mask, position_ids)
            if policy is None
            else SaliencyDenoiser(m, policy, attention_mask, position_ids)
        )
        recorders.append(RecordingDenoiser(inner))
        return recorders[-1]

    result = generate(model, prompts, denoiser_factory=factory, **options)
    return result, recorders[0]
