"""Cached softmax statistics in the engine (`softmax_statistics="cached"`), against their
definition computed naively, one row and head at a time in float64:

* a dense step writes every row's log-sum-exp lse[r, h] = logsumexp_j(q_r k_j / sqrt(D)) over the
  real keys (the forward's queries and keys);
* a sparse step rewrites the refreshed rows' lse (their q, the keys after the step's writes) and
  keeps the others';
* a non-refreshed query row's context becomes C_old + sum_{j in A} exp(q_r k_j / sqrt(D) -
  lse_cached[r]) dV_j, with A the refreshed columns of that layer;
* with every row refreshed the option changes nothing (same tokens and logits as without).

Also: the option through the registry, and the refusals (frozen attention, Triton).
"""

from __future__ import annotations

import math

import pytest
import torch

import dyllm
from dyllm.engine import SaliencyDenoiser
from dyllm.generation import StepContext
from dyllm.policies import AttentionSignals, CosineThreshold, EveryRow, SaliencyPolicy, StepPlan
from dyllm.policies.registry import build_policy, make_policy
from tests.checkpoints import tiny_model

REFRESH, SELECT = [5, 9], [6, 9, 10]


class Scripted(SaliencyPolicy):
    """Step 0 dense; then sparse over the response rows, refreshing REFRESH at layer 0 and
    selecting SELECT at every layer (so layers >= 1 refresh SELECT), with cached statistics."""

    name = "scripted"
    softmax_statistics = "cached"

    def plan(self, step: StepContext) -> StepPlan:
        if step.step == 0:
            return StepPlan.dense_step()
        refresh = torch.zeros_like(step.masked)
        refresh[:, REFRESH] = True
        return StepPlan(dense=False, queries=step.response_rows, refresh=refresh)

    def select(self, layer: int, signals: AttentionSignals) -> torch.Tensor:
        chosen = torch.zeros_like(signals.queries)
        chosen[:, SELECT] = True
        return chosen


class EveryRowCached(EveryRow):
    softmax_statistics = "cached"


def _context(x: torch.Tensor, step: int, model, committed=None, mask=None) -> StepContext:
    return StepContext.on_canvas(
        x,
        step=step,
        block_start=4,
        block_end=12,
        prompt_length=4,
        mask_token_id=model.config.mask_token_id,
        logit_shift=bool(model.config.logit_shift),
        newly_committed=committed,
        attention_mask=mask,
    )


def _capture_queries(model) -> list[list[torch.Tensor]]:
    """Per layer, every q [B, H, rows, D] the layer projects (dense forward and sparse step)."""
    seen: list[list[torch.Tensor]] = [[] for _ in model.layers]
    for index, layer in enumerate(model.layers):
        original = layer.project_queries

        def project(normed, cos, sin, original=original, index=index):
            q = original(normed, cos, sin)
            seen[index].append(q.detach().clone())
            return q

        layer.project_queries = project
    return seen


