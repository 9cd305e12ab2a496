"""From a parsed request to a `Job`, refusing on the event loop everything generate would refuse.

Everything is checked here, before a request is queued, with the checks `dyllm.generate` itself
runs (`resolve_options`, `encode_prompts`, `check_prompt_ids`) and the policy
registry's, so a bad request costs milliseconds and a 4xx, never a batch: the model named, the
fields (`protocol.unexpected_fields`), `max_tokens` against the model's context, the prompt or
the chat messages and the template, the sampler options, the policy and its parameters, `n`,
`stop`. Messages say `max_tokens` where the library says `gen_length`.

Batching: requests run together only when each row then gets what it would get alone. Greedy
decoding with a deterministic unmasking order has that property (padding invariance), so such a
request's batch key is its resolved options (the seed aside: nothing is drawn) and its policy.
A request that draws random numbers (temperature > 0, LLaDA's random remasking, Dream's
`origin` order or `alg_temp`) would see other draws in a batch, so it runs alone, with one row
per choice and its own seed; so does a policy that calibrates on the prompts.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dyllm.generation import GenerationConfig
from dyllm.generation.config import BLOCK_SAMPLERS, FAMILY_SAMPLERS, option_names
from dyllm.generation.prompts import check_prompt_ids, encode_prompts
from dyllm.generation.run import resolve_options
from dyllm.serve.errors import APIError, bad_request
from dyllm.serve.jobs import Job
from dyllm.serve.policy_spec import PolicySpec, parse_policy_spec, with_arguments
from dyllm.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    FieldProblem,
    unexpected_fields,
)
from dyllm.serve.settings import ServedModel

SAMPLER_FIELDS = (
    "steps",
    "block_length",
    "threshold",
    "factor",
    "cfg_scale",
    "remasking",
    "logits_eos_inf",
    "confidence_eos_eot_inf",
    "alg",
    "alg_temp",
    "top_k",
    "eps",
)
"""dyllm's sampler options a request may set, under their `GenerationConfig` names."""

MAX_STOPS = 16
MAX_STOP_LENGTH = 256


@dataclass(frozen=True)
class PreparedRequest:
    """A checked request: its job and what the response needs besides the answers."""

    job: Job
    prompt_tokens: int
    """Prompt tokens over the request's prompts (each counted once, whatever `n`)."""
    echo_texts: list[str] | None
    """Completions with `echo`: each choice's prompt text, put before its answer."""
    return_token_ids: bool
    include_usage: bool
    """Streams: send OpenAI's separate usage chunk (`stream_options.include_usage`)."""


