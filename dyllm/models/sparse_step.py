"""The sparse step: one forward pass that recomputes only salient rows, layer by layer.

Per layer, for the step's query rows (DESIGN.md, "The sparse step"):

1. `n = attn_norm(h)`; q for the query rows; K and V only for the rows the policy refreshes
   (RoPE applied), written into the cache; `dV = V_new - V_old` on those rows.
2. Attention (`saliency_attention` kernel): refreshed rows exactly; the others
   `C_old + softmax(q K^T / sqrt(d)) dV` (approximate) or `C_old` (frozen).
3. The policy selects rows from the context cosine; the context cache becomes `C_new`.
4. `h += o_proj(C_new)`; the FFN runs on the selected rows only, the others reuse their cached
   output; `h += ffn_out`. The selected rows are the next layer's incoming set.

Rows that are not queries are not touched at all: their K/V, context and FFN output stay cached.
Gathered rows go through the projections and the FFN; nothing is computed full-size and masked
afterwards. The K/V write, the attention and the FFN go through `dyllm.kernels.kernel`, so
DYLLM_KERNELS swaps the eager references for the Triton kernels. `forward_filling_cache` is the
dense step: the model's own forward, op for op, with every intermediate the sparse step needs
written into the cache.

Everything a step needs travels in `SparseStepState`; there is no global state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from einops import rearrange

from dyllm.cache import CacheManager
from dyllm.kernels import FeedForwardWeights, FlatRows, PaddedRows, kernel, row_cosine
from dyllm.models.layers import apply_rope
from dyllm.models.transformer import DecoderLayer, DiffusionTransformer
from dyllm.policies.base import LayerSignals, SaliencyPolicy, StepInfo


@dataclass
class LayerCounts:
    """Rows recomputed at one layer of one step: K/V + exact attention, and FFN."""

    refreshed: int
    selected: int


@dataclass
class SparseStepState:
    """What one sparse step needs, passed down explicitly through the layers."""

    cache: CacheManager
    policy: SaliencyPolicy
    step: StepInfo
    queries: torch.Tensor
    """Bool [B, L]: query rows (the same count in every sequence)."""
    query_index: torch.Tensor
    """Long [B, Q]: canvas positions of the query rows, ascending."""
    cos: torch.Tensor
    """Float32 [B, Q, D]: RoPE cos at the query rows' positions (sin likewise)."""
    sin: torch.Tensor
    key_mask: torch.Tensor | None
    """Bool [B, L] (True = real token) or None."""
    incoming: torch.Tensor
    """Bool [B, L]: rows refreshed entering the current layer."""
    counts: list[LayerCounts] = field(default_factory=list)
    query_span: tuple[int, int] | None = field(init=False)
    """(start, end) when every sequence's query rows are positions start..end-1, as in DyLLM's
    response-only and whole-sequence steps: rows are then read and written as slices of the
    caches instead of gathered and scattered by index."""

    def __post_init__(self) -> None:
        self.query_span = _shared_span(self.query_index)

    def query_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """The query rows of a cache `tensor` [B, L, F] -> [B, Q, F] (a view when they form a
        span: read it before the rows are overwritten)."""
        if self.query_span is not None:
            start, end = self.query_span
            return tensor[:, start:end]
        return _rows(tensor, self.query_index)

    def write_query_rows(self, tensor: torch.Tensor, rows: torch.Tensor) -> None:
        """Write `rows` [B, Q, F] into the query rows of a cache `tensor` [B, L, F]."""
        if self.query_span is not None:
            start, end = self.query_span
            tensor[:, start:end] = rows
        else:
            tensor[_batch_column(self.query_index), self.query_index] = rows


def query_index_of(queries: torch.Tensor) -> torch.Tensor:
    """Long [B, Q] positions of a query mask whose rows all hold Q positions."""
    counts = queries.sum(dim=1)
    if not bool((counts == counts[0]).all()):
        raise ValueError(
            "a policy's query rows must number the same in every sequence of the batch; got "
            f"{counts.tolist()}"
        )
    return PaddedRows.from_mask(queries).index


