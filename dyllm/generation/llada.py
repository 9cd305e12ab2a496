"""LLaDA's sampler: semi-autoregressive blocks, an even unmasking schedule, low-confidence order.

Follows the reference `generate` of LLaDA step for step: blocks left to right, `steps //
num_blocks` steps each; at every step a full denoiser call (two stacked canvases under CFG,
combined as `un + (cfg_scale + 1) * (cond - un)`), proposals from Gumbel-max (argmax at
temperature 0), and per row the `k` most confident masked positions of the current block are
committed, `k` from `llada_transfer_counts`. Only masked positions of the current block are
candidates, so only the block's logits are asked for; the reference's rule (-inf after the
block and on decoded positions) picks the same set, since no mask is ever left before the
current block. Random draws (Gumbel noise, random remasking) are made for the block's columns.

With `threshold` or `factor` (Fast-dLLM parallel decoding) each block runs until it has no mask
left, whatever `steps` says; confidences are then float64 softmax probabilities as in Fast-dLLM.
"""

from __future__ import annotations

import torch

from dyllm.generation.commit_rules import (
    commit_most_confident,
    factor_selection,
    threshold_selection,
)
from dyllm.generation.config import GenerationConfig
from dyllm.generation.loop import DenoisingLoop
from dyllm.generation.token_sampling import llada_propose
from dyllm.generation.transfer_counts import llada_transfer_counts

NEG_INF = float("-inf")


def run_llada(loop: DenoisingLoop, config: GenerationConfig) -> None:
    """Denoise `loop.x` in place until every block is decoded (or early stop)."""
    steps_per_block = config.steps // config.num_blocks
    for block in range(loop.num_blocks):
        counts = None
        if not config.adaptive:
            counts = llada_transfer_counts(loop.block_masked(block), steps_per_block)
        step_in_block = 0
        while loop.block_continues(block, step_in_block, steps_per_block, config.adaptive):
            masked = loop.block_masked(block)  # [B, W]
            logits = _step_logits(loop, config, block, step_in_block)  # [B, W, V]
            if config.logits_eos_inf:
                eos = torch.tensor([loop.eos_token_id], device=logits.device)
                logits = logits.index_fill(-1, eos, NEG_INF)
            proposals, confidence = llada_propose(
                logits,
                config.temperature,
                config.remasking,
                loop.generator,
                float64_confidence=config.adaptive,
                confidence_eos_eot_inf=config.confidence_eos_eot_inf,
                eos_token_id=loop.eos_token_id,
                eot_token_id=loop.eot_token_id,
            )
            if config.threshold is not None:
                transfer = threshold_selection(confidence, masked, config.threshold)
            elif config.factor is not None:
                transfer = factor_selection(confidence, masked, config.factor)
            else:
                ranked = confidence.masked_fill(~masked, NEG_INF)
                transfer = commit_most_confident(ranked, counts[:, step_in_block])
            loop.commit_block(block, transfer, proposals)
            if loop.done:
                return
            step_in_block += 1


def _step_logits(
    loop: DenoisingLoop, config: GenerationConfig, block: int, step_in_block: int
) -> torch.Tensor:
    """logits [B, W, V] of the block's columns, guided when cfg_scale > 0."""
    if config.cfg_scale <= 0:
        return loop.logits(block, step_in_block)
    unconditional = loop.x.clone()
    unconditional[:, : loop.prompt_length] = loop.mask_token_id
    stacked = loop.logits(block, step_in_block, unconditional=unconditional)  # [2B, W, V]
    conditional, unconditional_logits = stacked.chunk(2, dim=0)
    return unconditional_logits + (config.cfg_scale + 1) * (conditional - unconditional_logits)
