"""The CPU fast path of the saliency attention held to the eager reference.

Every case runs with both forms of the approximate update (chunked score blocks, and the fused
form kept for small shapes). Cases: float32 and bfloat16, key masks (left padding), padding
slots in both row sets, grouped query heads, partial sums (tensor parallelism), no refreshed
columns, exact rows only, frozen mode, and cached softmax statistics. In float32 both compute
the same sums in another order (tolerance 1e-5 on values of order one); in bfloat16 both
compute in float32 and round the result once, so they differ by at most one bfloat16 step of
the result (tolerance 1e-2).
"""

from __future__ import annotations

import pytest
import torch

from dyllm.kernels import (
    PaddedRows,
    cpu_saliency_attention,
    saliency_attention_cpu,
    saliency_attention_reference,
)
from dyllm.kernels.cpu_saliency_attention import columns_update
from dyllm.kernels.dispatch import implementation


@pytest.fixture(autouse=True, params=["chunked", "fused"])
def update_form(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with both forms of the approximate update: these shapes are below
    `FUSED_BELOW`, so the chunked form is forced by lowering it to 0."""
    if request.param == "chunked":
        monkeypatch.setattr(cpu_saliency_attention, "FUSED_BELOW", 0)
    return request.param


def _inputs(seed: int, batch: int, heads: int, kv_heads: int, queries: int, length: int, **kw):
    """Random attention inputs; query rows are the last `queries` positions; `padding` extra
    slots in both row sets; `refreshed_share` of the positions refreshed (None: none)."""
    padding, share, dtype = kw.get("padding", 0), kw.get("share", 0.3), kw.get("dtype")
    g = torch.Generator().manual_seed(seed)
    dim = 8
    q = torch.randn(batch, heads, queries, dim, generator=g)
    key = torch.randn(batch, kv_heads, length, dim, generator=g)
    value = torch.randn(batch, kv_heads, length, dim, generator=g)
    context_old = torch.randn(batch, queries, heads * dim, generator=g)
    query_index = torch.arange(length - queries, length).expand(batch, queries)
    refreshed = torch.rand(batch, length, generator=g) < share
    if share:
        refreshed[0, -1] = True
    exact = refreshed.gather(1, query_index)
    capacity = min(int(refreshed.sum(dim=1).max()) + padding, length)
    columns = PaddedRows.from_mask(refreshed, capacity)
    exact_rows = PaddedRows.from_mask(exact, min(int(exact.sum(dim=1).max()) + padding, queries))
    delta = (
        torch.randn(batch, kv_heads, capacity, dim, generator=g) * columns.valid[:, None, :, None]
    )
    key_mask = torch.ones(batch, length, dtype=torch.bool)
    key_mask[-1, :2] = False  # the last sequence is left-padded by two positions
    row_lse = torch.randn(batch, queries, heads, generator=g) + 3.0
    tensors = [q, key, value, context_old]
    if dtype is not None:
        tensors = [t.to(dtype) for t in tensors]
        delta = delta.to(dtype)
    return (*tensors, exact_rows, columns, delta, key_mask), row_lse


def _both(args, row_lse=None, **options):
    """(reference, cpu) results; each gets its own copy of `row_lse` (updated in place)."""
    ref_lse = None if row_lse is None else row_lse.clone()
    cpu_lse = None if row_lse is None else row_lse.clone()
    reference = saliency_attention_reference(*args, row_lse=ref_lse, **options)
    fast = saliency_attention_cpu(*args, row_lse=cpu_lse, **options)
    return reference, fast, ref_lse, cpu_lse


@pytest.mark.parametrize(
    "batch,heads,kv_heads,queries,length", [(1, 2, 2, 5, 9), (3, 6, 2, 7, 12), (2, 5, 1, 4, 13)]
)
@pytest.mark.parametrize("padding", [0, 2], ids=["tight", "padded"])
@pytest.mark.parametrize("approximate", [True, False], ids=["approximate", "frozen"])
def test_matches_the_reference_in_float32(
    batch, heads, kv_heads, queries, length, padding, approximate
) -> None:
    args, _ = _inputs(batch * 10 + heads, batch, heads, kv_heads, queries, length, padding=padding)
    (ref_context, ref_cosine), (context, cosine), _, _ = _both(args, approximate=approximate)
    torch.testing.assert_close(context, ref_context, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cosine, ref_cosine, atol=1e-5, rtol=1e-5)
    # the update is not zero: the comparison tests something
    assert (context - args[3]).abs().max() > 1e-2


def test_matches_the_reference_in_bfloat16() -> None:
    args, _ = _inputs(5, 2, 4, 2, 6, 11, padding=1, dtype=torch.bfloat16)
    (ref_context, ref_cosine), (context, cosine), _, _ = _both(args)
    assert context.dtype == torch.bfloat16
    torch.testing.assert_close(context.float(), ref_context.float(), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(cosine, ref_cosine, atol=1e-4, rtol=1e-4)


def test_partial_sums_match() -> None:
    args, _ = _inputs(8, 2, 4, 2, 5, 9, padding=1)
    (_, ref_sums), (_, sums), _, _ = _both(args, partial_sums=True)
    assert sums.shape == (3, 2, 5)
    torch.testing.assert_close(sums, ref_sums, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("capacity", [0, 3], ids=["no-slots", "padding-only"])
def test_no_refreshed_columns_changes_nothing(capacity: int) -> None:
    args, _ = _inputs(3, 2, 4, 2, 5, 9, share=0.0)
    q, key, value, context_old, _, _, _, key_mask = args
    nothing = torch.zeros(2, 9, dtype=torch.bool)
    columns = PaddedRows.from_mask(nothing, capacity)
    exact = PaddedRows.from_mask(nothing[:, :5], capacity)
    no_delta = torch.zeros(2, 2, capacity, 8)  # zero where not valid: everywhere
    context, cosine = saliency_attention_cpu(
        q, key, value, context_old, exact, columns, no_delta, key_mask
    )
    assert torch.equal(context, context_old)
    torch.testing.assert_close(cosine, torch.ones(2, 5), atol=1e-6, rtol=0)


def test_every_row_exact_is_plain_attention() -> None:
    args, row_lse = _inputs(4, 2, 4, 2, 5, 9, share=1.0)
    (ref_context, _), (context, _), ref_lse, cpu_lse = _both(args, row_lse)
    torch.testing.assert_close(context, ref_context, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cpu_lse, ref_lse, atol=1e-5, rtol=1e-5)
    assert (cpu_lse - row_lse).abs().min() > 1e-3  # every row's statistic was rewritten


@pytest.mark.parametrize("padding", [0, 2], ids=["tight", "padded"])
def test_cached_statistics_match_the_reference(padding: int) -> None:
    args, row_lse = _inputs(6, 3, 6, 2, 7, 12, padding=padding)
    (ref_context, ref_cosine), (context, cosine), ref_lse, cpu_lse = _both(args, row_lse)
    torch.testing.assert_close(context, ref_context, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cosine, ref_cosine, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cpu_lse, ref_lse, atol=1e-5, rtol=1e-5)


def test_dispatch_takes_the_cpu_path_by_default_and_eager_when_forced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu = torch.device("cpu")
    monkeypatch.delenv("DYLLM_KERNELS", raising=False)
    assert implementation("saliency_attention", cpu) is saliency_attention_cpu
    monkeypatch.setenv("DYLLM_KERNELS", "eager")
    assert implementation("saliency_attention", cpu) is saliency_attention_reference
    monkeypatch.setenv("DYLLM_KERNELS", "cpu")
    assert implementation("saliency_attention", cpu) is saliency_attention_cpu
    # a kernel without a CPU fast path runs its reference under DYLLM_KERNELS=cpu
    assert implementation("gathered_ffn", cpu).__name__ == "gathered_ffn_reference"


@pytest.mark.parametrize(
    "block_scores", [1, 4 * 3 * 7 * 12, 1 << 17], ids=["pair", "ragged", "all"]
)
def test_chunking_over_sequence_head_pairs_changes_nothing(block_scores: int) -> None:
    """One (sequence, key/value head) pair per matmul, chunks that leave a short last one, and
    every pair at once give the same update (3 sequences x 2 kv heads = 6 pairs; a pair
    scores 3 query heads x 7 rows x 12 keys)."""
    (q, key, _, _, _, columns, delta, key_mask), _ = _inputs(11, 3, 6, 2, 7, 12, padding=1)
    whole = columns_update(q, key, columns, delta, key_mask)
    chunked = columns_update(q, key, columns, delta, key_mask, block_scores=block_scores)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)
