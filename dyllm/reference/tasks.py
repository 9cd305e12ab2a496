"""The task suite the reference models are trained and scored on.

Each task is a seeded generator of problems with one exact answer. Prompts are plain text in a
character-level vocabulary (one character = one token), so
`dyllm generate "sort 3141592653589793 ="` works from the command line, and every prompt of a task
has the same width: generation left-pads a batch and gives each row position ids from its mask, so
every prompt starts at position 0 and the answer starts at a fixed offset. That offset is what a
small RoPE model learns quickly; right-aligned or variable-width prompts stayed at chance in our
probes.

Numbers are written least-significant digit first ("little-endian"), in the prompt and in the
answer, so that digit i of an answer sits at a fixed distance from the digits it depends on.

| task     | prompt (width)                     | answer                              | dependent |
|----------|------------------------------------|-------------------------------------|-----------|
| `mul3`   | `mul3 N =`, N 20 digits            | 3 * N, 21 digits                    | carries   |
| `cumsum` | `cumsum D =`, D 20 digits in 0-3   | running sums of D modulo 10         | chained   |
| `sort`   | `sort D =`, D 16 digits            | the digits of D in ascending order  | counting  |
| `rot13`  | `rot13 W =`, W 20 letters          | W with each letter moved 13 places  | no        |

"Dependent" means an answer token is a function of other answer tokens (a carry, the previous
partial sum, how many smaller digits came before), not of the prompt alone at one offset.

Why these and not two-operand addition: decimal addition, running sums of 0-9 digits mod 10,
binary addition and running parity all stayed at chance for 1,000 steps in our probes. Each
answer token there is a modular sum (XOR for bits) of inputs that are uniform, so no single input
is correlated with it and gradient descent has no signal until it has found every input at once
(the sparse-parity plateau). In the tasks kept here every answer token is correlated with a single
input (tripling: 3 * digit plus a carry of 0-2; sums of small increments: the previous sum;
sorting: the counts), yet carries and running sums still chain along the answer.

Held-out problems come from their own seed and are excluded from training by prompt: the
training stream skips any problem whose prompt is in the held-out set.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property

HELDOUT_SEED = 20_260_417
"""Seed of the fixed held-out sets; training streams use other seeds and skip these prompts."""

HELDOUT_PER_TASK = 150
"""Held-out problems per task (600 in all)."""

MUL3_DIGITS = 20
CUMSUM_DIGITS = 20
CUMSUM_MAX_INCREMENT = 3
SORT_DIGITS = 16
ROT13_LETTERS = 20


@dataclass(frozen=True)
class Problem:
    """One task instance: `prompt` is what the model sees, `answer` what it must produce."""

    task: str
    prompt: str
    answer: str


@dataclass(frozen=True)
class Task:
    """A named problem generator and the fixed shape of its problems (in characters = tokens)."""

    name: str
    generate: Callable[[random.Random], Problem]
    prompt_length: int
    answer_length: int
    dependent: bool
    description: str


def little_endian(value: int, width: int) -> str:
    """`value` in decimal, least significant digit first, zero-padded to `width` digits."""
    if value < 0 or value >= 10**width:
        raise ValueError(f"{value} does not fit in {width} digits")
    return str(value).zfill(width)[::-1]


def _symbols(rng: random.Random, alphabet: str, count: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(count))


def generate_mul3(rng: random.Random) -> Problem:
    """Three times a 20-digit number, little-endian; the product has 21 digits."""
    number = rng.randrange(10**MUL3_DIGITS)
    prompt = f"mul3 {little_endian(number, MUL3_DIGITS)} ="
    return Problem("mul3", prompt, little_endian(3 * number, MUL3_DIGITS + 1))


def running_sums_mod10(digits: str) -> str:
    """(d_0 + ... + d_i) mod 10 for every i: the states of a mod-10 counter fed `digits`."""
    running, sums = 0, []
    for digit in digits:
        running = (running + int(digit)) % 10
        sums.append(str(running))
    return "".join(sums)


def generate_cumsum(rng: random.Random) -> Problem:
    """Running sums mod 10 of 20 digits in 0..3: answer digit i is (d_0 + ... + d_i) mod 10."""
    digits = _symbols(rng, "0123", CUMSUM_DIGITS)
    return Problem("cumsum", f"cumsum {digits} =", running_sums_mod10(digits))


def generate_sort(rng: random.Random) -> Problem:
    """The 16 digits in ascending order."""
    digits = _symbols(rng, string.digits, SORT_DIGITS)
    return Problem("sort", f"sort {digits} =", "".join(sorted(digits)))


def generate_rot13(rng: random.Random) -> Problem:
    """ROT13: each letter moves 13 places on in the alphabet (a fixed letter-for-letter map)."""
    word = _symbols(rng, string.ascii_lowercase, ROT13_LETTERS)
    shifted = "".join(chr((ord(c) - ord("a") + 13) % 26 + ord("a")) for c in word)
    return Problem("rot13", f"rot13 {word} =", shifted)


TASKS: dict[str, Task] = {
    "mul3": Task(
        "mul3",
        generate_mul3,
        prompt_length=len("mul3  =") + MUL3_DIGITS,
        answer_length=MUL3_DIGITS + 1,
        dependent=True,
        description="a 20-digit number times 3, digits least-significant first",
    ),
    "cumsum": Task(
        "cumsum",
        generate_cumsum,
        prompt_length=len("cumsum  =") + CUMSUM_DIGITS,
        answer_length=CUMSUM_DIGITS,
        dependent=True,
        description="running sums modulo 10 of 20 digits between 0 and 3",
    ),
    "sort": Task(
        "sort",
        generate_sort,
        prompt_length=len("sort  =") + SORT_DIGITS,
        answer_length=SORT_DIGITS,
        dependent=True,
        description="16 digits sorted ascending",
    ),
    "rot13": Task(
        "rot13",
        generate_rot13,
        prompt_length=len("rot13  =") + ROT13_LETTERS,
        answer_length=ROT13_LETTERS,
        dependent=False,
        description="a 20-letter word with each letter moved 13 places (ROT13)",
    ),
}

TASK_NAMES: tuple[str, ...] = tuple(TASKS)

TASK_PROMPT_PATTERNS: dict[str, re.Pattern[str]] = {
    "mul3": re.compile(rf"mul3 [0-9]{{{MUL3_DIGITS}}} ="),
    "cumsum": re.compile(rf"cumsum [0-3]{{{CUMSUM_DIGITS}}} ="),
    "sort": re.compile(rf"sort [0-9]{{{SORT_DIGITS}}} ="),
    "rot13": re.compile(rf"rot13 [a-z]{{{ROT13_LETTERS}}} ="),
}
"""The exact shape of each task's prompts: the only text the reference models were trained on."""

