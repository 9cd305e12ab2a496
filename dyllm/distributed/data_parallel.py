"""Data parallelism for evaluation: each process takes a contiguous share of the items, and the
results come back in the items' order.

`dyllm generate` under torchrun without `--tensor-parallel` and the lm-eval adapter's
multi-process mode use this; each process holds a whole model on its own device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch.distributed as dist

from dyllm.distributed.launch import rank, world_size

T = TypeVar("T")


def share(items: Sequence[T], process: int, processes: int) -> list[T]:
    """Process `process`'s contiguous share of `items` (shares differ by at most one item and
    concatenate, in process order, to `items`)."""
    if not 0 <= process < processes:
        raise ValueError(f"process {process} is outside a group of {processes}")
    base, extra = divmod(len(items), processes)
    start = process * base + min(process, extra)
    return list(items[start : start + base + (process < extra)])


def my_share(items: Sequence[T]) -> list[T]:
    """This process's share of `items` in the default group (all of them outside one)."""
    return share(items, rank(), world_size())


def gather_in_order(local: list[T]) -> list[T]:
    """Every process's `local` list (its share's results) concatenated in process order, on
    every process (outside a group: `local`)."""
    if world_size() == 1:
        return list(local)
    parts: list[list[T] | None] = [None] * world_size()
    dist.all_gather_object(parts, local)
    return [item for part in parts for item in (part or [])]
