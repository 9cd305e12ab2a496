"""Turn what a user passes as prompts into lists of token ids, and check them against the model.

Accepted forms: a str, a list of str, a list of int (one tokenized prompt), a list of lists of
int, a conversation (a list of messages, dicts with `role` and `content`) or a list of
conversations; a 1-D or 2-D integer tensor or numpy array is read as its `tolist()`. Texts go
through `model.tokenizer`; with `chat=True` each text becomes one user message rendered by the
chat template, and the rendered string (which already holds the special tokens such as BOS and the
assistant header) is encoded as it is. A conversation is always rendered by the chat template
(there is no other way to make it one prompt), so it needs a checkpoint that ships one.

A batch holds one kind of prompt. Anything else is refused with the prompt (and item) at fault,
its type and the forms accepted.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from dyllm.generation.model import SamplerConfig

Message = Mapping[str, Any]
PromptInput = (
    str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]] | Sequence[Sequence[Message]]
)
FORMS = (
    "a str, a list of str, a list of token ids, a list of lists of token ids, or conversations "
    "(a list of {'role': ..., 'content': ...} messages, or a list of such lists)"
)
KIND_NAMES = {
    "text": "a text (str)",
    "token": "a token id (int)",
    "ids": "a list of token ids",
    "conversation": "a conversation (list of messages)",
}


def encode_prompts(prompts: PromptInput, tokenizer: Any, chat: bool) -> list[list[int]]:
    """Token ids of each prompt, in order. Raises ValueError for malformed or empty prompts."""
    if isinstance(prompts, str):
        return [_encode_text(prompts, 0, tokenizer, chat)]
    if hasattr(prompts, "tolist") and not isinstance(prompts, Sequence):
        prompts = prompts.tolist()  # a torch tensor or numpy array of token ids
    if not isinstance(prompts, Sequence) or isinstance(prompts, (bytes, bytearray)):
        raise ValueError(f"prompts must be {FORMS}; got {_describe(prompts)}.")
    if len(prompts) == 0:
        raise ValueError("prompts is an empty list; pass at least one prompt.")
    if all(isinstance(item, Mapping) for item in prompts):
        return [_encode_conversation(prompts, 0, tokenizer)]
    items = [_as_list(item) for item in prompts]
    kinds = [_kind(item, index) for index, item in enumerate(items)]
    if len(set(kinds)) > 1:
        first = {kind: kinds.index(kind) for kind in dict.fromkeys(kinds)}
        found = ", ".join(f"prompt {index} is {KIND_NAMES[kind]}" for kind, index in first.items())
        raise ValueError(
            f"prompts mixes kinds: {found}; a batch holds one kind: all texts, one list of token "
            "ids, a list of lists of token ids, or a list of conversations."
        )
    kind = kinds[0]
    if kind == "token":
        _refuse_chat_on_ids(chat)
        return [[int(token) for token in items]]
    if kind == "text":
        return [_encode_text(text, index, tokenizer, chat) for index, text in enumerate(items)]
    if kind == "conversation":
        return [
            _encode_conversation(messages, index, tokenizer) for index, messages in enumerate(items)
        ]
    _refuse_chat_on_ids(chat)
    encoded = [[int(token) for token in item] for item in items]
    for index, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompt {index} is an empty list of token ids; give it tokens.")
    return encoded


def _as_list(item: Any) -> Any:
    """A tensor or array row as a list; anything else unchanged."""
    if hasattr(item, "tolist") and not isinstance(item, (Sequence, Mapping)):
        return item.tolist()
    return item


def _kind(item: Any, index: int) -> str:
    """What one element of a batch is, or a ValueError naming its type."""
    if isinstance(item, str):
        return "text"
    if _is_token_id(item):
        return "token"
    if isinstance(item, Mapping):
        raise ValueError(
            f"prompt {index} is a message (a dict) among other prompts; a conversation is a "
            "list of messages: pass the list itself for one conversation, or a list of such "
            "lists for a batch."
        )
    if isinstance(item, Sequence) and not isinstance(item, (bytes, bytearray)):
        if all(_is_token_id(token) for token in item):
            return "ids"
        if all(isinstance(message, Mapping) for message in item):
            return "conversation"
        messages = isinstance(item[0], Mapping)
        expected = "a message (dict)" if messages else "a token id (int)"
        fits = (lambda value: isinstance(value, Mapping)) if messages else _is_token_id
        position, bad = next((n, value) for n, value in enumerate(item) if not fits(value))
        raise ValueError(
            f"prompt {index}, item {position} is {_describe(bad)}, not {expected}; a list prompt "
            "holds token ids only, or messages only (a conversation)."
        )
    raise ValueError(f"prompt {index} is {_describe(item)}; each prompt must be {FORMS}.")


def _describe(value: Any) -> str:
    text = repr(value)
    shown = text if len(text) <= 40 else text[:37] + "..."
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name} ({shown})"


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
    _need_tokenizer(tokenizer)
    if not text:
        raise ValueError(f"prompt {index} is an empty string; give it some text.")
    _check_unicode(text, f"prompt {index}")
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


def _encode_conversation(messages: Sequence[Message], index: int, tokenizer: Any) -> list[int]:
    """A conversation rendered by the chat template (with the assistant's header) and encoded."""
    _need_tokenizer(tokenizer)
    if not tokenizer.has_chat_template:
        raise ValueError(
            f"prompt {index} is a conversation (a list of role/content messages), which only the "
            "checkpoint's chat template can turn into a prompt, but its tokenizer has none; pass "
            "the text itself instead."
        )
    if not messages:
        raise ValueError(f"prompt {index} is an empty conversation; give it a message.")
    for position, message in enumerate(messages):
        where = f"prompt {index}, message {position}"
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ValueError(
                f"{where} needs a 'role' string such as 'user', got {_describe(role)}."
            )
        content = message.get("content")
        if content is None and "tool_calls" not in message:
            raise ValueError(f"{where} ({role}) has no 'content'.")
        if content is not None:
            if not isinstance(content, str):
                raise ValueError(f"{where}: 'content' must be a str, got {_describe(content)}.")
            _check_unicode(content, where)
    text = tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True)
    ids = [int(token) for token in tokenizer.encode(text)]
    if not ids:
        raise ValueError(f"prompt {index}: the chat template rendered an empty prompt.")
    return ids


def _need_tokenizer(tokenizer: Any) -> None:
    if tokenizer is None:
        raise ValueError(
            "text prompts need a tokenizer, but model.tokenizer is None (the checkpoint folder "
            "has no tokenizer files); pass token ids instead, or add tokenizer.json (or "
            "vocab.json + merges.txt) and tokenizer_config.json to the folder."
        )


def _check_unicode(text: str, where: str) -> None:
    """Refuse lone surrogates: bytes that were not UTF-8 (Python keeps them as such in argv)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{where} is not valid text: character {error.start} is {text[error.start]!r}, a "
            "byte that was not UTF-8 (from a command-line argument or a file in another "
            "encoding); convert the text to UTF-8."
        ) from None


def _refuse_chat_on_ids(chat: bool) -> None:
    if chat:
        raise ValueError(
            "chat=True wraps text in the chat template, but the prompts are token ids; pass "
            "text, or apply the template yourself and pass chat=False."
        )


def _is_token_id(item: Any) -> bool:
    return isinstance(item, numbers.Integral) and not isinstance(item, bool)