TASK_FORMATS = (
    f"'mul3 N =' (N: {MUL3_DIGITS} digits), 'cumsum D =' (D: {CUMSUM_DIGITS} digits 0-3), "
    f"'sort D =' (D: {SORT_DIGITS} digits), 'rot13 W =' (W: {ROT13_LETTERS} lowercase letters)"
)
"""The task prompts in words, for messages."""


MAX_ANSWER_LENGTH = max(task.answer_length for task in TASKS.values())

TRAINING_MIX: tuple[str, ...] = ("mul3", "sort", "cumsum", "sort", "rot13")
"""One cycle of the training stream: sorting, the slowest task to learn, gets two slots in five."""


@dataclass(frozen=True)
class TaskSuite:
    """A set of tasks with its fixed held-out set and its training mix: what a reference model
    is trained and scored on. This suite and the long one (`long_tasks.LONG_SUITE`) are two."""

    label: str
    """"" or a word and a space ("long "), as errors name the suite."""
    tasks: Mapping[str, Task]
    prompt_patterns: Mapping[str, re.Pattern[str]]
    formats: str
    """The prompts in words, for messages."""
    heldout_seed: int
    heldout_per_task: int
    training_mix: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.tasks)

    def get(self, name: str) -> Task:
        """The task called `name`, or a ValueError listing the suite's tasks."""
        if name not in self.tasks:
            raise ValueError(
                f"unknown {self.label}task {name!r}; the {self.label}suite has "
                f"{', '.join(self.names)}"
            )
        return self.tasks[name]

    def matches_format(self, prompt: str) -> bool:
        """Whether `prompt` has the shape of one of the suite's prompts (widths included)."""
        return any(pattern.fullmatch(prompt) for pattern in self.prompt_patterns.values())

    def generate(self, task: str, count: int, seed: int) -> list[Problem]:
        """`count` problems of one task from a `random.Random` seeded by task and `seed`."""
        generator = self.get(task).generate
        rng = random.Random(f"{task}:{seed}")
        return [generator(rng) for _ in range(count)]

    @cached_property
    def heldout_all(self) -> tuple[Problem, ...]:
        """The fixed held-out set, every task in suite order."""
        return tuple(
            problem
            for name in self.names
            for problem in self.generate(name, self.heldout_per_task, self.heldout_seed)
        )

    def heldout(self, task: str | None = None) -> list[Problem]:
        """The held-out problems of one task, or of all tasks in suite order."""
        if task is not None:
            self.get(task)
        return [p for p in self.heldout_all if task is None or p.task == task]

    @cached_property
    def heldout_prompts(self) -> frozenset[str]:
        """Prompts of every held-out problem: training never emits one of these."""
        return frozenset(p.prompt for p in self.heldout_all)

    def training_stream(
        self, seed: int, mix: tuple[str, ...], excluded: frozenset[str]
    ) -> Iterator[Problem]:
        """Endless problems cycling through `mix`, `excluded` prompts skipped; fixed per seed.

        Each task draws from its own `random.Random`, seeded by task name and `seed`, so a task
        listed twice in `mix` continues one sequence rather than repeating it.
        """
        if seed == self.heldout_seed:
            raise ValueError(
                f"seed {seed} is the {self.label}held-out seed; train with another one"
            )
        rngs = {name: random.Random(f"{name}:train:{seed}") for name in mix}
        generators = {name: self.get(name).generate for name in mix}
        while True:
            for name in mix:
                problem = generators[name](rngs[name])
                while problem.prompt in excluded:
                    problem = generators[name](rngs[name])
                yield problem


