"""Micro-benchmarks of the sparse step's parts against their dense counterparts, on the CPU.

Per shape (see conftest.py), each group pairs a dense part with its sparse version at a quarter
of the rows recomputed: attention (dense softmax attention for every row; DyLLM's attention with
the exact rows and the approximate update for the others), FFN (every row; the gathered rows),
K/V (projection and RoPE for every row; for the refreshed rows plus the cache write and dV),
selection (row cosine, threshold and the index sets the next layer needs; dense has none), and
the whole step (dense forward; a sparse step of the saliency engine under top-k, response rows as
queries). A last group times the saliency attention's forms (eager reference, CPU fast path, CPU
path with cached softmax statistics) at a paper-like shape, batch 16 and 1. Summing the sparse
parts and comparing with the whole sparse step shows how much of a step is bookkeeping outside
the kernels.

    make bench-micro        # or: pytest bench/micro --benchmark-enable

The default test run skips these (testpaths is tests/, and --benchmark-disable is set).
"""

from __future__ import annotations

import pytest
import torch

from dyllm.engine import SaliencyDenoiser
from dyllm.generation import DenseDenoiser, StepContext
from dyllm.kernels import PaddedRows, gathered_ffn, kv_update, row_cosine, saliency_attention
from dyllm.models import DiffusionTransformer
from dyllm.policies import TopK

RECOMPUTED_FRACTION = 0.25
"""As in conftest.py: the share of rows each sparse part recomputes."""


