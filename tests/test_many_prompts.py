"""Many prompts: `max_batch_size` chunking gives the tokens of one big batch, prompts files, JSON
lines output, conversations as prompts, fresh seeds and the `max_new_tokens` alias."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

import dyllm
from dyllm.cli import main
from dyllm.policies import CosineThreshold
from dyllm.prompt_files import read_prompts_file
from tests.checkpoints import tiny_model, write_tiny_checkpoint, write_tiny_tokenizer

PROMPTS = [[5, 17, 33, 8], [9, 4], [61, 2, 70, 12, 3], [7], [40, 41, 42], [11, 12, 13, 14, 15, 16]]
GREEDY = {"gen_length": 16, "steps": 16, "block_length": 8, "temperature": 0.0}


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize(
    "policy", [None, CosineThreshold(0.99, warmup_steps=2)], ids=["dense", "dyllm"]
)
def test_batches_of_max_batch_size_give_the_tokens_of_one_batch(family, policy) -> None:
    """Padding never changes a greedy row, so running 6 prompts 4 and 2 at a time (or one at a
    time) gives what one batch of 6 gives; the statistics add up over the batches."""
    model = tiny_model(family, never_predicts_mask=True)
    options = {**GREEDY, "alg": "maskgit_plus"} if family == "dream" else GREEDY
    whole = dyllm.generate(model, PROMPTS, policy=policy, **options)
    for size in (4, 1):
        reports = []
        split = dyllm.generate(
            model, PROMPTS, policy=policy, max_batch_size=size, on_step=reports.append, **options
        )
        assert split.token_ids == whole.token_ids
        batches = -(-len(PROMPTS) // size)
        assert split.stats.steps_run == batches * whole.stats.steps_run
        assert split.stats.nfe == batches * whole.stats.nfe
        assert split.stats.generated_tokens_per_row == whole.stats.generated_tokens_per_row
        assert sorted({report.first_row for report in reports}) == list(range(0, 6, size))
        assert split.options.max_batch_size == size


def test_a_batch_size_above_the_prompt_count_is_one_batch() -> None:
    model = tiny_model("llada", never_predicts_mask=True)
    reports = []
    dyllm.generate(model, PROMPTS, max_batch_size=64, on_step=reports.append, **GREEDY)
    assert {report.first_row for report in reports} == {0}
    assert {report.canvas.shape[0] for report in reports} == {len(PROMPTS)}


def test_no_seed_draws_a_fresh_one_and_reports_it() -> None:
    model = tiny_model("llada", never_predicts_mask=True)
    sampling = {"gen_length": 8, "steps": 8, "temperature": 1.0}
    first = dyllm.generate(model, PROMPTS[:2], seed=None, **sampling)
    second = dyllm.generate(model, PROMPTS[:2], seed=None, **sampling)
    assert first.options.seed != second.options.seed
    again = dyllm.generate(model, PROMPTS[:2], seed=first.options.seed, **sampling)
    assert again.token_ids == first.token_ids
    assert dyllm.generate(model, PROMPTS[:2], **sampling).options.seed == 0  # the API default


def test_max_new_tokens_is_gen_length() -> None:
    model = tiny_model("dream", never_predicts_mask=True)
    aliased = dyllm.generate(model, [5, 6], max_new_tokens=6, steps=6, temperature=0.0)
    named = dyllm.generate(model, [5, 6], gen_length=6, steps=6, temperature=0.0)
    assert aliased.token_ids == named.token_ids and len(aliased.token_ids[0]) == 6
    assert dyllm.GenerationConfig().replace(max_new_tokens=12).gen_length == 12


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("chat-llada")
    write_tiny_checkpoint("llada", folder)
    write_tiny_tokenizer(folder)
    return folder


def test_a_conversation_is_rendered_by_the_chat_template(chat_folder: Path) -> None:
    model = dyllm.load(chat_folder)
    conversation = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi there"},
    ]
    options = {"gen_length": 8, "steps": 8}
    one = dyllm.generate(model, conversation, **options)
    text = model.tokenizer.apply_chat_template(conversation)
    assert one.token_ids == dyllm.generate(model, text, **options).token_ids
    single = [{"role": "user", "content": "hi there"}]
    batch = dyllm.generate(model, [conversation, single], **options)
    assert batch.token_ids[0] == one.token_ids[0]
    assert (
        batch.token_ids[1] == dyllm.generate(model, "hi there", chat=True, **options).token_ids[0]
    )


# --------------------------------------------------------------------------- prompts files


def test_a_plain_file_is_one_prompt_per_line(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_bytes("sort 12 =\r\n\n  rot13 ab =\nZürich\n".encode())
    assert read_prompts_file(path) == ["sort 12 =", "  rot13 ab =", "Zürich"]
    path.write_text("5,6,7\n8\n")
    assert read_prompts_file(path, token_ids=True) == [[5, 6, 7], [8]]


def test_json_lines_hold_texts_ids_conversations_and_objects(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    messages = [{"role": "user", "content": "hi"}]
    lines = ["two\nlines", [5, 6], messages, {"prompt": "x"}, {"messages": messages}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    assert read_prompts_file(path) == ["two\nlines", [5, 6], messages, "x", messages]


def test_standard_input_is_read_for_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a\nb\n"), encoding="utf-8"))
    assert read_prompts_file(Path("-")) == ["a", "b"]


def test_the_command_runs_a_prompts_file_into_json_lines(
    chat_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = ["sort 31 =", "add 12 =", "hello", "x y z", "q"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    output = tmp_path / "answers.jsonl"
    argv = ["generate", "--model", str(chat_folder), "--prompts-file", str(tmp_path / "p.txt")]
    argv += ["--output", str(output), "--max-batch-size", "2", "--gen-length", "8"]
    code = main([*argv, "--steps", "8", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0 and captured.out == ""
    records = [json.loads(line) for line in output.read_text().splitlines()]
    model = dyllm.load(chat_folder)
    expected = dyllm.generate(model, prompts, gen_length=8, steps=8)
    assert [r["index"] for r in records] == list(range(5))
    assert [r["prompt"] for r in records] == prompts
    assert [r["token_ids"] for r in records] == expected.token_ids
    assert [r["text"] for r in records] == expected.texts


def test_answers_reach_stdout_when_the_output_file_cannot_be_written(
    chat_folder: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "answers.jsonl"
    real_write = Path.write_text

    def disk_full(self: Path, *args, **kwargs):
        if self == output:
            raise OSError(28, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_full)
    argv = ["generate", "--model", str(chat_folder), "a", "b", "--output", str(output)]
    code = main([*argv, "--gen-length", "8", "--steps", "8", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert [json.loads(line)["prompt"] for line in captured.out.splitlines()] == ["a", "b"]
    assert "could not write 2 answer(s)" in captured.err and "Traceback" not in captured.err