SUITE = TaskSuite(
    "", TASKS, TASK_PROMPT_PATTERNS, TASK_FORMATS, HELDOUT_SEED, HELDOUT_PER_TASK, TRAINING_MIX
)
"""The 24-token suite of llada-ref and dream-ref."""


def matches_task_format(prompt: str) -> bool:
    """Whether `prompt` has the shape of one of the suite's prompts (widths included)."""
    return SUITE.matches_format(prompt)


def get_task(name: str) -> Task:
    """The task called `name`, or a ValueError listing the known tasks."""
    return SUITE.get(name)


def generate_problems(task: str, count: int, seed: int) -> list[Problem]:
    """`count` problems of one task, drawn from a `random.Random` seeded by task and `seed`."""
    return SUITE.generate(task, count, seed)


def heldout_problems(task: str | None = None) -> list[Problem]:
    """The fixed held-out set (150 per task), of one task or of all tasks in suite order."""
    return SUITE.heldout(task)


def heldout_prompts() -> frozenset[str]:
    """Prompts of every held-out problem: training never emits one of these."""
    return SUITE.heldout_prompts


def training_stream(seed: int, mix: tuple[str, ...] = TRAINING_MIX) -> Iterator[Problem]:
    """Endless problems cycling through `mix`, held-out prompts skipped; fixed order per seed."""
    return SUITE.training_stream(seed, mix, heldout_prompts())
