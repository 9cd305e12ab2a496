"""The tensor-parallel plan: how a model of a given shape is split over N processes, or why not.

Megatron's layout (docs/tensor-parallel.md has the table):

* query heads: N equal, contiguous groups (q_proj rows and bias, o_proj columns);
* key/value heads: split with their query heads when N divides their number; when N is a
  multiple of it (fewer key/value heads than processes, e.g. Dream-7B's 4 at N = 8 if its 28
  query heads allowed 8), each process holds the one key/value head its query heads read, so
  every such head lives on N / KV processes (`kv_replicas`); any other N is refused;
* FFN columns: N equal parts (gate/up rows, down columns), and so for every expert and the
  shared expert of a mixture-of-experts layer, whose router is replicated;
* a fused QKV (LLaDA2): this process's Q, K and V heads' rows, three ranges of one tensor;
* vocabulary: N blocks of ceil(V / N) rows (the last one shorter) of the embedding and the LM head;
* norms: replicated.

An impossible split is refused with the model's numbers and the sizes that work.
"""

from __future__ import annotations

from dataclasses import dataclass

from dyllm.models.config import ModelConfig
from dyllm.models.parallel import (
    Communicator,
    TensorParallelShard,
    split_problem,
    valid_sizes,
)


class TensorParallelError(ValueError):
    """A tensor-parallel size or process group that cannot run this model, with the fix."""


@dataclass(frozen=True)
class TensorParallelPlan:
    """A checked split of `config` over `world_size` processes (`plan_tensor_parallel`)."""

    config: ModelConfig
    world_size: int

    @property
    def heads_per_process(self) -> int:
        return self.config.num_heads // self.world_size

    @property
    def kv_replicas(self) -> int:
        """Processes holding each key/value head: 1 when the heads are split."""
        kv_heads = self.config.num_kv_heads
        return 1 if kv_heads % self.world_size == 0 else self.world_size // kv_heads

    @property
    def kv_heads_per_process(self) -> int:
        return max(self.config.num_kv_heads // self.world_size, 1)

    @property
    def intermediate_per_process(self) -> int:
        return self.config.intermediate_size // self.world_size

    @property
    def vocab_block(self) -> int:
        """Vocabulary rows per process (the last process may hold fewer)."""
        return -(-self.config.vocab_size // self.world_size)

    def vocab_range(self, rank: int) -> tuple[int, int]:
        block, vocab = self.vocab_block, self.config.vocab_size
        return min(rank * block, vocab), min((rank + 1) * block, vocab)

    def shard(self, rank: int, communicator: Communicator) -> TensorParallelShard:
        """Process `rank`'s part, talking to the others through `communicator`."""
        if not 0 <= rank < self.world_size:
            raise TensorParallelError(f"rank {rank} is outside a group of {self.world_size}")
        heads = self.heads_per_process
        kv = self.kv_heads_per_process
        kv_start = rank // self.kv_replicas * kv
        ffn = self.intermediate_per_process
        return TensorParallelShard(
            rank=rank,
            world_size=self.world_size,
            heads=(rank * heads, (rank + 1) * heads),
            kv_heads=(kv_start, kv_start + kv),
            kv_replicas=self.kv_replicas,
            intermediate=(rank * ffn, (rank + 1) * ffn),
            vocab=self.vocab_range(rank),
            vocab_block=self.vocab_block,
            full_vocab=self.config.vocab_size,
            communicator=communicator,
        )

    def _expert_columns(self) -> dict[str, int]:
        experts = self.config.experts
        if experts is None:
            return {}
        shared = experts.shared_expert_intermediate_size or 0
        return {
            "expert_columns": experts.expert_intermediate_size // self.world_size,
            "shared_expert_columns": shared // self.world_size,
        }

    def describe(self) -> dict[str, object]:
        """The split in numbers, per process."""
        return {
            "world_size": self.world_size,
            "query_heads": self.heads_per_process,
            "kv_heads": self.kv_heads_per_process,
            "kv_replicas": self.kv_replicas,
            "ffn_columns": self.intermediate_per_process,
            **self._expert_columns(),
            "vocab_rows": self.vocab_block,
        }


def plan_tensor_parallel(config: ModelConfig, world_size: int) -> TensorParallelPlan:
    """The split of `config` over `world_size` processes; TensorParallelError when it cannot be
    split that way (the message names the model's numbers and the sizes that work)."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise TensorParallelError(
            f"the tensor-parallel size is a number of processes, at least 1; got {world_size!r}"
        )
    problem = split_problem(config, world_size)
    if problem:
        sizes = ", ".join(map(str, valid_sizes(config)))
        raise TensorParallelError(
            f"cannot split the model over {world_size} processes: {problem}; use a "
            f"tensor-parallel size this model allows ({sizes})"
        )
    return TensorParallelPlan(config, world_size)
