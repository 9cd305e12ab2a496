"""Choosing a token for each masked position, and how confident that choice is.

LLaDA proposes tokens with Gumbel-max in float64 (`exp(logits) / (-log U)^temperature`, argmax;
plain argmax at temperature 0) and ranks positions by the softmax probability of the proposal
(`low_confidence`, at the logits' dtype as in the reference; float64 under Fast-dLLM's parallel
decoding) or by a uniform draw (`random`).

Dream scales by the temperature, filters with top-p then top-k, takes the softmax, samples
(argmax at temperature 0), and ranks by the chosen token's probability (`maskgit_plus`), the
top-1 minus top-2 probability (`topk_margin`) or the negative entropy (`entropy`). The filters
act at every temperature, 0 included: the chosen tokens stay the same, but the confidences are
those of the renormalised filtered distribution, so they change which positions go first.

Every random draw comes from the caller's `torch.Generator`, so a seed fixes the whole run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ENTROPY_EPSILON = 1e-10


def gumbel_perturb(
    logits: torch.Tensor, temperature: float, generator: torch.Generator
) -> torch.Tensor:
    """logits [..., V] -> float64 scores whose argmax is a sample at `temperature` (> 0)."""
    logits = logits.to(torch.float64)
    uniform = torch.rand(
        logits.shape, dtype=torch.float64, device=logits.device, generator=generator
    )
    return logits.exp() / (-torch.log(uniform)) ** temperature


def llada_propose(
    logits: torch.Tensor,
    temperature: float,
    remasking: str,
    generator: torch.Generator,
    *,
    float64_confidence: bool = False,
    confidence_eos_eot_inf: bool = False,
    eos_token_id: int | None = None,
    eot_token_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposed tokens and their confidence, LLaDA's way.

    logits: [B, L, V] -> (x0: LongTensor [B, L], confidence: [B, L]).

    `confidence_eos_eot_inf` reproduces the reference line
    `logits_with_noise[:, :, eos] = logits[:, :, eot] = -inf`, run after x0 is chosen. At
    temperature > 0 the noisy scores are a separate float64 tensor, so only EoT's logit leaves
    the confidence softmax; at temperature 0 the noisy scores *are* the logits (the Gumbel
    helper returns its input), so EOS's logit goes too. Either way x0 may still be EOS or EoT;
    such a position then has confidence 0 (never -inf) and is committed last.
    """
    if temperature > 0:
        x0 = gumbel_perturb(logits, temperature, generator).argmax(dim=-1)
    else:
        x0 = logits.argmax(dim=-1)
    if confidence_eos_eot_inf:
        removed = [eot_token_id] if temperature > 0 else [eos_token_id, eot_token_id]
        index = torch.tensor(removed, device=logits.device)
        logits = logits.index_fill(-1, index, float("-inf"))
    if remasking == "low_confidence":
        scores = logits.to(torch.float64) if float64_confidence else logits
        probabilities = F.softmax(scores, dim=-1)
        confidence = probabilities.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    elif remasking == "random":
        confidence = torch.rand(x0.shape, device=x0.device, generator=generator)
    else:
        raise ValueError(f"unknown remasking {remasking!r}; use 'low_confidence' or 'random'.")
    return x0, confidence


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: logits [N, V] with tokens outside the top-p mass set to finfo.min.

    Sorted by descending logit, a token goes when the cumulative probability *before* it
    already exceeds top_p, so the token that crosses top_p stays and the first always stays.
    """
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    remove_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
    remove_sorted[..., 1:] = cumulative[..., :-1] > top_p
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, torch.finfo(logits.dtype).min)


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """logits [N, V] with every logit below the k-th largest set to finfo.min (ties kept)."""
    top_k = min(top_k, logits.shape[-1])
    kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, torch.finfo(logits.dtype).min)


def dream_sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_p: float | None,
    top_k: int | None,
    confidence_kind: str,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream's `sample_tokens` over the masked positions' logits.

    logits: [N, V] -> (confidence [N] in the logits' dtype, x0: LongTensor [N]).
    top_p: None or 1.0 = no nucleus filter; top_k: None or 0 = no top-k filter.
    confidence_kind: "maskgit_plus" | "topk_margin" | "entropy" (origin ignores confidence).
    """
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    if top_k:
        logits = top_k_filter(logits, top_k)
    probabilities = torch.softmax(logits, dim=-1)
    if temperature > 0 and probabilities.shape[0] > 0:
        x0 = torch.multinomial(probabilities, 1, replacement=True, generator=generator)
        x0 = x0.squeeze(-1)
        confidence = probabilities.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    else:
        confidence, x0 = probabilities.max(dim=-1)
    if confidence_kind == "topk_margin":
        top_two = torch.sort(probabilities, dim=-1, descending=True).values[:, :2]
        confidence = top_two[:, 0] - top_two[:, 1]
    elif confidence_kind == "entropy":
        confidence = torch.sum(probabilities * torch.log(probabilities + ENTROPY_EPSILON), dim=-1)
    return confidence, x0
