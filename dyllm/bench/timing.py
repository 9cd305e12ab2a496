"""Timed generation: one `generate` call with the method's denoiser, and a per-step timer.

`generate_batch` builds the same denoiser `dyllm.generate` builds (the reference forward for
dense, the saliency engine for a policy) but lets the benchmark wrap it in `StepTimer`, which
records every step's wall time and whether the policy ran it dense, so a result can say what a
sparse step costs against a dense one. The saliency engine's cache invariant checks (asserted
bookkeeping, on by default in `dyllm.generate`) are off unless asked for: they are a debugging aid,
not part of the method's cost.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from dyllm.engine import SaliencyDenoiser
from dyllm.generation import GenerationResult, generate
from dyllm.generation.context import Denoiser, DenseDenoiser, StepContext
from dyllm.policies import SaliencyPolicy


class StepTimer(Denoiser):
    """Wraps a denoiser; `steps` holds (ran_dense, seconds) for every step, in order."""

    def __init__(self, inner: Denoiser, device: torch.device) -> None:
        super().__init__()
        self.inner = inner
        self.device = device
        self.steps: list[tuple[bool, float]] = []

    def __call__(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        statistics_ = getattr(self.inner, "statistics", None)
        dense_before = None if statistics_ is None else statistics_.dense_steps
        self._synchronize()
        start = time.perf_counter()
        logits = self.inner(x, ctx)
        self._synchronize()
        elapsed = time.perf_counter() - start
        dense = statistics_ is None or statistics_.dense_steps > dense_before
        self.steps.append((dense, elapsed))
        self.nfe = self.inner.nfe
        return logits

    def extra_stats(self) -> dict[str, Any]:
        return self.inner.extra_stats()

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def median_step_s(self, dense: bool) -> float | None:
        """Median seconds of the dense (or sparse) steps; None when there were none."""
        times = [seconds for ran_dense, seconds in self.steps if ran_dense == dense]
        return statistics.median(times) if times else None


def generate_batch(
    model: torch.nn.Module,
    prompts: list[str],
    policy: SaliencyPolicy | None,
    options: dict[str, Any],
    check_invariants: bool = False,
    timers: list[StepTimer] | None = None,
) -> GenerationResult:
    """Answers for `prompts` under `policy` (None = dense reference forward).

    timers: when given, the step timer wrapping this call's denoiser is appended to it.
    """

    def factory(model_, attention_mask, position_ids) -> Denoiser:
        inner: Denoiser
        if policy is None:
            inner = DenseDenoiser(model_, attention_mask, position_ids)
        else:
            inner = SaliencyDenoiser(
                model_, policy, attention_mask, position_ids, check_invariants=check_invariants
            )
        if timers is None:
            return inner
        timers.append(StepTimer(inner, next(model_.parameters()).device))
        return timers[-1]

    return generate(model, prompts, denoiser_factory=factory, **options)