def _naive_lse(q_row: torch.Tensor, keys: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """logsumexp over the real keys of q_row [D] . keys [L, D] / sqrt(D), float64."""
    scores = keys.double() @ q_row.double() / math.sqrt(q_row.shape[0])
    return torch.logsumexp(scores[real], dim=0)


def _canvas(model):
    mask = model.config.mask_token_id
    x = torch.tensor([[1, 1, 7, 8] + [mask] * 8, [9, 10, 11, 12] + [mask] * 8])
    attention_mask = torch.ones_like(x, dtype=torch.bool)
    attention_mask[0, :2] = False  # the first sequence is left-padded by two positions
    return x, attention_mask


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_dense_and_sparse_steps_against_the_definition(family: str) -> None:
    model = tiny_model(family, seed=4)
    queries_seen = _capture_queries(model)
    x, attention_mask = _canvas(model)
    denoiser = SaliencyDenoiser(model, Scripted(), check_invariants=True)
    denoiser(x, _context(x, 0, model, mask=attention_mask))
    cache, layers = denoiser.cache, range(len(model.layers))
    group = model.config.num_heads // model.config.num_kv_heads
    heads, length, dim = model.config.num_heads, x.shape[1], model.config.head_dim

    # dense step: every row's statistic, from the forward's own q and k
    for layer in layers:
        q, key, lse = queries_seen[layer][0], cache[layer].key, cache[layer].lse
        for b in range(2):
            for r in range(length):
                for h in range(heads):
                    expected = _naive_lse(q[b, h, r], key[b, h // group], attention_mask[b])
                    torch.testing.assert_close(
                        lse[b, r, h].double(), expected, atol=1e-5, rtol=1e-5
                    )
    before = {
        name: [cache[layer].buffer(name).clone() for layer in layers]
        for name in ("key", "value", "context", "lse")
    }

    x[:, 5], x[:, 9] = 30, 31
    committed = torch.zeros_like(x, dtype=torch.bool)
    committed[:, REFRESH] = True
    step = _context(x, 1, model, committed, attention_mask)
    denoiser(x, step)

    # the response rows (from one column left under Dream's logit shift), in slot order
    query_positions = step.response_rows[0].nonzero().flatten().tolist()
    assert set(REFRESH + SELECT) <= set(query_positions)
    for layer in layers:
        refreshed = REFRESH if layer == 0 else SELECT
        q = queries_seen[layer][1]  # the sparse step's q of the query rows [B, H, Q, D]
        key, value = cache[layer].key, cache[layer].value
        lse, context = cache[layer].lse, cache[layer].context
        for b in range(2):
            for slot, r in enumerate(query_positions):
                for h in range(heads):
                    kv, cols = h // group, slice(h * dim, (h + 1) * dim)
                    if r in refreshed:  # exact: a fresh statistic over the updated keys
                        expected = _naive_lse(q[b, h, slot], key[b, kv], attention_mask[b])
                        torch.testing.assert_close(
                            lse[b, r, h].double(), expected, atol=1e-5, rtol=1e-5
                        )
                        continue
                    cached = before["lse"][layer][b, r, h]
                    assert lse[b, r, h] == cached  # kept as it was
                    update = torch.zeros(dim, dtype=torch.float64)
                    for j in refreshed:
                        score = key[b, kv, j].double() @ q[b, h, slot].double() / math.sqrt(dim)
                        delta = value[b, kv, j].double() - before["value"][layer][b, kv, j]
                        update += torch.exp(score - cached.double()) * delta
                    expected = before["context"][layer][b, r, cols].double() + update
                    torch.testing.assert_close(
                        context[b, r, cols].double(), expected, atol=1e-5, rtol=1e-5
                    )
        # the rows that were not queries: untouched
        first = query_positions[0]
        assert torch.equal(lse[:, :first], before["lse"][layer][:, :first])


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_every_row_exact_equals_the_normal_path(family: str) -> None:
    model = tiny_model(family, seed=11)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]
    options = {"gen_length": 16, "steps": 16, "block_length": 8}
    if family == "dream":
        options = {"gen_length": 16, "steps": 16}
    normal = dyllm.generate(model, prompts, policy=EveryRow(), **options)
    cached = dyllm.generate(model, prompts, policy=EveryRowCached(), **options)
    assert cached.token_ids == normal.token_ids


def test_statistics_from_exact_rows_equal_those_of_a_dense_step() -> None:
    """One sparse step refreshing every row writes the statistics a dense step writes."""
    model = tiny_model("llada", seed=2)
    x, attention_mask = _canvas(model)

    class DenseFirst(Scripted):
        def plan(self, step: StepContext) -> StepPlan:
            return StepPlan.dense_step()

    dense = SaliencyDenoiser(model, DenseFirst())
    dense(x, _context(x, 0, model, mask=attention_mask))
    sparse = SaliencyDenoiser(model, EveryRowCached())
    sparse(x, _context(x, 0, model, mask=attention_mask))
    for layer in range(len(model.layers)):
        real = attention_mask[:, :, None].expand_as(dense.cache[layer].lse)
        torch.testing.assert_close(
            sparse.cache[layer].lse[real], dense.cache[layer].lse[real], atol=1e-5, rtol=1e-5
        )


def test_the_option_goes_through_the_registry_and_is_off_by_default() -> None:
    assert make_policy("dyllm", family="llada").softmax_statistics == "exact"
    policy = build_policy("dyllm", {"tau": "0.99", "softmax_statistics": "cached"})
    assert policy.softmax_statistics == "cached"
    assert policy.describe()["softmax_statistics"] == "cached"
    assert build_policy("topk", {"k": "0.25", "softmax_statistics": "cached"}).softmax_statistics
    with pytest.raises(ValueError, match="softmax_statistics"):
        build_policy("dyllm", {"tau": "0.99", "softmax_statistics": "stale"})
    with pytest.raises(ValueError, match="attention='approximate'"):
        CosineThreshold(0.99, attention="frozen", softmax_statistics="cached")


def test_the_triton_kernel_refuses_cached_statistics_before_computing() -> None:
    pytest.importorskip("triton")
    from dyllm.kernels.triton_saliency_attention import saliency_attention_triton

    with pytest.raises(ValueError, match=r"softmax_statistics='exact'.*DYLLM_KERNELS=eager"):
        saliency_attention_triton(*([None] * 8), row_lse=torch.zeros(1, 1, 1))
