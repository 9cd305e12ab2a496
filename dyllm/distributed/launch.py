"""Process groups for dyllm's commands: joined from torchrun's environment, one process printing,
and setup errors that end every process with their message instead of a hang.

`torchrun --nproc-per-node N -m dyllm ...` starts N processes and describes the group in their
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); `join_from_environment`
initialises torch.distributed from it with NCCL for CUDA devices and gloo for the CPU.

Errors. A process that fails while the others wait in a collective would leave them waiting, so
the commands run their setup (arguments, plugins, policy, loading) through `agree`: every process
runs the step, then all of them exchange whether it failed, and if one did, all raise
`ProcessGroupError` with that process's message. Errors during generation are either the same on
every process (the processes compute the same thing: a bad policy answer fails everywhere at
once) or local to one (out of memory): that process exits with status 2 and torchrun's agent
stops the others (gloo also ends their pending collectives with a connection error).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

USAGE_ERRORS = (ValueError, FileNotFoundError, KeyError)
"""Errors whose message is the whole story (the others get their type name in front)."""


class ProcessGroupError(ValueError):
    """A step failed on some process of the group; every process raises this, with its message."""


def launched_world_size() -> int:
    """WORLD_SIZE from torchrun's environment (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """LOCAL_RANK from torchrun's environment (0 when not launched by torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def join_from_environment(
    device: str | torch.device = "cpu", timeout: timedelta | None = None
) -> bool:
    """Initialise the default process group from torchrun's environment when it describes more
    than one process (NCCL for a CUDA `device`, gloo otherwise; `timeout`: how long a collective
    may wait, torch's default when None). True when this process is in a group of several (an
    already initialised group counts)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if launched_world_size() <= 1:
        return False
    if not dist.is_available():
        raise ProcessGroupError("this torch build has no torch.distributed; install one that does")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timeout)
    return True


def rank() -> int:
    """This process's rank in the default group (0 outside one)."""
    return dist.get_rank() if _in_group() else 0


def world_size() -> int:
    """Processes in the default group (1 outside one)."""
    return dist.get_world_size() if _in_group() else 1


def is_main_process() -> bool:
    """True on rank 0 and outside a group: the process that prints and writes files."""
    return rank() == 0


def process_device(device: str | torch.device) -> torch.device:
    """`device` for this process: a CUDA device without an index becomes cuda:LOCAL_RANK."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank())
    return device


def shared_value(value: T) -> T:
    """The first process's `value` on every process (outside a group: `value`). A collective:
    every process must call it at the same point."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(step: Callable[[], T]) -> T:
    """Run `step` on every process of the group; when it fails on any, raise ProcessGroupError on
    every process with the first failing process's message (outside a group: just run it)."""
    if world_size() == 1:
        return step()
    failure: str | None = None
    local_error: BaseException | None = None
    result = None
    try:
        result = step()
    except Exception as error:
        failure, local_error = describe_error(error), error
    failures: list[str | None] = [None] * world_size()
    dist.all_gather_object(failures, failure)
    for number, message in enumerate(failures):
        if message is not None:
            raise ProcessGroupError(
                f"process {number} of {len(failures)}: {message}"
            ) from local_error
    return result  # type: ignore[return-value]


def describe_error(error: BaseException) -> str:
    """One line for an error: its message, with its type for errors that are not usage errors."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    if isinstance(error, USAGE_ERRORS):
        return str(message)
    return f"{type(error).__name__}: {message}"


def _in_group() -> bool:
    return dist.is_available() and dist.is_initialized()
