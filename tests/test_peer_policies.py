"""The peers' caching strategies as policies: Fast-dLLM PrefixCache / DualCache and dLLM-Cache.

Each strategy is held, on tiny models of both layouts, to:

1. a degenerate setting that must equal dense generation token for token;
2. its definition: which rows are computed at which step and layer (recorded from the masks the
   engine used and from its statistics); for the block caches also the logits Fast-dLLM's own
   computation gives (every K/V from the block's first step, the computed rows run in full over
   them); for dLLM-Cache the chosen rows against a naive cosine of fresh V and cached V;
3. threshold parallel decoding, with the statistics every policy reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import dyllm
from dyllm.engine import SaliencyDenoiser
from dyllm.generation import Denoiser, StepContext, run_sampler
from dyllm.policies import (
    AttentionSignals,
    CosineThreshold,
    DLLMCache,
    DualCache,
    LayerSignals,
    PrefixCache,
    SaliencyPolicy,
    StepPlan,
)
from dyllm.policies.dllm_cache import transfer_rows
from dyllm.policies.registry import make_policy
from tests.checkpoints import tiny_model

PROMPTS_ONE = [[5, 6, 7, 8, 9, 10, 11]]
PROMPTS_PADDED = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]]
FAMILIES = ["llada", "dream"]
BATCHES = pytest.mark.parametrize("prompts", [PROMPTS_ONE, PROMPTS_PADDED], ids=["one", "padded"])


def _sampler(family: str) -> dict:
    return {"remasking": "low_confidence"} if family == "llada" else {"alg": "entropy"}


# ------------------------------------------------------------------ degenerate = dense


@pytest.mark.parametrize("policy_class", [PrefixCache, DualCache])
@pytest.mark.parametrize("family", FAMILIES)
@BATCHES
def test_block_caches_with_one_step_per_block_equal_dense_generation(
    policy_class, family: str, prompts
) -> None:
    model = tiny_model(family, seed=5)
    options = {"gen_length": 16, "steps": 4, "block_length": 4, **_sampler(family)}
    dense = dyllm.generate(model, prompts, **options)
    cached = dyllm.generate(model, prompts, policy=policy_class(), check_invariants=True, **options)
    assert cached.token_ids == dense.token_ids
    assert cached.stats.extra["dense_steps"] == 4
    assert cached.stats.extra["sparse_steps"] == 0


@pytest.mark.parametrize("family", FAMILIES)
@BATCHES
def test_dllm_cache_refreshing_every_step_equals_dense_generation(family: str, prompts) -> None:
    model = tiny_model(family, seed=6)
    options = {"gen_length": 16, "steps": 16, "block_length": 8, **_sampler(family)}
    dense = dyllm.generate(model, prompts, **options)
    policy = DLLMCache(prompt_interval=1, gen_interval=1, transfer_ratio=0.25)
    cached = dyllm.generate(model, prompts, policy=policy, check_invariants=True, **options)
    assert cached.token_ids == dense.token_ids
    assert cached.stats.extra["dense_steps"] == 16


@pytest.mark.parametrize("family", FAMILIES)
@BATCHES
def test_dllm_cache_updating_every_row_on_sparse_steps_equals_dense_generation(
    family: str, prompts
) -> None:
    """Prompt refreshed every step and every response row transferred: the sparse steps compute
    every row of every layer, so the tokens are the dense ones."""
    model = tiny_model(family, seed=6)
    options = {"gen_length": 16, "steps": 16, "block_length": 8, **_sampler(family)}
    dense = dyllm.generate(model, prompts, **options)
    policy = DLLMCache(prompt_interval=1, gen_interval=100, transfer_ratio=1.0)
    cached = dyllm.generate(model, prompts, policy=policy, check_invariants=True, **options)
    assert cached.token_ids == dense.token_ids
    extra = cached.stats.extra
    assert extra["dense_steps"] == 1 and extra["sparse_steps"] == 15
    assert extra["computed_token_ratio"] == 1.0


# ------------------------------------------------------------------ recording what ran


@dataclass
class LayerRecord:
    queries: torch.Tensor
    refreshed: torch.Tensor
    selected: torch.Tensor
    value_cosine: torch.Tensor | None
    """The V-cosine signal as the policy read it; None when nobody read it."""


class Recorder(SaliencyPolicy):
    """Answers as `inner` does and keeps, per step, the plan and each layer's row sets."""

    def __init__(self, inner: SaliencyPolicy) -> None:
        self.inner = inner
        self.name = inner.name
        self.attention = inner.attention
        self.plans: dict[int, tuple[StepContext, StepPlan]] = {}
        self.layers: dict[tuple[int, int], LayerRecord] = {}
        self.value_cosines: dict[tuple[int, int], torch.Tensor | None] = {}

    def reset(self, num_layers: int) -> None:
        self.inner.reset(num_layers)

    def plan(self, step: StepContext) -> StepPlan:
        plan = self.inner.plan(step)
        self.plans[step.step] = (step, plan)
        return plan

    def rows_to_refresh(self, layer: int, signals: LayerSignals) -> torch.Tensor:
        refreshed = self.inner.rows_to_refresh(layer, signals)
        # a cached_property lands in the instance dict once read
        self.value_cosines[(signals.step.step, layer)] = vars(signals).get("value_cosine")
        return refreshed

    def select(self, layer: int, signals: AttentionSignals) -> torch.Tensor:
        selected = self.inner.select(layer, signals) & signals.queries
        assert signals.refreshed is not None
        key = (signals.step.step, layer)
        self.layers[key] = LayerRecord(
            queries=signals.queries,
            refreshed=signals.refreshed,
            selected=selected,
            value_cosine=self.value_cosines.pop(key),
        )
        return selected

    def row_budget(self, step: StepContext, layer: int, query_count: int) -> int | None:
        return self.inner.row_budget(step, layer, query_count)

    def describe(self) -> dict[str, object]:
        return self.inner.describe()


