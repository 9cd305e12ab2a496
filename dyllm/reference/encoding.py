"""Turn task problems into the token rows the reference models train on.

A training row is `prompt ids + answer ids + EOS ... EOS`, the answer region exactly
`gen_length` tokens long: as in LLaDA's SFT the tail after the answer is filled with EOS and the
loss covers it, so the model learns where an answer ends. Rows of a batch are right-padded (pad =
EOS, attention mask False) so every prompt starts at position 0, as it does under generation's left
padding with position ids taken from the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from dyllm.reference.tasks import Problem

DEFAULT_GEN_LENGTH = 24
"""Answer region of every task (the longest answer is 20 tokens; the rest is EOS)."""


@dataclass
class Batch:
    """Padded token rows and which positions belong to the answer region."""

    input_ids: torch.Tensor  # [B, L] int64, pads are EOS
    attention_mask: torch.Tensor  # [B, L] bool, False on right padding
    answer_mask: torch.Tensor  # [B, L] bool, True on the gen_length answer positions


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Prompt ids; a character the vocabulary lacks is an error, not a silent <|unk|>."""
    encoding = tokenizer.encode(prompt, add_special_tokens=False)
    unknown = tokenizer.token_to_id("<|unk|>")
    if unknown is not None and unknown in encoding.ids:
        raise ValueError(f"prompt {prompt!r} has characters outside the reference vocabulary")
    return encoding.ids


def encode_problem(
    tokenizer: Tokenizer, problem: Problem, eos_id: int, gen_length: int
) -> tuple[list[int], int]:
    """(prompt + answer + EOS fill) ids and the prompt length."""
    prompt = encode_prompt(tokenizer, problem.prompt)
    answer = encode_prompt(tokenizer, problem.answer)
    if len(answer) > gen_length:
        raise ValueError(
            f"answer of {len(answer)} tokens does not fit gen_length {gen_length}; raise gen_length"
        )
    return prompt + answer + [eos_id] * (gen_length - len(answer)), len(prompt)


def collate(tokenizer: Tokenizer, problems: list[Problem], eos_id: int, gen_length: int) -> Batch:
    """Encode and right-pad `problems` into one batch."""
    rows = [encode_problem(tokenizer, problem, eos_id, gen_length) for problem in problems]
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), eos_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    answer_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for row, (ids, prompt_length) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = True
        answer_mask[row, prompt_length : len(ids)] = True
    return Batch(input_ids, attention_mask, answer_mask)
