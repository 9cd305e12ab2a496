"""Per-layer activation caches of the sparse step, allocated once per generate call.

For each layer and each sequence of the batch the cache keeps what a row needs to be skipped at
the next step:

| buffer | shape | written when |
|---|---|---|
| `key` | [B, KV, L, D] | the row's K is recomputed (after RoPE) |
| `value` | [B, KV, L, D] | the row's V is recomputed |
| `context` | [B, L, H * D] | the row is a query (attention output before o_proj) |
| `ffn_out` | [B, L, d] | the row goes through the FFN |
| `lse` (optional) | [B, L, H] float32 | the row's attention is exact (dense or refreshed) |

`lse`, each row's softmax log-sum-exp per head, exists only with `softmax_statistics=True`: a
policy with cached softmax statistics reads it for the rows it approximates
(docs/sparse-step.md). It is laid out like `context` (rows, then heads), so a step reads and
writes the query rows of both the same way. The cache stores it; the engine computes it.

Under tensor parallelism each process keeps the K, V and context of its own heads (H and KV are
the heads the process holds, `num_heads` / `num_kv_heads`) and the whole FFN output, which the
FFN's all-reduce makes the same on every process.

With `check_invariants` (on in the tests, off by default in `dyllm.generate`), plain tensors keep
the books: a `written` mask per layer and buffer records which rows hold data, so a read of a row
never written fails loudly instead of returning zeros. The checks read a flag back to the host at
every layer, which stalls a GPU, so they are a debugging aid, not part of a method's cost. The
manager is also the `ActivationSink` a dense forward fills (`record`). It knows nothing about
which rows matter; policies decide that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dyllm.models.config import ModelConfig
from dyllm.models.transformer import LayerActivations

BUFFERS = ("key", "value", "context", "ffn_out")


class CacheInvariantError(AssertionError):
    """A cache access that breaks an invariant (shape, row range, read before write)."""


@dataclass
class LayerCache:
    """The four buffers of one layer and which of their rows have been written."""

    key: torch.Tensor
    value: torch.Tensor
    context: torch.Tensor
    ffn_out: torch.Tensor
    lse: torch.Tensor | None = None
    written: dict[str, torch.Tensor] = field(default_factory=dict)

    def buffer(self, name: str) -> torch.Tensor:
        return getattr(self, name)


class CacheManager:
    """Buffers for `num_layers` layers of a batch of `batch` sequences of `length` positions.

    Row sets are boolean masks [B, L] or (batch_index, position) index pairs; every write marks
    the rows written, every checked read asserts they were. `num_heads` and `num_kv_heads` are
    the heads this process holds (default: the config's, a single process).
    softmax_statistics: also keep each row's float32 log-sum-exp per head (`lse`).
    """

    def __init__(
        self,
        config: ModelConfig,
        batch: int,
        length: int,
        device: torch.device | str,
        dtype: torch.dtype,
        check_invariants: bool = False,
        *,
        num_heads: int | None = None,
        num_kv_heads: int | None = None,
        softmax_statistics: bool = False,
    ) -> None:
        self.batch, self.length = batch, length
        self.check_invariants = check_invariants
        self.buffer_names = BUFFERS + (("lse",) if softmax_statistics else ())
        """The buffers kept: the four of every cache, and `lse` when asked for."""
        heads = config.num_heads if num_heads is None else num_heads
        kv_heads = config.num_kv_heads if num_kv_heads is None else num_kv_heads
        kv_shape = (batch, kv_heads, length, config.head_dim)
        self.layers = []
        for _ in range(config.num_layers):
            layer = LayerCache(
                key=torch.zeros(kv_shape, device=device, dtype=dtype),
                value=torch.zeros(kv_shape, device=device, dtype=dtype),
                context=torch.zeros(
                    batch, length, heads * config.head_dim, device=device, dtype=dtype
                ),
                ffn_out=torch.zeros(batch, length, config.hidden_size, device=device, dtype=dtype),
            )
            if softmax_statistics:
                layer.lse = torch.zeros(batch, length, heads, device=device, dtype=torch.float32)
            layer.written = {
                name: torch.zeros(batch, length, dtype=torch.bool, device=device)
                for name in self.buffer_names
            }
            self.layers.append(layer)

    @property
    def nbytes(self) -> int:
        """Bytes held by the activation buffers (bookkeeping masks excluded)."""
        return sum(
            layer.buffer(name).numel() * layer.buffer(name).element_size()
            for layer in self.layers
            for name in self.buffer_names
        )

    def __getitem__(self, layer: int) -> LayerCache:
        return self.layers[layer]

    def record(self, layer: int, activations: LayerActivations) -> None:
        """Keep every row of what a dense forward computed at `layer` (the sink protocol)."""
        buffers = self.layers[layer]
        for name in BUFFERS:
            buffers.buffer(name).copy_(getattr(activations, name))
            self.mark_written(layer, name)

    def record_statistics(self, layer: int, lse: torch.Tensor) -> None:
        """Keep every row's softmax log-sum-exps (float32 [B, L, H]) from a dense forward."""
        buffers = self.layers[layer]
        if buffers.lse is None:
            raise CacheInvariantError(
                "this cache keeps no softmax statistics; create it with softmax_statistics=True"
            )
        buffers.lse.copy_(lse)
        self.mark_written(layer, "lse")

    def written_state(self) -> list[dict[str, torch.Tensor]]:
        """A copy of the bookkeeping masks (empty without invariant checks)."""
        if not self.check_invariants:
            return []
        return [
            {name: mask.clone() for name, mask in layer.written.items()} for layer in self.layers
        ]

    def restore_written(self, state: list[dict[str, torch.Tensor]]) -> None:
        """Put back masks saved by `written_state`."""
        for layer, masks in zip(self.layers, state, strict=False):
            for name, mask in masks.items():
                layer.written[name].copy_(mask)

    def mark_written(self, layer: int, name: str, rows: torch.Tensor | None = None) -> None:
        """Record that `rows` (bool [B, L]; None = all) of a buffer now hold data."""
        if not self.check_invariants:
            return
        written = self.layers[layer].written[name]
        if rows is None:
            written.fill_(True)
        else:
            self._check_rows(rows)
            written |= rows

    def assert_written(self, layer: int, name: str, rows: torch.Tensor | None = None) -> None:
        """Fail when any of `rows` (bool [B, L]; None = all) of a buffer was never written."""
        if not self.check_invariants:
            return
        written = self.layers[layer].written[name]
        unwritten = ~written if rows is None else rows & ~written
        if bool(unwritten.any()):
            batch_index, position = unwritten.nonzero()[0].tolist()
            raise CacheInvariantError(
                f"layer {layer} {name} cache read at row (sequence {batch_index}, position "
                f"{position}) before anything was written there; run a dense step first"
            )

    def _check_rows(self, rows: torch.Tensor) -> None:
        if self.check_invariants and rows.shape != (self.batch, self.length):
            raise CacheInvariantError(
                f"row mask of shape {tuple(rows.shape)} does not match the cache's "
                f"[{self.batch}, {self.length}]"
            )
