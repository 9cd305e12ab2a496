"""`SyncCounter`: counts the calls that copy a tensor's value to the host.

Used by `tests/test_host_syncs.py` (one process) and by the tensor-parallel jobs
(`tests/distributed_jobs.py`): the sparse step's layer loop must read nothing back either way.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

READ_BACKS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.__bool__,
    torch.Tensor.__int__,
    torch.Tensor.__float__,
    torch.Tensor.__index__,
    torch.Tensor.nonzero,
    torch.nonzero,
    torch.Tensor.cpu,
    torch.Tensor.numpy,
    torch.masked_select,
    torch.Tensor.masked_select,
}
INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}


class SyncCounter(TorchFunctionMode):
    """Counts calls that copy a tensor's value to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in READ_BACKS:
            self.calls[func.__name__] += 1
        elif func in INDEXING and _has_bool_index(args[1] if len(args) > 1 else None):
            self.calls[f"{func.__name__}[bool]"] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def _has_bool_index(index: object) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)
