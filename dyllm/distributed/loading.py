"""Load one process's part of a tensor-parallel model inside an initialised process group.

`load_tensor_parallel` (and `dyllm.load(..., tensor_parallel=N)`, which calls it) checks the
group, plans the split (`plan.plan_tensor_parallel`, which refuses impossible ones), and has
`dyllm.models.load` read only this process's slices of the safetensors files. Every process of
the group calls it with the same arguments.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from dyllm.distributed.communicator import ProcessGroupCommunicator
from dyllm.distributed.launch import process_device
from dyllm.distributed.plan import TensorParallelError, plan_tensor_parallel
from dyllm.models import DiffusionTransformer
from dyllm.models import load as load_folder
from dyllm.models.loader import checkpoint_folder, read_config


def load_tensor_parallel(
    path: str | Path,
    tensor_parallel: int,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    check_finite: bool = True,
    *,
    group: dist.ProcessGroup | None = None,
) -> DiffusionTransformer:
    """This process's shard of the checkpoint folder `path`, split over the `tensor_parallel`
    processes of `group` (default: the whole default group, which must have that many).

    A CUDA `device` without an index means this process's GPU, cuda:LOCAL_RANK.
    """
    check_group(tensor_parallel, group)
    device = process_device(device)
    check_backend(device, group)
    folder = checkpoint_folder(path)
    plan = plan_tensor_parallel(read_config(folder), tensor_parallel)
    communicator = ProcessGroupCommunicator(group)
    shard = plan.shard(communicator.rank, communicator)
    return load_folder(folder, device=device, dtype=dtype, check_finite=check_finite, shard=shard)


def check_group(tensor_parallel: int, group: dist.ProcessGroup | None = None) -> None:
    """Fail unless torch.distributed is initialised with `tensor_parallel` processes in `group`."""
    if not (dist.is_available() and dist.is_initialized()):
        raise TensorParallelError(
            f"tensor_parallel={tensor_parallel} needs an initialised process group: launch with "
            f"`torchrun --nproc-per-node {tensor_parallel} ...` and call "
            "torch.distributed.init_process_group() before dyllm.load (the dyllm command line "
            "does this itself)"
        )
    size = dist.get_world_size(group)
    if size != tensor_parallel:
        raise TensorParallelError(
            f"tensor_parallel={tensor_parallel}, but the process group has {size} processes; "
            f"start {tensor_parallel} processes (torchrun --nproc-per-node {tensor_parallel}) "
            "or pass the group of that many"
        )


def check_backend(device: torch.device, group: dist.ProcessGroup | None = None) -> None:
    """Fail when the group's backend cannot move `device`'s tensors (NCCL: CUDA, gloo: CPU)."""
    backend = str(dist.get_backend(group)).lower()
    if device.type == "cuda" and "nccl" not in backend:
        raise TensorParallelError(
            f"device {device} with the {backend} backend: initialise the process group with "
            "backend='nccl' for CUDA devices"
        )
    if device.type == "cpu" and "gloo" not in backend:
        raise TensorParallelError(
            f"device cpu with the {backend} backend: initialise the process group with "
            "backend='gloo' for the CPU (NCCL moves CUDA tensors only)"
        )
