"""The sparse step: one forward pass that recomputes only salient rows, layer by layer.

Per layer, for the step's query rows (docs/sparse-step.md, docs/architecture.md):

1. `n = attn_norm(h)`; the policy names the rows to refresh; their K and V are projected (the
   layer's own stages), RoPE applied and written into the cache by the `kv_update` kernel, which
   returns `dV = V_new - V_old`.
2. Attention (`saliency_attention` kernel) for every query row: refreshed rows exactly; the others
   `C_old + softmax(q K^T / sqrt(d)) dV` (approximate) or `C_old` (frozen). With a policy's
   cached softmax statistics the approximate rows take their normaliser from the cache's `lse`
   (O(refreshed columns) per row) and the refreshed rows write theirs back.
3. The policy selects rows from the context cosine; the context cache becomes `C_new`.
4. `h += o_proj(C_new)` (`attention_output`); the FFN runs on the selected rows only
   (`gathered_ffn` kernel; on a mixture-of-experts layer the layer's `feed_forward` over the
   gathered rows, so only they are routed and reach experts), the others reuse their cached
   output; `h += ffn_out`. The selected rows are the next layer's incoming set.

Rows that are not queries are not touched at all: their K/V, context and FFN output stay cached.

**Tensor parallelism** (a model with a `shard`, docs/tensor-parallel.md): the same code runs on
every process over its own heads and FFN columns; the layer's stages hold the all-reduces (after
o_proj, after the FFN's down projection, the embedding) and the vocabulary gather. The context
cosine is assembled from per-row partial sums (new.old, new.new, old.old over the process's
heads) added over the processes in float32 before they are combined, and so is the V cosine
(each key/value head counted once), so every process hands its policy the same signals and the
policy selects the same rows everywhere; with `check_invariants` the engine checks that it did.

**No host synchronisation inside the layer loop** (on a GPU), except one per mixture-of-experts
layer: the grouped expert matmuls are sized by how many rows each expert got
(`dyllm.kernels.moe.grouped_experts` reads those counts back). Which rows a layer selects is only
known on the device; reading a count back (`nonzero`, `int(mask.sum())`) would stall a GPU's
launch queue at every layer. So each layer's row sets have a *capacity* fixed on the host before
the step starts
(`row_sets.PaddedRows`): the policy's `row_budget` when it has one (exact: top-k, Fast-dLLM,
dLLM-Cache), otherwise a guess from the previous sparse step. Kernels compute all C slots and
write only the valid ones. The counts stay on the device until the step ends and are read back
once (`SparseStep.finish`); a layer that needed more rows than its capacity held means the step's
answer is incomplete: the caller restores the rows this step wrote (kept aside whenever a
capacity was guessed, `undo`) and runs the step again with room for every query row, so the
result never depends on the guess. On the CPU, where operations run synchronously and reading a
count back costs nothing, the default is to read each set's size back instead (`Capacities.
read_back`): exact row counts, no padding, no retry. `DYLLM_ROW_CAPACITY` overrides the choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from einops import rearrange

from dyllm.cache import CacheManager
from dyllm.generation.step import StepContext
from dyllm.kernels import (
    FlatRows,
    PaddedRows,
    gathered_ffn,
    kv_update,
    row_cosine,
    saliency_attention,
)
from dyllm.kernels.primitives import cosine_from_partial_sums, row_partial_sums
from dyllm.models.transformer import DecoderLayer, DiffusionTransformer
from dyllm.policies.base import AttentionSignals, LayerSignals, SaliencyPolicy


@dataclass(frozen=True)
class QueryRows:
    """A sparse step's query rows, with every shape the host needs known once per step."""

    mask: torch.Tensor
    """Bool [B, L]: the query rows (the same count in every sequence)."""
    index: torch.Tensor
    """Long [B, Q]: their canvas positions, ascending."""
    span: tuple[int, int] | None
    """(start, end) when every sequence's queries are positions start..end-1 (DyLLM's response
    and whole-sequence steps): rows are then read and written as slices, not by index."""

    @property
    def count(self) -> int:
        return self.index.shape[1]

    def read(self, tensor: torch.Tensor) -> torch.Tensor:
        """The query rows of `tensor` [B, L, F] -> [B, Q, F] (a view for a span: read it
        before those rows are overwritten)."""
        if self.span is not None:
            return tensor[:, self.span[0] : self.span[1]]
        return tensor[_batch_column(self.index), self.index]

    def write(self, tensor: torch.Tensor, rows: torch.Tensor) -> None:
        """Write `rows` [B, Q, F] into the query rows of `tensor` [B, L, F]."""
        if self.span is not None:
            tensor[:, self.span[0] : self.span[1]] = rows
        else:
            tensor[_batch_column(self.index), self.index] = rows

    def scatter(self, values: torch.Tensor, fill: float) -> torch.Tensor:
        """values [B, Q] placed at the query positions of a [B, L] tensor filled with `fill`."""
        full = torch.full(self.mask.shape, fill, dtype=values.dtype, device=values.device)
        return full.scatter(1, self.index, values)


