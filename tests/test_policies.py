"""Policies on their own: DyLLM's schedule, budgets, thresholds, calibration, bad parameters."""

from __future__ import annotations

import pytest
import torch

from dyllm import generate
from dyllm.engine import calibrate_taus
from dyllm.policies import (
    DEFAULT_TAU,
    AttentionSignals,
    CosineThreshold,
    LayerAdaptive,
    StepContext,
    TopK,
)
from tests.checkpoints import tiny_model


def _step(step: int, prompt: int = 3, length: int = 10, shift: int = 0) -> StepContext:
    committed = torch.zeros(2, length, dtype=torch.bool)
    committed[:, prompt + step % (length - prompt)] = True
    return StepContext(
        step=step,
        block=0,
        step_in_block=step,
        first_step_in_block=step == 0,
        block_start=prompt,
        block_end=length,
        prompt_length=prompt,
        response_start=prompt - shift,
        length=length,
        logit_start=prompt - shift,
        logit_end=length - shift,
        masked=torch.zeros(2, length, dtype=torch.bool),
        newly_committed=committed if step else None,
    )


def test_dyllm_schedule_warms_up_then_alternates_response_and_whole_sequence() -> None:
    policy = CosineThreshold(0.99, warmup_steps=4, prompt_refresh_every=4)
    plans = [policy.plan(_step(s)) for s in range(13)]
    assert [p.dense for p in plans] == [True] * 4 + [False] * 9
    whole = [bool(p.queries[:, :3].all()) for p in plans[4:]]
    assert whole == [False, False, False, True, False, False, False, True, False]
    for s, plan in enumerate(plans[4:], start=4):
        assert torch.equal(plan.queries[:, 3:], torch.ones(2, 7, dtype=torch.bool))
        assert torch.equal(plan.refresh, _step(s).newly_committed)


def test_response_rows_include_the_shifted_row_for_dream() -> None:
    plan = CosineThreshold(0.99, warmup_steps=1).plan(_step(1, shift=1))
    assert plan.queries[0].tolist() == [False, False] + [True] * 8


def test_paper_taus_per_family() -> None:
    assert CosineThreshold.for_family("llada").tau == DEFAULT_TAU["llada"] == 0.99
    assert CosineThreshold.for_family("dream").tau == DEFAULT_TAU["dream"] == 0.995


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: CosineThreshold(1.5), "tau is a cosine"),
        (lambda: CosineThreshold(0.99, warmup_steps=0), "warmup_steps must be at least 1"),
        (lambda: CosineThreshold(0.99, attention="exact"), "attention must be"),
        (lambda: TopK(0), "k must be at least 1"),
        (lambda: TopK(1.5), "fractional k"),
        (lambda: LayerAdaptive(), "exactly one of taus"),
        (lambda: LayerAdaptive(taus=[0.9], budgets=[0.1]), "exactly one of taus"),
        (lambda: LayerAdaptive(budgets=[0.0, 0.5]), "budgets are fractions"),
    ],
)
def test_bad_parameters_are_refused(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("k,rows,expected", [(0.1, 128, 13), (0.1, 5, 1), (3, 10, 3), (30, 10, 10)])
def test_top_k_budget(k, rows: int, expected: int) -> None:
    assert TopK(k).budget(rows) == expected


def test_layer_adaptive_needs_one_value_per_layer() -> None:
    model = tiny_model("llada", seed=0)
    policy = LayerAdaptive(taus=[0.9, 0.9, 0.9])
    with pytest.raises(ValueError, match="3 taus given for a model of 2 layers"):
        generate(
            model,
            [[5, 6, 7]],
            policy=policy,
            check_invariants=True,
            gen_length=8,
            steps=8,
            block_length=8,
        )


class _Counting(LayerAdaptive):
    """LayerAdaptive that counts selected and query rows per layer on sparse steps."""

    def reset(self, num_layers: int) -> None:
        super().reset(num_layers)
        self.selected = [0] * num_layers
        self.queried = [0] * num_layers

    def select(self, layer: int, signals: AttentionSignals) -> torch.Tensor:
        chosen = super().select(layer, signals)
        self.selected[layer] += int(chosen.sum())
        self.queried[layer] += int(signals.queries.sum())
        return chosen


def test_calibration_hits_the_target_fraction_per_layer() -> None:
    """Calibrated taus are quantiles of the calibration run's cosines; deployed on the same
    prompts they recompute close to the target share of query rows in every layer. (Not
    exactly: the deployed run selects by tau, not by rank, so its cosines differ a little.)"""
    model = tiny_model("llada", seed=1, num_layers=3)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15]]
    options = {"gen_length": 32, "steps": 32, "block_length": 8}
    calibrated = calibrate_taus(model, prompts, [0.2, 0.3, 0.4], check_invariants=True, **options)
    assert len(calibrated.taus) == 3
    deployed = _Counting(taus=calibrated.taus)
    generate(model, prompts, policy=deployed, check_invariants=True, **options)
    fractions = [s / q for s, q in zip(deployed.selected, deployed.queried, strict=True)]
    for fraction, target in zip(fractions, [0.2, 0.3, 0.4], strict=True):
        assert abs(fraction - target) < 0.1, fractions


def test_calibration_needs_sparse_steps() -> None:
    model = tiny_model("llada", seed=1)
    with pytest.raises(ValueError, match="no sparse step"):
        calibrate_taus(
            model, [[5, 6, 7]], 0.2, warmup_steps=4, gen_length=4, steps=4, block_length=4
        )