def prepare_completion(
    request: CompletionRequest, served: ServedModel, max_batch_rows: int
) -> PreparedRequest:
    """`POST /v1/completions` -> a job; APIError (4xx) for anything generate would refuse."""
    _check_common(request, served)
    if request.max_tokens is not None:
        _check_max_tokens(request.max_tokens, served, "max_tokens")
    tokenizer = served.model.tokenizer
    try:
        prompt_ids = encode_prompts(request.prompt, tokenizer, chat=False)
    except ValueError as error:
        raise bad_request(_message(error), "prompt") from None
    job = _job(request, served, prompt_ids, request.max_tokens, max_batch_rows)
    echo_texts = None
    if request.echo:
        if tokenizer is None:
            raise bad_request("echo needs a tokenizer to write the prompt as text", "echo")
        prompts = [tokenizer.decode(ids, skip_special_tokens=False) for ids in prompt_ids]
        echo_texts = [prompts[index // request.n] for index in range(len(job.choice_rows))]
    return _prepared(request, job, prompt_ids, echo_texts)


def prepare_chat(
    request: ChatCompletionRequest, served: ServedModel, max_batch_rows: int
) -> PreparedRequest:
    """`POST /v1/chat/completions` -> a job; the messages rendered with the chat template."""
    _check_common(request, served)
    max_tokens = request.max_completion_tokens
    field = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, field = request.max_tokens, "max_tokens"
    if max_tokens is not None:
        _check_max_tokens(max_tokens, served, field)
    tokenizer = served.model.tokenizer
    if tokenizer is None:
        raise bad_request(
            f"the model {served.name!r} has no tokenizer, so it cannot read chat messages; use "
            "/v1/completions with token ids as the prompt",
            "messages",
        )
    if not tokenizer.has_chat_template:
        raise bad_request(
            f"the model {served.name!r} has no chat template (its tokenizer_config.json lacks "
            "'chat_template'); use /v1/completions with the prompt written out",
            "messages",
        )
    messages = [_message_dict(index, message) for index, message in enumerate(request.messages)]
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        prompt_ids = encode_prompts([text], tokenizer, chat=False)
    except ValueError as error:
        raise bad_request(f"the chat template refused the messages: {error}", "messages") from None
    job = _job(request, served, prompt_ids, max_tokens, max_batch_rows)
    return _prepared(request, job, prompt_ids, None)


def _check_common(request: CompletionRequest | ChatCompletionRequest, served: ServedModel) -> None:
    if request.model != served.name:
        raise APIError(
            404,
            f"the model {request.model!r} does not exist here; this server serves "
            f"{served.name!r} (GET /v1/models)",
            code="model_not_found",
            param="model",
        )
    try:
        unexpected_fields(request)
    except FieldProblem as problem:
        raise bad_request(str(problem), problem.param, "unknown_field") from None
    if request.stream_canvas and not request.stream:
        raise bad_request(
            "stream_canvas sends the canvas as stream chunks; set stream to true as well",
            "stream_canvas",
        )


def _check_max_tokens(value: int, served: ServedModel, field: str) -> None:
    if value <= 0:
        raise bad_request(f"{field}={value} must be at least 1 (tokens to generate)", field)
    limit = served.context_length - 1
    if value > limit:
        raise bad_request(
            f"{field}={value} is above the model's limit: it holds {served.context_length} "
            f"positions (max_position_embeddings) for the prompt and the answer together, so "
            f"at most {limit} with a one-token prompt",
            field,
            "context_length_exceeded",
        )


def _job(
    request: CompletionRequest | ChatCompletionRequest,
    served: ServedModel,
    prompt_ids: list[list[int]],
    max_tokens: int | None,
    max_batch_rows: int,
) -> Job:
    config = _resolved_config(request, served, max_tokens)
    try:
        check_prompt_ids(prompt_ids, served.model.config, config.gen_length)
    except ValueError as error:
        code = "context_length_exceeded" if "max_position_embeddings" in str(error) else None
        raise bad_request(_message(error), "prompt", code or "invalid_value") from None
    policy = _policy(request, served)
    stops = _stops(request.stop, served)
    if request.n < 1:
        raise bad_request(f"n={request.n} must be at least 1 (answers per prompt)", "n")
    alone = not batch_invariant(config) or policy.runs_alone
    if alone:
        rows = [ids for ids in prompt_ids for _ in range(request.n)]
        choice_rows = list(range(len(rows)))
    else:
        rows = prompt_ids
        choice_rows = [row for row in range(len(prompt_ids)) for _ in range(request.n)]
    if len(rows) > max_batch_rows:
        raise bad_request(
            f"this request needs {len(rows)} canvas rows ({len(prompt_ids)} prompt(s) x n="
            f"{request.n}{'' if alone else ', one row per prompt when greedy'}), more than the "
            f"server's --max-batch-size {max_batch_rows}; send fewer prompts or a smaller n",
            "n" if request.n > 1 else "prompt",
        )
    key = None if alone else (dataclasses.replace(config, seed=0), policy.key)
    return Job(
        rows=rows,
        choice_rows=choice_rows,
        config=config,
        policy=policy,
        batch_key=key,
        stops=stops,
        stream_text=request.stream,
        stream_canvas=request.stream_canvas,
    )


def _resolved_config(
    request: CompletionRequest | ChatCompletionRequest,
    served: ServedModel,
    max_tokens: int | None,
) -> GenerationConfig:
    model = served.model
    options: dict[str, Any] = {
        name: getattr(request, name)
        for name in SAMPLER_FIELDS
        if getattr(request, name) is not None
    }
    if max_tokens is not None:
        options["gen_length"] = max_tokens
    if request.temperature is not None:
        options["temperature"] = request.temperature
    if request.seed is not None:
        options["seed"] = request.seed
    if request.top_p is not None and not (model.config.family != "dream" and request.top_p == 1):
        options["top_p"] = request.top_p  # 1 filters nothing: harmless for LLaDA, so dropped
    sampler = options.get("sampler") or FAMILY_SAMPLERS.get(model.config.family)
    if sampler not in BLOCK_SAMPLERS:  # LLaDA2's samplers end the answer at EOS themselves
        options["stop_at_eos"] = model.config.eos_token_id is not None
    try:
        config = resolve_options(model, None, options)
    except ValueError as error:
        message = _message(error)
        given = [name for name in SAMPLER_FIELDS if name in options]
        given += [name for name in ("temperature", "top_p", "seed") if name in options]
        if max_tokens is not None:
            given.append("max_tokens")
        raise bad_request(message, _param_of(message, given)) from None
    return config


def batch_invariant(config: GenerationConfig) -> bool:
    """Whether a row's tokens do not depend on its batch-mates (nothing random is drawn)."""
    if config.temperature > 0:
        return False
    if config.sampler in BLOCK_SAMPLERS:  # greedy only; every row keeps its own block state
        return True
    if config.sampler == "llada":
        return config.remasking == "low_confidence"
    return config.alg != "origin" and config.alg_temp is None


def _policy(request: CompletionRequest | ChatCompletionRequest, served: ServedModel) -> PolicySpec:
    try:
        if request.policy is None:
            if not request.policy_args:
                return served.default_policy
            return with_arguments(served.default_policy, request.policy_args, family=served.family)
        return parse_policy_spec(
            request.policy,
            (),
            request.policy_args,
            family=served.family,
            from_request=True,
        )
    except (ValueError, TypeError) as error:
        param = "policy_args" if request.policy_args and "parameter" in str(error) else "policy"
        raise bad_request(_message(error), param) from None


def _stops(stop: str | Sequence[str] | None, served: ServedModel) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > MAX_STOPS:
        raise bad_request(f"stop holds {len(stops)} strings; give at most {MAX_STOPS}", "stop")
    for item in stops:
        if not item or len(item) > MAX_STOP_LENGTH:
            raise bad_request(
                f"each stop string must have 1 to {MAX_STOP_LENGTH} characters, got {item!r}",
                "stop",
            )
    if stops and served.model.tokenizer is None:
        raise bad_request("stop strings need a tokenizer to read the answer as text", "stop")
    return stops


def _message_dict(index: int, message: Any) -> dict[str, str]:
    content = message.content
    if isinstance(content, list):
        texts = []
        for part in content:
            if part.type != "text" or part.text is None:
                raise bad_request(
                    f"messages[{index}] has a content part of type {part.type!r}; this model "
                    "reads text parts only",
                    "messages",
                )
            texts.append(part.text)
        content = "".join(texts)
    role = "system" if message.role == "developer" else message.role
    return {"role": role, "content": content or ""}


def _prepared(
    request: CompletionRequest | ChatCompletionRequest,
    job: Job,
    prompt_ids: list[list[int]],
    echo_texts: list[str] | None,
) -> PreparedRequest:
    usage = request.stream_options is not None and bool(request.stream_options.include_usage)
    return PreparedRequest(
        job=job,
        prompt_tokens=sum(len(ids) for ids in prompt_ids),
        echo_texts=echo_texts,
        return_token_ids=request.return_token_ids,
        include_usage=usage,
    )


def _message(error: Exception) -> str:
    """The library's message in the API's words (`max_tokens` for `gen_length`)."""
    return str(error).replace("gen_length", "max_tokens")


_PARAM = re.compile(r"^(?:unknown )?(\w+)")


def _param_of(message: str, given: Sequence[str]) -> str | None:
    """The request field an option error is about: the first field the request set that the
    message names, else the option the message starts with."""
    named = [(message.find(name), name) for name in given if re.search(rf"\b{name}\b", message)]
    if named:
        return min(named)[1]
    match = _PARAM.match(message)
    if match is None:
        return None
    word = match.group(1)
    if word == "max_tokens" or word in option_names():
        return word
    return None