@dataclass
class _Undo:
    """What one layer of a step overwrote, to put back if the step must run again."""

    kv_rows: FlatRows | None = None
    old_key: torch.Tensor | None = None
    old_value: torch.Tensor | None = None
    old_context: torch.Tensor | None = None
    ffn_rows: FlatRows | None = None
    old_ffn: torch.Tensor | None = None
    old_lse: torch.Tensor | None = None


@dataclass(frozen=True)
class Capacities:
    """Rows per sequence each layer's refresh set and selection can hold."""

    refresh: list[int]
    select: list[int]
    guessed: bool
    """Some capacity is a guess (a layer may need more: keep what the step overwrites)."""
    read_back: bool = False
    """Ignore the lists: read each set's size back from the device as the layer runs (exact,
    and free on the CPU, where operations run synchronously; a stall per layer on a GPU)."""

    @classmethod
    def every_query(cls, layers: int, query_count: int) -> Capacities:
        return cls([query_count] * layers, [query_count] * layers, guessed=False)

    @classmethod
    def read_back_counts(cls, layers: int) -> Capacities:
        return cls([0] * layers, [0] * layers, guessed=False, read_back=True)

    def fit(self, planned: int, rows_in_queries: torch.Tensor) -> int:
        """The capacity for `rows_in_queries` (bool [B, Q]): `planned`, or read back."""
        if self.read_back:
            return int(rows_in_queries.sum(dim=1).max()) if rows_in_queries.numel() else 0
        return planned


@dataclass(frozen=True)
class StepOutcome:
    """Read back once at the end of a sparse step."""

    refreshed: list[int]
    """Rows refreshed (K/V + exact attention) per layer, summed over the batch."""
    selected: list[int]
    """Rows through the FFN per layer, summed over the batch."""
    most_refreshed: list[int]
    """Per layer, the most rows one sequence refreshed."""
    most_selected: list[int]
    """Per layer, the most rows one sequence selected."""

    def overflowing_layer(self, capacities: Capacities) -> int | None:
        """The first layer whose rows did not fit its capacities, or None."""
        if capacities.read_back:
            return None
        for layer, (refreshed, selected) in enumerate(
            zip(self.most_refreshed, self.most_selected, strict=True)
        ):
            if refreshed > capacities.refresh[layer] or selected > capacities.select[layer]:
                return layer
        return None


