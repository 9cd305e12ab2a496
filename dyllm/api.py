"""The two calls most users need: `load` a checkpoint, `generate` from it with a policy.

`load` accepts a checkpoint folder or a built-in model name ("llada-ref", "dream-ref"); with
`tensor_parallel=N`, called by each of N processes of an initialised torch.distributed group, it
loads this process's shard (docs/tensor-parallel.md).
`generate` is `dyllm.engine.generate`: pass a `SaliencyPolicy` (`policy=CosineThreshold(0.99)`)
and each step runs dense or sparse as the policy plans it; without one (or with `Dense()`), every
step is the full forward of the reference samplers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dyllm.engine import generate
from dyllm.models import DiffusionTransformer
from dyllm.models import load as load_folder
from dyllm.reference.registry import resolve_model_path

__all__ = ["generate", "load"]


def load(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    check_finite: bool = True,
    *,
    tensor_parallel: int = 1,
) -> DiffusionTransformer:
    """Load a LLaDA, Dream, LLaDA-MoE or LLaDA2 folder, or a built-in model by name.

    See `dyllm.models.load` for what is checked and which errors a bad folder gets
    (`check_finite=False` skips the scan for NaN and infinite weights). The model carries its
    tokenizer (`model.tokenizer`, None when the folder has none) and its generation_config.json
    (`model.generation_defaults`).

    tensor_parallel: N > 1 splits the model over the N processes of the initialised default
    process group (every process calls `load` alike; `torchrun --nproc-per-node N` starts
    them): each reads and holds only its shard, and `generate` then runs the same on every
    process, giving every process the same tokens. A CUDA `device` means cuda:LOCAL_RANK.
    """
    if isinstance(tensor_parallel, bool) or not isinstance(tensor_parallel, int):
        raise ValueError(f"tensor_parallel must be a number of processes, got {tensor_parallel!r}")
    if tensor_parallel < 1:
        raise ValueError(f"tensor_parallel must be at least 1, got {tensor_parallel}")
    folder = resolve_model_path(path)
    if tensor_parallel == 1:
        return load_folder(folder, device=device, dtype=dtype, check_finite=check_finite)
    from dyllm.distributed import load_tensor_parallel

    return load_tensor_parallel(
        folder, tensor_parallel, device=device, dtype=dtype, check_finite=check_finite
    )
