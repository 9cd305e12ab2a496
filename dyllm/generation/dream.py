"""Dream's sampler: a timestep schedule over the masked canvas, four unmasking orders.

Follows the reference `diffusion_generate` (`_sample`): `timesteps = linspace(1, eps, steps + 1)`
(float32), t = ts[i], s = ts[i + 1]; logits shifted one position (done by `DenoisingLoop`);
tokens from `dream_sample_tokens` over the masked positions (in row-major order, as the
reference's boolean indexing takes them, so random draws line up).

- `origin`: each masked position is revealed independently with probability 1 - s / t (all at
  the last step) and gets a token sampled for it.
- `maskgit_plus | topk_margin | entropy`: k = `dream_transfer_count` (the same k for every row);
  the k most confident masked positions are committed, or, with `alg_temp`, k positions drawn
  from softmax(confidence / alg_temp).

Blocks (an option; the reference has none): the schedule runs inside each block with
`steps // num_blocks` steps, and only masks of the current block are candidates. One block (the
default) is exactly the reference. With `threshold` or `factor` (Fast-dLLM parallel decoding),
positions are ranked by the chosen token's probability whatever `alg` says (Fast-dLLM's Dream
`confidence_threshold` rule), and each block runs until it has no mask left.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dyllm.generation.commit_rules import factor_selection, threshold_selection
from dyllm.generation.config import GenerationConfig
from dyllm.generation.loop import DenoisingLoop
from dyllm.generation.token_sampling import dream_sample_tokens
from dyllm.generation.transfer_counts import dream_timesteps, dream_transfer_count

NEG_INF = float("-inf")


def run_dream(loop: DenoisingLoop, config: GenerationConfig) -> None:
    """Denoise `loop.x` in place until every block is decoded (or early stop)."""
    steps_per_block = 0 if config.adaptive else config.steps // config.num_blocks
    timesteps = dream_timesteps(steps_per_block, config.eps, loop.x.device)
    for block in range(loop.num_blocks):
        step_in_block = 0
        while loop.block_continues(block, step_in_block, steps_per_block, config.adaptive):
            masked = loop.block_masked(block)  # [B, W]
            logits = loop.logits(block, step_in_block)  # [B, W, V], shifted
            masked_logits = logits[masked]  # [N, V]
            if config.adaptive:
                transfer, proposals = _parallel_step(loop, config, masked, masked_logits)
            elif config.alg == "origin":
                transfer, proposals = _origin_step(
                    loop, config, masked, masked_logits, timesteps, step_in_block, steps_per_block
                )
            else:
                transfer, proposals = _ranked_step(
                    loop, config, masked, masked_logits, timesteps, step_in_block, steps_per_block
                )
            loop.commit_block(block, transfer, proposals)
            if loop.done:
                return
            step_in_block += 1


def _origin_step(
    loop: DenoisingLoop,
    config: GenerationConfig,
    masked: torch.Tensor,
    masked_logits: torch.Tensor,
    timesteps: torch.Tensor,
    step: int,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reveal each masked position with probability 1 - s / t (1 at the last step)."""
    if step == steps - 1:
        reveal_probability: torch.Tensor | float = 1.0
    else:
        reveal_probability = 1 - timesteps[step + 1] / timesteps[step]
    draws = torch.rand(masked_logits.shape[0], device=loop.x.device, generator=loop.generator)
    reveal = draws < reveal_probability  # [N]
    tokens = torch.full_like(reveal, loop.mask_token_id, dtype=torch.long)
    _, tokens[reveal] = dream_sample_tokens(
        masked_logits[reveal],
        config.temperature,
        config.top_p,
        config.top_k,
        "maskgit_plus",
        loop.generator,
    )
    transfer = torch.zeros_like(masked)
    transfer[masked] = reveal
    proposals = torch.full_like(masked, loop.mask_token_id, dtype=torch.long)
    proposals[masked] = tokens
    return transfer, proposals


def _ranked_step(
    loop: DenoisingLoop,
    config: GenerationConfig,
    masked: torch.Tensor,
    masked_logits: torch.Tensor,
    timesteps: torch.Tensor,
    step: int,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Commit the k best masked positions by maskgit_plus / topk_margin / entropy confidence."""
    confidence, tokens = dream_sample_tokens(
        masked_logits, config.temperature, config.top_p, config.top_k, config.alg, loop.generator
    )
    count = dream_transfer_count(
        masked.sum(), loop.batch_size, timesteps[step], timesteps[step + 1], step == steps - 1
    )
    full_confidence, proposals = _on_canvas(masked, confidence, tokens, loop.mask_token_id)
    transfer = torch.zeros_like(masked)
    if count > 0:
        if not config.alg_temp:
            chosen = torch.topk(full_confidence, count, dim=-1).indices  # [B, k]
        else:
            weights = F.softmax(full_confidence / config.alg_temp, dim=-1)
            chosen = torch.multinomial(weights, count, generator=loop.generator)  # [B, k]
        transfer.scatter_(1, chosen, True)
    # Every row holds the same number of masks (each commits the same k), so k never exceeds a
    # row's masks and this only states the invariant: nothing but masks is overwritten.
    return transfer & masked, proposals


def _parallel_step(
    loop: DenoisingLoop, config: GenerationConfig, masked: torch.Tensor, masked_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast-dLLM threshold / factor rule over the chosen tokens' probabilities."""
    confidence, tokens = dream_sample_tokens(
        masked_logits,
        config.temperature,
        config.top_p,
        config.top_k,
        "maskgit_plus",
        loop.generator,
    )
    full_confidence, proposals = _on_canvas(masked, confidence, tokens, loop.mask_token_id)
    if config.threshold is not None:
        return threshold_selection(full_confidence, masked, config.threshold), proposals
    return factor_selection(full_confidence, masked, config.factor), proposals


def _on_canvas(
    masked: torch.Tensor, confidence: torch.Tensor, tokens: torch.Tensor, mask_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spread per-masked-position values [N] back onto the block [B, W].

    -> (confidence, -inf off the masked positions; proposals, the mask token off them).
    """
    full_confidence = torch.full(
        masked.shape, NEG_INF, dtype=confidence.dtype, device=masked.device
    )
    full_confidence[masked] = confidence
    proposals = torch.full(masked.shape, mask_token_id, dtype=torch.long, device=masked.device)
    proposals[masked] = tokens
    return full_confidence, proposals
