"""Every bad input a user was seen to give (issue 12, and the ones tested before it), in two tables,
with the error each must end in: a typed exception with a message naming the problem from the
Python API, one line on stderr and a documented exit status from the command line. No case may
end in a traceback, a raw torch / Python error, or a silently wrong result.

`API_CASES`: (id, call, exception type, message). `CLI_CASES`: (id, argv, exit status, message,
optional set-up). Paths in argv are `{llada}` (a tiny LLaDA checkpoint with a tokenizer and a chat
template), `{dream}` (a tiny Dream one without tokenizer), `{tmp}` (a fresh folder) and `{bad}` (a
tiny LLaDA checkpoint the case's set-up has damaged).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import dyllm
import dyllm.bench
import dyllm.bench.runner
from dyllm.cli import main
from dyllm.models import CheckpointError
from dyllm.policies import SaliencyPolicy, StepPlan
from dyllm.tokenizer import ChatTemplateError, render_chat_template
from tests.checkpoints import tiny_model, write_tiny_checkpoint, write_tiny_tokenizer

FAST = ["--gen-length", "8", "--steps", "8", "--no-progress"]


@dataclass
class Env:
    """The folders a case works on; `damaged` writes a fresh tiny checkpoint to change."""

    llada: Path
    dream: Path
    tmp: Path
    model: Any

    def damaged(self, family: str = "llada", **config: Any) -> Path:
        folder = self.tmp / f"damaged-{family}"
        shutil.rmtree(folder, ignore_errors=True)
        write_tiny_checkpoint(family, folder)
        if config:
            raw = json.loads((folder / "config.json").read_text())
            raw.update(config)
            (folder / "config.json").write_text(json.dumps(raw))
        return folder

    def with_tensor(self, key: str, change: Callable[[torch.Tensor], torch.Tensor]) -> Path:
        folder = self.damaged()
        state = load_file(str(folder / "model.safetensors"))
        state[key] = change(state[key])
        save_file(state, str(folder / "model.safetensors"))
        return folder

    def with_generation_config(self, **values: Any) -> Path:
        folder = self.damaged()
        (folder / "generation_config.json").write_text(json.dumps(values))
        return folder

    def truncated(self) -> Path:
        folder = self.tmp / "truncated"
        shutil.rmtree(folder, ignore_errors=True)
        write_tiny_checkpoint("llada", folder, max_shard_bytes=40_000)
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        shard = folder / sorted(set(index["weight_map"].values()))[0]
        shard.write_bytes(shard.read_bytes()[:-100])
        return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    llada = tmp_path_factory.mktemp("llada")
    write_tiny_checkpoint("llada", llada)
    write_tiny_tokenizer(llada)
    dream = tmp_path_factory.mktemp("dream")
    write_tiny_checkpoint("dream", dream)
    return llada, dream


@pytest.fixture
def env(folders: tuple[Path, Path], tmp_path: Path) -> Env:
    llada, dream = folders
    return Env(llada, dream, tmp_path, dyllm.load(llada))


# ------------------------------------------------------------------------- policies that lie


class _Sparse(SaliencyPolicy):
    """Dense at step 0, then sparse over the response; `answer` is what `select` returns."""

    name = "liar"

    def __init__(self, answer: Callable[[Any], Any]) -> None:
        self.answer = answer

    def plan(self, step):
        if step.step == 0:
            return StepPlan.dense_step()
        return StepPlan(dense=False, queries=step.response_rows, refresh=step.response_rows)

    def select(self, layer, signals):
        return self.answer(signals)


class _BadPlan(_Sparse):
    def plan(self, step):
        return None


class _BadBudget(_Sparse):
    def row_budget(self, step, layer, query_count):
        return "all"


class _BadRefresh(_Sparse):
    def rows_to_refresh(self, layer, signals):
        return signals.incoming.float()


def _generate_with(policy: SaliencyPolicy) -> Any:
    model = tiny_model("llada", never_predicts_mask=True)
    return dyllm.generate(model, [[5, 6, 7]], policy=policy, gen_length=8, steps=8)


def _render(template: str) -> str:
    return render_chat_template(template, [{"role": "user", "content": "hi"}])


# ------------------------------------------------------------------------------- API table

API_CASES: list[tuple[str, Callable[[Env], Any], type[BaseException], str]] = [
    # item 4: weights and configs
    (
        "int8 weights",
        lambda e: dyllm.load(
            e.with_tensor("model.transformer.ff_out.weight", lambda t: t.to(torch.int8))
        ),
        CheckpointError,
        r"ff_out\.weight in model\.safetensors is stored as int8 \(quantised weights\)",
    ),
    (
        "a NaN weight",
        lambda e: dyllm.load(e.with_tensor("model.transformer.blocks.0.q_proj.weight", _with_nan)),
        CheckpointError,
        r"q_proj\.weight in model\.safetensors holds 1 NaN or infinite value\(s\), the first at "
        r"index \[0, 1\]",
    ),
    (
        "weights overflowing float16",
        lambda e: dyllm.load(
            e.with_tensor("model.transformer.blocks.1.up_proj.weight", lambda t: t * 1e6),
            dtype="float16",
        ),
        CheckpointError,
        r"up_proj\.weight in model\.safetensors overflows torch\.float16",
    ),
    (
        "rms_norm_eps -1",
        lambda e: dyllm.load(e.damaged(rms_norm_eps=-1)),
        CheckpointError,
        r"config\.json: rms_norm_eps must be a finite number > 0, got -1",
    ),
    (
        "d_model as a string",
        lambda e: dyllm.load(e.damaged(d_model="128")),
        CheckpointError,
        r"d_model must be an integer >= 1, got '128' \(a string\); write it without quotes",
    ),
    (
        "d_model as a float",
        lambda e: dyllm.load(e.damaged(d_model=128.0)),
        CheckpointError,
        r"d_model must be an integer >= 1, got 128\.0 \(a float\)",
    ),
    (
        "n_layers -1",
        lambda e: dyllm.load(e.damaged(n_layers=-1)),
        CheckpointError,
        r"n_layers must be an integer >= 1, got -1",
    ),
    (
        "max_sequence_length 0",
        lambda e: dyllm.load(e.damaged(max_sequence_length=0)),
        CheckpointError,
        r"max_sequence_length must be an integer >= 1, got 0",
    ),
    (
        "rope_theta 'abc'",
        lambda e: dyllm.load(e.damaged(rope_theta="abc")),
        CheckpointError,
        r"rope_theta must be a positive number, got 'abc' \(a string\)",
    ),
    (
        "rope_theta infinite",
        lambda e: dyllm.load(e.damaged(rope_theta=math.inf)),
        CheckpointError,
        r"rope_theta must be a finite number > 0, got inf",
    ),
    (
        "weight_tying 'yes'",
        lambda e: dyllm.load(e.damaged(weight_tying="yes")),
        CheckpointError,
        r"weight_tying must be true or false, got 'yes' \(a string\)",
    ),
    (
        "torch_dtype a number",
        lambda e: dyllm.load(e.damaged(torch_dtype=16)),
        CheckpointError,
        r"torch_dtype must be one of float32, float16, bfloat16, got 16 \(an integer\)",
    ),
    (
        "a quantisation config",
        lambda e: dyllm.load(e.damaged(quantization_config={"quant_method": "bitsandbytes"})),
        CheckpointError,
        r"quantization_config \(method 'bitsandbytes'\): quantised checkpoints are not supported",
    ),
    (
        "Dream num_key_value_heads as a string",
        lambda e: dyllm.load(e.damaged("dream", num_key_value_heads="2")),
        CheckpointError,
        r"num_key_value_heads must be an integer >= 1, got '2' \(a string\)",
    ),
    (
        "mask_token_id negative",
        lambda e: dyllm.load(e.damaged(mask_token_id=-5)),
        CheckpointError,
        r"mask_token_id must be an integer >= 0, got -5",
    ),
    (
        "generation_config temperature as a string",
        lambda e: dyllm.load(e.with_generation_config(temperature="0.5")),
        CheckpointError,
        r"generation_config\.json: temperature must be a number or null, got '0\.5'",
    ),
    (
        "a truncated shard",
        lambda e: dyllm.load(e.truncated()),
        CheckpointError,
        r"truncated or corrupt",
    ),
    # item 5: typed errors from the API
    ("load on a TPU", lambda e: dyllm.load(e.llada, device="tpu"), CheckpointError, "'tpu'"),
    (
        "generate given a model name",
        lambda e: dyllm.generate("llada-ref", "sort 1 ="),
        TypeError,
        r"got the str 'llada-ref'; load it first: model = dyllm\.load\('llada-ref'\)",
    ),
    (
        "generate given None",
        lambda e: dyllm.generate(None, "x"),
        TypeError,
        r"model must be a loaded model \(what dyllm\.load returns\), got NoneType",
    ),
    (
        "model(ids) above the vocabulary",
        lambda e: e.model(torch.tensor([[5, 97]])),
        ValueError,
        r"token id 97, outside the vocabulary \[0, 97\)",
    ),
    (
        "model(ids) negative",
        lambda e: e.model(torch.tensor([[-1, 5]])),
        ValueError,
        r"token id -1, outside the vocabulary",
    ),
    (
        "model(ids) longer than the model allows",
        lambda e: e.model(torch.ones(1, 257, dtype=torch.long)),
        ValueError,
        r"257 positions, more than the model's max_position_embeddings \(256\)",
    ),
    (
        "model(ids) as floats",
        lambda e: e.model(torch.ones(1, 4)),
        ValueError,
        r"integer token ids, got torch\.float32",
    ),
    (
        "model(ids) as a list",
        lambda e: e.model([[5, 6]]),
        TypeError,
        r"input_ids must be an integer tensor \[batch, length\], got list",
    ),
    (
        "select returns the wrong shape",
        lambda e: _generate_with(_Sparse(lambda s: s.queries[:, :-1])),
        ValueError,
        r"policy 'liar': select must return a bool mask of shape \[1, 11\] .*shape \[1, 10\]",
    ),
    (
        "select returns None",
        lambda e: _generate_with(_Sparse(lambda s: None)),
        ValueError,
        r"policy 'liar': select must return a bool mask .* got 'NoneType'",
    ),
    (
        "select returns a float mask",
        lambda e: _generate_with(_Sparse(lambda s: s.queries.float())),
        ValueError,
        r"policy 'liar': select must return a bool mask .* got a torch\.float32 tensor",
    ),
    (
        "rows_to_refresh returns a float mask",
        lambda e: _generate_with(_BadRefresh(lambda s: s.queries)),
        ValueError,
        r"policy 'liar': rows_to_refresh must return a bool mask",
    ),
    (
        "plan returns None",
        lambda e: _generate_with(_BadPlan(lambda s: s.queries)),
        ValueError,
        r"policy 'liar': plan must return a StepPlan, got NoneType",
    ),
    (
        "row_budget returns a string",
        lambda e: _generate_with(_BadBudget(lambda s: s.queries)),
        ValueError,
        r"policy 'liar': row_budget must return a number of rows or None, got 'all'",
    ),
    # item 5: element types once reported as "prompts mixes kinds"
    ("a float prompt", lambda e: _g(e, [1.5]), ValueError, r"prompt 0 is a float \(1\.5\)"),
    ("a None prompt", lambda e: _g(e, ["ab", None]), ValueError, r"prompt 1 is a NoneType"),
    ("a bool prompt", lambda e: _g(e, [True]), ValueError, r"prompt 0 is a bool \(True\)"),
    ("a bytes prompt", lambda e: _g(e, [b"ab"]), ValueError, r"prompt 0 is a bytes \(b'ab'\)"),
    (
        "a float among token ids",
        lambda e: _g(e, [[5, 6.0]]),
        ValueError,
        r"prompt 0, item 1 is a float \(6\.0\), not a token id \(int\)",
    ),
    (
        "a string among token ids",
        lambda e: _g(e, [[5, "6"]]),
        ValueError,
        r"prompt 0, item 1 is a str \('6'\), not a token id",
    ),
    (
        "a set as the prompts",
        lambda e: _g(e, {5, 6}),
        ValueError,
        r"prompts must be a str, .*; got a set",
    ),
    (
        "texts mixed with token ids",
        lambda e: _g(e, ["ab", [5, 6]]),
        ValueError,
        r"prompts mixes kinds: prompt 0 is a text \(str\), prompt 1 is a list of token ids",
    ),
    (
        "a message among texts",
        lambda e: _g(e, ["ab", {"role": "user", "content": "x"}]),
        ValueError,
        r"prompt 1 is a message \(a dict\) among other prompts",
    ),
    # item 10: small things
    ("temperature inf", lambda e: _g(e, "ab", temperature=math.inf), ValueError, "finite"),
    (
        "temperature nan",
        lambda e: _g(e, "ab", temperature=math.nan),
        ValueError,
        r"temperature must be a number, got nan",
    ),
    ("seed 2**64", lambda e: _g(e, "ab", seed=2**64), ValueError, r"at most 2\*\*64 - 1"),
    ("seed -1", lambda e: _g(e, "ab", seed=-1), ValueError, r"seed=-1 must be >= 0"),
    (
        "max_new_tokens and gen_length",
        lambda e: dyllm.generate(e.model, "ab", max_new_tokens=8, gen_length=8, steps=8),
        ValueError,
        r"max_new_tokens and gen_length name the same option",
    ),
    ("load('')", lambda e: dyllm.load(""), ValueError, r"the model name is empty"),
    (
        "load(None)",
        lambda e: dyllm.load(None),
        TypeError,
        r"a checkpoint folder or a built-in name, got NoneType",
    ),
    (
        "a conversation without a chat template",
        lambda e: _g(e, [{"role": "user", "content": "hi"}], template=False),
        ValueError,
        r"prompt 0 is a conversation .* its tokenizer has none",
    ),
    (
        "a message without a role",
        lambda e: _g(e, [[{"content": "hi"}]]),
        ValueError,
        r"prompt 0, message 0 needs a 'role' string",
    ),
    (
        "a message whose content is a number",
        lambda e: _g(e, [{"role": "user", "content": 5}]),
        ValueError,
        r"prompt 0, message 0: 'content' must be a str, got an int \(5\)",
    ),
    (
        "a text with bytes that were not UTF-8",
        lambda e: _g(e, "ab\udcffc"),
        ValueError,
        r"prompt 0 is not valid text: character 2 is '\\udcff'",
    ),
    # item 8: many prompts
    ("max_batch_size 0", lambda e: _g(e, "ab", max_batch_size=0), ValueError, r"must be >= 1"),
    (
        "max_batch_size '4'",
        lambda e: _g(e, "ab", max_batch_size="4"),
        ValueError,
        r"max_batch_size must be an integer, got '4'",
    ),
    # before issue 12
    ("unknown option", lambda e: _g(e, "ab", gen_lenght=8), ValueError, "Did you mean"),
    ("missing folder", lambda e: dyllm.load(e.tmp / "x"), FileNotFoundError, "does not exist"),
    ("empty prompts", lambda e: _g(e, []), ValueError, "prompts is an empty list"),
]


def _with_nan(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.clone()
    tensor[0, 1] = math.nan
    return tensor


def _g(env: Env, prompts: Any, template: bool = True, **options: Any) -> Any:
    """generate on the tiny LLaDA checkpoint (with or without its chat template)."""
    model = env.model
    if not template:
        config = model.tokenizer.config
        model.tokenizer.config = dataclasses.replace(config, chat_template=None)
    return dyllm.generate(model, prompts, gen_length=8, steps=8, **options)


@pytest.mark.parametrize(
    ("name", "call", "error", "message"), API_CASES, ids=[case[0] for case in API_CASES]
)
def test_the_api_refuses_with_a_typed_error(
    name: str, call: Callable[[Env], Any], error: type, message: str, env: Env
) -> None:
    with pytest.raises(error, match=message) as raised:
        call(env)
    assert type(raised.value) is error or isinstance(raised.value, error)


# ----------------------------------------------------------------------------- chat templates

TEMPLATE_CASES = [
    ("include", "{% include 'other.jinja' %}", r"uses \{% include %\} \(line 1\)"),
    ("import", "{% import 'macros.jinja' as m %}", r"uses \{% import %\}"),
    ("from import", "{% from 'macros.jinja' import f %}", r"uses \{% import %\}"),
    ("extends", "{% extends 'base.jinja' %}", r"uses \{% extends %\}"),
    ("range(10**9)", "{% for i in range(10**9) %}{% endfor %}", r"range\(\) was given 1,000,"),
    (
        "two nested 100,000-iteration loops",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        r"ran more than 1,000,000 steps",
    ),
    ("'a' * 400,000,000", "{{ 'a' * 400000000 }}", r"operator \* would build at least 400,000,000"),
    ("center(400,000,000)", "{{ 'a' | center(400000000) }}", r"filter 'center' was given"),
    ("str.ljust", "{{ 'a'.ljust(400000000) }}", r"call ljust\(\) was given 400,000,000"),
    (
        "doubling with ~",
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
        r"the operator ~ built a value of",
    ),
    (
        "doubling with +",
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}"
        "{% set ns.s = ns.s + ns.s %}{% endfor %}",
        r"operator \+ would build",
    ),
    (
        "many large strings",
        "{% set ns = namespace(items=[]) %}{% for i in range(100) %}"
        "{% set ns.items = ns.items + ['x' * 3000000] %}{% endfor %}",
        r"built more than 32,000,000 characters",
    ),
    (
        "join of a huge list",
        "{{ (['abcdefgh'] * 3000000) | join('--') }}",
        r"filter 'join' would build",
    ),
    ("replace blow-up", "{{ ('a' * 3000) | replace('', 'b' * 3000) }}", r"'replace' would build"),
    ("a printf width", "{{ '%0999999999d' % 1 }}", r"width or precision of a million or more"),
    ("a format width", "{{ '{:>999999999}'.format(1) }}", r"width or precision of a million"),
    ("a huge power", "{{ 10 ** (10 ** 9) }}", r"number too large to hold"),
    (
        "a runaway recursion",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        r"ran out of stack",
    ),
    ("a division by zero", "{{ 1 // 0 }}", r"failed while rendering .*ZeroDivisionError"),
]


@pytest.mark.parametrize(
    ("name", "template", "message"), TEMPLATE_CASES, ids=[case[0] for case in TEMPLATE_CASES]
)
def test_a_template_cannot_escape_hang_or_exhaust_memory(
    name: str, template: str, message: str
) -> None:
    with pytest.raises(ChatTemplateError, match=message):
        _render(template)


def test_the_bounds_leave_real_templates_alone() -> None:
    """A long real-looking conversation renders, under every bound, in well under a second."""
    template = (
        "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content | trim }}"
        "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}assistant{% endif %}"
    )
    messages = [{"role": "user", "content": "word " * 200} for _ in range(500)]
    rendered = render_chat_template(template, messages)
    assert rendered.count("<|im_start|>") == 500 and rendered.endswith("assistant")


# -------------------------------------------------------------------------------- CLI table


def _stdin_bytes(data: bytes) -> Callable[[Env, pytest.MonkeyPatch], None]:
    class Stdin(io.TextIOWrapper):
        def isatty(self) -> bool:
            return False

    def setup(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(sys, "stdin", Stdin(io.BytesIO(data), encoding="utf-8"))

    return setup


def _failing_stdout(error: OSError) -> Callable[[Env, pytest.MonkeyPatch], None]:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise error

        def flush(self) -> None:
            raise error

    def setup(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(sys, "stdout", Broken())

    return setup


def _raising(error: BaseException) -> Callable[[Env, pytest.MonkeyPatch], None]:
    def setup(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise error

        monkeypatch.setattr(dyllm, "generate", fail)

    return setup


def _no_compute(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A check-before-compute case: loading or generating would fail the test."""

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(dyllm, "load", forbidden)
    monkeypatch.setattr(dyllm.bench, "run_benchmark", forbidden)
    monkeypatch.setattr(dyllm.bench.runner, "run_benchmark", forbidden)


