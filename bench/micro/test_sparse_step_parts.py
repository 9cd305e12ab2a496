"""Micro-benchmarks of the sparse step's parts against their dense counterparts, on the CPU.

Per shape (see conftest.py), each group pairs a dense part with its sparse version at a quarter
of the rows recomputed: attention (dense softmax attention for every row; DyLLM's attention with
the exact rows and the approximate update for the others), FFN (every row; the gathered rows),
K/V (projection and RoPE for every row; for the refreshed rows plus the cache write and dV),
selection (row cosine, threshold and the index sets the next layer needs; dense has none), and
the whole step (dense forward; a sparse step of the saliency engine under top-k, response rows as
queries). Summing the sparse parts and comparing with the whole sparse step shows how much of a
step is bookkeeping outside the kernels.

    make bench-micro        # or: pytest bench/micro --benchmark-enable

The default test run skips these (testpaths is tests/, and --benchmark-disable is set).
"""

from __future__ import annotations

import torch

from dyllm.engine import SaliencyDenoiser
from dyllm.generation.context import DenseDenoiser, StepContext
from dyllm.kernels import FeedForwardWeights, FlatRows, PaddedRows, row_cosine
from dyllm.kernels.reference_gathered_ffn import gathered_ffn_reference
from dyllm.kernels.reference_kv_update import kv_update_reference
from dyllm.kernels.reference_saliency_attention import saliency_attention_reference
from dyllm.models import DiffusionTransformer
from dyllm.policies import TopK

RECOMPUTED_FRACTION = 0.25
"""As in conftest.py: the share of rows each sparse part recomputes."""


def _hidden(shape, rows: int | None = None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(shape.batch, rows or shape.length, shape.hidden, generator=generator)


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
    refreshed = salient_mask(shape)
    columns = PaddedRows.from_mask(refreshed)
    delta = torch.randn(shape.batch, k.shape[1], columns.width, k.shape[-1]) * 0.01
    context_old = model.layers[0].attend(q, k, v, None)
    benchmark(saliency_attention_reference, q, k, v, context_old, refreshed, columns, delta, None)


def _ffn_weights(model: DiffusionTransformer) -> FeedForwardWeights:
    layer = model.layers[0]
    return FeedForwardWeights(
        layer.ffn_norm.weight,
        layer.ffn_norm.eps,
        layer.ffn.gate_proj.weight,
        layer.ffn.up_proj.weight,
        layer.ffn.down_proj.weight,
    )


def test_ffn_dense(benchmark, model, shape) -> None:
    benchmark.group = f"{shape.name} ffn"
    benchmark(model.layers[0].feed_forward, _hidden(shape))


def test_ffn_sparse(benchmark, model, shape, salient_mask) -> None:
    benchmark.group = f"{shape.name} ffn"
    selected = FlatRows.from_mask(salient_mask(shape))
    ffn_out = torch.zeros(shape.batch, shape.length, shape.hidden)
    benchmark(
        gathered_ffn_reference,
        _hidden(shape),
        selected,
        selected.position,
        _ffn_weights(model),
        ffn_out,
    )


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
    rows = FlatRows.from_mask(salient_mask(shape))
    config = model.config

    def refresh() -> torch.Tensor:
        gathered = rows.gather(normed)
        queries = layer.q_proj(normed)  # q is projected for every query row
        update = kv_update_reference(
            layer.k_proj(gathered),
            layer.v_proj(gathered),
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
    query_index = PaddedRows.from_mask(queries).index

    def select() -> tuple[FlatRows, PaddedRows]:
        cosine = row_cosine(new, old)
        full = torch.ones(queries.shape).scatter(1, query_index, cosine)
        selected = queries & (full < 0.999)
        return FlatRows.from_mask(selected.gather(1, query_index)), PaddedRows.from_mask(selected)

    benchmark(select)


def _step_context(shape, step: int, salient_mask) -> StepContext:
    committed = None if step == 0 else salient_mask(shape, 1 / shape.answer)
    return StepContext(
        step=step,
        block=0,
        step_in_block=step,
        block_start=shape.prompt,
        block_end=shape.length,
        prompt_length=shape.prompt,
        newly_committed=committed,
        first_step_in_block=step == 0,
        logit_start=shape.prompt,
        logit_end=shape.length,
    )


def _canvas(shape, model: DiffusionTransformer) -> torch.Tensor:
    generator = torch.Generator().manual_seed(4)
    canvas = torch.randint(2, 100, (shape.batch, shape.length), generator=generator)
    canvas[:, shape.prompt + shape.answer // 2 :] = model.config.mask_token_id
    return canvas


def test_step_dense(benchmark, model, shape, salient_mask) -> None:
    benchmark.group = f"{shape.name} whole step"
    denoiser = DenseDenoiser(model, None, None)
    benchmark(denoiser, _canvas(shape, model), _step_context(shape, 5, salient_mask))


def test_step_sparse(benchmark, model, shape, salient_mask) -> None:
    benchmark.group = f"{shape.name} whole step"
    policy = TopK(RECOMPUTED_FRACTION, warmup_steps=1, prompt_refresh_every=10**6)
    denoiser = SaliencyDenoiser(model, policy, None, None, check_invariants=False)
    canvas = _canvas(shape, model)
    denoiser(canvas, _step_context(shape, 0, salient_mask))  # dense: fills the caches
    with torch.no_grad():
        benchmark(denoiser, canvas, _step_context(shape, 5, salient_mask))
    assert denoiser.statistics.sparse_steps > 0
