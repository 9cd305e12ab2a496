"""The sparse step's contract and mechanism on tiny models of both layouts.

The contract: with every row refreshed and selected, the sparse path computes what the dense
forward computes (same tokens, logits within float32 rounding). The mechanism: rows outside a
selection keep their cached FFN output and K/V bit for bit, the cosine signal and the selections
match naive computations, budgets are exact, user policies plug in, bytes are accounted.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dyllm import generate
from dyllm.cache import CacheInvariantError
from dyllm.engine import SaliencyDenoiser
from dyllm.engine.sparse_step import QueryRows
from dyllm.generation import StepContext, run_sampler
from dyllm.kernels import row_cosine
from dyllm.policies import (
    AttentionSignals,
    CosineThreshold,
    EveryRow,
    SaliencyPolicy,
    StepPlan,
    TopK,
)
from tests.checkpoints import tiny_model
from tests.recording import generate_recording

PROMPTS_ONE = [[5, 6, 7, 8, 9, 10, 11]]
PROMPTS_PADDED = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]]


def _options(family: str) -> dict:
    if family == "llada":
        return {"gen_length": 16, "steps": 16, "block_length": 8, "remasking": "low_confidence"}
    return {"gen_length": 16, "steps": 16, "alg": "entropy"}


def _run(model, prompts, policy: SaliencyPolicy | None, **options):
    return generate_recording(model, prompts, policy, **options)


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("prompts", [PROMPTS_ONE, PROMPTS_PADDED], ids=["batch1", "padded"])
def test_every_row_salient_reproduces_dense_generation(family: str, prompts) -> None:
    model = tiny_model(family, seed=11)
    options = _options(family)
    dense, dense_steps = _run(model, prompts, None, **options)
    sparse, sparse_steps = _run(model, prompts, EveryRow(), **options)
    assert sparse.token_ids == dense.token_ids
    assert len(sparse_steps.logits) == len(dense_steps.logits) == 16
    for dense_logits, sparse_logits in zip(dense_steps.logits, sparse_steps.logits, strict=True):
        torch.testing.assert_close(sparse_logits, dense_logits, atol=2e-5, rtol=1e-5)
    assert sparse.stats.extra["computed_token_ratio"] == 1.0
    assert sparse.stats.extra["sparse_steps"] == 16


# ------------------------------------------------------------------ one sparse step, closely


class ScriptedPolicy(SaliencyPolicy):
    """Step 0 dense; later steps sparse over the response rows, refreshing and selecting the
    rows given; records what it saw."""

    def __init__(self, refresh_columns: list[int], select_columns: list[int]) -> None:
        self.refresh_columns = refresh_columns
        self.select_columns = select_columns
        self.cosines: list[torch.Tensor] = []

    def plan(self, step: StepContext) -> StepPlan:
        if step.step == 0:
            return StepPlan.dense_step()
        refresh = torch.zeros_like(step.masked)
        refresh[:, self.refresh_columns] = True
        return StepPlan(dense=False, queries=step.response_rows, refresh=refresh)

    def select(self, layer: int, signals: AttentionSignals) -> torch.Tensor:
        self.cosines.append(signals.context_cosine.clone())
        chosen = torch.zeros_like(signals.queries)
        chosen[:, self.select_columns] = True
        return chosen


def _two_steps(policy: SaliencyPolicy, family: str = "llada"):
    """A dense step, a snapshot of the cache, then one sparse step on a changed canvas."""
    model = tiny_model(family, seed=4)
    mask = model.config.mask_token_id
    x = torch.tensor([[5, 6, 7, 8] + [mask] * 8, [9, 10, 11, 12] + [mask] * 8])
    denoiser = SaliencyDenoiser(model, policy, check_invariants=True)

    def context(step: int, committed: torch.Tensor | None) -> StepContext:
        return StepContext.on_canvas(
            x,
            step=step,
            block_start=4,
            block_end=12,
            prompt_length=4,
            mask_token_id=mask,
            logit_shift=bool(model.config.logit_shift),
            newly_committed=committed,
        )

    denoiser(x, context(0, None))
    before = {
        name: [denoiser.cache[i].buffer(name).clone() for i in range(2)]
        for name in ("key", "value", "context", "ffn_out")
    }
    x[:, 5] = 30
    x[:, 9] = 31
    committed = torch.zeros_like(x, dtype=torch.bool)
    committed[:, [5, 9]] = True
    logits = denoiser(x, context(1, committed))
    return model, denoiser, before, logits, x


def test_rows_outside_the_selection_keep_ffn_output_and_kv_bit_for_bit() -> None:
    policy = ScriptedPolicy(refresh_columns=[5, 9], select_columns=[6, 10])
    model, denoiser, before, logits, _ = _two_steps(policy)
    for layer in range(2):
        buffers = denoiser.cache[layer]
        refreshed = [5, 9] if layer == 0 else [6, 10]
        untouched = [c for c in range(12) if c not in refreshed]
        assert torch.equal(buffers.key[:, :, untouched], before["key"][layer][:, :, untouched])
        assert torch.equal(buffers.value[:, :, untouched], before["value"][layer][:, :, untouched])
        assert not torch.equal(buffers.key[:, :, refreshed], before["key"][layer][:, :, refreshed])
        unselected = [c for c in range(12) if c not in (6, 10)]
        assert torch.equal(buffers.ffn_out[:, unselected], before["ffn_out"][layer][:, unselected])
        assert not torch.equal(buffers.ffn_out[:, [6, 10]], before["ffn_out"][layer][:, [6, 10]])
        # prompt rows were not queries: their context stays as the dense step left it
        assert torch.equal(buffers.context[:, :4], before["context"][layer][:, :4])
    assert logits.shape == (2, 8, model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_gathered_and_sliced_query_rows_agree_bit_for_bit(monkeypatch) -> None:
    """Query rows forming one span are read and written as slices; any other query set is
    gathered and scattered by index. Both give the same step, bit for bit."""
    _, sliced, _, sliced_logits, _ = _two_steps(
        ScriptedPolicy(refresh_columns=[5, 9], select_columns=[6, 10])
    )
    query_rows = SaliencyDenoiser._query_rows
    spans: list[tuple[int, int] | None] = []

    def gather_always(self, queries, refresh, ctx) -> tuple[QueryRows, int]:
        rows, most_refreshed = query_rows(self, queries, refresh, ctx)
        spans.append(rows.span)
        return dataclasses.replace(rows, span=None), most_refreshed

    monkeypatch.setattr(SaliencyDenoiser, "_query_rows", gather_always)
    _, gathered, _, gathered_logits, _ = _two_steps(
        ScriptedPolicy(refresh_columns=[5, 9], select_columns=[6, 10])
    )
    assert spans == [(4, 12)]  # the same queries, read as a span unless patched
    assert torch.equal(sliced_logits, gathered_logits)
    for layer in range(2):
        for name in ("key", "value", "context", "ffn_out"):
            assert torch.equal(sliced.cache[layer].buffer(name), gathered.cache[layer].buffer(name))


def _shared_span(index: torch.Tensor) -> tuple[int, int] | None:
    """The span the engine finds for query rows at the ascending positions `index` [B, Q]."""
    model = tiny_model("llada", seed=0)
    queries = torch.zeros(index.shape[0], 8, dtype=torch.bool)
    queries.scatter_(1, index, True)
    # an empty block, so an empty logit window: every query set covers it
    ctx = StepContext.on_canvas(
        queries.long(),
        step=1,
        block_start=0,
        block_end=0,
        prompt_length=0,
        mask_token_id=model.config.mask_token_id,
        logit_shift=False,
    )
    denoiser = SaliencyDenoiser(model, EveryRow(), check_invariants=True)
    rows, _ = denoiser._query_rows(queries, queries, ctx)
    assert torch.equal(rows.index, index)
    return rows.span


def test_a_span_is_recognised_only_when_every_sequence_shares_it() -> None:
    assert _shared_span(torch.tensor([[4, 5, 6], [4, 5, 6]])) == (4, 7)
    assert _shared_span(torch.tensor([[4, 5, 6], [5, 6, 7]])) is None
    assert _shared_span(torch.tensor([[4, 5, 7], [4, 5, 7]])) is None
    assert _shared_span(torch.zeros(2, 0, dtype=torch.long)) is None


def test_cosine_signal_matches_a_naive_computation() -> None:
    policy = ScriptedPolicy(refresh_columns=[5, 9], select_columns=[6])
    _, denoiser, before, _, _ = _two_steps(policy)
    for layer in range(2):
        new = denoiser.cache[layer].context
        naive = row_cosine(new, before["context"][layer])
        naive[:, :4] = 1.0
        torch.testing.assert_close(policy.cosines[layer], naive, atol=1e-6, rtol=0)


def test_cosine_threshold_selects_exactly_the_rows_below_tau() -> None:
    scripted = ScriptedPolicy(refresh_columns=[5, 9], select_columns=[6])
    _two_steps(scripted)
    response_cosines = scripted.cosines[0][:, 4:]
    tau = float(response_cosines.flatten().median())

    class Probe(CosineThreshold):
        def __init__(self) -> None:
            super().__init__(tau=tau, warmup_steps=1)
            self.seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

        def select(self, layer: int, signals: AttentionSignals) -> torch.Tensor:
            chosen = super().select(layer, signals)
            self.seen.append((signals.context_cosine.clone(), signals.queries, chosen))
            return chosen

    policy = Probe()
    _two_steps(policy)
    for cosine, queries, chosen in policy.seen:
        assert torch.equal(chosen, queries & (cosine < tau))
    layer0_cosine, queries, chosen = policy.seen[0]
    torch.testing.assert_close(layer0_cosine, scripted.cosines[0], atol=0, rtol=0)
    assert 0 < int(chosen.sum()) < int(queries.sum())


def test_top_k_selects_exactly_k_rows_per_sequence_at_every_layer() -> None:
    model = tiny_model("llada", seed=2)
    policy = TopK(k=3, warmup_steps=2)
    result, _ = _run(model, PROMPTS_PADDED, policy, **_options("llada"))
    counts = [list(map(int, step)) for step in _trace_counts(model, policy)]
    assert counts and all(c == [3 * 3, 3 * 3] for c in counts)
    assert result.stats.extra["sparse_steps"] == 14


def _trace_counts(model, policy) -> list[list[int]]:
    denoiser = SaliencyDenoiser(model, policy, trace=True, check_invariants=True)
    run_sampler(model, PROMPTS_PADDED, denoiser, **_options("llada"))
    rows = 3 * (7 + 16)
    trace = denoiser.extra_stats()["trace"]
    return [[round(f * rows) for f in entry["ffn"]] for entry in trace if not entry["dense"]]


def test_a_user_policy_plugs_in_with_one_class() -> None:
    class StillMasked(SaliencyPolicy):
        """Dense for two steps, then recompute only rows that are still masked."""

        name = "still-masked"

        def plan(self, step: StepContext) -> StepPlan:
            if step.step < 2:
                return StepPlan.dense_step()
            return StepPlan(
                dense=False,
                queries=step.response_rows,
                refresh=step.newly_committed & step.response_rows,
            )

        def select(self, layer: int, signals: AttentionSignals) -> torch.Tensor:
            return signals.queries & signals.step.masked

    model = tiny_model("dream", seed=8)
    result, _ = _run(model, PROMPTS_ONE, StillMasked(), **_options("dream"))
    extra = result.stats.extra
    assert extra["policy"]["name"] == "still-masked"
    assert extra["dense_steps"] == 2 and extra["sparse_steps"] == 14
    assert 0 < extra["computed_token_ratio"] < 1
    assert len(result.token_ids[0]) == 16


def test_cache_bytes_match_the_buffers_allocated() -> None:
    model = tiny_model("dream", seed=1)
    result, _ = _run(model, PROMPTS_PADDED, CosineThreshold(0.99), **_options("dream"))
    c = model.config
    batch, length = 3, 7 + 16
    per_layer = (
        2 * batch * c.num_kv_heads * length * c.head_dim  # K and V
        + batch * length * c.num_heads * c.head_dim  # context
        + batch * length * c.hidden_size  # FFN output
    )
    assert result.stats.extra["cache_bytes"] == c.num_layers * per_layer * 4


def test_reading_a_cache_before_any_dense_step_fails_loudly() -> None:
    class NoWarmup(ScriptedPolicy):
        def plan(self, step: StepContext) -> StepPlan:
            refresh = torch.zeros_like(step.masked)
            refresh[:, 5] = True
            return StepPlan(dense=False, queries=step.response_rows, refresh=refresh)

    model = tiny_model("llada", seed=0)
    with pytest.raises(CacheInvariantError, match="before anything was written"):
        generate(
            model,
            PROMPTS_ONE,
            policy=NoWarmup([5], [6]),
            check_invariants=True,
            **_options("llada"),
        )


def test_queries_must_cover_the_rows_the_sampler_reads() -> None:
    class PromptOnly(ScriptedPolicy):
        def plan(self, step: StepContext) -> StepPlan:
            if step.step == 0:
                return StepPlan.dense_step()
            prompt = step.columns(0, step.prompt_length)
            return StepPlan(dense=False, queries=prompt, refresh=prompt)

    model = tiny_model("llada", seed=0)
    with pytest.raises(ValueError, match="left rows out of its queries"):
        generate(
            model,
            PROMPTS_ONE,
            policy=PromptOnly([], []),
            check_invariants=True,
            **_options("llada"),
        )
