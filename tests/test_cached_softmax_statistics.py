"""Cached softmax statistics (`row_lse`) in the saliency attention, against the definition
written row by row in float64:

* exact row r:         C_new[r] = softmax(q_r K^T / sqrt(D)) V, and lse[r] <- logsumexp(q_r K^T)
* approximate row r:   C_new[r] = C_old[r] + sum_{j in A} exp(q_r k_j / sqrt(D) - lse[r]) dV[j]
* frozen row r:        C_new[r] = C_old[r]

(masked keys and padding slots contribute nothing). Both the eager reference and the CPU path
are checked; `attention_logsumexp` against its definition too.
"""

from __future__ import annotations

import math

import pytest
import torch

from dyllm.kernels import PaddedRows, saliency_attention_cpu, saliency_attention_reference
from dyllm.kernels.primitives import attention_logsumexp

IMPLEMENTATIONS = [saliency_attention_reference, saliency_attention_cpu]


def _case(seed: int, batch: int, heads: int, kv_heads: int, queries: int, length: int):
    g = torch.Generator().manual_seed(seed)
    dim = 8
    q = torch.randn(batch, heads, queries, dim, generator=g)
    key = torch.randn(batch, kv_heads, length, dim, generator=g)
    value = torch.randn(batch, kv_heads, length, dim, generator=g)
    context_old = torch.randn(batch, queries, heads * dim, generator=g)
    query_index = torch.arange(length - queries, length).expand(batch, queries)
    refreshed = torch.rand(batch, length, generator=g) < 0.3
    refreshed[0, -1] = True
    refreshed[-1, 0] = True  # a refreshed column under the key mask: it must contribute nothing
    exact = refreshed.gather(1, query_index)
    delta = torch.randn(batch, kv_heads, length, dim, generator=g) * refreshed[:, None, :, None]
    key_mask = torch.ones(batch, length, dtype=torch.bool)
    key_mask[-1, :2] = False
    row_lse = torch.randn(batch, queries, heads, generator=g) + 3.0
    return q, key, value, context_old, exact, refreshed, delta, key_mask, row_lse