def _traced(model, prompts, policy: SaliencyPolicy, **options):
    """Generate with `policy`; the result and the engine's trace (row counts per layer)."""
    result = dyllm.generate(
        model, prompts, policy=policy, trace=True, check_invariants=True, **options
    )
    return result, result.stats.extra["trace"]


def _count(fraction: float, rows: int) -> int:
    return round(fraction * rows)


# ------------------------------------------------------------------ Fast-dLLM


def _block_rows(policy_class, step: StepContext, shift: int) -> torch.Tensor:
    """The rows Fast-dLLM computes at a block's later steps: the current block (prefix cache:
    and the suffix), from one column earlier with a logit shift."""
    end = step.length if policy_class is PrefixCache else step.block_end
    return step.columns(step.block_start - shift, end)


@pytest.mark.parametrize("policy_class", [PrefixCache, DualCache])
@pytest.mark.parametrize("family", FAMILIES)
def test_block_caches_compute_exactly_their_rows_between_block_starts(
    policy_class, family: str
) -> None:
    model = tiny_model(family, seed=7)
    options = {"gen_length": 16, "steps": 8, "block_length": 8, **_sampler(family)}
    recorder = Recorder(policy_class())
    result, trace = _traced(model, PROMPTS_PADDED, recorder, **options)
    batch, length = 3, 7 + 16
    shift = 1 if family == "dream" else 0
    assert [plan.dense for _, plan in recorder.plans.values()] == [True, False, False, False] * 2
    for number, (step, plan) in recorder.plans.items():
        if plan.dense:
            assert step.first_step_in_block
            assert trace[number]["dense"]
            continue
        expected = _block_rows(policy_class, step, shift)
        assert torch.equal(plan.queries, expected)
        for layer in range(model.config.num_layers):
            record = recorder.layers[(number, layer)]
            assert torch.equal(record.refreshed, expected)
            assert torch.equal(record.selected, expected)
            assert record.value_cosine is None  # the V signal is never computed for them
        rows_per_sequence = int(expected[0].sum())
        if policy_class is DualCache:
            assert rows_per_sequence == 8 + shift
        else:
            assert rows_per_sequence == length - step.block_start + shift
        computed = batch * rows_per_sequence
        rows = batch * length
        assert [_count(f, rows) for f in trace[number]["attention"]] == [computed] * 2
        assert [_count(f, rows) for f in trace[number]["ffn"]] == [computed] * 2
    assert len(result.token_ids[0]) == 16


