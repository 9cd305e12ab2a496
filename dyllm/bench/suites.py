"""Which task suite a benchmark scores: chosen from the model, or named with `--suite`.

A built-in reference model is benchmarked on the suite it was trained on
(`dyllm.reference.registry.BUILTIN_SUITES`: `llada-ref` and `dream-ref` on `short`, `llada-long` on
`long`); any other checkpoint on `short` unless `--suite` names another, so a user's own model
trained on the long suite is benched with `--suite long`. The suite gives the tasks, the held-out
problems, the training-stream prompts a calibrating policy is built on, the default answer length
and the default number of problems per task; the scorer (`dyllm.reference.scoring`) is the same
exact-match and per-token rule for every suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from dyllm.reference.encoding import DEFAULT_GEN_LENGTH
from dyllm.reference.long_tasks import LONG_ANSWER_LENGTH, SUITES
from dyllm.reference.registry import BUILTIN_SUITES, builtin_model_name
from dyllm.reference.tasks import Problem, TaskSuite

DEFAULT_SUITE = "short"
"""The suite of a checkpoint that is not a built-in, unless `--suite` says otherwise."""

SUITE_GEN_LENGTHS: dict[str, int] = {"short": DEFAULT_GEN_LENGTH, "long": LONG_ANSWER_LENGTH}
"""Answer region per suite: the length `dyllm.reference.train` trains that suite at (24: the
longest short answer is 21 tokens, the rest EOS; 128: every long answer)."""

SUITE_PROBLEMS_PER_TASK: dict[str, int] = {"short": 64, "long": 5}
"""Default held-out problems per task. Short: 256 problems, the full grid in about 6 minutes on
2 cores. Long: 5 per task (10 problems), so that the issue's run (every strategy at nu = 1, 2, 4
and threshold decoding, blocks 8 and 32, 3 repeats) takes about 15 minutes on one core: a smoke
run measured about 22 s per problem through the whole grid once, and each (method, decoding,
block) generates every problem `repeats` times plus the first batch twice (warm-up, profile), so
40 rows, plus about 25 s of loading and calibration (docs/benchmarks.md). A batch then holds 5
problems, not 16: batches of 16 need 16 problems per task, about 47 minutes at 3 repeats (24 at
`--repeats 1`)."""

CALIBRATION_SEED = 90_210
CALIBRATION_PROMPTS = 16


@dataclass(frozen=True)
class BenchSuite:
    """A task suite under its `SUITES` name, with the benchmark's defaults for it."""

    name: str
    suite: TaskSuite

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.suite.names

    @property
    def gen_length(self) -> int:
        return SUITE_GEN_LENGTHS[self.name]

    @property
    def problems_per_task(self) -> int:
        return SUITE_PROBLEMS_PER_TASK[self.name]

    @property
    def heldout_per_task(self) -> int:
        return self.suite.heldout_per_task

    def longest_answer(self, tasks: tuple[str, ...]) -> int:
        """Answer tokens of the longest answer among `tasks` (EOS not counted)."""
        return max(self.suite.get(task).answer_length for task in tasks)

    def check_tasks(self, tasks: tuple[str, ...]) -> None:
        """ValueError naming the first task the suite lacks, with the suite's tasks listed."""
        for task in tasks:
            if task not in self.suite.tasks:
                raise ValueError(
                    f"unknown task {task!r} for the {self.name} suite; its tasks: "
                    f"{', '.join(self.tasks)} (--suite picks another suite)"
                )

    def heldout(self, task: str, count: int) -> list[Problem]:
        """The first `count` held-out problems of `task`."""
        return self.suite.heldout(task)[:count]

    def calibration_prompts(self) -> list[str]:
        """Training-stream prompts (never held-out ones) for a policy that calibrates."""
        stream = self.suite.training_stream(
            CALIBRATION_SEED, self.suite.training_mix, self.suite.heldout_prompts
        )
        return [problem.prompt for problem in islice(stream, CALIBRATION_PROMPTS)]


def model_suite(model: str | Path) -> str:
    """The suite a model is benchmarked on by default: a built-in's own (by name or by its
    shipped folder), `DEFAULT_SUITE` for any other checkpoint."""
    if isinstance(model, str) and model in BUILTIN_SUITES:
        return BUILTIN_SUITES[model]
    builtin = builtin_model_name(Path(model)) if str(model).strip() else None
    return BUILTIN_SUITES.get(builtin, DEFAULT_SUITE) if builtin is not None else DEFAULT_SUITE


def resolve_suite(model: str | Path, suite: str | None) -> BenchSuite:
    """`suite` by name, or the model's (`model_suite`) when None; ValueError listing the
    suites for an unknown name."""
    name = model_suite(model) if suite is None else suite
    if name not in SUITES:
        described = ", ".join(
            f"{known} ({', '.join(tasks.names)})" for known, tasks in SUITES.items()
        )
        raise ValueError(f"unknown suite {name!r}; the suites: {described}")
    return BenchSuite(name, SUITES[name])
