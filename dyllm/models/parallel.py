"""Tensor parallelism as the model sees it: which part of each weight one process holds, and the
hook through which it adds its partial results to the other processes'.

Megatron's layout (docs/tensor-parallel.md): q/k/v and the FFN's gate/up are split by output
(attention heads, FFN columns), o_proj and the FFN's down projection by input, so each block
needs one sum over the processes after o_proj and one after the down projection; the embedding
and the LM head are split by vocabulary (the embedding's rows are summed, the head's logits
gathered). Norms are replicated. Grouped-query attention splits the key/value heads with their
query heads, or, when there are fewer key/value heads than processes, gives each process the one
key/value head its query heads read (held by `kv_replicas` processes).

The mixture-of-experts families split the same way: a fused QKV (LLaDA2) is three row ranges of
one tensor (this process's Q heads, K heads and V heads, concatenated in that order, the layout
the layer's fused projection expects); the per-head QK-norm weights are replicated (one [D]
vector every head shares); a MoE FFN keeps its router (gate, expert bias) whole on every
process, so every process routes every row to the same experts with the same weights, and
splits every expert's and the shared expert's columns like a dense SwiGLU's. The layer's one
sum after the FFN then adds the processes' partial weighted expert sums.

This module only describes a shard; `dyllm.distributed` decides the split (and refuses
impossible ones) and implements `Communicator` with torch.distributed. The model calls the
communicator in two stages of a block (`DecoderLayer.attention_output`, `feed_forward` and the
FFN weights' `reduce`), in `DiffusionTransformer.embed_tokens` and in `logits`, so the dense
forward and the sparse step share every collective.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from dyllm.models.config import ModelConfig

SplitKind = Literal[
    "heads", "kv_heads", "qkv", "intermediate", "expert_columns", "shared_columns", "vocab"
]

SPLITS: dict[str, tuple[SplitKind, int]] = {
    "embed.weight": ("vocab", 0),
    "lm_head.weight": ("vocab", 0),
    "q_proj.weight": ("heads", 0),
    "q_proj.bias": ("heads", 0),
    "k_proj.weight": ("kv_heads", 0),
    "k_proj.bias": ("kv_heads", 0),
    "v_proj.weight": ("kv_heads", 0),
    "v_proj.bias": ("kv_heads", 0),
    "o_proj.weight": ("heads", 1),
    "ffn.gate_proj.weight": ("intermediate", 0),
    "ffn.up_proj.weight": ("intermediate", 0),
    "ffn.down_proj.weight": ("intermediate", 1),
    "qkv_proj.weight": ("qkv", 0),
    "qkv_proj.bias": ("qkv", 0),
    "ffn.experts.*.gate_proj.weight": ("expert_columns", 0),
    "ffn.experts.*.up_proj.weight": ("expert_columns", 0),
    "ffn.experts.*.down_proj.weight": ("expert_columns", 1),
    "ffn.shared_expert.gate_proj.weight": ("shared_columns", 0),
    "ffn.shared_expert.up_proj.weight": ("shared_columns", 0),
    "ffn.shared_expert.down_proj.weight": ("shared_columns", 1),
}
"""Parameter name (a block's without its `layers.{i}.` prefix; an expert's index written `*`) ->
what it is split by and along which dimension of its [out, in] tensor. Every other parameter
(the norms, the QK-norms, a MoE layer's router and expert bias) is replicated."""

ParameterSlice = tuple[int, tuple[tuple[int, int], ...]]
"""(dimension, ranges): the [start, end) ranges along `dimension` of a full tensor that one
process holds, concatenated in order (one range, except a fused QKV's three)."""

_EXPERT_INDEX = re.compile(r"^ffn\.experts\.\d+\.")


@runtime_checkable
class Communicator(Protocol):
    """Collectives over the processes of one tensor-parallel group (`dyllm.distributed` has the
    torch.distributed implementation). Results are identical on every process."""

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum over the processes (written into `tensor` when it is contiguous);
        callers use the returned tensor."""
        ...

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's `tensor` [..., F] (the same shape everywhere) concatenated along the
        last dimension in rank order: [..., world_size * F]."""
        ...


@dataclass(frozen=True)
class TensorParallelShard:
    """What one process of a tensor-parallel group holds; ranges are [start, end) in units of
    heads, FFN columns and vocabulary rows."""

    rank: int
    world_size: int
    heads: tuple[int, int]
    """Query heads."""
    kv_heads: tuple[int, int]
    """Key/value heads (those the query heads read)."""
    kv_replicas: int
    """Processes holding each of these key/value heads: 1 when they are split, world_size /
    num_kv_heads when there are fewer key/value heads than processes."""
    intermediate: tuple[int, int]
    """Dense FFN columns (gate/up rows, down columns); (0, 0) when the model has no dense FFN
    width (every layer a mixture of experts)."""
    vocab: tuple[int, int]
    """Rows of the embedding and of the LM head."""
    vocab_block: int
    """Vocabulary rows per process before the last one runs short (ceil(V / world_size)): the
    width each process's logits are padded to for the all-gather."""
    full_vocab: int
    """V, the whole vocabulary."""
    communicator: Communicator

    @property
    def num_heads(self) -> int:
        return self.heads[1] - self.heads[0]

    @property
    def num_kv_heads(self) -> int:
        return self.kv_heads[1] - self.kv_heads[0]

    @property
    def intermediate_size(self) -> int:
        return self.intermediate[1] - self.intermediate[0]

    @property
    def vocab_size(self) -> int:
        return self.vocab[1] - self.vocab[0]

    @property
    def owns_kv_heads(self) -> bool:
        """Whether this process counts its key/value heads in sums over processes (the first of
        their `kv_replicas` holders does; the others would count them again)."""
        return self.rank % self.kv_replicas == 0

    def columns(self, width: int) -> tuple[int, int]:
        """This process's equal part [start, end) of `width` FFN columns (an expert's, the
        shared expert's; the plan checks that the processes divide `width`)."""
        part = width // self.world_size
        return self.rank * part, (self.rank + 1) * part

    def check(self, config: ModelConfig) -> None:
        """Fail when the ranges do not fit `config` (a plan from `dyllm.distributed` fits)."""
        problem = split_problem(config, self.world_size)
        if problem is not None:
            raise ValueError(
                f"tensor-parallel shard {self.rank}: cannot split the model over "
                f"{self.world_size} processes: {problem}; build shards with dyllm.distributed"
            )
        limits = {
            "heads": (self.heads, config.num_heads),
            "kv_heads": (self.kv_heads, config.num_kv_heads),
            "vocab": (self.vocab, config.vocab_size),
        }
        if _has_dense_ffn(config):
            limits["intermediate"] = (self.intermediate, config.intermediate_size)
        for name, ((start, end), size) in limits.items():
            if not 0 <= start < end <= size:
                raise ValueError(
                    f"tensor-parallel shard {self.rank}: {name} range [{start}, {end}) does not "
                    f"lie in the model's {size}; build shards with dyllm.distributed"
                )
        group = config.num_heads // config.num_kv_heads
        whole_groups = self.heads[0] % group == 0 and self.num_heads == group * self.num_kv_heads
        if (
            self.heads[0] // group != self.kv_heads[0]
            or (self.heads[1] - 1) // group != self.kv_heads[1] - 1
            or (self.num_kv_heads > 1 and not whole_groups)
        ):
            raise ValueError(
                f"tensor-parallel shard {self.rank}: query heads {self.heads} do not read "
                f"exactly key/value heads {self.kv_heads}"
            )

    def parameter_slice(self, name: str, config: ModelConfig) -> ParameterSlice | None:
        """(dimension, ranges) of parameter `name`'s full tensor that this process holds, or
        None when it is replicated. A fused QKV's ranges are this process's Q rows, K rows and
        V rows (the full tensor's rows are all Q heads, then all K heads, then all V heads)."""
        key = name.split(".", 2)[2] if name.startswith("layers.") else name
        split = SPLITS.get(_EXPERT_INDEX.sub("ffn.experts.*.", key))
        if split is None:
            return None
        kind, dimension = split
        head_dim = config.head_dim
        if kind == "qkv":
            q_rows, kv_rows = config.num_heads * head_dim, config.num_kv_heads * head_dim
            (q0, q1), (kv0, kv1) = self.heads, self.kv_heads
            ranges = (
                (q0 * head_dim, q1 * head_dim),
                (q_rows + kv0 * head_dim, q_rows + kv1 * head_dim),
                (q_rows + kv_rows + kv0 * head_dim, q_rows + kv_rows + kv1 * head_dim),
            )
            return dimension, ranges
        if kind in ("expert_columns", "shared_columns"):
            experts = config.experts
            assert experts is not None, f"{name} belongs to a mixture-of-experts layer"
            width = experts.expert_intermediate_size
            if kind == "shared_columns":
                assert experts.shared_expert_intermediate_size is not None
                width = experts.shared_expert_intermediate_size
            return dimension, (self.columns(width),)
        start, end = getattr(self, kind)
        unit = head_dim if kind in ("heads", "kv_heads") else 1
        return dimension, ((start * unit, end * unit),)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over the group's processes (the communicator's `all_reduce`; use the result)."""
        return self.communicator.all_reduce(tensor)

    def gather_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """This process's logits [..., vocab rows held] -> every vocabulary entry's [..., V].

        Each process pads its rows to `vocab_block` (the last ones hold fewer), the blocks are
        gathered in rank order, so entry i sits at column i, and the padding is cut off.
        """
        padded = F.pad(logits, (0, self.vocab_block - logits.shape[-1]))
        return self.communicator.all_gather(padded.contiguous())[..., : self.full_vocab]


def valid_sizes(config: ModelConfig) -> list[int]:
    """Every tensor-parallel size that `config` allows."""
    return [size for size in range(1, config.num_heads + 1) if not split_problem(config, size)]


def split_problem(config: ModelConfig, size: int) -> str | None:
    """Why `config` cannot be split over `size` processes, or None when it can."""
    heads, kv_heads = config.num_heads, config.num_kv_heads
    if heads % size:
        return f"its {heads} attention heads do not divide into {size} equal groups"
    if kv_heads % size and size % kv_heads:
        return (
            f"its {kv_heads} key/value heads can be neither divided among {size} processes nor "
            f"replicated evenly ({size} is not a multiple of {kv_heads})"
        )
    widths = {"FFN columns": config.intermediate_size if _has_dense_ffn(config) else 0}
    if config.experts is not None:
        widths["columns of each expert"] = config.experts.expert_intermediate_size
        widths["columns of the shared expert"] = config.experts.shared_expert_intermediate_size or 0
    for what, width in widths.items():
        if width % size:
            return f"its {width} {what} do not divide into {size} equal parts"
    block = -(-config.vocab_size // size)
    if block * (size - 1) >= config.vocab_size:
        return f"its {config.vocab_size} vocabulary rows leave a process without any"
    return None


def _has_dense_ffn(config: ModelConfig) -> bool:
    """Whether some layer of `config` has the dense SwiGLU of `intermediate_size` columns."""
    return not all(config.is_moe_layer(index) for index in range(config.num_layers))
