"""The saliency attention reference against its definition, written row by row in float64.

Row sets have a capacity (`PaddedRows`): the cases run with it equal to the most rows a sequence
has, and with padding beyond that, whose entries must change nothing.
"""

from __future__ import annotations

import math

import pytest
import torch

from dyllm.kernels import PaddedRows, row_cosine, saliency_attention_reference
from dyllm.kernels.dispatch import implementation
from dyllm.kernels.primitives import cosine_from_partial_sums


def _case(seed: int, batch: int, heads: int, kv_heads: int, queries: int, length: int):
    g = torch.Generator().manual_seed(seed)
    dim = 8
    q = torch.randn(batch, heads, queries, dim, generator=g)
    key = torch.randn(batch, kv_heads, length, dim, generator=g)
    value = torch.randn(batch, kv_heads, length, dim, generator=g)
    context_old = torch.randn(batch, queries, heads * dim, generator=g)
    # query rows are the last `queries` positions; refreshed columns anywhere (ragged per row)
    query_index = torch.arange(length - queries, length).expand(batch, queries)
    refreshed = torch.rand(batch, length, generator=g) < 0.3
    refreshed[0, -1] = True
    exact = refreshed.gather(1, query_index)
    delta = torch.randn(batch, kv_heads, length, dim, generator=g) * refreshed[:, None, :, None]
    key_mask = torch.ones(batch, length, dtype=torch.bool)
    key_mask[-1, :2] = False
    return q, key, value, context_old, exact, refreshed, delta, key_mask, query_index


