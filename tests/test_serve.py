"""`dyllm serve` over loopback, driven by the official OpenAI client, on the built-in models.

Every answer is compared with `dyllm.generate` run directly (or with the same request run
alone), so the server adds transport, batching and streaming, and changes no token. The servers
run in this process on a background thread (`BackgroundServer`, a free port on 127.0.0.1); one
test starts `dyllm serve` as a subprocess to check the command and its graceful shutdown.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import dyllm
from dyllm.policies.registry import build_policy
from dyllm.reference.registry import builtin_model_path
from dyllm.reference.tasks import heldout_problems
from dyllm.serve import BackgroundServer, ServedModel, ServeSettings, load_served_model
from dyllm.serve.streaming import MASK_GLYPH

ROOT = Path(__file__).resolve().parents[1]

PROMPTS = [
    problem.prompt
    for task in ("mul3", "sort", "cumsum", "rot13")
    for problem in heldout_problems(task)[:4]
]
"""16 prompts of four widths (23 to 27 characters), so batches are left-padded."""


@pytest.fixture(scope="module")
def llada() -> ServedModel:
    return load_served_model(ServeSettings(model="llada-ref"))


@pytest.fixture(scope="module")
def server(llada: ServedModel) -> Iterator[BackgroundServer]:
    settings = ServeSettings(port=0, batch_window_ms=100, max_batch_size=16)
    with BackgroundServer(llada, settings) as running:
        yield running


def client_for(server: BackgroundServer, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0)


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> openai.OpenAI:
    return client_for(server)


def alone(model, prompt, **options) -> str:
    """The text `dyllm.generate` gives `prompt` alone (the server stops at EOS; same tokens)."""
    return dyllm.generate(model, [prompt], stop_at_eos=True, **options).texts[0]


def metric_samples(server: BackgroundServer) -> dict[tuple[str, tuple], float]:
    text = httpx.get(server.url + "/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def batched_count(samples: dict) -> float:
    """Batches of more than one request, from the batch-size histogram."""
    total = samples[("dyllm_batch_size_count", ())]
    return total - samples[("dyllm_batch_size_bucket", (("le", "1.0"),))]


def test_models_and_health(server: BackgroundServer, client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [card.id for card in models.data] == ["llada-ref"]
    assert client.models.retrieve("llada-ref").id == "llada-ref"
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_a_completion_is_what_generate_gives(llada: ServedModel, client: openai.OpenAI) -> None:
    prompt = PROMPTS[0]
    response = client.completions.create(model="llada-ref", prompt=prompt, max_tokens=24, seed=3)
    choice = response.choices[0]
    assert choice.text == alone(llada.model, prompt, gen_length=24)
    assert choice.finish_reason == "stop"  # the answer ends with EOS before 24 tokens
    assert response.usage.prompt_tokens == len(prompt)  # one character, one token
    assert response.usage.completion_tokens == len(choice.text)


def test_a_multi_turn_chat_uses_the_chat_template(llada: ServedModel, client) -> None:
    messages = [
        {"role": "system", "content": "You compute."},
        {"role": "user", "content": PROMPTS[1]},
        {"role": "assistant", "content": "0123"},
        {"role": "user", "content": PROMPTS[2]},
    ]
    response = client.chat.completions.create(model="llada-ref", messages=messages, n=2)
    tokenizer = llada.model.tokenizer
    ids = tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    expected = alone(llada.model, ids)
    assert [c.message.content for c in response.choices] == [expected, expected]
    assert [c.index for c in response.choices] == [0, 1]
    assert response.choices[0].message.role == "assistant"
    assert response.usage.prompt_tokens == len(ids)


def test_a_stream_grows_block_by_block_and_adds_up(client: openai.OpenAI) -> None:
    options = {"model": "llada-ref", "prompt": PROMPTS[4], "max_tokens": 24}
    extra = {"block_length": 8, "steps": 24}
    whole = client.completions.create(**options, extra_body=extra).choices[0].text
    chunks = list(client.completions.create(**options, extra_body=extra, stream=True))
    pieces = [chunk.choices[0].text for chunk in chunks if chunk.choices and chunk.choices[0].text]
    assert "".join(pieces) == whole
    assert len(pieces) >= 2  # the first blocks arrive before the answer is done
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens == len(whole)

    usage_chunk = list(
        client.completions.create(
            **options, extra_body=extra, stream=True, stream_options={"include_usage": True}
        )
    )[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == len(whole)


def test_a_streamed_chat_adds_up_to_the_whole_answer(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": PROMPTS[8]}]
    whole = client.chat.completions.create(model="llada-ref", messages=messages)
    stream = client.chat.completions.create(
        model="llada-ref", messages=messages, stream=True, extra_body={"block_length": 8}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content


def test_the_canvas_stream_shows_every_step(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model="llada-ref",
        prompt=PROMPTS[5],
        max_tokens=24,
        stream=True,
        extra_body={"stream_canvas": True, "steps": 24, "block_length": 8},
    )
    chunks = list(stream)
    canvases = [
        c.choices[0].canvas for c in chunks if c.choices and hasattr(c.choices[0], "canvas")
    ]
    assert len(canvases) >= 16  # one per step (the last steps may be skipped after EOS)
    assert [frame["step"] for frame in canvases] == list(range(len(canvases)))
    masked = [frame["masked"] for frame in canvases]
    assert masked == sorted(masked, reverse=True) and masked[0] == 23  # one token per step
    assert MASK_GLYPH in canvases[0]["text"] and len(canvases[0]["committed"]) == 1
    first = canvases[0]
    assert len(first["token_ids"]) == 24 and first["token_ids"].count(first["mask_token_id"]) == 23
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert canvases[-1]["text"].startswith(text)


def test_sixteen_concurrent_requests_are_batched_and_match_sequential_ones(
    server: BackgroundServer, client: openai.OpenAI
) -> None:
    sequential = [
        client.completions.create(model="llada-ref", prompt=prompt).choices[0].text
        for prompt in PROMPTS
    ]
    before = batched_count(metric_samples(server))

    async def concurrently() -> list[str]:
        async_client = openai.AsyncOpenAI(
            base_url=server.url + "/v1", api_key="unused", max_retries=0
        )
        async with async_client:
            responses = await asyncio.gather(
                *(async_client.completions.create(model="llada-ref", prompt=p) for p in PROMPTS)
            )
        return [response.choices[0].text for response in responses]

    assert asyncio.run(concurrently()) == sequential
    assert batched_count(metric_samples(server)) > before


@pytest.mark.parametrize("policy", ["dyllm:tau=0.995", "fast-dual"])
def test_requests_with_a_policy(
    llada: ServedModel, server: BackgroundServer, client: openai.OpenAI, policy: str
) -> None:
    name, _, arguments = policy.partition(":")
    params = dict(item.split("=") for item in arguments.split(",") if item)
    extra = {"policy": name, "policy_args": params, "block_length": 8}
    prompts = PROMPTS[::4]
    texts = [
        client.completions.create(model="llada-ref", prompt=p, extra_body=extra).choices[0].text
        for p in prompts
    ]
    for prompt, text in zip(prompts, texts, strict=True):
        built = build_policy(name, params)
        options = {"gen_length": 24, "block_length": 8}
        assert text == dyllm.generate(llada.model, [prompt], policy=built, **options).texts[0]

    async def concurrently() -> list[str]:
        async_client = openai.AsyncOpenAI(
            base_url=server.url + "/v1", api_key="unused", max_retries=0
        )
        async with async_client:
            calls = [
                async_client.completions.create(model="llada-ref", prompt=p, extra_body=extra)
                for p in prompts
            ]
            return [r.choices[0].text for r in await asyncio.gather(*calls)]

    assert asyncio.run(concurrently()) == texts
    samples = metric_samples(server)
    assert samples[("dyllm_batches_total", (("policy", name),))] >= 1
    assert samples[("dyllm_computed_fraction_count", (("policy", name),))] >= 1


def _raw(server: BackgroundServer, path: str, body, **kwargs) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
    return httpx.post(server.url + path, content=content, headers=headers, **kwargs)


COMPLETION = {"model": "llada-ref", "prompt": "sort 3141592653589793 ="}

BAD_REQUESTS = [
    ("malformed JSON", b'{"model": "llada-ref", "prompt": ', 400, "invalid_json"),
    ("body not an object", b"[1, 2]", 400, None),
    ("no model", {"prompt": "x"}, 400, "missing"),
    ("unknown model", {**COMPLETION, "model": "gpt-4"}, 404, "model_not_found"),
    ("max_tokens 0", {**COMPLETION, "max_tokens": 0}, 400, "invalid_value"),
    ("max_tokens negative", {**COMPLETION, "max_tokens": -3}, 400, "invalid_value"),
    (
        "max_tokens over the limit",
        {**COMPLETION, "max_tokens": 5000},
        400,
        "context_length_exceeded",
    ),
    ("prompt too long", {**COMPLETION, "prompt": "1" * 250}, 400, "context_length_exceeded"),
    ("unknown policy", {**COMPLETION, "policy": "turbo"}, 400, "invalid_value"),
    ("unknown policy parameter", {**COMPLETION, "policy": "dyllm:tux=0.9"}, 400, "invalid_value"),
    (
        "bad policy value",
        {**COMPLETION, "policy": "dyllm", "policy_args": {"tau": "hot"}},
        400,
        None,
    ),
    ("negative temperature", {**COMPLETION, "temperature": -1}, 400, "invalid_value"),
    ("steps 0", {**COMPLETION, "steps": 0}, 400, "invalid_value"),
    ("block length not dividing", {**COMPLETION, "block_length": 7}, 400, "invalid_value"),
    ("a Dream option on LLaDA", {**COMPLETION, "alg": "entropy"}, 400, "invalid_value"),
    ("unknown remasking", {**COMPLETION, "remasking": "loud"}, 400, "invalid_value"),
    ("top_p on LLaDA", {**COMPLETION, "top_p": 0.5}, 400, "invalid_value"),
    ("unknown field", {**COMPLETION, "stepz": 8}, 400, "unknown_field"),
    ("unsupported feature", {**COMPLETION, "logprobs": 3}, 400, "unknown_field"),
    ("n 0", {**COMPLETION, "n": 0}, 400, "invalid_value"),
    ("too many rows", {**COMPLETION, "n": 17, "temperature": 1.0}, 400, "invalid_value"),
    ("canvas without stream", {**COMPLETION, "stream_canvas": True}, 400, "invalid_value"),
    ("mask token in the prompt", {**COMPLETION, "prompt": [5, 99, 7]}, 400, "invalid_value"),
    ("wrong prompt type", {**COMPLETION, "prompt": {"text": "x"}}, 400, "invalid_value"),
]


@pytest.mark.parametrize(
    "body,status,code", [case[1:] for case in BAD_REQUESTS], ids=[case[0] for case in BAD_REQUESTS]
)
def test_bad_completion_requests_get_openai_errors(server, body, status, code) -> None:
    response = _raw(server, "/v1/completions", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    if code is not None:
        assert error["code"] == code
    assert "Traceback" not in response.text


def test_errors_name_the_field_to_change(server: BackgroundServer) -> None:
    error = _raw(server, "/v1/completions", {**COMPLETION, "block_length": 7}).json()["error"]
    assert error["param"] == "block_length" and "block_length=7" in error["message"]
    untyped = httpx.post(server.url + "/v1/completions", content=json.dumps(COMPLETION))
    assert untyped.status_code == 400 and "Content-Type" in untyped.json()["error"]["message"]


def test_stop_strings_echo_and_sampled_choices(llada: ServedModel, client: openai.OpenAI) -> None:
    prompt = PROMPTS[4]  # a sort prompt: the answer is its digits in ascending order
    full = alone(llada.model, prompt)
    stop = full[len(full) // 2]
    cut = client.completions.create(model="llada-ref", prompt=prompt, stop=[stop], echo=True)
    assert cut.choices[0].text == prompt + full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens == full.index(stop)
    streamed = client.completions.create(model="llada-ref", prompt=prompt, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == full[: full.index(stop)]

    sampled = {"model": "llada-ref", "prompt": prompt, "n": 3, "temperature": 5.0, "seed": 7}
    first = client.completions.with_raw_response.create(**sampled)
    assert first.headers["x-dyllm-batch-requests"] == "1"  # drawing requests run alone
    texts = [choice.text for choice in first.parse().choices]
    again = [choice.text for choice in client.completions.create(**sampled).choices]
    assert texts == again and len(set(texts)) > 1  # the seed fixes them; each row draws its own


def test_bad_chat_requests_and_the_openai_client_errors(server, client) -> None:
    image = [{"type": "image_url", "image_url": {"url": "http://x"}}]
    for messages in ([], [{"role": "user", "content": image}], [{"role": "robot", "content": "x"}]):
        response = _raw(
            server, "/v1/chat/completions", {"model": "llada-ref", "messages": messages}
        )
        assert response.status_code == 400, response.text
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="llada-ref", prompt="x", extra_body={"stepz": 4})
    assert "Did you mean 'steps'?" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_routes_methods_and_the_body_limit(server: BackgroundServer) -> None:
    assert httpx.get(server.url + "/v1/nothing").json()["error"]["code"] == "not_found"
    assert httpx.get(server.url + "/v1/completions").status_code == 405
    huge = _raw(server, "/v1/completions", {**COMPLETION, "prompt": "1" * (2 << 20)})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "body_too_large"


def test_a_model_without_tokenizer_takes_token_ids(llada: ServedModel, tmp_path: Path) -> None:
    source = builtin_model_path("llada-ref")
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(source / name, tmp_path / name)
    served = load_served_model(ServeSettings(model=str(tmp_path), served_model_name="bare"))
    with BackgroundServer(served, ServeSettings(port=0)) as bare:
        text = _raw(bare, "/v1/completions", {"model": "bare", "prompt": "sort 1 ="})
        assert text.status_code == 400 and "tokenizer" in text.json()["error"]["message"]
        ids = llada.model.tokenizer.encode(PROMPTS[6])
        answer = client_for(bare).completions.create(model="bare", prompt=ids, max_tokens=8)
        expected = dyllm.generate(served.model, [ids], gen_length=8).token_ids[0]
        assert answer.choices[0].token_ids == expected[: len(answer.choices[0].token_ids)]


def test_the_api_key_is_required_and_compared(llada: ServedModel) -> None:
    with BackgroundServer(llada, ServeSettings(port=0, api_key="s3cret")) as locked:
        assert httpx.get(locked.url + "/health").status_code == 200
        assert httpx.get(locked.url + "/v1/models").status_code == 401
        with pytest.raises(openai.AuthenticationError):
            client_for(locked, api_key="wrong").models.list()
        assert client_for(locked, api_key="s3cret").models.list().data[0].id == "llada-ref"


LONG = {
    "model": "llada-ref",
    "prompt": PROMPTS[0],
    "max_tokens": 128,
    "extra_body": {"steps": 128, "logits_eos_inf": True},
}
"""A request that keeps the worker busy for a while (about a second here): 128 steps on a
155-position canvas, and no EOS (which would end it early)."""


def test_a_full_queue_answers_429_with_retry_after(llada: ServedModel) -> None:
    settings = ServeSettings(port=0, max_queue=1, max_batch_size=1, batch_window_ms=0)
    with BackgroundServer(llada, settings) as small:

        async def burst() -> list:
            async_client = openai.AsyncOpenAI(
                base_url=small.url + "/v1", api_key="unused", max_retries=0
            )
            async with async_client:
                calls = [async_client.completions.create(**LONG) for _ in range(4)]
                return await asyncio.gather(*calls, return_exceptions=True)

        outcomes = asyncio.run(burst())
    refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    answered = [o for o in outcomes if not isinstance(o, Exception)]
    assert refused and answered and len(refused) + len(answered) == 4
    assert int(refused[0].response.headers["retry-after"]) >= 1
    assert refused[0].body["code"] == "queue_full"


def test_a_timeout_answers_504_and_the_server_goes_on(llada: ServedModel) -> None:
    with BackgroundServer(llada, ServeSettings(port=0, request_timeout_s=0.2)) as hasty:
        client = client_for(hasty)
        with pytest.raises(openai.APIStatusError) as caught:
            client.completions.create(**LONG)
        assert caught.value.status_code == 504 and caught.value.body["code"] == "timeout"
        short = client.completions.create(model="llada-ref", prompt=PROMPTS[1], max_tokens=8)
        assert short.choices[0].finish_reason in ("stop", "length")
        samples = metric_samples(hasty)
        assert samples[("dyllm_abandoned_requests_total", (("reason", "timeout"),))] == 1


def test_a_client_that_leaves_does_not_hurt_its_batch_mates(
    llada: ServedModel, client: openai.OpenAI
) -> None:
    mates = PROMPTS[8:12]
    expected = [
        client.completions.create(model="llada-ref", prompt=p).choices[0].text for p in mates
    ]
    with BackgroundServer(llada, ServeSettings(port=0, batch_window_ms=300)) as shared:
        leaver_body = {**COMPLETION, "prompt": PROMPTS[12], "stream": True, "stream_canvas": True}

        def leave() -> None:
            with httpx.stream("POST", shared.url + "/v1/completions", json=leaver_body) as stream:
                for _ in stream.iter_lines():
                    break  # the first event, then hang up

        leaver = threading.Thread(target=leave)
        leaver.start()

        async def stay() -> list[str]:
            async_client = openai.AsyncOpenAI(
                base_url=shared.url + "/v1", api_key="unused", max_retries=0
            )
            async with async_client:
                calls = [
                    async_client.completions.create(model="llada-ref", prompt=p) for p in mates
                ]
                return [r.choices[0].text for r in await asyncio.gather(*calls)]

        assert asyncio.run(stay()) == expected
        leaver.join()
        time.sleep(0.3)
        assert httpx.get(shared.url + "/health").json()["status"] == "ok"
        samples = metric_samples(shared)
        assert samples[("dyllm_abandoned_requests_total", (("reason", "disconnect"),))] == 1
        assert batched_count(samples) >= 1


def test_a_dream_model_is_served_and_batched() -> None:
    served = load_served_model(ServeSettings(model="dream-ref"))
    prompts = PROMPTS[::5]
    with BackgroundServer(served, ServeSettings(port=0, batch_window_ms=200)) as dream:
        client = client_for(dream)

        async def concurrently() -> list[str]:
            async_client = openai.AsyncOpenAI(
                base_url=dream.url + "/v1", api_key="unused", max_retries=0
            )
            async with async_client:
                calls = [
                    async_client.completions.create(model="dream-ref", prompt=p) for p in prompts
                ]
                return [r.choices[0].text for r in await asyncio.gather(*calls)]

        texts = asyncio.run(concurrently())
        assert texts == [alone(served.model, p) for p in prompts]
        assert batched_count(metric_samples(dream)) >= 1
        chat = client.chat.completions.create(
            model="dream-ref", messages=[{"role": "user", "content": prompts[0]}]
        )
        assert chat.choices[0].finish_reason in ("stop", "length")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_dyllm_serve_finishes_running_requests_when_told_to_stop() -> None:
    port = _free_port()
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "dyllm.cli", "serve", "--port", str(port), "--threads", "1"]
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        limit = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < limit, "dyllm serve did not come up in 60 s"
            time.sleep(0.1)
        outcome: dict = {}

        def request() -> None:
            body = {k: v for k, v in LONG.items() if k != "extra_body"} | LONG["extra_body"]
            outcome["response"] = httpx.post(url + "/v1/completions", json=body, timeout=60)

        caller = threading.Thread(target=request)
        caller.start()
        while httpx.get(url + "/health").json()["running"] == 0:
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        caller.join()
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM
        response = outcome["response"]
        assert response.status_code == 200
        assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