def forward_filling_cache(
    model: DiffusionTransformer,
    input_ids: torch.Tensor,
    key_mask: torch.Tensor | None,
    position_ids: torch.Tensor,
    cache: CacheManager,
    logit_range: tuple[int, int],
) -> torch.Tensor:
    """The dense forward writing K, V, context and FFN output of every row.

    Returns the logits of positions logit_range[0]..logit_range[1]-1: [B, W, V].
    """
    cos, sin = model.rope(position_ids)
    h = model.embed(input_ids)
    for index, layer in enumerate(model.layers):
        buffers = cache[index]
        q, k, v = layer.project_qkv(layer.attn_norm(h), cos, sin)
        context = layer.attend(q, k, v, key_mask)
        buffers.key.copy_(k)
        buffers.value.copy_(v)
        buffers.context.copy_(context)
        h = h + layer.o_proj(context)
        ffn_out = layer.feed_forward(h)
        buffers.ffn_out.copy_(ffn_out)
        h = h + ffn_out
        for name in ("key", "value", "context", "ffn_out"):
            cache.mark_written(index, name)
    return model.lm_head(model.final_norm(h[:, logit_range[0] : logit_range[1]]))


def sparse_forward(
    model: DiffusionTransformer,
    input_ids: torch.Tensor,
    state: SparseStepState,
    logit_rows: torch.Tensor,
) -> torch.Tensor:
    """Run the layers over the query rows; logits of the query rows at `logit_rows`.

    logit_rows: long [B, W], per sequence the indices of the wanted rows among its query rows.
    Returns logits [B, W, V].
    """
    query_ids = input_ids.gather(1, state.query_index)
    h = model.embed(query_ids)  # the residual stream is rebuilt from the embeddings every step
    for index, layer in enumerate(model.layers):
        h = sparse_layer(layer, index, h, state)
    wanted = _rows(h, logit_rows)
    return model.lm_head(model.final_norm(wanted))


def sparse_layer(
    layer: DecoderLayer, index: int, h: torch.Tensor, state: SparseStepState
) -> torch.Tensor:
    """One layer of the sparse step over the query rows' hidden states h [B, Q, d]."""
    cache, config = state.cache, layer.config
    buffers = cache[index]
    queries, query_index = state.queries, state.query_index
    normed = layer.attn_norm(h)
    signals = LayerSignals(
        layer=index,
        step=state.step,
        queries=queries,
        incoming=state.incoming,
        _value_cosine=lambda: _value_cosine(layer, index, normed, state),
    )
    refresh = state.policy.rows_to_refresh(index, signals) & queries
    signals.refreshed = refresh
    refresh_in_queries = refresh.gather(1, query_index)  # [B, Q]

    # 1. K/V of the refreshed rows, RoPE applied, written into the cache; dV kept for step 2
    rows = FlatRows.from_mask(refresh_in_queries)
    canvas = FlatRows(rows.batch_index, query_index[rows.batch_index, rows.position])
    delta_value = _refresh_key_value(layer, normed, rows, canvas, state, buffers)
    cache.mark_written(index, "key", refresh)
    cache.mark_written(index, "value", refresh)

    # 2. attention for the query rows (exact for refreshed ones)
    cache.assert_written(index, "key", state.key_mask)
    approximate = state.policy.attention == "approximate"
    stale_rows = queries & ~refresh
    cache.assert_written(index, "context", stale_rows)
    context_old = state.query_rows(buffers.context)
    q = rearrange(layer.q_proj(normed), "b q (h d) -> b h q d", d=config.head_dim)
    q = apply_rope(q, state.cos, state.sin, bool(config.rope_full_precision))
    delta_columns = PaddedRows.from_mask(refresh)
    padded_delta = _pad_per_sequence(delta_value, rows, delta_columns, config)
    attention = kernel("saliency_attention", h.device)
    context_new, cosine = attention(
        q,
        buffers.key,
        buffers.value,
        context_old,
        refresh_in_queries,
        delta_columns,
        padded_delta,
        state.key_mask,
        approximate=approximate,
    )

    # 3. selection from the context cosine; the context cache becomes C_new
    def context_cosine() -> torch.Tensor:
        cache.assert_written(index, "context", queries)
        full = torch.ones(queries.shape, dtype=torch.float32, device=queries.device)
        return full.scatter(1, query_index, cosine)

    signals._context_cosine = context_cosine
    selected = state.policy.select(index, signals) & queries
    state.write_query_rows(buffers.context, context_new)  # context_old may alias these rows
    cache.mark_written(index, "context", queries)

    # 4. o_proj on every query row; FFN on the selected rows only
    h = h + layer.o_proj(context_new)  # out of place: the h passed in belongs to the caller
    chosen = FlatRows.from_mask(selected.gather(1, query_index))
    if len(chosen):
        feed_forward = kernel("gathered_ffn", h.device)
        positions = query_index[chosen.batch_index, chosen.position]
        feed_forward(h, chosen, positions, _feed_forward_weights(layer), buffers.ffn_out)
    cache.mark_written(index, "ffn_out", selected)
    cache.assert_written(index, "ffn_out", queries)
    h += state.query_rows(buffers.ffn_out)  # in place on this layer's own tensor

    state.incoming = selected
    state.counts.append(LayerCounts(int(refresh.sum()), int(selected.sum())))
    return h


