"""Reading the Hugging Face tokenizer side files: special-token names, added tokens, chat template.

A checkpoint folder describes its tokenizer in up to four JSON files besides the vocabulary:
`tokenizer_config.json` (named special tokens such as `eos_token`, the `added_tokens_decoder`
table of id -> token with its matching flags, and the jinja `chat_template`),
`special_tokens_map.json` (the named special tokens again, used where the config lacks a name),
`added_tokens.json` (older table of token -> id) and `chat_template.jinja` (newer place for the
template, which wins over the config's copy). This module turns them into one plain
`TokenizerConfig` and knows nothing of vocabularies; `tokenizer.py` maps the names to ids.
Every malformed file gets an error that names the file and what is wrong in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dyllm.json_files import read_json_object

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"

# The named special tokens Hugging Face passes to chat templates (in this order) when set.
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


@dataclass(frozen=True)
class AddedTokenSpec:
    """One entry of `added_tokens_decoder`: a token matched whole in the text, before BPE."""

    token_id: int
    content: str
    special: bool
    normalized: bool
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False


@dataclass(frozen=True)
class TokenizerConfig:
    """What the side files of one folder say, with every file already validated."""

    # e.g. {"eos_token": "<|endoftext|>", "mask_token": "<|mask|>"}; unset names are absent
    special_tokens: dict[str, str] = field(default_factory=dict)
    # sorted by token_id, no id or content twice
    added_tokens: tuple[AddedTokenSpec, ...] = ()
    chat_template: str | None = None

    @classmethod
    def from_folder(cls, folder: str | Path) -> TokenizerConfig:
        """Read the side files of `folder`; each missing file simply contributes nothing."""
        folder = Path(folder)
        config = _read_json_object(folder / TOKENIZER_CONFIG_FILE)
        special_map = _read_json_object(folder / SPECIAL_TOKENS_MAP_FILE)
        special_tokens = _named_special_tokens(config, special_map, folder)
        added_tokens = _added_tokens(config, special_tokens, folder)
        chat_template = _chat_template(config, folder)
        return cls(special_tokens, added_tokens, chat_template)


def _read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object stored in `path`, or {} when the file does not exist."""
    if not path.is_file():
        return {}
    return read_json_object(path)


def _token_content(value: Any, name: str, path: Path) -> str | None:
    """A special-token entry is a string, a {"content": ...} object, or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(
        f"{path}: '{name}' should be a token string or an object with a 'content' string, "
        f"found {value!r}."
    )


def _named_special_tokens(
    config: dict[str, Any], special_map: dict[str, Any], folder: Path
) -> dict[str, str]:
    """bos/eos/pad/... token strings; tokenizer_config.json wins over special_tokens_map.json."""
    names: dict[str, str] = {}
    for name in SPECIAL_TOKEN_NAMES:
        content = None
        if name in config:
            content = _token_content(config[name], name, folder / TOKENIZER_CONFIG_FILE)
        elif name in special_map:
            content = _token_content(special_map[name], name, folder / SPECIAL_TOKENS_MAP_FILE)
        if content is not None:
            names[name] = content
    return names


def _added_tokens(
    config: dict[str, Any], special_tokens: dict[str, str], folder: Path
) -> tuple[AddedTokenSpec, ...]:
    """Merge `added_tokens_decoder` with `added_tokens.json`, checking the two agree on ids."""
    config_path = folder / TOKENIZER_CONFIG_FILE
    by_id: dict[int, AddedTokenSpec] = {}
    decoder = config.get("added_tokens_decoder", {})
    if not isinstance(decoder, dict):
        raise ValueError(f"{config_path}: 'added_tokens_decoder' should map ids to token objects.")
    for raw_id, entry in decoder.items():
        try:
            token_id = int(raw_id)
        except ValueError:
            raise ValueError(
                f"{config_path}: 'added_tokens_decoder' key {raw_id!r} is not an integer id."
            ) from None
        content = _token_content(entry, f"added_tokens_decoder[{raw_id}]", config_path)
        if content is None or not isinstance(entry, dict):
            raise ValueError(
                f"{config_path}: 'added_tokens_decoder[{raw_id}]' should be an object with "
                f"'content' and flags, found {entry!r}."
            )
        special = bool(entry.get("special", False))
        by_id[token_id] = AddedTokenSpec(
            token_id=token_id,
            content=content,
            special=special,
            normalized=bool(entry.get("normalized", not special)),
            lstrip=bool(entry.get("lstrip", False)),
            rstrip=bool(entry.get("rstrip", False)),
            single_word=bool(entry.get("single_word", False)),
        )

    legacy_path = folder / ADDED_TOKENS_FILE
    named = set(special_tokens.values()) | set(_additional_special_tokens(config, config_path))
    for content, token_id in _read_json_object(legacy_path).items():
        if not isinstance(token_id, int):
            raise ValueError(f"{legacy_path}: id of {content!r} should be an integer.")
        known = by_id.get(token_id)
        if known is not None and known.content != content:
            raise ValueError(
                f"{legacy_path} gives id {token_id} to {content!r} but {config_path} gives it to "
                f"{known.content!r}; the two files come from different tokenizers."
            )
        if known is None:
            special = content in named
            by_id[token_id] = AddedTokenSpec(token_id, content, special, normalized=not special)

    specs = tuple(by_id[token_id] for token_id in sorted(by_id))
    seen: dict[str, int] = {}
    for spec in specs:
        if spec.content in seen:
            raise ValueError(
                f"{config_path}: token {spec.content!r} is listed with two ids, "
                f"{seen[spec.content]} and {spec.token_id}."
            )
        seen[spec.content] = spec.token_id
    return specs


def _additional_special_tokens(config: dict[str, Any], path: Path) -> list[str]:
    entries = config.get("additional_special_tokens") or []
    if not isinstance(entries, list):
        raise ValueError(f"{path}: 'additional_special_tokens' should be a list of tokens.")
    contents = [_token_content(entry, "additional_special_tokens", path) for entry in entries]
    return [content for content in contents if content is not None]


def _chat_template(config: dict[str, Any], folder: Path) -> str | None:
    """`chat_template.jinja` when present, else the config's template (named list: 'default')."""
    template_file = folder / CHAT_TEMPLATE_FILE
    if template_file.is_file():
        return template_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    path = folder / TOKENIZER_CONFIG_FILE
    if isinstance(template, list):
        for entry in template:
            if isinstance(entry, dict) and entry.get("name") == "default":
                return entry.get("template")
        raise ValueError(
            f"{path}: 'chat_template' is a list of named templates without one named 'default'."
        )
    raise ValueError(
        f"{path}: 'chat_template' should be a string, found {type(template).__name__}."
    )
