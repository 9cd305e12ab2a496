"""A minimal greedy decoder for watching accuracy during training.

One block, one token per step, the most confident masked position first (LLaDA's low-confidence
rule at temperature 0). It exists so training can report progress without depending on the
generation package; the shipped scores come from `dyllm.generation.generate`.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from dyllm.reference.encoding import encode_prompt
from dyllm.reference.objective import shift_logits
from dyllm.reference.scoring import SuiteScore, score_predictions
from dyllm.reference.tasks import Problem


@torch.no_grad()
def greedy_decode(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    gen_length: int,
    mask_id: int,
    logit_shift: bool,
) -> torch.Tensor:
    """Answer ids [B, gen_length] for same-length prompts `prompt_ids` [B, P]."""
    batch, prompt_length = prompt_ids.shape
    canvas = torch.full((batch, gen_length), mask_id, dtype=torch.long, device=prompt_ids.device)
    ids = torch.cat((prompt_ids, canvas), dim=1)
    rows = torch.arange(batch, device=ids.device)
    for _ in range(gen_length):
        logits = model(ids)
        if logit_shift:
            logits = shift_logits(logits)
        probabilities = logits[:, prompt_length:].float().softmax(dim=-1)  # [B, G, V]
        confidence, prediction = probabilities.max(dim=-1)
        still_masked = ids[:, prompt_length:] == mask_id
        confidence = confidence.masked_fill(~still_masked, float("-inf"))
        position = confidence.argmax(dim=-1)  # [B]
        ids[rows, prompt_length + position] = prediction[rows, position]
    return ids[:, prompt_length:]


def answer_text(tokenizer: Tokenizer, answer_ids: list[int], eos_id: int) -> str:
    """Decoded text up to (not including) the first EOS."""
    if eos_id in answer_ids:
        answer_ids = answer_ids[: answer_ids.index(eos_id)]
    return tokenizer.decode(answer_ids, skip_special_tokens=False)


def quick_score(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    problems: list[Problem],
    gen_length: int,
    mask_id: int,
    eos_id: int,
    logit_shift: bool,
) -> SuiteScore:
    """Greedy-decode `problems` (batched by prompt length in tokens) and score them."""
    device = next(model.parameters()).device
    encoded = [encode_prompt(tokenizer, problem.prompt) for problem in problems]
    predictions: dict[int, str] = {}
    groups: dict[int, list[int]] = {}
    for index, prompt in enumerate(encoded):
        groups.setdefault(len(prompt), []).append(index)
    for indices in groups.values():
        prompt_ids = torch.tensor([encoded[i] for i in indices], dtype=torch.long, device=device)
        answers = greedy_decode(model, prompt_ids, gen_length, mask_id, logit_shift)
        for index, row in zip(indices, answers.tolist(), strict=True):
            predictions[index] = answer_text(tokenizer, row, eos_id)
    return score_predictions(problems, [predictions[i] for i in range(len(problems))])