@dataclass
class SparseStep:
    """One sparse step over `model`, reading and writing `cache`, asking `policy`."""

    model: DiffusionTransformer
    cache: CacheManager
    policy: SaliencyPolicy
    step: StepContext
    queries: QueryRows
    incoming: torch.Tensor
    """Bool [B, L]: rows refreshed entering the current layer (layer 0: the plan's `refresh`)."""
    capacities: Capacities
    cos: torch.Tensor = field(init=False)
    sin: torch.Tensor = field(init=False)
    _device_counts: list[torch.Tensor] = field(default_factory=list, init=False)
    _undo: list[_Undo] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        positions = self.step.position_ids
        if positions is None:
            positions = self.queries.index  # positions 0..L-1: a position is its column
        else:
            positions = positions.gather(1, self.queries.index)
        self.cos, self.sin = self.model.rope(positions)  # [B, Q, D] each

    def run(self, input_ids: torch.Tensor, logit_rows: torch.Tensor) -> torch.Tensor:
        """Logits [B, W, V] of the query rows at `logit_rows` (long [B, W], slots among the
        query rows)."""
        query_ids = input_ids.gather(1, self.queries.index)
        h = self.model.embed_tokens(query_ids)  # the residual stream is rebuilt every step
        for index, layer in enumerate(self.model.layers):
            h = self._layer(layer, index, h)
        return self.model.logits(h[_batch_column(logit_rows), logit_rows])

    def finish(self) -> StepOutcome:
        """The step's counts per layer: the one read back to the host (one sync)."""
        layers = len(self.capacities.select)
        values = torch.stack(self._device_counts).view(layers, 4).tolist()
        return StepOutcome(
            refreshed=[row[0] for row in values],
            selected=[row[1] for row in values],
            most_refreshed=[row[2] for row in values],
            most_selected=[row[3] for row in values],
        )

    def undo(self) -> None:
        """Put back every cache row this step overwrote, last layer first."""
        for index in reversed(range(len(self._undo))):
            undo, buffers = self._undo[index], self.cache[index]
            if undo.ffn_rows is not None:
                buffers.ffn_out[undo.ffn_rows.batch_index, undo.ffn_rows.position] = undo.old_ffn
            if undo.old_context is not None:
                self.queries.write(buffers.context, undo.old_context)
            if undo.old_lse is not None and buffers.lse is not None:
                self.queries.write(buffers.lse, undo.old_lse)
            if undo.kv_rows is not None:
                rows = undo.kv_rows
                buffers.key[rows.batch_index, :, rows.position] = undo.old_key
                buffers.value[rows.batch_index, :, rows.position] = undo.old_value

    def _layer(self, layer: DecoderLayer, index: int, h: torch.Tensor) -> torch.Tensor:
        """One layer over the query rows' hidden states h [B, Q, d]."""
        cache, queries, buffers = self.cache, self.queries, self.cache[index]
        keep_undo = self.capacities.guessed
        undo = _Undo()
        self._undo.append(undo)
        normed = layer.attn_norm(h)
        rows = {
            "layer": index,
            "step": self.step,
            "queries": queries.mask,
            "query_count": queries.count,
            "incoming": self.incoming,
        }
        signals = LayerSignals(
            **rows, compute_value_cosine=partial(self._value_cosine, layer, index, normed)
        )
        refresh = self._rows(self.policy.rows_to_refresh(index, signals), "rows_to_refresh")
        refresh = refresh & queries.mask
        self._check_agreement(index, "rows_to_refresh", refresh)

        # 1. K/V of the refreshed rows (slots among the queries), RoPE, cache write, dV
        refresh_in_queries = refresh.gather(1, queries.index)  # [B, Q]
        refresh_capacity = self.capacities.fit(self.capacities.refresh[index], refresh_in_queries)
        refreshed = PaddedRows.from_mask(refresh_in_queries, refresh_capacity)
        slots = refreshed.flat()
        canvas_rows = FlatRows(
            slots.batch_index, queries.index[slots.batch_index, slots.position], slots.valid
        )
        if keep_undo:
            undo.kv_rows = canvas_rows
            undo.old_key = buffers.key[canvas_rows.batch_index, :, canvas_rows.position]
            undo.old_value = buffers.value[canvas_rows.batch_index, :, canvas_rows.position]
        normed_rows = slots.gather(normed)  # [N, d]
        delta_value = kv_update(
            layer.project_keys(normed_rows),  # [N, KV * D]
            layer.project_values(normed_rows),
            slots.gather(self.cos),  # [N, D]
            slots.gather(self.sin),
            canvas_rows,
            buffers.key,
            buffers.value,
            bool(layer.config.rope_full_precision),
        )  # [N, KV, D]
        cache.mark_written(index, "key", refresh)
        cache.mark_written(index, "value", refresh)

        # 2. attention for every query row (exact for the refreshed ones)
        cache.assert_written(index, "key", self.step.attention_mask)
        cache.assert_written(index, "context", queries.mask & ~refresh)
        context_old = queries.read(buffers.context)
        if keep_undo:
            undo.old_context = context_old.clone()
        batch, kv_heads, head_dim = h.shape[0], layer.num_kv_heads, layer.config.head_dim
        delta_columns = PaddedRows(
            queries.index.gather(1, refreshed.index), refreshed.valid, refreshed.counts
        )
        row_lse = None  # cached softmax statistics: the query rows' lse [B, Q, H], float32
        if self.policy.softmax_statistics == "cached":
            if buffers.lse is None:
                raise ValueError(
                    f"policy {self.policy.name!r} uses cached softmax statistics, but the cache "
                    "keeps none; create it with CacheManager(..., softmax_statistics=True) (the "
                    "SaliencyDenoiser does so for such a policy)"
                )
            cache.assert_written(index, "lse", queries.mask & ~refresh)
            row_lse = queries.read(buffers.lse).clone()  # the kernel rewrites its exact rows
            if keep_undo:
                undo.old_lse = row_lse.clone()
        context_new, signal = saliency_attention(
            layer.project_queries(normed, self.cos, self.sin),  # [B, H, Q, D]
            buffers.key,
            buffers.value,
            context_old,
            refreshed,
            delta_columns,
            delta_value.view(batch, refresh_capacity, kv_heads, head_dim).transpose(1, 2),
            self.step.attention_mask,
            approximate=self.policy.attention == "approximate",
            partial_sums=self.model.shard is not None,
            row_lse=row_lse,
        )
        if row_lse is not None:
            queries.write(buffers.lse, row_lse)
            cache.mark_written(index, "lse", refresh)
        cosine = self._combined_cosine(signal)  # [B, Q], the same on every process

        # 3. selection from the context cosine; the context cache becomes C_new
        after = AttentionSignals(
            **rows, refreshed=refresh, context_cosine=queries.scatter(cosine, 1.0)
        )
        selected = self._rows(self.policy.select(index, after), "select") & queries.mask
        self._check_agreement(index, "select", selected)
        queries.write(buffers.context, context_new)  # context_old may be a view of these rows
        cache.mark_written(index, "context", queries.mask)

        # 4. o_proj on every query row; the FFN on the selected rows only
        h = h + layer.attention_output(context_new)  # out of place: h belongs to the caller
        selected_in_queries = selected.gather(1, queries.index)  # [B, Q]
        select_capacity = self.capacities.fit(self.capacities.select[index], selected_in_queries)
        chosen = PaddedRows.from_mask(selected_in_queries, select_capacity)
        ffn_slots = chosen.flat()
        positions = queries.index[ffn_slots.batch_index, ffn_slots.position]
        if keep_undo:
            undo.ffn_rows = FlatRows(ffn_slots.batch_index, positions, ffn_slots.valid)
            undo.old_ffn = buffers.ffn_out[ffn_slots.batch_index, positions]
        if select_capacity and layer.is_moe:
            _moe_rows(layer, h, ffn_slots, positions, buffers.ffn_out)
        elif select_capacity:
            gathered_ffn(h, ffn_slots, positions, layer.feed_forward_weights(), buffers.ffn_out)
        cache.mark_written(index, "ffn_out", selected)
        cache.assert_written(index, "ffn_out", queries.mask)
        h += queries.read(buffers.ffn_out)  # in place on this layer's own tensor

        self.incoming = selected
        self._device_counts += [
            refreshed.counts.sum(),
            chosen.counts.sum(),
            refreshed.counts.max(),
            chosen.counts.max(),
        ]
        return h

    def _rows(self, rows: object, method: str) -> torch.Tensor:
        """A policy's answer checked by its type and shape alone (nothing read back)."""
        expected = tuple(self.queries.mask.shape)
        if (
            not isinstance(rows, torch.Tensor)
            or rows.dtype != torch.bool
            or tuple(rows.shape) != expected
        ):
            got = (
                f"a {rows.dtype} tensor of shape {list(rows.shape)}"
                if isinstance(rows, torch.Tensor)
                else repr(type(rows).__name__)
            )
            raise ValueError(
                f"policy {self.policy.name!r}: {method} must return a bool mask of shape "
                f"{list(expected)} (rows x canvas columns), got {got}"
            )
        return rows

    def _value_cosine(self, layer: DecoderLayer, index: int, normed: torch.Tensor) -> torch.Tensor:
        """Float32 [B, L]: cosine of fresh V against cached V for every query row (+1 elsewhere),
        over every key/value head of the model (under tensor parallelism: partial sums over the
        process's heads, each head counted by one of its holders, added over processes)."""
        self.cache.assert_written(index, "value", self.queries.mask)
        fresh = layer.project_values(normed)  # [B, Q, KV * D]
        head_dim = layer.config.head_dim
        index_rows = self.queries.index[:, None, :, None]
        cached = self.cache[index].value.gather(
            2, index_rows.expand(-1, layer.num_kv_heads, -1, head_dim)
        )
        cached = rearrange(cached, "b h q d -> b q (h d)")
        shard = self.model.shard
        if shard is None:
            cosine = row_cosine(fresh, cached)
        else:
            partials = row_partial_sums(fresh, cached)  # [3, B, Q]
            if not shard.owns_kv_heads:  # another process counts these (replicated) heads
                partials.zero_()
            cosine = cosine_from_partial_sums(shard.all_reduce(partials))
        return self.queries.scatter(cosine, 1.0)

    def _combined_cosine(self, signal: torch.Tensor) -> torch.Tensor:
        """The attention kernel's cosine [B, Q]; under tensor parallelism its partial sums
        [3, B, Q] over this process's heads, added over the processes (float32), combined."""
        shard = self.model.shard
        if shard is None:
            return signal
        return cosine_from_partial_sums(shard.all_reduce(signal))

    def _check_agreement(self, index: int, method: str, rows: torch.Tensor) -> None:
        """With invariant checks under tensor parallelism: every process chose the same rows."""
        if self.model.shard is not None and self.cache.check_invariants:
            check_same_rows(self.model, rows, f"{method} at layer {index}", self.policy.name)


