"""`generate`: the one public way to run a model's sampler, with or without a saliency policy.

It builds the step's denoiser from `policy` (`make_denoiser`: the reference full forward for
none or `Dense()`, the saliency engine for any other policy) and runs the family's sampler over
it (`dyllm.generation.run_sampler`). LLaDA2's block-diffusion samplers get a block denoiser
instead (`make_block_denoiser`: the exact cache of finished blocks, or with `block_cache=False`
the reference's recomputation), or with a saliency policy (or `trace` / `check_invariants`) the
saliency engine on top of that cache (`SaliencyBlockDenoiser`), for the policies whose plans fit
block diffusion (`SaliencyPolicy.block_diffusion_refusal` says why the others do not). The API,
the command line, the benchmark, calibration and the tests all call this.
"""

from __future__ import annotations

from typing import Any

from dyllm.engine.block_denoisers import CachedBlockDenoiser, RecomputeBlockDenoiser
from dyllm.engine.block_saliency import SaliencyBlockDenoiser, block_diffusion_policy_error
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


BLOCK_CACHE_POLICY_ERROR = (
    "under LLaDA2's block diffusion a saliency policy (and trace / check_invariants) runs on the "
    "exact cache of finished blocks; block_cache=False recomputes the window as the reference "
    "does and takes no policy: drop block_cache=False or the policy"
)


def make_block_denoiser(
    model: DiffusionTransformer,
    block_cache: bool = True,
    policy: SaliencyPolicy | None = None,
    *,
    trace: bool = False,
    check_invariants: bool = False,
) -> BlockDenoiser:
    """The block denoiser LLaDA2's samplers run: the exact cache of finished blocks, or (False)
    the reference's recomputation of the whole window every step; with a saliency policy (or
    trace / check_invariants) the saliency engine on top of the exact cache."""
    plain = policy is None or isinstance(policy, Dense)
    if plain and not trace and not check_invariants:
        return CachedBlockDenoiser(model) if block_cache else RecomputeBlockDenoiser(model)
    if policy is not None and not isinstance(policy, SaliencyPolicy):
        raise ValueError(
            f"policy must be a SaliencyPolicy (e.g. CosineThreshold(0.99)), got "
            f"{type(policy).__name__}"
        )
    if not block_cache:
        raise ValueError(BLOCK_CACHE_POLICY_ERROR)
    chosen = Dense() if policy is None else policy
    error = block_diffusion_policy_error(chosen)
    if error is not None:
        raise ValueError(error)
    return SaliencyBlockDenoiser(model, chosen, trace=trace, check_invariants=check_invariants)


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
        Under LLaDA2's samplers the policies whose plans fit block diffusion (DyLLM, top-k,
        layer-adaptive, EveryRow) select rows inside the current block; the others are refused
        with their reason (`SaliencyPolicy.block_diffusion_refusal`).
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
        block_denoiser = make_block_denoiser(
            model,
            bool(resolved.block_cache),
            policy,
            trace=trace,
            check_invariants=check_invariants,
        )
        return run_sampler(model, prompts, block_denoiser, resolved, chat=chat, on_step=on_step)
    denoiser = make_denoiser(model, policy, trace=trace, check_invariants=check_invariants)
    return run_sampler(model, prompts, denoiser, resolved, chat=chat, on_step=on_step)
