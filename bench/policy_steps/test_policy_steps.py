"""Regression guard: every built-in policy's sparse step, timed, beside its FLOP-ratio limit.

For each policy registered in `dyllm.policies.registry` (with the options in `POLICIES`; and
the option variants in `VARIANTS`, such as DyLLM with cached softmax statistics), a
round drives a fresh `SaliencyDenoiser` over the canvas of conftest's `SHAPE` (one token
committed per sequence and step, leftmost masked column of the block first) up to the policy's
first sparse step, untimed; the timed call is that sparse step alone. Every round starts from the
same state, so threshold policies select the same rows each round. Recorded in each benchmark's
`extra_info`:

* `dense_step_s`: median of a dense step on the same canvas, one timed in each round's setup
  (interleaved with the sparse steps), and `speedup`: dense over the sparse step's median;
* `flop_ratio`: dense FLOPs over the sparse step's FLOPs from its recompute counts (`step_flops`:
  projections, attention, FFN, LM head over the block);
* `flop_limit_fraction`: speedup / flop_ratio, the share of the arithmetic's speed-up the step
  achieves (1.0 = the step costs exactly its arithmetic);
* `weight_stream_s`: the time to stream the weights once at the machine's matrix-vector rate
  (conftest), and `limit_speedup`: dense over the larger of the step's arithmetic time
  (dense_step_s / flop_ratio) and that stream time; `limit_fraction`: speedup / limit_speedup,
  with `bound` naming which one applies ("arithmetic" or "weights": at batch 1 a step's few rows
  may leave the weights' reading, not the arithmetic, as its floor);
* the query, refreshed and selected row fractions of the timed step.

    make bench-policies     # pytest bench/policy_steps --benchmark-enable, JSON to bench/results/

The default test run skips these (testpaths is tests/, and --benchmark-disable is set).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import pytest
import torch

from dyllm.bench.flops import step_flops
from dyllm.engine import SaliencyDenoiser
from dyllm.generation import DenseDenoiser, StepContext
from dyllm.models import DiffusionTransformer
from dyllm.policies import SaliencyPolicy
from dyllm.policies.registry import make_policy, policy_names

POLICIES: dict[str, dict[str, object]] = {
    "dyllm": {"tau": 0.99},
    "topk": {"k": 0.1},
    "adaptive": {},  # budgets per layer: see `policy_options`
    "fast-prefix": {},
    "fast-dual": {},
    "dllm-cache": {},
}
"""Every built-in sparse policy and the options it is timed with (`dense` is the baseline)."""

VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "dyllm-cached-statistics": ("dyllm", {"tau": 0.99, "softmax_statistics": "cached"}),
}
"""Options beyond the defaults, timed under their own names: (registered policy, options)."""

CASES: dict[str, tuple[str, dict[str, object]]] = {
    **{name: (name, options) for name, options in POLICIES.items()},
    **VARIANTS,
}

ROUNDS = int(os.environ.get("DYLLM_BENCH_ROUNDS", "9"))
MAX_SETUP_STEPS = 16


def _context(shape, x: torch.Tensor, step: int, committed: torch.Tensor | None) -> StepContext:
    block = min((step * 1) // shape.block, shape.answer // shape.block - 1)
    start = shape.prompt + block * shape.block
    return StepContext.on_canvas(
        x,
        step=step,
        block_start=start,
        block_end=start + shape.block,
        prompt_length=shape.prompt,
        mask_token_id=shape.vocab - 1,
        logit_shift=False,
        newly_committed=committed,
        block=block,
        step_in_block=step - block * shape.block,
    )


def _canvas(shape) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randint(2, shape.vocab - 1, (shape.batch, shape.prompt), generator=generator)
    masks = torch.full((shape.batch, shape.answer), shape.vocab - 1)
    return torch.cat([prompt, masks], dim=1)


def _commit(shape, x: torch.Tensor, ctx: StepContext, step: int) -> torch.Tensor:
    """Commit one token per sequence at the block's leftmost masked column; the committed mask."""
    masked = x[:, ctx.block_start : ctx.block_end] == shape.vocab - 1
    column = ctx.block_start + masked.float().argmax(dim=1)
    rows = torch.arange(x.shape[0])
    x[rows, column] = 2 + (7 * step + rows) % (shape.vocab - 3)
    committed = torch.zeros_like(x, dtype=torch.bool)
    committed[rows, column] = True
    return committed


def policy_options(name: str, shape) -> dict[str, object]:
    """The options of `name` at `shape`: `adaptive` gets budgets 0.1 at the first and last
    layer and 0.2 between."""
    if name == "adaptive":
        return {"budgets": [0.1] + [0.2] * (shape.layers - 2) + [0.1]}
    return CASES[name][1]


