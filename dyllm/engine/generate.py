"""`generate`: the one public way to run a model's sampler, with or without a saliency policy.

It builds the step's denoiser from `policy` (`make_denoiser`: the reference full forward for
none or `Dense()`, the saliency engine for any other policy) and runs the family's sampler over
it (`dyllm.generation.run_sampler`). LLaDA2's block-diffusion samplers get a block denoiser
instead (`make_block_denoiser`: the exact cache of finished blocks, or with `block_cache=False`
the reference's recomputation); saliency policies do not apply to them yet (see
`BLOCK_DIFFUSION_POLICY_ERROR`). The API, the command line, the benchmark, calibration and the
tests all call this.
"""

from __future__ import annotations

from typing import Any

from dyllm.engine.block_denoisers import CachedBlockDenoiser, RecomputeBlockDenoiser
from dyllm.engine.denoiser import SaliencyDenoiser
from dyllm.generation import (
    Denoiser,
    DenseDenoiser,
    GenerationConfig,
    GenerationResult,
    StepObserver,
    run_sampler,
)
from dyllm.generation.block_denoiser import BlockDenoiser
from dyllm.generation.config import BLOCK_SAMPLERS
from dyllm.generation.prompts import PromptInput
from dyllm.generation.run import check_model, resolve_options
from dyllm.models import DiffusionTransformer
from dyllm.policies import Dense, SaliencyPolicy


def make_denoiser(
    model: DiffusionTransformer,
    policy: SaliencyPolicy | None = None,
    *,
    trace: bool = False,
    check_invariants: bool = False,
) -> Denoiser:
    """The denoiser `generate` runs for `policy` (a fresh one per call: it holds caches)."""
    if policy is not None and not isinstance(policy, SaliencyPolicy):
        raise ValueError(
            f"policy must be a SaliencyPolicy (e.g. CosineThreshold(0.99)), got "
            f"{type(policy).__name__}"
        )
    if policy is None or (isinstance(policy, Dense) and not trace):
        return DenseDenoiser(model)
    return SaliencyDenoiser(model, policy, trace=trace, check_invariants=check_invariants)


BLOCK_DIFFUSION_POLICY_ERROR = (
    "saliency policies do not apply to LLaDA2's block diffusion yet: the saliency engine's caches "
    "and sparse step assume every row attends to the whole canvas (bidirectional attention), "
    "while block diffusion attends block-causally and the exact block cache (the default) "
    "already skips every finished block; selecting rows inside the current block on top of it "
    "is not implemented. Run with policy=None (or Dense()); block_cache=False recomputes the "
    "window as the reference does."
)


def make_block_denoiser(model: DiffusionTransformer, block_cache: bool = True) -> BlockDenoiser:
    """The block denoiser LLaDA2's samplers run: the exact cache of finished blocks, or (False)
    the reference's recomputation of the whole window every step."""
    return CachedBlockDenoiser(model) if block_cache else RecomputeBlockDenoiser(model)


def generate(
    model: DiffusionTransformer,
    prompts: PromptInput,
    config: GenerationConfig | None = None,
    *,
    policy: SaliencyPolicy | None = None,
    trace: bool = False,
    check_invariants: bool = False,
    chat: bool = False,
    on_step: StepObserver | None = None,
    **options: Any,
) -> GenerationResult:
    """Generate after each prompt with the family's reference sampler, stepping as `policy` says.

    prompts: a str, a list of str, a list of token ids, a list of lists of token ids, or
        conversations (a list of {"role": ..., "content": ...} messages, or a list of such
        lists), which the checkpoint's chat template renders.
    config: base options; `options` (same names as `GenerationConfig` fields, or the alias
        `max_new_tokens` for `gen_length`) override it. `max_batch_size=N` runs the prompts N at
        a time (greedy tokens are those of one batch); `seed=None` draws a fresh seed, reported
        in `result.options.seed`.
    policy: None or `Dense()` for full forwards; any `SaliencyPolicy` for the saliency engine.
    trace: keep per-step, per-layer recompute fractions in `result.stats.extra["trace"]`.
    check_invariants: assert the cache's written-row bookkeeping at every layer (slow on a GPU:
        each check reads a flag back to the host; the tests turn it on).
    chat: wrap each text prompt as one user message with the tokenizer's chat template.
    on_step: called after every step with a `StepReport` (canvas, committed positions, whether
        the step ran dense, the denoiser's wall time); a `BlockStepReport` under LLaDA2's
        samplers.
    """
    check_model(model)
    resolved = resolve_options(model, config, options)
    if resolved.sampler in BLOCK_SAMPLERS:
        if (policy is not None and not isinstance(policy, Dense)) or trace or check_invariants:
            what = (
                "trace/check_invariants"
                if policy is None or isinstance(policy, Dense)
                else (f"policy {type(policy).__name__}")
            )
            raise ValueError(
                f"{what} with sampler {resolved.sampler!r}: " + BLOCK_DIFFUSION_POLICY_ERROR
            )
        block_denoiser = make_block_denoiser(model, bool(resolved.block_cache))
        return run_sampler(model, prompts, block_denoiser, resolved, chat=chat, on_step=on_step)
    denoiser = make_denoiser(model, policy, trace=trace, check_invariants=check_invariants)
    return run_sampler(model, prompts, denoiser, resolved, chat=chat, on_step=on_step)
