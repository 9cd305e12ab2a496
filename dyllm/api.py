"""The two calls most users need: `load` a checkpoint, `generate` from it with a policy.

`load` accepts a checkpoint folder or a built-in model name ("llada-ref", "dream-ref").
`generate` is `dyllm.generation.generate` plus the saliency engine: pass a `SaliencyPolicy`
(`policy=CosineThreshold(0.99)`) and each step runs dense or sparse as the policy plans it;
without one (or with `Dense()`), every step is the full forward of the reference samplers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dyllm.engine import SaliencyDenoiser
from dyllm.generation import GenerationConfig, GenerationResult
from dyllm.generation import generate as generate_dense
from dyllm.generation.prompts import PromptInput
from dyllm.models import DiffusionTransformer
from dyllm.models import load as load_folder
from dyllm.policies import Dense, SaliencyPolicy
from dyllm.reference.registry import resolve_model_path


def load(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> DiffusionTransformer:
    """Load a LLaDA or Dream checkpoint folder, or a built-in model by name.

    See `dyllm.models.load` for what is checked and which errors a bad folder gets.
    """
    return load_folder(resolve_model_path(path), device=device, dtype=dtype)


def generate(
    model: DiffusionTransformer,
    prompts: PromptInput,
    config: GenerationConfig | None = None,
    *,
    policy: SaliencyPolicy | None = None,
    trace: bool = False,
    chat: bool = False,
    **options: Any,
) -> GenerationResult:
    """Generate after each prompt with the family's reference sampler, stepping as `policy` says.

    policy: None or `Dense()` for full forwards; any `SaliencyPolicy` for the saliency engine.
    trace: keep per-step, per-layer recompute fractions in `result.stats.extra["trace"]`.
    Other arguments and options: see `dyllm.generation.generate`.
    """
    if policy is not None and not isinstance(policy, SaliencyPolicy):
        raise ValueError(
            f"policy must be a SaliencyPolicy (e.g. CosineThreshold(0.99)), got "
            f"{type(policy).__name__}"
        )
    if policy is None or (isinstance(policy, Dense) and not trace):
        return generate_dense(model, prompts, config, chat=chat, **options)

    def factory(model_, attention_mask, position_ids):
        return SaliencyDenoiser(model_, policy, attention_mask, position_ids, trace=trace)

    return generate_dense(model, prompts, config, chat=chat, denoiser_factory=factory, **options)