def _first_sparse_step(policy: SaliencyPolicy, shape) -> int:
    x = _canvas(shape)
    for step in range(1, MAX_SETUP_STEPS):
        if not policy.plan(_context(shape, x, step, None)).dense:
            return step
    raise AssertionError(f"{policy.name} planned no sparse step in {MAX_SETUP_STEPS} steps")


def _prepared(
    model: DiffusionTransformer, shape, name: str, dense_times: list[float]
) -> Callable[[], tuple[tuple, dict]]:
    """A pytest-benchmark setup: a fresh denoiser driven to the policy's first sparse step, then
    one dense step on the same canvas timed into `dense_times` (interleaved with the timed
    sparse steps, so load on the machine hits both alike)."""
    dense = DenseDenoiser(model)

    def setup() -> tuple[tuple, dict]:
        policy = make_policy(CASES[name][0], family="llada", **policy_options(name, shape))
        target = _first_sparse_step(policy, shape)
        denoiser = SaliencyDenoiser(model, policy, trace=True)
        x = _canvas(shape)
        committed = None
        with torch.no_grad():
            for step in range(target):
                ctx = _context(shape, x, step, committed)
                denoiser(x, ctx)
                committed = _commit(shape, x, ctx, step)
            timed = _context(shape, x, target, committed)
            begin = time.perf_counter()
            dense(x, timed)
            dense_times.append(time.perf_counter() - begin)
        setup.denoiser = denoiser  # type: ignore[attr-defined]
        return (x, timed), {}

    return setup


def test_every_builtin_policy_is_timed() -> None:
    """A policy registered later must be added to `POLICIES`, or this guard misses it."""
    assert set(policy_names()) - {"dense"} == set(POLICIES)


def test_dense_step(benchmark, model, shape) -> None:
    """The baseline every policy's sparse step is compared with."""
    benchmark.group = "policy steps"
    dense = DenseDenoiser(model)
    x = _canvas(shape)
    ctx = _context(shape, x, 1, None)
    with torch.no_grad():
        benchmark.pedantic(dense, args=(x, ctx), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    if benchmark.disabled:  # --benchmark-disable: one untimed call, nothing to record
        return
    benchmark.extra_info["flops"] = step_flops(
        model.config, shape.length, shape.length, None, shape.block, False
    )


@pytest.mark.parametrize("name", list(CASES))
def test_sparse_step(benchmark, model, shape, weight_stream_s: float, name: str) -> None:
    """One sparse step of policy `name`, with its FLOP ratio and the share of it achieved."""
    benchmark.group = "policy steps"
    dense_times: list[float] = []
    setup = _prepared(model, shape, name, dense_times)

    def sparse_step(x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        with torch.no_grad():
            return setup.denoiser(x, ctx)  # type: ignore[attr-defined]

    benchmark.pedantic(sparse_step, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    denoiser = setup.denoiser  # type: ignore[attr-defined]
    entry = denoiser.statistics.trace[-1]
    assert not entry["dense"], f"{name}: the timed step was dense"
    if benchmark.disabled:  # --benchmark-disable: the step ran once, untimed
        return
    rows = shape.length
    counts = [
        (round(a * rows), round(f * rows))
        for a, f in zip(entry["attention"], entry["ffn"], strict=True)
    ]
    queries = round(entry["queries"] * rows)
    approximate = getattr(denoiser.policy, "attention", "frozen") == "approximate"
    cached = getattr(denoiser.policy, "softmax_statistics", "exact") == "cached"
    config = model.config
    sparse_flops = step_flops(config, rows, queries, counts, shape.block, approximate, cached)
    dense_flops = step_flops(config, rows, rows, None, shape.block, False)
    sparse_s = benchmark.stats.stats.median
    dense_s = statistics.median(dense_times)
    flop_ratio = dense_flops / sparse_flops
    speedup = dense_s / sparse_s
    arithmetic_s = dense_s / flop_ratio
    bound = "arithmetic" if arithmetic_s >= weight_stream_s else "weights"
    limit_speedup = dense_s / max(arithmetic_s, weight_stream_s)
    benchmark.extra_info.update(
        {
            "policy": denoiser.policy.describe(),
            "step": entry["step"],
            "dense_step_s": dense_s,
            "sparse_step_s": sparse_s,
            "speedup": speedup,
            "flop_ratio": flop_ratio,
            "flop_limit_fraction": speedup / flop_ratio,
            "weight_stream_s": weight_stream_s,
            "bound": bound,
            "limit_speedup": limit_speedup,
            "limit_fraction": speedup / limit_speedup,
            "query_fraction": entry["queries"],
            "refreshed_fraction": entry["attention"],
            "ffn_fraction": entry["ffn"],
        }
    )
    assert flop_ratio >= 1.0
