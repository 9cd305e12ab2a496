"""Turn what a user passes as prompts into lists of token ids, and check them against the model.

Accepted forms: a str, a list of str, a list of int (one tokenized prompt), or a list of lists
of int; a 1-D or 2-D integer tensor or numpy array is read as its `tolist()`. Texts go through
`model.tokenizer`; with `chat=True` each text becomes one user message rendered by the chat
template, and the rendered string (which already holds the special tokens such as BOS and the
assistant header) is encoded as it is.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from dyllm.generation.model import SamplerConfig

PromptInput = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]]


def encode_prompts(prompts: PromptInput, tokenizer: Any, chat: bool) -> list[list[int]]:
    """Token ids of each prompt, in order. Raises ValueError for malformed or empty prompts."""
    if isinstance(prompts, str):
        return [_encode_text(prompts, 0, tokenizer, chat)]
    if hasattr(prompts, "tolist") and not isinstance(prompts, Sequence):
        prompts = prompts.tolist()  # a torch tensor or numpy array of token ids
    if not isinstance(prompts, Sequence) or isinstance(prompts, bytes):
        raise ValueError(
            "prompts must be a str, a list of str, a list of token ids or a list of lists of "
            f"token ids; got {type(prompts).__name__}."
        )
    if len(prompts) == 0:
        raise ValueError("prompts is an empty list; pass at least one prompt.")
    if all(_is_token_id(item) for item in prompts):
        _refuse_chat_on_ids(chat)
        return [[int(token) for token in prompts]]
    if all(isinstance(item, str) for item in prompts):
        return [_encode_text(text, index, tokenizer, chat) for index, text in enumerate(prompts)]
    if all(_is_id_list(item) for item in prompts):
        _refuse_chat_on_ids(chat)
        encoded = [[int(token) for token in item] for item in prompts]
        for index, ids in enumerate(encoded):
            if not ids:
                raise ValueError(f"prompt {index} is an empty list of token ids; give it tokens.")
        return encoded
    raise ValueError(
        "prompts mixes kinds: pass all texts (list of str), one list of token ids, or a list of "
        "lists of token ids (each inner item an int)."
    )


def check_prompt_ids(
    prompt_ids: list[list[int]], model_config: SamplerConfig, gen_length: int
) -> None:
    """Token ids inside the vocabulary, no mask token, and room for the answer."""
    vocab_size = model_config.vocab_size
    for index, ids in enumerate(prompt_ids):
        bad = [token for token in ids if not 0 <= token < vocab_size]
        if bad:
            raise ValueError(
                f"prompt {index} has token id {bad[0]} outside the vocabulary [0, {vocab_size}); "
                "encode it with this model's tokenizer."
            )
        if model_config.mask_token_id in ids:
            raise ValueError(
                f"prompt {index} contains the mask token {model_config.mask_token_id}; the "
                "samplers generate only the answer after the prompt (no infilling), so remove "
                "mask tokens from the prompt."
            )
    longest = max(len(ids) for ids in prompt_ids)
    limit = model_config.max_position_embeddings
    total = longest + gen_length
    if total > limit:
        room = limit - longest
        advice = (
            f"reduce gen_length to at most {room} or shorten the prompt"
            if room > 0
            else f"shorten the prompt below {limit} tokens"
        )
        raise ValueError(
            f"the longest prompt ({longest} tokens) plus gen_length ({gen_length}) is {total} "
            f"positions, {total - limit} more than the model's max_position_embeddings "
            f"({limit}); {advice}."
        )


def _encode_text(text: str, index: int, tokenizer: Any, chat: bool) -> list[int]:
    if tokenizer is None:
        raise ValueError(
            "text prompts need a tokenizer, but model.tokenizer is None (the checkpoint folder "
            "has no tokenizer files); pass token ids instead, or add tokenizer.json (or "
            "vocab.json + merges.txt) and tokenizer_config.json to the folder."
        )
    if not text:
        raise ValueError(f"prompt {index} is an empty string; give it some text.")
    if chat:
        if not tokenizer.has_chat_template:
            raise ValueError(
                "chat=True needs a chat template, but the tokenizer has none "
                "(tokenizer_config.json lacks 'chat_template'); pass chat=False to use the raw "
                "text."
            )
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True
        )
    ids = [int(token) for token in tokenizer.encode(text)]
    if not ids:
        raise ValueError(f"prompt {index} encodes to no tokens; give it some text.")
    return ids


def _refuse_chat_on_ids(chat: bool) -> None:
    if chat:
        raise ValueError(
            "chat=True wraps text in the chat template, but the prompts are token ids; pass "
            "text, or apply the template yourself and pass chat=False."
        )


def _is_token_id(item: Any) -> bool:
    return isinstance(item, numbers.Integral) and not isinstance(item, bool)


def _is_id_list(item: Any) -> bool:
    return (
        isinstance(item, Sequence)
        and not isinstance(item, (str, bytes))
        and all(_is_token_id(token) for token in item)
    )