def _hidden(shape, rows: int | None = None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(shape.batch, rows or shape.length, shape.hidden, generator=generator)


def _padded(mask: torch.Tensor) -> PaddedRows:
    """The rows of `mask` at a capacity of exactly its largest count (as a policy's budget)."""
    return PaddedRows.from_mask(mask, int(mask.sum(dim=1).max()))


def _positions(shape) -> torch.Tensor:
    return torch.arange(shape.length).expand(shape.batch, -1)


def _qkv(model: DiffusionTransformer, shape):
    layer = model.layers[0]
    cos, sin = model.rope(_positions(shape))
    return layer.project_qkv(layer.attn_norm(_hidden(shape)), cos, sin), cos, sin


def test_attention_dense(benchmark, model, shape) -> None:
    benchmark.group = f"{shape.name} attention"
    (q, k, v), _, _ = _qkv(model, shape)
    benchmark(model.layers[0].attend, q, k, v, None)


def test_attention_sparse(benchmark, model, shape, salient_mask) -> None:
    benchmark.group = f"{shape.name} attention"
    (q, k, v), _, _ = _qkv(model, shape)
    columns = _padded(salient_mask(shape))  # every row is a query: slots are positions
    delta = torch.randn(shape.batch, k.shape[1], columns.width, k.shape[-1]) * 0.01
    context_old = model.layers[0].attend(q, k, v, None)
    benchmark(saliency_attention, q, k, v, context_old, columns, columns, delta, None)


def test_ffn_dense(benchmark, model, shape) -> None:
    benchmark.group = f"{shape.name} ffn"
    benchmark(model.layers[0].feed_forward, _hidden(shape))


def test_ffn_sparse(benchmark, model, shape, salient_mask) -> None:
    benchmark.group = f"{shape.name} ffn"
    selected = _padded(salient_mask(shape)).flat()
    ffn_out = torch.zeros(shape.batch, shape.length, shape.hidden)
    weights = model.layers[0].feed_forward_weights()
    benchmark(gathered_ffn, _hidden(shape), selected, selected.position, weights, ffn_out)


def test_key_value_dense(benchmark, model, shape) -> None:
    benchmark.group = f"{shape.name} key-value"
    layer = model.layers[0]
    cos, sin = model.rope(_positions(shape))
    normed = layer.attn_norm(_hidden(shape))
    benchmark(layer.project_qkv, normed, cos, sin)


def test_key_value_sparse(benchmark, model, shape, salient_mask) -> None:
    benchmark.group = f"{shape.name} key-value"
    layer = model.layers[0]
    (_, key_cache, value_cache), cos, sin = _qkv(model, shape)
    normed = layer.attn_norm(_hidden(shape))
    rows = _padded(salient_mask(shape)).flat()
    config = model.config

    def refresh() -> torch.Tensor:
        gathered = rows.gather(normed)
        queries = layer.q_proj(normed)  # q is projected for every query row
        update = kv_update(
            layer.project_keys(gathered),
            layer.project_values(gathered),
            rows.gather(cos),
            rows.gather(sin),
            rows,
            key_cache,
            value_cache,
            bool(config.rope_full_precision),
        )
        return queries, update

    benchmark(refresh)


def test_selection_sparse(benchmark, shape) -> None:
    benchmark.group = f"{shape.name} selection"
    generator = torch.Generator().manual_seed(3)
    old = torch.randn(shape.batch, shape.answer, shape.hidden, generator=generator)
    new = old + 0.05 * torch.randn(old.shape, generator=generator)
    queries = torch.zeros(shape.batch, shape.length, dtype=torch.bool)
    queries[:, shape.prompt :] = True
    query_index = _padded(queries).index
    capacity = shape.answer

    def select() -> PaddedRows:
        cosine = row_cosine(new, old)
        full = torch.ones(queries.shape).scatter(1, query_index, cosine)
        selected = queries & (full < 0.999)
        return PaddedRows.from_mask(selected.gather(1, query_index), capacity)

    benchmark(select)


def _step_context(shape, step: int, salient_mask, canvas, model) -> StepContext:
    committed = None if step == 0 else salient_mask(shape, 1 / shape.answer)
    return StepContext.on_canvas(
        canvas,
        step=step,
        block_start=shape.prompt,
        block_end=shape.length,
        prompt_length=shape.prompt,
        mask_token_id=model.config.mask_token_id,
        logit_shift=model.config.logit_shift,
        newly_committed=committed,
    )


def _canvas(shape, model: DiffusionTransformer) -> torch.Tensor:
    generator = torch.Generator().manual_seed(4)
    canvas = torch.randint(2, 100, (shape.batch, shape.length), generator=generator)
    canvas[:, shape.prompt + shape.answer // 2 :] = model.config.mask_token_id
    return canvas


def test_step_dense(benchmark, model, shape, salient_mask) -> None:
    benchmark.group = f"{shape.name} whole step"
    denoiser = DenseDenoiser(model)
    canvas = _canvas(shape, model)
    benchmark(denoiser, canvas, _step_context(shape, 5, salient_mask, canvas, model))


def test_step_sparse(benchmark, model, shape, salient_mask) -> None:
    benchmark.group = f"{shape.name} whole step"
    policy = TopK(RECOMPUTED_FRACTION, warmup_steps=1, prompt_refresh_every=10**6)
    denoiser = SaliencyDenoiser(model, policy)
    canvas = _canvas(shape, model)
    with torch.no_grad():
        denoiser(canvas, _step_context(shape, 0, salient_mask, canvas, model))  # fills the caches
        benchmark(denoiser, canvas, _step_context(shape, 5, salient_mask, canvas, model))
    assert denoiser.statistics.sparse_steps > 0


@pytest.mark.parametrize("batch", [16, 1], ids=["b16", "b1"])
@pytest.mark.parametrize("form", ["eager", "cpu", "cpu-cached-statistics"])
def test_saliency_attention_forms(benchmark, form: str, batch: int) -> None:
    """The saliency attention's forms at the paper-like shape of the CPU comparison (16 heads of
    64, 256 query rows over 384 keys, 26 refreshed columns and exact rows per sequence): the
    eager reference (fused attention over a full-length dV), the CPU fast path (scores once,
    P dV over the refreshed columns only), and the CPU path with cached softmax statistics
    (O(|A|) per approximate row)."""
    benchmark.group = f"saliency attention forms, batch {batch}"
    heads, queries, length, dim, refreshed = 16, 256, 384, 64, 26
    generator = torch.Generator().manual_seed(5)
    q = torch.randn(batch, heads, queries, dim, generator=generator)
    key = torch.randn(batch, heads, length, dim, generator=generator)
    value = torch.randn(batch, heads, length, dim, generator=generator)
    context_old = torch.randn(batch, queries, heads * dim, generator=generator)
    chosen = torch.zeros(batch, length, dtype=torch.bool)
    for row in range(batch):
        picked = torch.randperm(queries, generator=generator)[:refreshed] + length - queries
        chosen[row, picked] = True
    columns = PaddedRows.from_mask(chosen, refreshed)
    exact = PaddedRows.from_mask(chosen[:, length - queries :], refreshed)
    delta = torch.randn(batch, heads, refreshed, dim, generator=generator) * 0.01
    key_mask = torch.ones(batch, length, dtype=torch.bool)
    args = (q, key, value, context_old, exact, columns, delta, key_mask)
    if form == "eager":
        benchmark(saliency_attention, *args, backend="eager")
    elif form == "cpu":
        benchmark(saliency_attention, *args, backend="cpu")
    else:
        row_lse = torch.randn(batch, queries, heads, generator=generator) + 6.0
        benchmark(saliency_attention, *args, backend="cpu", row_lse=row_lse)
