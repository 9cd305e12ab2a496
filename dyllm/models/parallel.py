"""Tensor parallelism as the model sees it: which part of each weight one process holds, and the
hook through which it adds its partial results to the other processes'.

Megatron's layout (docs/tensor-parallel.md): q/k/v and the FFN's gate/up are split by output
(attention heads, FFN columns), o_proj and the FFN's down projection by input, so each block
needs one sum over the processes after o_proj and one after the down projection; the embedding
and the LM head are split by vocabulary (the embedding's rows are summed, the head's logits
gathered). Norms are replicated. Grouped-query attention splits the key/value heads with their
query heads, or, when there are fewer key/value heads than processes, gives each process the one
key/value head its query heads read (held by `kv_replicas` processes).

This module only describes a shard; `dyllm.distributed` decides the split (and refuses
impossible ones) and implements `Communicator` with torch.distributed. The model calls the
communicator in two stages of a block (`DecoderLayer.attention_output`, `feed_forward` and the
FFN weights' `reduce`), in `DiffusionTransformer.embed_tokens` and in `logits`, so the dense
forward and the sparse step share every collective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from dyllm.models.config import ModelConfig

SplitKind = Literal["heads", "kv_heads", "intermediate", "vocab"]

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
}
"""Parameter name (a block's without its `layers.{i}.` prefix) -> what it is split by and along
which dimension of its [out, in] tensor. Every other parameter (the norms) is replicated."""


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
    """FFN columns (gate/up rows, down columns)."""
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

    def check(self, config: ModelConfig) -> None:
        """Fail when the ranges do not fit `config` (a plan from `dyllm.distributed` fits), or
        when the model is one tensor parallelism does not split yet."""
        refusal = unsplittable(config)
        if refusal is not None:
            raise ValueError(refusal)
        limits = {
            "heads": (self.heads, config.num_heads),
            "kv_heads": (self.kv_heads, config.num_kv_heads),
            "intermediate": (self.intermediate, config.intermediate_size),
            "vocab": (self.vocab, config.vocab_size),
        }
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

    def parameter_slice(self, name: str, config: ModelConfig) -> tuple[int, int, int] | None:
        """(dimension, start, end) of parameter `name`'s full tensor that this process holds,
        or None when it is replicated."""
        split = SPLITS.get(name.split(".", 2)[2] if name.startswith("layers.") else name)
        if split is None:
            return None
        kind, dimension = split
        start, end = getattr(self, kind)
        unit = config.head_dim if kind in ("heads", "kv_heads") else 1
        return dimension, start * unit, end * unit

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
    if size > 1 and unsplittable(config) is not None:
        return "tensor parallelism does not split mixture-of-experts models yet"
    heads, kv_heads = config.num_heads, config.num_kv_heads
    if heads % size:
        return f"its {heads} attention heads do not divide into {size} equal groups"
    if kv_heads % size and size % kv_heads:
        return (
            f"its {kv_heads} key/value heads can be neither divided among {size} processes nor "
            f"replicated evenly ({size} is not a multiple of {kv_heads})"
        )
    if config.intermediate_size % size:
        return f"its {config.intermediate_size} FFN columns do not divide into {size} equal parts"
    block = -(-config.vocab_size // size)
    if block * (size - 1) >= config.vocab_size:
        return f"its {config.vocab_size} vocabulary rows leave a process without any"
    return None


def unsplittable(config: ModelConfig) -> str | None:
    """Why `config`'s model cannot be split over processes yet (None: it can). The
    mixture-of-experts families are not split: their experts would be divided between processes
    (expert parallelism) and LLaDA2's fused QKV by heads inside one tensor, neither of which is
    written."""
    if config.experts is None and not config.fused_qkv:
        return None
    return (
        f"tensor parallelism does not support {config.family!r} models yet (their mixture of "
        "experts and fused QKV are not split over processes); load them with tensor_parallel=1"
    )