def check_same_rows(
    model: DiffusionTransformer, rows: torch.Tensor, what: str, policy_name: str
) -> None:
    """Fail unless the bool mask `rows` [B, L] is the same on every process of the model's
    tensor-parallel group (one all-reduce and one read-back: an invariant check, off by
    default)."""
    shard = model.shard
    if shard is None:
        return
    votes = shard.all_reduce(rows.to(torch.int32))  # per row: how many processes chose it
    if bool(((votes != 0) & (votes != shard.world_size)).any()):
        raise RuntimeError(
            f"policy {policy_name!r} chose different rows on different processes ({what}); "
            "under tensor parallelism a policy must be a deterministic function of its step and "
            "signals, which are the same on every process (no unseeded randomness, no state "
            "that differs between processes)"
        )


def _moe_rows(
    layer: DecoderLayer,
    hidden: torch.Tensor,
    rows: FlatRows,
    positions: torch.Tensor,
    ffn_out: torch.Tensor,
) -> None:
    """A mixture-of-experts layer's FFN on the selected rows only: they alone are routed and run
    through their experts (the layer's own `feed_forward` stage), and their outputs are written
    into the FFN-output cache [B, L, d] at (rows.batch_index, positions) where valid; every other
    row keeps its cached output. hidden: [B, Q, d]; rows, positions: [N]."""
    rows.write_valid(ffn_out, positions, layer.feed_forward(rows.gather(hidden)))


def _batch_column(index: torch.Tensor) -> torch.Tensor:
    """[B, 1] sequence numbers that pair with a [B, Q] position index in advanced indexing."""
    return torch.arange(index.shape[0], device=index.device)[:, None]