def _naive(q, key, value, context_old, exact, refreshed, delta, key_mask, approximate):
    batch, heads, queries, dim = q.shape
    group = heads // key.shape[1]
    expected = context_old.double().clone()
    for b in range(batch):
        keep = key_mask[b]
        for r in range(queries):
            for h in range(heads):
                kh = key[b, h // group].double()
                scores = kh @ q[b, h, r].double() / math.sqrt(dim)
                scores[~keep] = float("-inf")
                p = torch.softmax(scores, dim=0)
                cols = slice(h * dim, (h + 1) * dim)
                if exact[b, r]:
                    expected[b, r, cols] = p @ value[b, h // group].double()
                elif approximate:
                    update = torch.zeros(dim, dtype=torch.float64)
                    for j in torch.nonzero(refreshed[b]).flatten().tolist():
                        update += p[j] * delta[b, h // group, j].double()
                    expected[b, r, cols] += update
    return expected


def _capacity(mask: torch.Tensor, padding: int) -> int:
    """The most rows a sequence of `mask` [B, L] has, plus `padding` (at most L)."""
    return min(int(mask.sum(dim=1).max()) + padding, mask.shape[1])


@pytest.mark.parametrize(
    "batch,heads,kv_heads,queries,length", [(1, 2, 2, 5, 9), (3, 6, 2, 7, 12), (2, 5, 1, 4, 13)]
)
@pytest.mark.parametrize("approximate", [True, False], ids=["approximate", "frozen"])
@pytest.mark.parametrize("padding", [0, 2], ids=["tight", "padded"])
def test_matches_definition(batch, heads, kv_heads, queries, length, approximate, padding) -> None:
    q, key, value, context_old, exact, refreshed, delta, key_mask, _ = _case(
        batch * 100 + heads, batch, heads, kv_heads, queries, length
    )
    columns = PaddedRows.from_mask(refreshed, _capacity(refreshed, padding))
    exact_rows = PaddedRows.from_mask(exact, _capacity(exact, padding))
    padded_delta = (
        delta.gather(2, columns.index[:, None, :, None].expand(-1, kv_heads, -1, delta.shape[-1]))
        * columns.valid[:, None, :, None]
    )
    context_new, cosine = saliency_attention_reference(
        q, key, value, context_old, exact_rows, columns, padded_delta, key_mask, approximate
    )
    expected = _naive(q, key, value, context_old, exact, refreshed, delta, key_mask, approximate)
    torch.testing.assert_close(context_new.double(), expected, atol=1e-5, rtol=1e-5)
    naive_cosine = torch.nn.functional.cosine_similarity(expected, context_old.double(), dim=-1)
    torch.testing.assert_close(cosine.double(), naive_cosine, atol=1e-5, rtol=1e-5)
    if not approximate:
        assert torch.equal(context_new[~exact], context_old[~exact])


def test_partial_sums_over_head_groups_add_up_to_the_cosine() -> None:
    """Tensor parallelism: each process runs the attention on its heads and returns the cosine's
    sums; added over the head groups and combined they are the cosine over all heads."""
    q, key, value, context_old, exact, refreshed, delta, key_mask, _ = _case(7, 2, 4, 2, 5, 9)
    columns = PaddedRows.from_mask(refreshed, _capacity(refreshed, 1))
    exact_rows = PaddedRows.from_mask(exact, _capacity(exact, 1))
    padded_delta = (
        delta.gather(2, columns.index[:, None, :, None].expand(-1, 2, -1, delta.shape[-1]))
        * columns.valid[:, None, :, None]
    )
    shared = (exact_rows, columns)
    whole, cosine = saliency_attention_reference(
        q, key, value, context_old, *shared, padded_delta, key_mask
    )
    dim = q.shape[-1]
    parts, sums = [], torch.zeros(3, 2, 5)
    for group in range(2):  # two "processes", each 2 query heads and their key/value head
        heads, kv = slice(2 * group, 2 * group + 2), slice(group, group + 1)
        part, partial = saliency_attention_reference(
            q[:, heads],
            key[:, kv],
            value[:, kv],
            context_old[..., 2 * group * dim : (2 * group + 2) * dim],
            *shared,
            padded_delta[:, kv],
            key_mask,
            partial_sums=True,
        )
        parts.append(part)
        sums += partial
    torch.testing.assert_close(torch.cat(parts, dim=-1), whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(cosine_from_partial_sums(sums), cosine, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("capacity", [0, 3], ids=["tight", "padded"])
def test_no_refreshed_rows_leaves_contexts_unchanged(capacity: int) -> None:
    q, key, value, context_old, _, _, delta, key_mask, _ = _case(3, 2, 4, 2, 5, 9)
    nothing = torch.zeros(2, 9, dtype=torch.bool)
    columns = PaddedRows.from_mask(nothing, capacity)
    exact = PaddedRows.from_mask(nothing[:, :5], capacity)
    no_delta = torch.zeros_like(delta[:, :, :capacity])  # zero where not valid: everywhere
    context_new, cosine = saliency_attention_reference(
        q, key, value, context_old, exact, columns, no_delta, key_mask
    )
    assert torch.equal(context_new, context_old)
    torch.testing.assert_close(cosine, torch.ones(2, 5), atol=1e-6, rtol=0)


def test_padded_rows_list_positions_in_order() -> None:
    mask = torch.tensor([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    rows = PaddedRows.from_mask(mask, 3)
    # selected positions first, in order; then (invalid) the sequence's unselected positions
    assert rows.index.tolist() == [[1, 3, 4], [0, 1, 2], [0, 1, 2]]
    assert rows.valid.tolist() == [[True] * 3, [True, False, False], [False] * 3]


def test_padded_rows_pad_with_distinct_unselected_positions() -> None:
    mask = torch.tensor([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    rows = PaddedRows.from_mask(mask, 4)
    assert rows.index.tolist() == [[1, 3, 4, 0], [0, 1, 2, 3], [0, 1, 2, 3]]
    assert rows.valid.tolist() == [[True] * 3 + [False], [True] + [False] * 3, [False] * 4]
    assert rows.counts.tolist() == [3, 1, 0]
    assert torch.equal(rows.mask(5), mask)
    assert not bool(rows.overflow)
    assert bool(PaddedRows.from_mask(mask, 2).overflow)  # the first sequence has 3


def test_row_cosine_is_float32_over_the_last_dimension() -> None:
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.bfloat16)
    b = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.bfloat16)
    cosine = row_cosine(a, b)
    assert cosine.dtype == torch.float32
    torch.testing.assert_close(cosine, torch.tensor([1.0, 0.0]))


def test_dispatch_forces_the_eager_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYLLM_KERNELS", "eager")
    cpu = torch.device("cpu")
    assert implementation("saliency_attention", cpu) is saliency_attention_reference
    monkeypatch.setenv("DYLLM_KERNELS", "fastest")
    with pytest.raises(ValueError, match="DYLLM_KERNELS='fastest'"):
        implementation("saliency_attention", cpu)
