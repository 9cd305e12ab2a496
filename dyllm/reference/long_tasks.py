"""The long-answer task suite: 128-token answers whose later tokens depend on earlier ones.

The 24-token suite of `dyllm.reference.tasks` puts DyLLM outside its paper's regime (four dense
warm-up steps are a sixth of all steps). These tasks keep the same rules (character-level prompts
of fixed width, numbers least-significant digit first, one exact answer, held-out problems from
their own seed and never trained on) and stretch the answer to 128 tokens, each answer token
chained to the one before it:

| task     | prompt (width)                          | answer (128 tokens)                      |
|----------|-----------------------------------------|------------------------------------------|
| `triple` | `triple N =`, N 127 digits (136)        | 3 * N, 128 digits: a 127-long carry chain |
| `runsum` | `runsum D =`, D 128 digits in 0-3 (137) | the running state of a mod-10 counter    |

`triple` is step-by-step multi-digit arithmetic: answer digit i is (3 * n_i + carry_i) mod 10 and
the carry (0, 1 or 2) comes from digit i - 1, so a wrong digit early propagates. `runsum` is the
running state of a small automaton over a 128-symbol input: state_i = (state_{i-1} + d_i) mod 10.
Each answer token is correlated with one input digit at a fixed offset and with the previous
answer token, the property that made the short versions learnable in our probes (uniform modular
sums of many inputs stay at chance: see docs/reference-models.md).
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Iterator

from dyllm.reference.tasks import (
    SUITE,
    Problem,
    Task,
    TaskSuite,
    little_endian,
    running_sums_mod10,
)

LONG_HELDOUT_SEED = 20_261_130
"""Seed of the long suite's fixed held-out sets; training streams skip these prompts."""

LONG_HELDOUT_PER_TASK = 100
"""Held-out problems per long task (200 in all)."""

LONG_ANSWER_LENGTH = 128
"""Answer tokens of every long task, and the generation length the long models are trained at."""

TRIPLE_DIGITS = LONG_ANSWER_LENGTH - 1
RUNSUM_DIGITS = LONG_ANSWER_LENGTH
RUNSUM_MAX_INCREMENT = 3


def generate_triple(rng: random.Random) -> Problem:
    """Three times a 127-digit number, little-endian; the product has 128 digits."""
    number = rng.randrange(10**TRIPLE_DIGITS)
    prompt = f"triple {little_endian(number, TRIPLE_DIGITS)} ="
    return Problem("triple", prompt, little_endian(3 * number, TRIPLE_DIGITS + 1))


runsum_states = running_sums_mod10
"""The answer of `runsum`: the states of a mod-10 counter fed the prompt's digits (the short
suite's `cumsum` rule, over 128 digits)."""


def generate_runsum(rng: random.Random) -> Problem:
    """Running states mod 10 of 128 increments in 0..3."""
    alphabet = string.digits[: RUNSUM_MAX_INCREMENT + 1]
    digits = "".join(rng.choice(alphabet) for _ in range(RUNSUM_DIGITS))
    return Problem("runsum", f"runsum {digits} =", running_sums_mod10(digits))


LONG_TASKS: dict[str, Task] = {
    "triple": Task(
        "triple",
        generate_triple,
        prompt_length=len("triple  =") + TRIPLE_DIGITS,
        answer_length=TRIPLE_DIGITS + 1,
        dependent=True,
        description="a 127-digit number times 3, digits least-significant first",
    ),
    "runsum": Task(
        "runsum",
        generate_runsum,
        prompt_length=len("runsum  =") + RUNSUM_DIGITS,
        answer_length=RUNSUM_DIGITS,
        dependent=True,
        description="running states of a mod-10 counter over 128 increments between 0 and 3",
    ),
}

LONG_TASK_NAMES: tuple[str, ...] = tuple(LONG_TASKS)

LONG_TASK_PROMPT_PATTERNS: dict[str, re.Pattern[str]] = {
    "triple": re.compile(rf"triple [0-9]{{{TRIPLE_DIGITS}}} ="),
    "runsum": re.compile(rf"runsum [0-{RUNSUM_MAX_INCREMENT}]{{{RUNSUM_DIGITS}}} ="),
}
"""The exact shape of each long task's prompts."""


LONG_TASK_FORMATS = (
    f"'triple N =' (N: {TRIPLE_DIGITS} digits), "
    f"'runsum D =' (D: {RUNSUM_DIGITS} digits 0-{RUNSUM_MAX_INCREMENT})"
)
"""The long task prompts in words, for messages."""


LONG_TRAINING_MIX: tuple[str, ...] = ("triple", "runsum")
"""One cycle of the long training stream."""

LONG_SUITE = TaskSuite(
    "long ",
    LONG_TASKS,
    LONG_TASK_PROMPT_PATTERNS,
    LONG_TASK_FORMATS,
    LONG_HELDOUT_SEED,
    LONG_HELDOUT_PER_TASK,
    LONG_TRAINING_MIX,
)
"""The 128-token suite of llada-long."""


def matches_long_task_format(prompt: str) -> bool:
    """Whether `prompt` has the shape of one of the long suite's prompts (widths included)."""
    return LONG_SUITE.matches_format(prompt)


def get_long_task(name: str) -> Task:
    """The long task called `name`, or a ValueError listing the known ones."""
    return LONG_SUITE.get(name)


def generate_long_problems(task: str, count: int, seed: int) -> list[Problem]:
    """`count` problems of one long task from a `random.Random` seeded by task and `seed`."""
    return LONG_SUITE.generate(task, count, seed)


def long_heldout_problems(task: str | None = None) -> list[Problem]:
    """The fixed long held-out set (100 per task), of one task or of all in suite order."""
    return LONG_SUITE.heldout(task)


def long_heldout_prompts() -> frozenset[str]:
    """Prompts of every long held-out problem: training never emits one of these."""
    return LONG_SUITE.heldout_prompts


def long_training_stream(seed: int, mix: tuple[str, ...] = LONG_TRAINING_MIX) -> Iterator[Problem]:
    """Endless long problems cycling through `mix`, held-out prompts skipped; fixed per seed."""
    return LONG_SUITE.training_stream(seed, mix, long_heldout_prompts())


SUITES: dict[str, TaskSuite] = {"short": SUITE, "long": LONG_SUITE}
"""Every task suite by the name `--suite` and `registry.BUILTIN_SUITES` use."""
