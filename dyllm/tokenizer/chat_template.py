"""Chat templates rendered with jinja2 the way Hugging Face transformers renders them.

A model's `tokenizer_config.json` carries its chat format as a jinja template; a prompt only
matches what the model was trained on when the template is rendered with the same jinja
settings and the same variables as transformers' `apply_chat_template`. Those are:

- an `ImmutableSandboxedEnvironment` (templates from the Hub are untrusted code) with
  `trim_blocks=True`, `lstrip_blocks=True` and the `loopcontrols` extension (`break`/`continue`);
- a `tojson` filter that is plain `json.dumps(..., ensure_ascii=False)` (jinja's own escapes
  `<`, `>` and `&` for HTML, which would change tool schemas);
- globals `raise_exception(message)` and `strftime_now(format)`;
- variables `messages`, `add_generation_prompt`, `tools=None`, `documents=None` and the named
  special-token strings (`bos_token`, `eos_token`, ...);
- message keys whose value is None are dropped first (transformers does this because templates
  test `message.tool_calls` with `is defined`).

Tests compare the output with transformers' own rendering of the real LLaDA and Dream templates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """A chat template failed to compile or to render, or rejected the conversation."""


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    **special_tokens: Any,
) -> str:
    """Render `messages` (dicts with at least `role` and `content`) through `template`.

    `special_tokens` become template variables, normally the strings of `bos_token`,
    `eos_token`, `pad_token`, ...; `tools` or `documents` may be passed the same way.
    """
    if isinstance(messages, (str, Mapping)) or len(messages) == 0:
        raise ValueError(
            "messages should be a non-empty list of dicts such as "
            "[{'role': 'user', 'content': 'Hello'}]."
        )
    cleaned_messages = []
    for position, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(
                f"message {position} should be a dict with 'role' and 'content', "
                f"found {type(message).__name__}: {message!r}."
            )
        cleaned_messages.append({key: value for key, value in message.items() if value is not None})

    compiled = _compile(template)
    variables: dict[str, Any] = {"tools": None, "documents": None, **special_tokens}
    try:
        return compiled.render(
            messages=cleaned_messages, add_generation_prompt=add_generation_prompt, **variables
        )
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as error:
        raise ChatTemplateError(
            f"the chat template failed while rendering this conversation: {error}. "
            "Check that every message has the keys the template reads ('role', 'content')."
        ) from error


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    """One compiled template per template string (compiling the Dream template takes ~5 ms)."""
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    try:
        return environment.from_string(template)
    except jinja2.TemplateSyntaxError as error:
        raise ChatTemplateError(
            f"the chat template is not valid jinja (line {error.lineno}: {error.message}); "
            "fix the 'chat_template' entry of tokenizer_config.json."
        ) from error


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"the chat template rejected the conversation: {message}")


def _strftime_now(format_string: str) -> str:
    return datetime.now().strftime(format_string)
