"""Score generated answers against the task suite: exact match and per-token accuracy.

A prediction is the generated text up to the first EOS (what `GenerationOutput.texts` holds),
compared with the expected answer after stripping surrounding whitespace. Exact match needs the
whole string equal (nothing missing, nothing extra). Per-token accuracy counts the answer's
tokens reproduced at their position; with the character-level reference vocabulary a token is one
character, so the count is over characters and a short prediction loses the missing ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from dyllm.reference.tasks import Problem


@dataclass(frozen=True)
class AnswerScore:
    """One prediction's score."""

    exact: bool
    correct_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class ScoreSummary:
    """Scores over a group of problems, as fractions in [0, 1]."""

    problems: int
    exact_match: float
    token_accuracy: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class SuiteScore:
    """Per-task summaries and the summary over all problems."""

    per_task: dict[str, ScoreSummary]
    overall: ScoreSummary

    def to_dict(self) -> dict[str, object]:
        return {
            "per_task": {name: summary.to_dict() for name, summary in self.per_task.items()},
            "overall": self.overall.to_dict(),
        }


def score_answer(predicted: str, expected: str) -> AnswerScore:
    """Compare one predicted answer with the expected one (both stripped of outer whitespace)."""
    predicted, expected = predicted.strip(), expected.strip()
    correct = sum(1 for got, want in zip(predicted, expected, strict=False) if got == want)
    return AnswerScore(predicted == expected, correct, len(expected))


def _summarise(scores: list[AnswerScore]) -> ScoreSummary:
    total_tokens = sum(score.total_tokens for score in scores)
    return ScoreSummary(
        problems=len(scores),
        exact_match=sum(score.exact for score in scores) / len(scores),
        token_accuracy=sum(score.correct_tokens for score in scores) / total_tokens,
    )


def score_predictions(problems: Sequence[Problem], predictions: Sequence[str]) -> SuiteScore:
    """Score `predictions[i]` against `problems[i]`, per task and overall.

    Overall exact match and token accuracy are over all problems pooled (each task weighs by its
    number of problems; the held-out sets have the same number per task).
    """
    if len(problems) != len(predictions):
        raise ValueError(f"{len(problems)} problems but {len(predictions)} predictions")
    if not problems:
        raise ValueError("nothing to score: the problem list is empty")
    by_task: dict[str, list[AnswerScore]] = {}
    for problem, predicted in zip(problems, predictions, strict=True):
        by_task.setdefault(problem.task, []).append(score_answer(predicted, problem.answer))
    every = [score for scores in by_task.values() for score in scores]
    per_task = {name: _summarise(scores) for name, scores in by_task.items()}
    return SuiteScore(per_task, _summarise(every))
