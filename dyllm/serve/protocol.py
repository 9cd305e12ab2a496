"""The HTTP bodies `dyllm serve` reads and writes: OpenAI's request fields plus dyllm's own.

Requests are pydantic models. The OpenAI fields map onto dyllm's options (`max_tokens` is the
gen length, `temperature`, `top_p`, `seed`, `stop`, `n`); dyllm's own options travel as extra
fields of the same body (what the OpenAI client sends through `extra_body`): the sampler's
`steps`, `block_length`, `threshold`, `factor`, `alg`, ... under their `GenerationConfig`
names, the caching `policy` (`NAME` or `NAME:KEY=VALUE,...`) with `policy_args`, and the
streaming extension `stream_canvas`.

A field no model here declares is not silently dropped: OpenAI fields that change nothing here
(`user`, `store`, ...) are ignored, OpenAI features dyllm does not have (`logprobs`, `tools`,
penalties, ...) are refused unless given their neutral value, and anything else is refused with
the closest known field suggested. `unexpected_fields` does that sorting; the app turns its
findings into 400 errors.

Responses are built as plain dicts in OpenAI's shapes (`completion_body`, `chunk_body`, ...), the
shapes the official client parses.
"""

from __future__ import annotations

import difflib
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

IGNORED_FIELDS = frozenset(
    {
        "user",
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "parallel_tool_calls",
        "verbosity",
        "reasoning_effort",
    }
)
"""OpenAI fields that ask nothing of the generation (bookkeeping, tool and reasoning knobs)."""

NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
    "response_format": (None, {"type": "text"}),
}
"""OpenAI features dyllm does not implement, and the values that ask for nothing of them."""

UNSUPPORTED_WHY = {
    "frequency_penalty": "a diffusion sampler has no left-to-right history to penalise",
    "presence_penalty": "a diffusion sampler has no left-to-right history to penalise",
    "logprobs": "the samplers do not report token log-probabilities",
    "top_logprobs": "the samplers do not report token log-probabilities",
    "logit_bias": "the samplers take no logit bias",
    "best_of": "ranking candidates needs log-probabilities; use n for several answers",
    "suffix": "the samplers generate only after the prompt (no infilling)",
    "response_format": "there is no constrained decoding; ask for the format in the prompt",
}


class DyllmOptions(BaseModel):
    """dyllm's own fields, shared by both endpoints (sent by the OpenAI client in `extra_body`)."""

    model_config = ConfigDict(extra="allow")

    steps: int | None = None
    block_length: int | None = None
    threshold: float | None = None
    factor: float | None = None
    cfg_scale: float | None = None
    remasking: str | None = None
    logits_eos_inf: bool | None = None
    confidence_eos_eot_inf: bool | None = None
    alg: str | None = None
    alg_temp: float | None = None
    top_k: int | None = None
    eps: float | None = None
    policy: str | None = None
    """A registered policy, `NAME` or `NAME:KEY=VALUE,...`; default: the server's."""
    policy_args: dict[str, str | int | float | bool | list[float] | None] | None = None
    """The policy's parameters as a JSON object (values as JSON or as the CLI's text)."""
    stream_canvas: bool = False
    """With `stream`: one extra chunk per denoising step carrying the canvas (dyllm extension)."""
    return_token_ids: bool = False
    """Add each choice's answer token ids (`token_ids`); always on for a model without a
    tokenizer, whose answers have no text."""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = None


class CompletionRequest(DyllmOptions):
    """`POST /v1/completions`."""

    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    echo: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None


class TextPart(BaseModel):
    """One part of a message's content given as a list (only text parts are read)."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class ChatCompletionRequest(DyllmOptions):
    """`POST /v1/chat/completions`."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None


class FieldProblem(ValueError):
    """A field the server refuses; `param` names it (OpenAI errors carry it)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def unexpected_fields(request: BaseModel) -> None:
    """Raise `FieldProblem` for the first extra field that is neither ignorable nor neutral."""
    extras = request.model_extra or {}
    known = [*type(request).model_fields, *NEUTRAL_VALUES, *IGNORED_FIELDS]
    for name, value in extras.items():
        if name in IGNORED_FIELDS:
            continue
        if name in NEUTRAL_VALUES:
            if value in NEUTRAL_VALUES[name]:
                continue
            why = UNSUPPORTED_WHY.get(name, "dyllm serve has no such feature")
            raise FieldProblem(
                f"{name}={value!r} is not supported: {why}; drop {name} from the request.", name
            )
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise FieldProblem(
            f"unknown field {name!r}.{hint} dyllm's own options are "
            f"{', '.join(DyllmOptions.model_fields)}.",
            name,
        )


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    request_id: str, model: str, choices: list[dict[str, Any]], usage: dict[str, int], chat: bool
) -> dict[str, Any]:
    """A whole (non-streamed) response: `text_completion` or `chat.completion`."""
    return {
        "id": request_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def choice_body(
    index: int, text: str, finish_reason: str, chat: bool, extra: dict[str, Any]
) -> dict[str, Any]:
    """One choice of a whole response; `extra` holds dyllm's additions (`token_ids`)."""
    if chat:
        body = {"index": index, "message": {"role": "assistant", "content": text}}
    else:
        body = {"index": index, "text": text}
    return {**body, "finish_reason": finish_reason, "logprobs": None, **extra}


def chunk_body(
    request_id: str,
    model: str,
    created: int,
    choices: list[dict[str, Any]],
    chat: bool,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One streamed chunk: `text_completion` (completions) or `chat.completion.chunk`."""
    body = {
        "id": request_id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def chunk_choice(
    index: int,
    text: str | None,
    chat: bool,
    finish_reason: str | None = None,
    role: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One choice of a chunk: a text delta (None: an empty delta), the finish reason, extras."""
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        body: dict[str, Any] = {"index": index, "delta": delta}
    else:
        body = {"index": index, "text": text or ""}
    return {**body, "finish_reason": finish_reason, "logprobs": None, **(extra or {})}
