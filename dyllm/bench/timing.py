"""Per-step wall times of a generation, from the `on_step` reports of `dyllm.generate`.

`StepTimes` is an `on_step` observer: it keeps each step's denoiser time and whether the policy
ran the step dense, so a result can say what a sparse step costs against a dense one. Observing
synchronises the device around each denoiser call, so timed passes run without it.
"""

from __future__ import annotations

import statistics

from dyllm.generation import StepReport


class StepTimes:
    """(ran dense, denoiser seconds) of every step observed, in order."""

    def __init__(self) -> None:
        self.steps: list[tuple[bool, float]] = []

    def __call__(self, report: StepReport) -> None:
        self.steps.append((report.dense, report.denoiser_seconds))

    def median_step_s(self, dense: bool) -> float | None:
        """Median seconds of the dense (or sparse) steps; None when there were none."""
        times = [seconds for ran_dense, seconds in self.steps if ran_dense == dense]
        return statistics.median(times) if times else None
