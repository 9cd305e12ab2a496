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
