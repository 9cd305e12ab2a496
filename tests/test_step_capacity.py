"""A sparse step's row capacity is a guess for threshold policies; the answer never depends on it.

The engine sizes each layer's gathered work before the step (no host read-back inside the layer
loop). When a layer selects more rows than the guess held, the step's cache writes are undone and
it runs again with room for every query row. These tests force tiny guesses, so that steps
overflow, and hold the result to runs whose capacity always covers every query row.
"""

from __future__ import annotations

import pytest
import torch

from dyllm.engine import SaliencyDenoiser
from dyllm.generation import run_sampler
from dyllm.policies import CosineThreshold, DLLMCache, DualCache, EveryRow, LayerAdaptive, TopK
from tests.checkpoints import tiny_model

PROMPTS = [[5, 17, 33, 8], [9, 4, 61, 2, 70, 12]]


@pytest.fixture(autouse=True)
def planned_capacities(monkeypatch: pytest.MonkeyPatch) -> None:
    """Capacities planned before each step, as on a GPU (the CPU default reads counts back)."""
    monkeypatch.setenv("DYLLM_ROW_CAPACITY", "planned")


OPTIONS = {"gen_length": 16, "steps": 16, "block_length": 8}


class RecordingSaliencyDenoiser(SaliencyDenoiser):
    """Keeps every step's logits."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.logits: list[torch.Tensor] = []

    def __call__(self, x, ctx):
        logits = super().__call__(x, ctx)
        self.logits.append(logits.clone())
        return logits


def _run(model, policy, guess=None):
    """Generate with a recording denoiser; `guess` replaces the capacity guess when given."""
    denoiser = RecordingSaliencyDenoiser(model, policy, check_invariants=True)
    if guess is not None:
        denoiser._guess = guess
    result = run_sampler(model, PROMPTS, denoiser, **OPTIONS)
    return result, denoiser


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize(
    "policy",
    [
        lambda: CosineThreshold(0.999, warmup_steps=2),
        lambda: LayerAdaptive(taus=[0.999, 0.99, 0.9999], warmup_steps=2),
    ],
    ids=["dyllm", "adaptive-taus"],
)
def test_overflowing_guesses_give_the_answer_of_full_capacity(family, policy):
    model = tiny_model(family, num_layers=3, never_predicts_mask=True)
    full, full_denoiser = _run(model, policy(), lambda layer, query_count: query_count)
    tight, tight_denoiser = _run(model, policy(), lambda layer, query_count: 1)
    assert full.stats.extra["capacity_retries"] == 0
    assert tight.stats.extra["capacity_retries"] > 0
    assert tight.token_ids == full.token_ids
    for ours, theirs in zip(tight_denoiser.logits, full_denoiser.logits, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)
    assert tight.stats.extra["ffn_fraction_per_layer"] == full.stats.extra["ffn_fraction_per_layer"]


def test_a_step_that_fits_its_guess_runs_once():
    """tau = -1 selects nothing after attention, so a guess of no rows at all always fits (layer
    0 still refreshes the committed rows: their count is known before the step)."""
    model = tiny_model("llada", num_layers=3, never_predicts_mask=True)
    nothing = lambda: CosineThreshold(-1.0, warmup_steps=2)  # noqa: E731
    empty, _ = _run(model, nothing(), lambda layer, query_count: 0)
    full, _ = _run(model, nothing(), lambda layer, query_count: query_count)
    assert empty.stats.extra["capacity_retries"] == 0
    assert empty.token_ids == full.token_ids
    assert empty.stats.extra["ffn_fraction_per_layer"] == full.stats.extra["ffn_fraction_per_layer"]
    assert empty.stats.extra["sparse_steps"] > 0


class UnderBudgeted(CosineThreshold):
    """Claims one row per layer but selects by threshold: a broken `row_budget`."""

    name = "under-budgeted"

    def row_budget(self, step, layer, query_count):
        return 1


def test_a_budget_the_policy_breaks_is_an_error():
    model = tiny_model("llada", num_layers=3, never_predicts_mask=True)
    denoiser = SaliencyDenoiser(model, UnderBudgeted(0.999, warmup_steps=2))
    with pytest.raises(ValueError, match=r"policy 'under-budgeted' picked \d+ rows .* row_budget"):
        run_sampler(model, PROMPTS, denoiser, **OPTIONS)


def test_layer_budgets_cover_the_previous_layer():
    policy = LayerAdaptive(budgets=[0.5, 0.1, 0.25], warmup_steps=2)
    model = tiny_model("llada", num_layers=3, never_predicts_mask=True)
    result = run_sampler(model, PROMPTS, SaliencyDenoiser(model, policy), **OPTIONS)
    assert result.stats.extra["capacity_retries"] == 0
    assert [policy.row_budget(None, layer, 20) for layer in range(3)] == [10, 10, 5]


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize(
    "policy",
    [
        lambda: CosineThreshold(0.99, warmup_steps=2),
        lambda: TopK(0.25, warmup_steps=2),
        DualCache,
        lambda: DLLMCache(prompt_interval=5, gen_interval=3),
        EveryRow,
    ],
    ids=["dyllm", "topk", "fast-dual", "dllm-cache", "every-row"],
)
def test_read_back_counts_give_the_planned_answer(family, policy, monkeypatch):
    model = tiny_model(family, num_layers=3, never_predicts_mask=True)
    planned, planned_steps = _run(model, policy())
    monkeypatch.setenv("DYLLM_ROW_CAPACITY", "read-back")
    exact, exact_steps = _run(model, policy())
    assert exact.token_ids == planned.token_ids
    assert exact.stats.extra["capacity_retries"] == 0
    for ours, theirs in zip(exact_steps.logits, planned_steps.logits, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)


def test_an_unknown_capacity_mode_is_refused(monkeypatch):
    monkeypatch.setenv("DYLLM_ROW_CAPACITY", "sometimes")
    model = tiny_model("llada", num_layers=2, never_predicts_mask=True)
    with pytest.raises(ValueError, match=r"DYLLM_ROW_CAPACITY='sometimes'; choose one of auto"):
        _run(model, TopK(0.25, warmup_steps=2))
