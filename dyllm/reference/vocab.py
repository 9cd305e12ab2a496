"""The reference models' character-level tokenizer and its Hugging Face files.

Every printable ASCII character and the newline are one token each (a BPE model with single
characters and no merges, built with the `tokenizers` library), followed by the special tokens of
the family under the same names the real LLaDA and Dream tokenizers use. One character per token
keeps each digit of the task suite a token of its own, so answers sit at fixed offsets.

`write_tokenizer_files` writes what the real checkpoints ship next to the weights:
`tokenizer.json`, `tokenizer_config.json` (with a chat template in the family's style),
`special_tokens_map.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models

CHARACTERS: tuple[str, ...] = (*(chr(code) for code in range(32, 127)), "\n")
"""Ids 0..95: printable ASCII in code order, then the newline."""

UNKNOWN_TOKEN = "<|unk|>"

VOCAB_SIZE = 128
"""Embedding rows in the model; ids past the tokenizer's last token are never produced."""

LLADA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
)
"""LLaDA-Instruct's layout: bos, header-delimited turns, and always the assistant header last."""

DREAM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML as Dream uses it, without the default system message (it would triple a prompt here)."""


@dataclass(frozen=True)
class FamilyTokens:
    """Special token strings of one family, in the order they get ids after the characters."""

    bos: str
    eos: str
    mask: str
    extra: tuple[str, ...]
    chat_template: str

    @property
    def specials(self) -> tuple[str, ...]:
        return (UNKNOWN_TOKEN, self.bos, self.eos, self.mask, *self.extra)


FAMILY_TOKENS: dict[str, FamilyTokens] = {
    "llada": FamilyTokens(
        bos="<|startoftext|>",
        eos="<|endoftext|>",
        mask="<|mdm_mask|>",
        extra=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        chat_template=LLADA_CHAT_TEMPLATE,
    ),
    "dream": FamilyTokens(
        bos="<|beginoftext|>",
        eos="<|endoftext|>",
        mask="<|mask|>",
        extra=("<|im_start|>", "<|im_end|>"),
        chat_template=DREAM_CHAT_TEMPLATE,
    ),
}


def family_tokens(family: str) -> FamilyTokens:
    """Special tokens of `family` ("llada" or "dream")."""
    if family not in FAMILY_TOKENS:
        raise ValueError(f"unknown model family {family!r}; use 'llada' or 'dream'")
    return FAMILY_TOKENS[family]


def build_tokenizer(family: str) -> Tokenizer:
    """The character-level tokenizer of `family`: 96 characters, then the special tokens."""
    tokens = family_tokens(family)
    vocab = {character: index for index, character in enumerate(CHARACTERS)}
    for offset, special in enumerate(tokens.specials):
        vocab[special] = len(CHARACTERS) + offset
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNKNOWN_TOKEN))
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(
        [AddedToken(special, normalized=False, special=True) for special in tokens.specials]
    )
    return tokenizer


def special_token_ids(family: str) -> dict[str, int]:
    """Ids of bos, eos (= pad) and mask for `family`."""
    tokenizer = build_tokenizer(family)
    tokens = family_tokens(family)
    return {
        "bos": tokenizer.token_to_id(tokens.bos),
        "eos": tokenizer.token_to_id(tokens.eos),
        "pad": tokenizer.token_to_id(tokens.eos),
        "mask": tokenizer.token_to_id(tokens.mask),
    }


def _token_entry(content: str) -> dict[str, object]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
    }


def write_tokenizer_files(family: str, folder: str | Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(family)
    tokens = family_tokens(family)
    tokenizer.save(str(folder / "tokenizer.json"))
    added_tokens_decoder = {
        str(tokenizer.token_to_id(special)): {**_token_entry(special), "special": True}
        for special in tokens.specials
    }
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": added_tokens_decoder,
        "additional_special_tokens": list(tokens.extra),
        "bos_token": tokens.bos,
        "eos_token": tokens.eos,
        "pad_token": tokens.eos,
        "mask_token": tokens.mask,
        "unk_token": UNKNOWN_TOKEN,
        "chat_template": tokens.chat_template,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 512,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    special_map = {
        "additional_special_tokens": list(tokens.extra),
        "bos_token": _token_entry(tokens.bos),
        "eos_token": _token_entry(tokens.eos),
        "pad_token": _token_entry(tokens.eos),
        "mask_token": _token_entry(tokens.mask),
        "unk_token": _token_entry(UNKNOWN_TOKEN),
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