def _naive(q, key, value, context_old, exact, refreshed, delta, key_mask, row_lse, approximate):
    """(contexts, lse) by the definition, one row and head at a time, float64."""
    batch, heads, queries, dim = q.shape
    group = heads // key.shape[1]
    expected = context_old.double().clone()
    lse = row_lse.double().clone()
    for b in range(batch):
        for r in range(queries):
            for h in range(heads):
                kh, cols = key[b, h // group].double(), slice(h * dim, (h + 1) * dim)
                scores = kh @ q[b, h, r].double() / math.sqrt(dim)
                if exact[b, r]:
                    scores[~key_mask[b]] = float("-inf")
                    expected[b, r, cols] = torch.softmax(scores, 0) @ value[b, h // group].double()
                    lse[b, r, h] = torch.logsumexp(scores, 0)
                elif approximate:
                    for j in torch.nonzero(refreshed[b] & key_mask[b]).flatten().tolist():
                        weight = torch.exp(scores[j] - row_lse[b, r, h].double())
                        expected[b, r, cols] += weight * delta[b, h // group, j].double()
    return expected, lse


@pytest.mark.parametrize("run", IMPLEMENTATIONS, ids=["eager", "cpu"])
@pytest.mark.parametrize(
    "batch,heads,kv_heads,queries,length", [(1, 2, 2, 5, 9), (3, 6, 2, 7, 12), (2, 5, 1, 4, 13)]
)
@pytest.mark.parametrize("approximate", [True, False], ids=["approximate", "frozen"])
@pytest.mark.parametrize("padding", [0, 2], ids=["tight", "padded"])
def test_matches_the_definition(
    run, batch, heads, kv_heads, queries, length, approximate, padding
) -> None:
    q, key, value, context_old, exact, refreshed, delta, key_mask, row_lse = _case(
        batch * 100 + heads, batch, heads, kv_heads, queries, length
    )
    columns = PaddedRows.from_mask(refreshed, int(refreshed.sum(1).max()) + padding)
    exact_rows = PaddedRows.from_mask(exact, min(int(exact.sum(1).max()) + padding, queries))
    index = columns.index[:, None, :, None].expand(-1, kv_heads, -1, delta.shape[-1])
    padded_delta = delta.gather(2, index) * columns.valid[:, None, :, None]
    lse = row_lse.clone()
    context_new, cosine = run(
        q, key, value, context_old, exact_rows, columns, padded_delta, key_mask, approximate,
        row_lse=lse,
    )  # fmt: skip
    expected, expected_lse = _naive(
        q, key, value, context_old, exact, refreshed, delta, key_mask, row_lse, approximate
    )
    torch.testing.assert_close(context_new.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), expected_lse, atol=1e-5, rtol=1e-5)
    naive_cosine = torch.nn.functional.cosine_similarity(expected, context_old.double(), dim=-1)
    torch.testing.assert_close(cosine.double(), naive_cosine, atol=1e-5, rtol=1e-5)
    assert torch.equal(lse[~exact], row_lse[~exact])  # only exact rows rewrite their statistic


@pytest.mark.parametrize("run", IMPLEMENTATIONS, ids=["eager", "cpu"])
def test_true_statistics_give_the_exact_statistics_update(run) -> None:
    """With every approximate row's cached lse equal to its true log-sum-exp over the current
    keys, the cached update equals the normal one."""
    q, key, value, context_old, exact, refreshed, delta, key_mask, _ = _case(9, 2, 4, 2, 5, 9)
    columns = PaddedRows.from_mask(refreshed, int(refreshed.sum(1).max()))
    exact_rows = PaddedRows.from_mask(exact, int(exact.sum(1).max()))
    index = columns.index[:, None, :, None].expand(-1, 2, -1, delta.shape[-1])
    padded_delta = delta.gather(2, index) * columns.valid[:, None, :, None]
    args = (q, key, value, context_old, exact_rows, columns, padded_delta, key_mask)
    true_lse = attention_logsumexp(q, key, key_mask).transpose(1, 2).contiguous()
    cached, _ = run(*args, row_lse=true_lse)
    normal, _ = run(*args)
    torch.testing.assert_close(cached, normal, atol=1e-5, rtol=1e-5)


def test_attention_logsumexp_matches_its_definition() -> None:
    g = torch.Generator().manual_seed(1)
    q, key = torch.randn(2, 4, 3, 8, generator=g), torch.randn(2, 2, 6, 8, generator=g)
    key_mask = torch.tensor([[True] * 6, [False, True, True, True, True, True]])
    lse = attention_logsumexp(q.to(torch.bfloat16), key.to(torch.bfloat16), key_mask)
    assert lse.dtype == torch.float32 and lse.shape == (2, 4, 3)
    for b in range(2):
        for h in range(4):
            q_rows = q[b, h].to(torch.bfloat16).double()  # the bfloat16 values, exactly
            scores = q_rows @ key[b, h // 2].to(torch.bfloat16).double().T / math.sqrt(8)
            scores[:, ~key_mask[b]] = float("-inf")
            torch.testing.assert_close(lse[b, h].double(), torch.logsumexp(scores, 1))


@pytest.mark.parametrize("run", IMPLEMENTATIONS, ids=["eager", "cpu"])
def test_bad_statistics_are_refused(run) -> None:
    q, key, value, context_old, exact, refreshed, delta, key_mask, row_lse = _case(2, 1, 2, 2, 5, 9)
    columns = PaddedRows.from_mask(refreshed, int(refreshed.sum(1).max()))
    exact_rows = PaddedRows.from_mask(exact, int(exact.sum(1).max()))
    args = (q, key, value, context_old, exact_rows, columns, delta[:, :, : columns.width], key_mask)
    with pytest.raises(ValueError, match=r"row_lse must be a float32 \[batch, query rows, heads\]"):
        run(*args, row_lse=row_lse.transpose(1, 2))
    with pytest.raises(ValueError, match="row_lse must be a float32"):
        run(*args, row_lse=row_lse.double())
