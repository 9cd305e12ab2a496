"""`Communicator` (the model's hook, `dyllm.models.parallel`) implemented with torch.distributed.

`ProcessGroupCommunicator` runs the collectives on a process group (NCCL for CUDA tensors, gloo
for CPU tensors): a sum all-reduce and an all-gather along the last dimension. Both are device
operations queued like any kernel; neither reads a value back to the host. Every process receives
the same result, bit for bit, which is what lets every process make the same decisions from it.

`CountingCommunicator` wraps one and counts the calls and the payload bytes handed to each
collective, for the measurement in `dyllm.distributed.accounting` and its tests.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.distributed as dist

from dyllm.models.parallel import Communicator


class ProcessGroupCommunicator:
    """Collectives over `group` (None: the default group, which must be initialised)."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self._rank = dist.get_rank(group)
        self._world_size = dist.get_world_size(group)

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over the group (in place when `tensor` is contiguous; use the result)."""
        target = tensor if tensor.is_contiguous() else tensor.contiguous()
        dist.all_reduce(target, op=dist.ReduceOp.SUM, group=self.group)
        return target

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """[..., F] from every process -> [..., world_size * F] in rank order."""
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self._world_size)]
        dist.all_gather(parts, tensor, group=self.group)
        return torch.cat(parts, dim=-1)


class CountingCommunicator:
    """Forwards to `inner` and counts, per collective, calls and payload bytes (the tensor a
    process hands in: the reduced tensor, or its own part of a gather)."""

    def __init__(self, inner: Communicator) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()

    @property
    def rank(self) -> int:
        return self.inner.rank

    @property
    def world_size(self) -> int:
        return self.inner.world_size

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        self._count("all_reduce", tensor)
        return self.inner.all_reduce(tensor)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        self._count("all_gather", tensor)
        return self.inner.all_gather(tensor)

    def reset(self) -> None:
        self.calls.clear()
        self.bytes.clear()

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def _count(self, name: str, tensor: torch.Tensor) -> None:
        self.calls[name] += 1
        self.bytes[name] += tensor.numel() * tensor.element_size()
