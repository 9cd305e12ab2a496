"""What tensor parallelism costs, computed from the shapes: weight bytes each process holds and
bytes handed to collectives per dense and per sparse step.

Payload bytes are what a process hands to each collective (`CountingCommunicator` measures the
same quantity, so the tests hold these formulas to a run). The bytes a process actually sends
depend on the algorithm; for the ring algorithms NCCL and gloo use on a single node, an
all-reduce of S bytes sends 2 (N - 1) / N x S per process and an all-gather of S bytes from each
process sends (N - 1) x S (`ring_send_bytes`).

Per forward, with d the model width, e the bytes of an element, B sequences, W logit columns,
V / N the vocabulary block:

* dense step over L positions: one all-reduce of the embeddings (B L d e), two per layer
  (after o_proj and after the FFN, B L d e each), one all-gather of the logits (B W ceil(V/N) e);
* sparse step over Q query rows: the embeddings (B Q d e); per layer o_proj (B Q d e), the
  context cosine's partial sums (3 B Q x 4 bytes, float32), the FFN rows of the layer's
  selection capacity C_l (B C_l d e; nothing when C_l = 0) and, for policies that read it,
  the V cosine's partial sums (3 B Q x 4); the logits as in a dense step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dyllm.distributed.plan import plan_tensor_parallel
from dyllm.models import DiffusionTransformer, ModelConfig

COSINE_SUMS_BYTES = 3 * 4
"""Per row: new.old, new.new and old.old in float32."""


class _Unconnected:
    """Stands in for a communicator where only shapes are needed."""

    rank = 0
    world_size = 1

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a shard built for accounting does not communicate")

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a shard built for accounting does not communicate")


def weight_bytes(config: ModelConfig, world_size: int, element_bytes: int) -> list[int]:
    """Bytes of the weights each process holds, by rank (the shard's parameters, built on the
    meta device: nothing is allocated)."""
    if world_size == 1:
        with torch.device("meta"):
            model = DiffusionTransformer(config)
        return [sum(p.numel() for p in model.parameters()) * element_bytes]
    plan = plan_tensor_parallel(config, world_size)
    sizes = []
    for rank in range(world_size):
        with torch.device("meta"):
            model = DiffusionTransformer(config, shard=plan.shard(rank, _Unconnected()))
        sizes.append(sum(p.numel() for p in model.parameters()) * element_bytes)
    return sizes


def replicated_weight_bytes(config: ModelConfig, element_bytes: int) -> int:
    """Bytes every process holds whatever the split: the norms (the per-head QK-norms too) and
    each mixture-of-experts layer's router and expert bias."""
    d = config.hidden_size
    per_layer = 2 * d + (2 * config.head_dim if config.qk_norm else 0)
    total = (config.num_layers * per_layer + d) * element_bytes
    experts = config.experts
    if experts is not None:
        router = experts.num_experts * (d + (1 if experts.expert_bias else 0))
        total += sum(experts.moe_layers) * router * element_bytes
    return total


def dense_step_bytes(
    config: ModelConfig,
    world_size: int,
    batch: int,
    length: int,
    window: int,
    element_bytes: int,
) -> dict[str, int]:
    """Payload bytes per collective of one dense step (`length` positions, `window` logit
    columns) on each process."""
    if world_size == 1:
        return {"all_reduce": 0, "all_gather": 0}
    rows = batch * length * config.hidden_size * element_bytes
    return {
        "all_reduce": (1 + 2 * config.num_layers) * rows,
        "all_gather": _logit_bytes(config, world_size, batch, window, element_bytes),
    }


def sparse_step_bytes(
    config: ModelConfig,
    world_size: int,
    batch: int,
    queries: int,
    window: int,
    select_capacities: Sequence[int],
    element_bytes: int,
    value_cosine_layers: int = 0,
) -> dict[str, int]:
    """Payload bytes per collective of one sparse step on each process.

    queries: query rows per sequence; select_capacities: per layer, the FFN rows per sequence
    the step computes (its selection capacity: the policy's budget, or the engine's guess);
    value_cosine_layers: layers whose V cosine the policy reads (dLLM-Cache: all but layer 0 of
    a step between refreshes).
    """
    if world_size == 1:
        return {"all_reduce": 0, "all_gather": 0}
    width = config.hidden_size * element_bytes
    query_rows = batch * queries * width
    cosine = batch * queries * COSINE_SUMS_BYTES
    ffn = sum(batch * capacity * width for capacity in select_capacities)
    return {
        "all_reduce": query_rows
        + config.num_layers * (query_rows + cosine)
        + ffn
        + value_cosine_layers * cosine,
        "all_gather": _logit_bytes(config, world_size, batch, window, element_bytes),
    }


def ring_send_bytes(payload: dict[str, int], world_size: int) -> int:
    """Bytes one process sends for `payload` with ring all-reduce and all-gather."""
    n = world_size
    return round(payload["all_reduce"] * 2 * (n - 1) / n) + payload["all_gather"] * (n - 1)


def _logit_bytes(
    config: ModelConfig, world_size: int, batch: int, window: int, element_bytes: int
) -> int:
    block = plan_tensor_parallel(config, world_size).vocab_block
    return batch * window * block * element_bytes
