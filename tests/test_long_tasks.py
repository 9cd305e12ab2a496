"""The long-answer task suite: 128-token answers, chained tokens, disjoint held-out sets, and the
trainer's `--suite long`."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

import dyllm
from dyllm.reference.long_tasks import (
    LONG_ANSWER_LENGTH,
    LONG_HELDOUT_PER_TASK,
    LONG_HELDOUT_SEED,
    LONG_TASK_NAMES,
    LONG_TASKS,
    LONG_TRAINING_MIX,
    generate_long_problems,
    get_long_task,
    long_heldout_problems,
    long_heldout_prompts,
    long_training_stream,
    matches_long_task_format,
    runsum_states,
)
from dyllm.reference.scoring import score_predictions
from dyllm.reference.tasks import Problem, heldout_prompts
from dyllm.reference.train import main as train_main
from dyllm.reference.vocab import build_tokenizer


def solve(problem: Problem) -> str:
    """Recompute an answer from the prompt text alone, without the suite's generators."""
    words = problem.prompt.split()
    assert words[-1] == "="
    if words[0] == "triple":
        return str(3 * int(words[1][::-1])).zfill(128)[::-1]
    if words[0] == "runsum":
        assert set(words[1]) <= set("0123")
        sums = itertools.accumulate(int(digit) for digit in words[1])
        return "".join(str(s % 10) for s in sums)
    raise AssertionError(f"unexpected prompt {problem.prompt!r}")


@pytest.mark.parametrize("task", LONG_TASK_NAMES)
def test_generators_are_deterministic_per_seed(task: str) -> None:
    first = generate_long_problems(task, 10, seed=7)
    assert first == generate_long_problems(task, 10, seed=7)
    assert first != generate_long_problems(task, 10, seed=8)


@pytest.mark.parametrize("task", LONG_TASK_NAMES)
def test_answers_match_independent_recomputation(task: str) -> None:
    for problem in generate_long_problems(task, 200, seed=3):
        assert problem.answer == solve(problem)


@pytest.mark.parametrize("task", LONG_TASK_NAMES)
def test_every_problem_has_the_task_shape_in_tokens(task: str) -> None:
    tokenizer = build_tokenizer("llada")
    spec = get_long_task(task)
    assert spec.answer_length == LONG_ANSWER_LENGTH == 128
    for problem in generate_long_problems(task, 50, seed=4):
        assert matches_long_task_format(problem.prompt)
        assert len(tokenizer.encode(problem.prompt, add_special_tokens=False).ids) == len(
            problem.prompt
        )
        assert len(problem.prompt) == spec.prompt_length
        assert len(problem.answer) == spec.answer_length


def test_later_answer_tokens_depend_on_earlier_inputs() -> None:
    """One changed digit at the start of the input changes answer tokens all along the answer:
    the carry chain of `triple` and the counter state of `runsum`."""
    # little-endian 4333...3: 3*4 = 12 leaves a carry that 3*3 + 1 = 10 passes on to the end
    carried = str(3 * int(("4" + "3" * 126)[::-1])).zfill(128)[::-1]
    plain = str(3 * int(("3" * 127)[::-1])).zfill(128)[::-1]
    assert all(a != b for a, b in zip(carried[1:127], plain[1:127], strict=True))
    shifted, base = runsum_states("1" + "0" * 127), runsum_states("0" * 128)
    assert all(a != b for a, b in zip(shifted, base, strict=True))
    assert all(LONG_TASKS[name].dependent for name in LONG_TASK_NAMES)


def test_heldout_sets_are_fixed_and_never_in_training() -> None:
    heldout = long_heldout_problems()
    assert len(heldout) == LONG_HELDOUT_PER_TASK * len(LONG_TASK_NAMES)
    assert heldout == long_heldout_problems()
    assert [p.task for p in long_heldout_problems("runsum")] == ["runsum"] * LONG_HELDOUT_PER_TASK
    excluded = long_heldout_prompts()
    stream = list(itertools.islice(long_training_stream(1), 600))
    assert not any(problem.prompt in excluded for problem in stream)
    assert [p.task for p in stream[:4]] == list(LONG_TRAINING_MIX) * 2
    assert not excluded & heldout_prompts()  # the short suite's held-out set is a different one
    with pytest.raises(ValueError, match="held-out seed"):
        next(long_training_stream(LONG_HELDOUT_SEED))


def test_training_stream_skips_a_heldout_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Held-out problems drawn by a training generator are replaced, not emitted."""
    first = next(long_training_stream(5))
    monkeypatch.setattr(
        "dyllm.reference.long_tasks.long_heldout_prompts", lambda: frozenset({first.prompt})
    )
    assert next(long_training_stream(5)).prompt != first.prompt


def test_scorer_counts_a_late_wrong_token_as_not_exact() -> None:
    problems = long_heldout_problems()[:2]
    wrong = problems[1].answer[:-1] + str((int(problems[1].answer[-1]) + 1) % 10)
    score = score_predictions(problems, [problems[0].answer, wrong])
    assert score.overall.exact_match == 0.5
    assert score.overall.token_accuracy == pytest.approx(255 / 256)


def test_unknown_long_task_lists_the_suite() -> None:
    with pytest.raises(ValueError, match="triple, runsum"):
        get_long_task("mul3")


def test_training_on_the_long_suite_writes_a_long_checkpoint(tmp_path: Path) -> None:
    train_main(
        [
            "--family", "llada", "--suite", "long", "--out", str(tmp_path), "--seed", "3",
            "--steps", "2", "--batch-size", "2", "--hidden-size", "32", "--layers", "1",
            "--heads", "2", "--intermediate-size", "64", "--warmup", "1",
            "--quick-eval-per-task", "1", "--eval-every", "1000", "--checkpoint-every", "1000",
            "--threads", "1",
        ]
    )  # fmt: skip
    model = dyllm.load(tmp_path / "model", device="cpu")
    assert model.config.max_position_embeddings >= 137 + 128
    assert model.generation_defaults["gen_length"] == LONG_ANSWER_LENGTH
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert set(log[-1]["quick_eval"]["per_task"]) == set(LONG_TASK_NAMES)
