"""Tiny stand-ins for a dyllm model and tokenizer, for the generation tests (no weights needed).

- `TinyBidirectionalLM`: embedding + learned positions + one bidirectional attention layer with
  random weights under a fixed seed, in float64. Its logits depend on the whole sequence, on
  position ids and on the key-padding mask, like the real model's; float64 keeps a padded row's
  logits equal to the unpadded row's far below any decision margin.
- `ScriptedLM`: logits read from a table by position id (and by the row's first real token), so
  tests can set exactly which token each position proposes and with what confidence.
- `CharTokenizer`: one id per character, special tokens written as `<name>`, a chat template.
- `RecordingDenoiser`: the dense denoiser, keeping each input and context (run it with
  `dyllm.generation.run_sampler`).

Vocabulary (48 ids): 0 <bos>, 1 <eos> (also the pad), 2 <eot>, 3 <mask>, 4 <user>,
5 <assistant>, then `CHARACTERS` from id 6.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from dyllm.generation import DenseDenoiser, StepContext

BOS, EOS, EOT, MASK, USER, ASSISTANT = 0, 1, 2, 3, 4, 5
SPECIAL_NAMES = ("bos", "eos", "eot", "mask", "user", "assistant")
CHARACTERS = "abcdefghijklmnopqrstuvwxyz .0123456789?,!\n"
FIRST_CHARACTER_ID = len(SPECIAL_NAMES)
VOCAB_SIZE = FIRST_CHARACTER_ID + len(CHARACTERS)  # 48


@dataclass
class MockConfig:
    """The fields of `model.config` the generation package reads."""

    family: str = "llada"
    vocab_size: int = VOCAB_SIZE
    mask_token_id: int = MASK
    eos_token_id: int | None = EOS
    pad_token_id: int = EOS
    bos_token_id: int | None = BOS
    eot_token_id: int | None = EOT
    logit_shift: bool = False
    max_position_embeddings: int = 64


def mock_config(family: str = "llada", **changes: object) -> MockConfig:
    """LLaDA-like (no shift) or Dream-like (logit shift) config."""
    config = MockConfig(family=family, logit_shift=family == "dream")
    for name, value in changes.items():
        setattr(config, name, value)
    return config


class CharTokenizer:
    """One id per character; `<eos>`-style names for special tokens."""

    has_chat_template = True

    def encode(self, text: str) -> list[int]:
        ids = []
        for special, character in re.findall(r"<(\w+)>|(.)", text, flags=re.DOTALL):
            if special:
                ids.append(SPECIAL_NAMES.index(special))
            else:
                ids.append(FIRST_CHARACTER_ID + CHARACTERS.index(character))
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        pieces = []
        for token in ids:
            if token >= FIRST_CHARACTER_ID:
                pieces.append(CHARACTERS[token - FIRST_CHARACTER_ID])
            elif not skip_special_tokens:
                pieces.append(f"<{SPECIAL_NAMES[token]}>")
        return "".join(pieces)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        turns = "".join(f"<user>{m['content'].strip()}<eot>" for m in messages)
        return "<bos>" + turns + ("<assistant>" if add_generation_prompt else "")


class TinyBidirectionalLM(nn.Module):
    """Embedding + positions + one bidirectional attention layer + head, float64."""

    def __init__(self, family: str = "llada", seed: int = 0, hidden: int = 16, **config_changes):
        super().__init__()
        self.config = mock_config(family, **config_changes)
        self.tokenizer = CharTokenizer()
        self.generation_defaults: dict = {}
        generator = torch.Generator().manual_seed(seed)

        def weight(*shape: int) -> nn.Parameter:
            values = torch.randn(*shape, generator=generator, dtype=torch.float64)
            return nn.Parameter(values / math.sqrt(shape[0]), requires_grad=False)

        vocab, positions = self.config.vocab_size, self.config.max_position_embeddings
        self.token_embedding = weight(vocab, hidden)
        self.position_embedding = weight(positions, hidden)
        self.query, self.key, self.value, self.output = (weight(hidden, hidden) for _ in range(4))
        self.head = weight(hidden, vocab)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logit_range: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        batch, length = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(length).expand(batch, length)
        h = self.token_embedding[input_ids] + self.position_embedding[position_ids]  # [B, L, D]
        scores = (h @ self.query) @ (h @ self.key).transpose(1, 2) / math.sqrt(h.shape[-1])
        if attention_mask is not None:
            scores = scores.masked_fill(~attention_mask.bool()[:, None, :], float("-inf"))
        h = h + torch.softmax(scores, dim=-1) @ (h @ self.value) @ self.output
        if logit_range is not None:
            h = h[:, logit_range[0] : logit_range[1]]
        logits = 4.0 * torch.tanh(h) @ self.head  # [B, L, V]
        # A trained model almost never proposes the mask token; keep the mock the same.
        return logits - 30.0 * (torch.arange(logits.shape[-1]) == self.config.mask_token_id)


def peaked_logits(tokens: list[int], logit_values: list[float], vocab_size: int = VOCAB_SIZE):
    """Table [len(tokens), V]: position i puts `logit_values[i]` on `tokens[i]`, 0 elsewhere.

    The proposal's softmax probability is e^a / (e^a + V - 1) for logit a.
    """
    table = torch.zeros(len(tokens), vocab_size, dtype=torch.float64)
    table[torch.arange(len(tokens)), torch.tensor(tokens)] = torch.tensor(
        logit_values, dtype=torch.float64
    )
    return table


class ScriptedLM(nn.Module):
    """Logits looked up by position id; a row may have its own table, keyed by its first token.

    tables: {first real token id of the row: [positions, V]}; key None = every other row.
    """

    def __init__(self, tables: dict[int | None, torch.Tensor], family: str = "llada", **changes):
        super().__init__()
        self.config = mock_config(family, **changes)
        self.tokenizer = CharTokenizer()
        self.generation_defaults: dict = {}
        self.tables = tables
        self.anchor = nn.Parameter(torch.zeros(1, dtype=torch.float64), requires_grad=False)
        self.calls: list[torch.Tensor] = []

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logit_range: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        self.calls.append(input_ids.clone())
        batch, length = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(length).expand(batch, length)
        if attention_mask is None:
            first_columns = torch.zeros(batch, dtype=torch.long)
        else:
            first_columns = attention_mask.long().argmax(dim=1)
        rows = []
        for row in range(batch):
            first_token = int(input_ids[row, first_columns[row]])
            table = self.tables.get(first_token, self.tables.get(None))
            rows.append(table[position_ids[row]])
        logits = torch.stack(rows)
        return logits if logit_range is None else logits[:, logit_range[0] : logit_range[1]]


class RecordingDenoiser(DenseDenoiser):
    """A DenseDenoiser that keeps every input canvas and StepContext it was called with."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.inputs: list[torch.Tensor] = []
        self.contexts: list[StepContext] = []

    def __call__(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        self.inputs.append(x.clone())
        self.contexts.append(ctx)
        return super().__call__(x, ctx)
