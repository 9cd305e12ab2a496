"""The two calls most users need: `load` a checkpoint, `generate` from it with a policy.

`load` accepts a checkpoint folder or a built-in model name ("llada-ref", "dream-ref").
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
) -> DiffusionTransformer:
    """Load a LLaDA or Dream checkpoint folder, or a built-in model by name.

    See `dyllm.models.load` for what is checked and which errors a bad folder gets
    (`check_finite=False` skips the scan for NaN and infinite weights). The model carries its
    tokenizer (`model.tokenizer`, None when the folder has none) and its generation_config.json
    (`model.generation_defaults`).
    """
    return load_folder(
        resolve_model_path(path), device=device, dtype=dtype, check_finite=check_finite
    )