def _without_matplotlib(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "matplotlib" else real(name, *args),
    )
    _no_compute(env, monkeypatch)


def _bad_config(**config: Any) -> Callable[[Env, pytest.MonkeyPatch], None]:
    def setup(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
        env.damaged(**config)

    return setup


def _int8_checkpoint(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.with_tensor("model.transformer.wte.weight", lambda t: t.to(torch.int8))


def _truncated(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.truncated().rename(env.tmp / "damaged-llada")


def _prompts_file(name: str, data: bytes) -> Callable[[Env, pytest.MonkeyPatch], None]:
    def setup(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
        (env.tmp / name).write_bytes(data)

    return setup


GEN = ["generate", "--model", "{llada}"]
BAD = "{tmp}/damaged-llada"
CLI_CASES: list[tuple[str, list[str], int, str]] = [
    # item 4
    ("a string in config.json", ["generate", "--model", BAD, "x"], 2, "d_model must be"),
    ("int8 weights: info", ["info", BAD], 1, r"stored as int8 \(quantised weights\)"),
    ("a truncated shard: info", ["info", BAD], 1, r"is truncated: .* bytes, but its header"),
    # item 5
    ("--device tpu", [*GEN, "x", "--device", "tpu"], 2, r"unknown device 'tpu'"),
    ("stdin not UTF-8", [*GEN, *FAST], 2, r"standard input is not UTF-8 text \(byte 0xff"),
    ("argv not UTF-8", [*GEN, "a\udcffb", *FAST], 2, r"prompt 0 is not valid text"),
    ("bench --threads -1", ["bench", "--threads", "-1"], 2, r"threads must be at least 1"),
    ("--chat with {% include %}", [*GEN, "--chat", "hi", *FAST], 2, r"uses \{% include"),
    ("Ctrl-C", [*GEN, "x", *FAST], 130, r"^dyllm generate: interrupted$"),
    ("stdout closed early", [*GEN, "x", *FAST], 141, ""),
    ("stdout on a full disk", [*GEN, "x", *FAST], 1, r"No space left on device"),
    ("out of memory", [*GEN, "x", *FAST], 1, r"out of memory \(CUDA out of memory.*--max-batch"),
    ("an unexpected error", [*GEN, "x", *FAST], 1, r"RuntimeError: boom \(DYLLM_TRACEBACK=1"),
    # item 7
    ("--trace into a missing folder", [*GEN, "x", "--trace", "{tmp}/no/t.json"], 2, "exist"),
    ("--trace to a folder", [*GEN, "x", "--trace", "{tmp}"], 2, r"is a folder"),
    ("--out-dir unwritable", ["bench", "--out-dir", "{llada}/config.json/x"], 2, "--out-dir"),
    ("bench without matplotlib", ["bench"], 2, r"needs matplotlib.*--no-plot"),
    ("trace without matplotlib", ["trace", "{tmp}/t.json"], 2, r"drawing a trace needs"),
    # item 8
    ("--prompts-file missing", [*GEN, "--prompts-file", "{tmp}/none.txt"], 2, "not exist"),
    ("--prompts-file not UTF-8", [*GEN, "--prompts-file", "{tmp}/p.txt"], 2, r"line 2: byte"),
    ("--prompts-file bad JSON", [*GEN, "--prompts-file", "{tmp}/p.jsonl"], 2, "line 2 is not"),
    ("--prompts-file blank", [*GEN, "--prompts-file", "{tmp}/b.txt"], 2, r"holds no prompt"),
    ("prompts and a file", [*GEN, "x", "--prompts-file", "{tmp}/p.txt"], 2, r"not both"),
    ("--output in a missing folder", [*GEN, "x", "--output", "{tmp}/no/o.jsonl"], 2, "exist"),
    ("--max-batch-size 0", [*GEN, "x", "--max-batch-size", "0", *FAST], 2, r">= 1"),
    # item 10
    ("--model ''", ["generate", "--model", "", "x"], 2, r"the model name is empty"),
    ("bench --model ''", ["bench", "--model", ""], 2, r"the model name is empty"),
    ("--temperature inf", [*GEN, "x", "--temperature", "inf", *FAST], 2, r"finite"),
    ("--seed 2**64", [*GEN, "x", "--seed", str(2**64), *FAST], 2, r"at most 2\*\*64"),
    # before issue 12
    ("missing folder", ["generate", "--model", "{tmp}/nowhere", "x"], 2, "does not exist"),
    ("unknown policy", [*GEN, "x", "--policy", "nope"], 2, r"unknown policy 'nope'"),
]
SETUPS: dict[str, Any] = {
    "a string in config.json": _bad_config(d_model="128"),
    "int8 weights: info": _int8_checkpoint,
    "a truncated shard: info": _truncated,
    "stdin not UTF-8": _stdin_bytes(b"sort 1\xff2 ="),
    "Ctrl-C": _raising(KeyboardInterrupt()),
    "out of memory": _raising(
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
    ),
    "an unexpected error": _raising(RuntimeError("boom")),
    "--chat with {% include %}": None,  # set in the test (the tokenizer config)
    "stdout closed early": _failing_stdout(BrokenPipeError(32, "Broken pipe")),
    "stdout on a full disk": _failing_stdout(OSError(28, "No space left on device")),
    "--trace into a missing folder": _no_compute,
    "--trace to a folder": _no_compute,
    "--out-dir unwritable": _no_compute,
    "bench without matplotlib": _without_matplotlib,
    "trace without matplotlib": _without_matplotlib,
    "--prompts-file missing": _no_compute,
    "--prompts-file not UTF-8": _prompts_file("p.txt", b"sort 1 =\nsort \xfe2 =\n"),
    "--prompts-file bad JSON": _prompts_file("p.jsonl", b'"sort 1 ="\n{"prompt": \n'),
    "--prompts-file blank": _prompts_file("b.txt", b"\n  \n"),
    "prompts and a file": _prompts_file("p.txt", b"x\n"),
    "--output in a missing folder": _no_compute,
    "--model ''": _no_compute,
    "bench --model ''": _no_compute,
}


@pytest.mark.parametrize(
    ("name", "argv", "status", "message"), CLI_CASES, ids=[case[0] for case in CLI_CASES]
)
def test_the_command_line_ends_in_one_line(
    name: str,
    argv: list[str],
    status: int,
    message: str,
    env: Env,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup = SETUPS.get(name)
    if setup is not None:
        setup(env, monkeypatch)
    llada = env.llada
    if name.startswith("--chat with"):
        llada = env.tmp / "templated"
        shutil.copytree(env.llada, llada)
        config = json.loads((llada / "tokenizer_config.json").read_text())
        config["chat_template"] = "{% include 'turn.jinja' %}"
        (llada / "tokenizer_config.json").write_text(json.dumps(config))
    argv = [arg.format(llada=llada, dream=env.dream, tmp=env.tmp) for arg in argv]
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == status, err
    assert "Traceback" not in err
    if status == 141:
        assert lines == []
        return
    assert len(lines) == 1, err
    assert lines[0].startswith("dyllm "), err
    assert _search(message, lines[0]), (message, lines[0])


def _search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def test_the_tables_cover_the_issue() -> None:
    """The count the issue's note reports; every CLI case names a documented status."""
    assert len(API_CASES) + len(TEMPLATE_CASES) + len(CLI_CASES) >= 100
    assert {case[2] for case in CLI_CASES} <= {1, 2, 130, 141}
