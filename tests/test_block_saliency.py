"""Saliency policies under LLaDA2's block diffusion (`dyllm.engine.block_saliency`).

The key test: `EveryRow` (every row of the current block refreshed and selected at every layer)
through the sparse step, whose queries are the current block and whose keys are the window,
reproduces the block-causal forward, so its tokens equal the dense run's (the exact block cache)
under both samplers, and its logits agree to float32 rounding. Then DyLLM and top-k run under
both samplers with the cache's invariant checks on, a batch gives each row its tokens alone, and
they route fewer rows through the FFN than their query rows. Policies that do not fit block
diffusion are refused with their reason.

Models and runs are those of `test_block_diffusion.py`: the official LLaDA2 fixture checkpoint
(float32) and the tiny LLaDA2 checkpoint of `tests/moe_checkpoints.py`.

Logit tolerance (EveryRow vs dense): the same float32 arithmetic through other matmul shapes
(the fused QKV's parts as separate row slices, gathered rows) and the sparse attention kernel
over the window's keys; measured at most 1.3e-5 absolute on logits of magnitude up to ~25.
`atol = 1e-4`, `rtol = 1e-5` as in `test_block_diffusion.py`, far below what a wrong mask, a
stale K/V or a missing key moves (> 1e-2); tokens are compared exactly.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import dyllm
from dyllm.engine import block_saliency
from dyllm.generation.llada2 import BlockStepReport
from dyllm.generation.step import StepContext
from dyllm.policies import (
    CosineThreshold,
    Dense,
    DLLMCache,
    DualCache,
    EveryRow,
    LayerAdaptive,
    PrefixCache,
    TopK,
)
from dyllm.policies.base import AttentionSignals, SaliencyPolicy, StepPlan
from tests.test_block_diffusion import (  # the same models, prompts and sampler settings
    ATOL,
    PROMPTS,
    RTOL,
    RUNS,
    TINY_PROMPTS,
    load_models,
)

SAMPLERS = list(RUNS)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return load_models(tmp_path_factory)


def prompts_of(name: str) -> list[list[int]]:
    return PROMPTS if name == "official" else TINY_PROMPTS


def recorded(
    model: Any, prompts: list[list[int]], sampler: str, **options: Any
) -> tuple[Any, list[BlockStepReport]]:
    reports: list[BlockStepReport] = []
    result = dyllm.generate(
        model,
        prompts,
        eos_id=-1,
        sampler=sampler,
        on_step=reports.append,
        **RUNS[sampler],
        **options,
    )
    return result, reports


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("name", ["official", "tiny"])
def test_every_row_equals_the_block_causal_forward(models, name: str, sampler: str) -> None:
    model, prompt = models[name], prompts_of(name)[:1]
    dense, dense_steps = recorded(model, prompt, sampler)
    sparse, sparse_steps = recorded(
        model, prompt, sampler, policy=EveryRow(), check_invariants=True
    )
    assert sparse.token_ids == dense.token_ids
    assert len(sparse_steps) == len(dense_steps) > 3
    for fast, slow in zip(sparse_steps, dense_steps, strict=True):
        assert torch.equal(fast.canvas, slow.canvas)
        # the same rows as the exact block cache: the unfinished ones at a block's first step,
        # the current block otherwise
        assert fast.rows_computed == slow.rows_computed
        torch.testing.assert_close(fast.logits, slow.logits, atol=ATOL, rtol=RTOL)
    extra = sparse.stats.extra
    assert extra["sparse_steps"] > 0 and extra["dense_steps"] > 0
    cache = dense.stats.extra["block_diffusion"]
    assert extra["block_diffusion"]["rows_computed"] == cache["rows_computed"]
    assert (
        extra["block_diffusion"]["rows_the_reference_computes"]
        == cache["rows_the_reference_computes"]
    )
    # every computed row went through every layer's FFN: the share of the reference's rows
    assert extra["computed_token_ratio"] == pytest.approx(
        cache["rows_computed"] / cache["rows_the_reference_computes"]
    )


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_row_on_a_batch_with_rows_in_different_blocks(models, sampler: str) -> None:
    model = models["official"]
    dense = recorded(model, PROMPTS, sampler)[0]
    sparse, reports = recorded(model, PROMPTS, sampler, policy=EveryRow(), check_invariants=True)
    assert sparse.token_ids == dense.token_ids
    assert any(len(set(report.blocks)) > 1 for report in reports)
    split = recorded(model, PROMPTS, sampler, policy=EveryRow(), max_batch_size=2)[0]
    assert split.token_ids == dense.token_ids  # a fresh canvas drops the rows' caches


POLICIES = {
    "dyllm": lambda: CosineThreshold(0.99, warmup_steps=1),
    "topk": lambda: TopK(1, warmup_steps=1),
}


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("name", ["official", "tiny"])
def test_saliency_policies_select_rows_inside_the_current_block(
    models, name: str, policy: str, sampler: str
) -> None:
    model, prompts = models[name], prompts_of(name)
    make = POLICIES[policy]
    result, reports = recorded(
        model, prompts, sampler, policy=make(), check_invariants=True, trace=True
    )
    alone = [
        recorded(model, [prompt], sampler, policy=make(), check_invariants=True)[0].token_ids[0]
        for prompt in prompts
    ]
    assert result.token_ids == alone  # each row keeps its own state, cache and plan
    assert all(len(answer) == 12 for answer in result.token_ids)
    extra = result.stats.extra
    assert extra["sparse_steps"] > 0
    width = RUNS[sampler]["block_length"]
    sparse = [entry for entry in extra["trace"] if not entry["dense"]]
    layers = model.config.num_layers
    # trace fractions are over each step's window; queries of a sparse step are the block
    queries = sum(entry["queries"] * layers for entry in sparse)
    ffn_rows = sum(sum(entry["ffn"]) for entry in sparse)
    assert ffn_rows < queries
    if policy == "topk":  # exactly k = 1 of the block's 4 query rows at every layer
        for entry in sparse:
            assert all(ffn * width == pytest.approx(entry["queries"]) for ffn in entry["ffn"])
    # a sparse step computes the block's rows (its query rows), never the window
    assert {computed for report in reports for computed in report.rows_computed} >= {width}
    ours = extra["block_diffusion"]
    assert ours["rows_computed"] < ours["rows_the_reference_computes"]
    # FFN row-layers against what the exact block cache computes over the same steps' windows
    assert (
        extra["computed_token_ratio"] < ours["rows_computed"] / ours["rows_the_reference_computes"]
    )
    assert extra["expert_fraction"] < 1.0


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_planned_capacities_give_the_read_back_tokens(models, sampler: str, monkeypatch) -> None:
    """DyLLM's capacities are guesses: on a GPU (`planned`) a layer may overflow and the step
    runs again after putting back what it wrote (per row, on the row's own cache); guesses of
    one row force that path, and the tokens are those of exact counts."""
    model = models["official"]

    def run(mode: str) -> Any:
        monkeypatch.setenv("DYLLM_ROW_CAPACITY", mode)
        policy = CosineThreshold(0.99, warmup_steps=1)
        return recorded(model, PROMPTS, sampler, policy=policy, check_invariants=True)[0]

    exact = run("read-back")
    monkeypatch.setattr(block_saliency._RowDenoiser, "_guess", lambda self, layer, count: 1)
    planned = run("planned")
    assert planned.token_ids == exact.token_ids
    assert exact.stats.extra["capacity_retries"] == 0
    assert planned.stats.extra["capacity_retries"] > 0


def test_layer_adaptive_runs_under_block_diffusion(models) -> None:
    model = models["tiny"]
    layers = model.config.num_layers
    for policy in (
        LayerAdaptive(taus=[0.99] * layers, warmup_steps=1),
        LayerAdaptive(budgets=[0.5] * layers, warmup_steps=1),
    ):
        result = recorded(model, TINY_PROMPTS, "llada2", policy=policy, check_invariants=True)[0]
        assert all(len(answer) == 12 for answer in result.token_ids)
        assert result.stats.extra["sparse_steps"] > 0


def test_dense_with_trace_runs_on_the_saliency_engine(models) -> None:
    model = models["tiny"]
    plain = recorded(model, TINY_PROMPTS, "llada2")[0]
    traced = recorded(model, TINY_PROMPTS, "llada2", policy=Dense(), trace=True)[0]
    assert traced.token_ids == plain.token_ids
    extra = traced.stats.extra
    assert extra["sparse_steps"] == 0 and all(entry["dense"] for entry in extra["trace"])


class _WholeCanvas(SaliencyPolicy):
    """A plugin-style policy that ignores `block_causal`: queries every row of the canvas."""

    name = "whole-canvas"

    def plan(self, step: StepContext) -> StepPlan:
        if step.step == 0:
            return StepPlan.dense_step()
        return StepPlan(dense=False, queries=step.all_rows, refresh=step.all_rows)

    def select(self, layer: int, signals: AttentionSignals) -> torch.Tensor:
        return signals.queries


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"policy": PrefixCache()}, "'fast-prefix' does not apply .* policy=None"),
        ({"policy": DualCache()}, "'fast-dual' does not apply .* already does"),
        ({"policy": DLLMCache()}, "'dllm-cache' does not apply .* refresh clocks"),
        (
            {"policy": CosineThreshold(0.99, softmax_statistics="cached")},
            "'dyllm' does not apply .* softmax_statistics='exact'",
        ),
        ({"policy": TopK(1), "block_cache": False}, "block_cache=False .* takes no policy"),
        ({"trace": True, "block_cache": False}, "block_cache=False .* takes no policy"),
        ({"policy": _WholeCanvas()}, "query rows outside the current block"),
    ],
)
def test_what_block_diffusion_refuses_of_the_policies(models, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        recorded(models["tiny"], TINY_PROMPTS[:1], "llada2", **options)