def _refresh_key_value(
    layer: DecoderLayer,
    normed: torch.Tensor,
    rows: FlatRows,
    canvas: FlatRows,
    state: SparseStepState,
    buffers,
) -> torch.Tensor:
    """Project K, V for the refreshed rows; the `kv_update` kernel rotates K, writes both into the
    cache and returns dV [N, KV, D]."""
    config = layer.config
    kv_heads, head_dim = config.num_kv_heads, config.head_dim
    if not len(rows):
        return normed.new_zeros(0, kv_heads, head_dim)
    rows_normed = rows.gather(normed)  # [N, d]
    update = kernel("kv_update", normed.device)
    return update(
        layer.k_proj(rows_normed),  # [N, KV * D]
        layer.v_proj(rows_normed),
        rows.gather(state.cos),  # [N, D]
        rows.gather(state.sin),
        canvas,
        buffers.key,
        buffers.value,
        bool(config.rope_full_precision),
    )


def _feed_forward_weights(layer: DecoderLayer) -> FeedForwardWeights:
    """The layer's FFN norm and SwiGLU matrices, as the gathered-FFN kernel takes them."""
    return FeedForwardWeights(
        norm_weight=layer.ffn_norm.weight,
        norm_eps=layer.ffn_norm.eps,
        gate=layer.ffn.gate_proj.weight,
        up=layer.ffn.up_proj.weight,
        down=layer.ffn.down_proj.weight,
    )


def _pad_per_sequence(
    delta_value: torch.Tensor, rows: FlatRows, columns: PaddedRows, config
) -> torch.Tensor:
    """dV [N, KV, D] in flat row order -> [B, KV, S, D] in `columns` order (zeros as padding).

    Both orders list each sequence's refreshed positions ascending, so the n-th flat row of
    sequence b is slot n of that sequence.
    """
    batch = columns.index.shape[0]
    padded = delta_value.new_zeros(batch, columns.width, config.num_kv_heads, config.head_dim)
    batch_index, slot = columns.valid.nonzero(as_tuple=True)
    padded[batch_index, slot] = delta_value
    return padded.transpose(1, 2)


def _value_cosine(
    layer: DecoderLayer, index: int, normed: torch.Tensor, state: SparseStepState
) -> torch.Tensor:
    """Float32 [B, L]: cosine of fresh V against cached V for every query row (+1 elsewhere)."""
    state.cache.assert_written(index, "value", state.queries)
    fresh = layer.v_proj(normed)  # [B, Q, KV * D]
    cached = state.cache[index].value.gather(
        2,
        state.query_index[:, None, :, None].expand(
            -1, layer.config.num_kv_heads, -1, layer.config.head_dim
        ),
    )
    cosine = row_cosine(fresh, rearrange(cached, "b h q d -> b q (h d)"))
    full = torch.ones(state.queries.shape, dtype=torch.float32, device=normed.device)
    return full.scatter(1, state.query_index, cosine)


def _shared_span(index: torch.Tensor) -> tuple[int, int] | None:
    """(start, end) if every row of the ascending position index [B, Q] is start..end-1."""
    if index.numel() == 0:
        return None
    start, end = int(index[0, 0]), int(index[0, 0]) + index.shape[1]
    span = torch.arange(start, end, device=index.device)
    return (start, end) if bool((index == span).all()) else None


def _batch_column(index: torch.Tensor) -> torch.Tensor:
    """[B, 1] sequence numbers that pair with a [B, Q] position index in advanced indexing."""
    return torch.arange(index.shape[0], device=index.device)[:, None]


def _rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` [B, Q] of `tensor` [B, L, F] -> [B, Q, F] (advanced indexing: on the CPU
    about 4x faster than `gather` with an expanded index)."""
    return tensor[_batch_column(index), index]
