"""`dyllm serve` with a mixture-of-experts model: a tiny LLaDA-MoE checkpoint (tests/
moe_checkpoints.py, with a character tokenizer and a chat template) answers the official OpenAI
client on 127.0.0.1 with exactly the text `dyllm.generate` gives, on one process (dense and
under DyLLM, completions and chat) and split over two processes by torchrun; a tiny LLaDA2
checkpoint does the same through its default block-diffusion sampler (`llada2`), batched
requests included.

The random weights' LM-head rows of the unused ids and the special tokens (53-63) are zeroed, so
their logits are 0 while the largest of the 53 others is positive: the model writes characters,
never the mask (a committed mask token would leave nothing to compare) and never EOS (answers
run to max_tokens). Loaded in float32: the split server's logits are the single process's up to
float32 rounding (tests/test_tensor_parallel_moe.py), far below these models' logit gaps.
"""

from __future__ import annotations

import sys
from pathlib import Path

import openai
import pytest
from safetensors.torch import load_file, save_file

import dyllm
from dyllm.policies import CosineThreshold
from dyllm.serve import BackgroundServer, ServedModel, ServeSettings, load_served_model
from tests.moe_checkpoints import write_tiny_moe_checkpoint, write_tiny_moe_tokenizer
from tests.test_serve_tensor_parallel import split_server

ROOT = Path(__file__).resolve().parents[1]
NAME = "tiny-llada-moe"
OPTIONS = {"gen_length": 16, "steps": 16, "block_length": 8}
EXTRA = {"steps": 16, "block_length": 8}
PROMPTS = ["what is 12+30?", "sort 3 1 2:"]
MESSAGES = [{"role": "user", "content": PROMPTS[1]}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_folder(tmp_path_factory.mktemp("serve-moe"), "llada_moe", NAME)


def _tiny_folder(root: Path, family: str, name: str) -> Path:
    path = root / name
    write_tiny_moe_checkpoint(family, path, seed=7)
    write_tiny_moe_tokenizer(path)
    weights = load_file(path / "model.safetensors")
    weights["lm_head.weight"][53:] = 0
    save_file(weights, str(path / "model.safetensors"))
    return path


@pytest.fixture(scope="module")
def served(folder: Path) -> ServedModel:
    return load_served_model(ServeSettings(model=str(folder), dtype="float32"))


def alone(model, prompt, **options) -> str:
    return dyllm.generate(model, [prompt], stop_at_eos=True, **OPTIONS, **options).texts[0]


def chat_ids(model) -> list[int]:
    tokenizer = model.tokenizer
    return tokenizer.encode(tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True))


def test_a_served_moe_model_answers_as_generate(served: ServedModel) -> None:
    model = served.model
    assert model.config.family == "llada_moe" and served.name == NAME
    with BackgroundServer(served, ServeSettings(port=0)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        for prompt in PROMPTS:
            answer = client.completions.create(
                model=NAME, prompt=prompt, max_tokens=16, extra_body=EXTRA
            )
            expected = alone(model, prompt)
            assert len(expected) == 16 and answer.choices[0].text == expected
        # DyLLM's sparse steps route only the rows they select through the experts
        extra = {**EXTRA, "policy": "dyllm", "policy_args": {"tau": 0.99, "warmup_steps": 2}}
        answer = client.completions.create(
            model=NAME, prompt=PROMPTS[1], max_tokens=16, extra_body=extra
        )
        policy = CosineThreshold(0.99, warmup_steps=2)
        assert answer.choices[0].text == alone(model, PROMPTS[1], policy=policy)
        chat = client.chat.completions.create(
            model=NAME, messages=MESSAGES, max_tokens=16, extra_body=EXTRA
        )
        assert chat.choices[0].message.content == alone(model, chat_ids(model))
        assert chat.usage.prompt_tokens == len(chat_ids(model))


def test_a_served_llada2_model_answers_as_generate_with_block_diffusion(
    tmp_path: Path,
) -> None:
    """LLaDA2's default sampler (block diffusion, exact block cache) behind the server: answers,
    chat, and concurrent requests (which the server may batch) as `dyllm.generate` alone."""
    served = load_served_model(
        ServeSettings(model=str(_tiny_folder(tmp_path, "llada2", "tiny-llada2")), dtype="float32")
    )
    model = served.model
    assert model.config.family == "llada2"

    def llada2_alone(prompt) -> str:
        return dyllm.generate(model, [prompt], **OPTIONS).texts[0]

    with BackgroundServer(served, ServeSettings(port=0)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        answers = client.completions.create(
            model=served.name, prompt=PROMPTS, max_tokens=16, extra_body=EXTRA
        )
        expected = [llada2_alone(prompt) for prompt in PROMPTS]
        assert [choice.text for choice in sorted(answers.choices, key=lambda c: c.index)] == (
            expected
        )
        assert all(len(text) == 16 for text in expected)
        chat = client.chat.completions.create(
            model=served.name, messages=MESSAGES, max_tokens=16, extra_body=EXTRA
        )
        assert chat.choices[0].message.content == llada2_alone(chat_ids(model))
        refused = client.completions.with_raw_response
        with pytest.raises(openai.BadRequestError, match="cfg_scale"):
            refused.create(
                model=served.name,
                prompt=PROMPTS[0],
                max_tokens=16,
                extra_body={**EXTRA, "cfg_scale": 1.0},
            )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_moe_model_served_over_two_processes_answers_as_one(
    folder: Path, served: ServedModel
) -> None:
    arguments = ["--model", str(folder), "--dtype", "float32"]
    with split_server(arguments) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        model = served.model  # the single process's
        answer = client.completions.create(
            model=NAME, prompt=PROMPTS[0], max_tokens=16, extra_body=EXTRA
        )
        assert answer.choices[0].text == alone(model, PROMPTS[0])
        chat = client.chat.completions.create(
            model=NAME, messages=MESSAGES, max_tokens=16, extra_body=EXTRA
        )
        assert chat.choices[0].message.content == alone(model, chat_ids(model))
        server.stop()
