"""The task suite: deterministic generators, correct answers, disjoint held-out sets, the scorer."""

from __future__ import annotations

import codecs
import itertools

import pytest

from dyllm.reference.scoring import score_answer, score_predictions
from dyllm.reference.tasks import (
    HELDOUT_PER_TASK,
    HELDOUT_SEED,
    TASK_NAMES,
    TASKS,
    TRAINING_MIX,
    Problem,
    generate_problems,
    get_task,
    heldout_problems,
    heldout_prompts,
    little_endian,
    training_stream,
)
from dyllm.reference.vocab import build_tokenizer


def solve(problem: Problem) -> str:
    """Recompute an answer from the prompt text alone, without the suite's generators."""
    words = problem.prompt.split()
    assert words[-1] == "="
    if words[0] == "mul3":
        return str(3 * int(words[1][::-1])).zfill(21)[::-1]
    if words[0] == "cumsum":
        assert set(words[1]) <= set("0123")
        sums = itertools.accumulate(int(digit) for digit in words[1])
        return "".join(str(s % 10) for s in sums)
    if words[0] == "sort":
        return "".join(sorted(words[1]))
    if words[0] == "rot13":
        return codecs.encode(words[1], "rot13")
    raise AssertionError(f"unexpected prompt {problem.prompt!r}")


def test_suite_has_mostly_dependent_tasks() -> None:
    dependent = [name for name in TASK_NAMES if TASKS[name].dependent]
    assert dependent == ["mul3", "cumsum", "sort"]
    assert len(dependent) * 2 >= len(TASK_NAMES)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_generators_are_deterministic_per_seed(task: str) -> None:
    first = generate_problems(task, 20, seed=7)
    assert first == generate_problems(task, 20, seed=7)
    assert first != generate_problems(task, 20, seed=8)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_answers_match_independent_recomputation(task: str) -> None:
    for problem in generate_problems(task, 300, seed=3):
        assert problem.task == task
        assert problem.answer == solve(problem)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_problems_have_the_fixed_shape_of_their_task(task: str) -> None:
    spec = get_task(task)
    tokenizer = build_tokenizer("llada")
    for problem in generate_problems(task, 50, seed=5):
        prompt_ids = tokenizer.encode(problem.prompt).ids
        answer_ids = tokenizer.encode(problem.answer).ids
        assert len(prompt_ids) == spec.prompt_length
        assert len(answer_ids) == spec.answer_length
        assert 16 <= len(answer_ids) <= 48


def test_known_problems_have_known_answers() -> None:
    assert little_endian(1234, 6) == "432100"
    assert solve(Problem("mul3", f"mul3 {'3' * 20} =", "")) == "9" * 20 + "0"
    assert solve(Problem("mul3", f"mul3 {'4' + '3' * 19} =", "")) == "2" + "0" * 19 + "1"
    assert solve(Problem("cumsum", "cumsum 33333333333333333333 =", "")) == "36925814703692581470"
    assert solve(Problem("rot13", "rot13 nopqrstuvwxyzabcdefg =", "")) == "abcdefghijklmnopqrst"


def test_little_endian_refuses_numbers_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="does not fit in 3 digits"):
        little_endian(1000, 3)


def test_heldout_set_is_fixed_and_balanced() -> None:
    problems = heldout_problems()
    assert len(problems) == HELDOUT_PER_TASK * len(TASK_NAMES) >= 500
    assert [p.task for p in problems[::HELDOUT_PER_TASK]] == list(TASK_NAMES)
    assert heldout_problems("sort") == generate_problems("sort", HELDOUT_PER_TASK, HELDOUT_SEED)
    assert len({p.prompt for p in problems}) == len(problems)


def test_training_stream_never_emits_a_heldout_prompt() -> None:
    excluded = heldout_prompts()
    stream = training_stream(seed=1)
    seen = [next(stream) for _ in range(4000)]
    assert not any(problem.prompt in excluded for problem in seen)
    assert [p.task for p in seen[:10]] == list(TRAINING_MIX) * 2
    assert TRAINING_MIX == ("mul3", "sort", "cumsum", "sort", "rot13")
    sorts = [p.prompt for p in seen if p.task == "sort"]
    assert len(set(sorts)) == len(sorts)


def test_training_stream_skips_a_heldout_prompt_it_would_produce(monkeypatch) -> None:
    stream = training_stream(seed=2)
    first_two = [next(stream) for _ in range(2)]
    monkeypatch.setattr(
        "dyllm.reference.tasks.heldout_prompts", lambda: frozenset({first_two[0].prompt})
    )
    replayed = next(training_stream(seed=2))
    assert replayed.task == "mul3"
    assert replayed.prompt != first_two[0].prompt


def test_training_refuses_the_heldout_seed() -> None:
    with pytest.raises(ValueError, match="held-out seed"):
        next(training_stream(seed=HELDOUT_SEED))


def test_unknown_task_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match=r"unknown task 'mul'.*mul3, cumsum, sort, rot13"):
        get_task("mul")


def test_score_answer_counts_positions() -> None:
    assert score_answer("0123", "0123") == score_answer(" 0123\n", "0123")
    assert score_answer("0123", "0123").exact
    assert score_answer("0193", "0123") == type(score_answer("", "x"))(False, 3, 4)
    assert score_answer("01", "0123").correct_tokens == 2
    extra = score_answer("01234", "0123")
    assert not extra.exact and extra.correct_tokens == 4


def test_score_predictions_per_task_and_pooled() -> None:
    problems = [
        Problem("add", "p1", "1111"),
        Problem("add", "p2", "2222"),
        Problem("rot", "p3", "abcd"),
    ]
    score = score_predictions(problems, ["1111", "2200", "abcz"])
    assert score.per_task["add"].exact_match == 0.5
    assert score.per_task["add"].token_accuracy == 6 / 8
    assert score.per_task["rot"].exact_match == 0.0
    assert score.per_task["rot"].token_accuracy == 3 / 4
    assert score.overall.exact_match == pytest.approx(1 / 3)
    assert score.overall.token_accuracy == 9 / 12
    assert score.to_dict()["overall"]["problems"] == 3


def test_score_predictions_refuses_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="2 problems but 1 predictions"):
        score_predictions([Problem("add", "a", "1"), Problem("add", "b", "2")], ["1"])