def _fast_dllm_reference(
    model,
    first_canvas: torch.Tensor,
    canvas: torch.Tensor,
    computed: tuple[int, int],
    window: tuple[int, int],
    key_mask: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """Logits [B, W, V] of columns window[0]..window[1]-1 as Fast-dLLM computes a later step of a
    block: every layer's K/V come from a full forward over the block's first canvas; then only
    columns computed[0]..computed[1]-1 run through the layers, their fresh K/V replacing the
    cached ones, each attending over every key."""
    cos, sin = model.rope(positions)
    h = model.embed(first_canvas)
    cached = []
    for layer in model.layers:
        _, key, value = layer.project_qkv(layer.attn_norm(h), cos, sin)
        cached.append((key, value))
        h = layer(h, cos, sin, key_mask)
    start, end = computed
    h = model.embed(canvas[:, start:end])
    for layer, (key, value) in zip(model.layers, cached, strict=True):
        q, k, v = layer.project_qkv(layer.attn_norm(h), cos[:, start:end], sin[:, start:end])
        key, value = key.clone(), value.clone()
        key[:, :, start:end] = k
        value[:, :, start:end] = v
        h = h + layer.o_proj(layer.attend(q, key, value, key_mask))
        h = h + layer.feed_forward(h)
    rows = h[:, window[0] - start : window[1] - start]
    return model.lm_head(model.final_norm(rows))


@pytest.mark.parametrize("policy_class", [PrefixCache, DualCache])
@pytest.mark.parametrize("family", FAMILIES)
def test_block_caches_give_fast_dllm_logits_and_keep_frozen_rows_bit_for_bit(
    policy_class, family: str
) -> None:
    """Block 1 of three (prompt 4, blocks of 4) on a padded batch: the block's first step, then
    two later steps that commit tokens inside the block."""
    model = tiny_model(family, seed=9)
    mask = model.config.mask_token_id
    shift = 1 if family == "dream" else 0
    canvas = torch.tensor(
        [[5, 6, 7, 8, 30, 31, 32, 33] + [mask] * 8, [0, 9, 10, 11, 40, 41, 42, 43] + [mask] * 8]
    )
    key_mask = torch.ones_like(canvas, dtype=torch.bool)
    key_mask[1, 0] = False
    positions = (key_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    denoiser = SaliencyDenoiser(model, policy_class(), check_invariants=True)
    computed = (8 - shift, 16 if policy_class is PrefixCache else 12)
    window = (8 - shift, 12 - shift)

    def context(step: int, committed: torch.Tensor | None) -> StepContext:
        return StepContext.on_canvas(
            canvas,
            step=step,
            block=1,
            block_start=8,
            block_end=12,
            prompt_length=4,
            mask_token_id=mask,
            logit_shift=bool(model.config.logit_shift),
            newly_committed=committed,
            attention_mask=key_mask,
            position_ids=positions,
        )

    first_canvas = canvas.clone()
    denoiser(canvas, context(0, None))
    after_first = [denoiser.cache[i].key.clone() for i in range(model.config.num_layers)]
    for step, (column, token) in enumerate([(9, 50), (11, 51)], start=1):
        canvas = canvas.clone()
        canvas[:, column] = token
        committed = torch.zeros_like(canvas, dtype=torch.bool)
        committed[:, column] = True
        logits = denoiser(canvas, context(step, committed))
        expected = _fast_dllm_reference(
            model, first_canvas, canvas, computed, window, key_mask, positions
        )
        torch.testing.assert_close(logits, expected, atol=2e-5, rtol=1e-5)
    frozen = [c for c in range(16) if not computed[0] <= c < computed[1]]
    for layer, before in enumerate(after_first):
        key = denoiser.cache[layer].key
        assert torch.equal(key[:, :, frozen], before[:, :, frozen])
        assert not torch.equal(key[:, :, [9, 11]], before[:, :, [9, 11]])


# ------------------------------------------------------------------ dLLM-Cache


KEPT = ("value", "context", "ffn_out")


class Snapshots(Denoiser):
    """Runs a `SaliencyDenoiser`, keeping before each step every layer's cached V, context and
    FFN output and, during the step, each layer's attn_norm output (the hidden states of the
    rows the step computes). `cached[s][name][layer]` is the cache as step s found it."""

    def __init__(self, inner: SaliencyDenoiser) -> None:
        super().__init__()
        self.inner = inner
        self.cached: list[dict[str, list[torch.Tensor]] | None] = []
        self.normed: list[dict[int, torch.Tensor]] = []
        self.hooks = [
            layer.attn_norm.register_forward_hook(self._keeper(index))
            for index, layer in enumerate(inner.model.layers)
        ]

    def _keeper(self, index: int):
        def keep(module, args, output) -> None:
            self.normed[-1][index] = output.clone()

        return keep

    def __call__(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        cache = self.inner.cache
        layers = range(self.inner.model.config.num_layers)
        self.cached.append(
            None
            if cache is None
            else {name: [cache[i].buffer(name).clone() for i in layers] for name in KEPT}
        )
        self.normed.append({})
        logits = self.inner(x, ctx)
        self.nfe = self.inner.nfe
        self.last_step_dense = self.inner.last_step_dense
        return logits

    def extra_stats(self) -> dict:
        return self.inner.extra_stats()

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()


def _naive_value_cosine(model, layer: int, normed, cached_value, columns) -> torch.Tensor:
    """cosine(v_proj(normed rows), cached V at `columns`) per row: [B, Q]."""
    fresh = model.layers[layer].v_proj(normed)  # [B, Q, KV * D]
    cached = cached_value[:, :, columns].transpose(1, 2).flatten(2)  # [B, Q, KV * D]
    return F.cosine_similarity(fresh.float(), cached.float(), dim=-1)


@pytest.mark.parametrize("transfer_ratio", [0.3, 0.0])
@pytest.mark.parametrize("family", FAMILIES)
def test_dllm_cache_computes_its_rows_at_each_step_and_layer(family: str, transfer_ratio) -> None:
    """16 steps, prompt every 5th, response every 3rd: steps 0 and 15 dense, 5 and 10 prompt
    refreshes, 3, 6, 9, 12 response refreshes, the rest partial updates."""
    model = tiny_model(family, seed=3)
    options = {"gen_length": 16, "steps": 16, "block_length": 8, **_sampler(family)}
    recorder = Recorder(DLLMCache(prompt_interval=5, gen_interval=3, transfer_ratio=transfer_ratio))
    snapshot = Snapshots(SaliencyDenoiser(model, recorder, trace=True, check_invariants=True))
    result = run_sampler(model, PROMPTS_PADDED, snapshot, **options)
    snapshot.close()
    trace = result.stats.extra["trace"]
    batch, prompt_length, length = 3, 7, 7 + 16
    response_start = prompt_length - (1 if family == "dream" else 0)
    response_count = length - response_start
    transferred = transfer_rows(response_count, transfer_ratio)
    # ceil(0.3 x 16) = 5 response rows on LLaDA, ceil(0.3 x 17) = 6 on Dream (shifted response)
    assert transferred == ({"llada": 5, "dream": 6}[family] if transfer_ratio else 0)

    assert sorted(n for n, (_, p) in recorder.plans.items() if p.dense) == [0, 15]
    for number, (step, plan) in recorder.plans.items():
        if plan.dense:
            continue
        response = step.response_rows
        prompt_refresh, response_refresh = number in (5, 10), number in (3, 6, 9, 12)
        assert torch.equal(plan.queries, step.all_rows if prompt_refresh else response)
        for layer in range(model.config.num_layers):
            record = recorder.layers[(number, layer)]
            assert torch.equal(record.selected, record.refreshed)
            counts = _count(trace[number]["attention"][layer], batch * length)
            assert counts == _count(trace[number]["ffn"][layer], batch * length)
            if layer == 0 or response_refresh:
                assert torch.equal(record.refreshed, plan.queries)
                assert record.value_cosine is None
                assert counts == int(plan.queries.sum())
                continue
            if prompt_refresh:
                assert torch.equal(record.refreshed & ~response, ~response)
            chosen = record.refreshed & response
            assert chosen.sum(dim=1).tolist() == [transferred] * batch
            assert counts == batch * (transferred + (response_start if prompt_refresh else 0))
            # the signal is the cosine of fresh V against cached V ...
            columns = plan.queries[0].nonzero().squeeze(1)
            naive = _naive_value_cosine(
                model,
                layer,
                snapshot.normed[number][layer],
                snapshot.cached[number]["value"][layer],
                columns,
            )
            signal = record.value_cosine
            assert signal is not None
            torch.testing.assert_close(signal[:, columns], naive, atol=1e-6, rtol=0)
            # ... and the chosen rows are the least similar response rows of each sequence
            for row in range(batch):
                picked = signal[row][chosen[row]]
                passed = signal[row][response[row] & ~chosen[row]]
                if len(picked):
                    assert float(picked.max()) <= float(passed.min())
            # rows not updated keep V, context (frozen attention) and FFN output bit for bit
            kept = ~record.refreshed
            for name in KEPT:
                before = snapshot.cached[number][name][layer]
                after = snapshot.cached[number + 1][name][layer]
                if name == "value":
                    before, after = before.transpose(1, 2), after.transpose(1, 2)
                assert torch.equal(after[kept], before[kept])


@pytest.mark.parametrize(
    "rows,ratio,expected", [(30, 0.1, 3), (17, 0.25, 5), (16, 0.3, 5), (16, 0.0, 0), (17, 1.0, 17)]
)
def test_transferred_rows_round_up(rows: int, ratio: float, expected: int) -> None:
    assert transfer_rows(rows, ratio) == expected


# ------------------------------------------------------------------ parallel decoding, statistics


def _policies() -> list:
    return [
        ("fast-prefix", PrefixCache),
        ("fast-dual", DualCache),
        ("dllm-cache", lambda: DLLMCache(prompt_interval=6, gen_interval=3, transfer_ratio=0.25)),
    ]


PARALLEL = [{"threshold": 0.1}, {"factor": 2.6}]
"""Low settings, greedy: a tiny random model's probabilities are near 1 / 97 (1 / 50 for Dream,
whose unset top_k keeps 50 tokens), so at threshold 0.9 every step would commit one token and the
parallel path would never commit several. (Seed 3: some random tiny models propose the mask token
itself, which a commit then leaves masked.)"""


@pytest.mark.parametrize("decoding", PARALLEL, ids=["threshold", "factor"])
@pytest.mark.parametrize("name,make", _policies(), ids=[name for name, _ in _policies()])
@pytest.mark.parametrize("family", FAMILIES)
def test_each_policy_runs_with_parallel_decoding(name: str, make, family: str, decoding) -> None:
    model = tiny_model(family, seed=3)
    options = {"gen_length": 16, "block_length": 8, "temperature": 0.0, **decoding}
    baseline = dyllm.generate(
        model, PROMPTS_PADDED, policy=CosineThreshold(0.99), check_invariants=True, **options
    )
    result = dyllm.generate(model, PROMPTS_PADDED, policy=make(), check_invariants=True, **options)
    stats, extra = result.stats, result.stats.extra
    assert extra["policy"]["name"] == name
    assert set(extra) == set(baseline.stats.extra)  # the same numbers for every policy
    assert stats.steps_run < 16  # some steps committed several tokens
    assert stats.nfe == stats.steps_run
    assert extra["dense_steps"] + extra["sparse_steps"] == stats.steps_run
    assert stats.generated_tokens == sum(stats.generated_tokens_per_row) > 0
    assert stats.tokens_per_second > 0
    assert all(0 < f < 1 for f in extra["ffn_fraction_per_layer"])
    if name != "dllm-cache":
        assert extra["dense_steps"] == 2  # the first step of each block


def test_dual_cache_statistics_count_exactly_the_block_rows() -> None:
    """With threshold decoding the number of steps depends on the data; the reported fractions
    still follow from it: dense steps count every row, sparse steps the block's."""
    model = tiny_model("dream", seed=3)
    options = {"gen_length": 16, "block_length": 4, "threshold": 0.1, "temperature": 0.0}
    result = dyllm.generate(
        model, PROMPTS_PADDED, policy=DualCache(), check_invariants=True, **options
    )
    extra = result.stats.extra
    length, block_rows = 7 + 16, 4 + 1  # Dream: one column before the block
    dense, sparse = extra["dense_steps"], extra["sparse_steps"]
    assert dense == 4 and 0 < sparse == result.stats.steps_run - 4 < 12
    expected = (dense * length + sparse * block_rows) / ((dense + sparse) * length)
    assert extra["attention_fraction_per_layer"] == [expected] * 2
    assert extra["ffn_fraction_per_layer"] == [expected] * 2
    assert extra["computed_token_ratio"] == expected


# ------------------------------------------------------------------ construction


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: DLLMCache(prompt_interval=0), "prompt_interval is a number of steps"),
        (lambda: DLLMCache(gen_interval=2.5), "gen_interval is a number of steps"),
        (lambda: DLLMCache(transfer_ratio=1.5), "transfer_ratio is the fraction"),
        (lambda: make_policy("fast-dual", "llada", warmup_steps=2), "takes no warmup_steps"),
        (lambda: make_policy("fast-prefix", "llada", tau=0.9), "takes no tau"),
        (lambda: make_policy("dllm-cache", "dream", k=3), "takes no k"),
        (lambda: make_policy("dyllm", "llada", transfer_ratio=0.2), "takes no transfer_ratio"),
    ],
)
def test_bad_parameters_are_refused(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_registry_builds_each_peer_policy_with_its_parameters() -> None:
    assert isinstance(make_policy("fast-prefix", "llada"), PrefixCache)
    assert isinstance(make_policy("fast-dual", "dream"), DualCache)
    policy = make_policy(
        "dllm-cache", "llada", prompt_interval=50, gen_interval=5, transfer_ratio=0.5, tau=None
    )
    assert policy.describe() == {
        "name": "dllm-cache",
        "attention": "frozen",
        "prompt_interval": 50,
        "gen_interval": 5,
        "transfer_ratio": 0.5,
    }
    assert make_policy("dllm-cache", "dream").describe()["prompt_interval"] == 100
