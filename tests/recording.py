"""Step-by-step recording for tests that compare two runs: `dyllm.generate` with an observer."""

from __future__ import annotations

from typing import Any

import torch

import dyllm
from dyllm.generation import GenerationResult, StepReport
from dyllm.policies import SaliencyPolicy


class StepRecorder:
    """An `on_step` observer that keeps every step's logits (and whether it ran dense)."""

    def __init__(self) -> None:
        self.logits: list[torch.Tensor] = []
        self.dense: list[bool] = []

    def __call__(self, report: StepReport) -> None:
        self.logits.append(report.logits.clone())
        self.dense.append(report.dense)


def generate_recording(
    model: Any, prompts: Any, policy: SaliencyPolicy | None = None, **options: Any
) -> tuple[GenerationResult, StepRecorder]:
    """`dyllm.generate` under `policy` (None: dense), cache invariants checked; returns the result
    and the recorder holding each step's logits."""
    recorder = StepRecorder()
    result = dyllm.generate(
        model, prompts, policy=policy, check_invariants=True, on_step=recorder, **options
    )
    return result, recorder
