"""The benchmark run: settings, problem selection, the block x decoding x method grid, speed-ups.

Problems are the chosen task suite's held-out problems (`dyllm.bench.suites`: the model's own
suite, or `--suite`), the first `problems_per_task` of each task, batched within a task (every
prompt of a task has the same width, so a batch has no padding). The grid is every block length x
decoding setting x method. Dense runs first under each (block length, decoding), so every other
method's speed-up is over dense measured in the same run, on the same machine state: `speedup` is
against dense at the same block length and decoding, `speedup_vs_dense_nu1` against dense at the
same block length and one token per step (the paper's "original" baseline).

Everything that can be refused is refused by `BenchSettings.plan()` before the model is loaded:
an unknown suite or task, block lengths that do not divide the gen length, a nu that leaves a
block without a whole number of steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

import dyllm
from dyllm.bench.decoding import (
    DEFAULT_THRESHOLDS,
    DEFAULT_TOKENS_PER_STEP,
    Decoding,
    default_decodings,
)
from dyllm.bench.headline import headline
from dyllm.bench.machine import describe_machine
from dyllm.bench.measure import Workload, measure
from dyllm.bench.methods import BASELINE, MethodSpec, default_methods
from dyllm.bench.schema import SCHEMA_VERSION, check_report
from dyllm.bench.suites import BenchSuite, resolve_suite
from dyllm.distributed.launch import agree

DEFAULT_BLOCK_LENGTH = 8
"""Semi-autoregressive blocks of 8, as in the paper's GSM8K runs: with one block Fast-dLLM's
prefix and dual caches would be the same method."""


@dataclass
class BenchSettings:
    """Everything a benchmark run depends on; with the defaults the short suite's full grid
    runs on one reference model on 2 CPU cores in under 15 minutes."""

    model: str = "llada-ref"
    methods: list[MethodSpec] | None = None
    """None: `default_methods(family)`."""
    tokens_per_step: tuple[int, ...] = DEFAULT_TOKENS_PER_STEP
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    suite: str | None = None
    """A name in `dyllm.reference.long_tasks.SUITES`; None: a built-in model's own suite
    (`registry.BUILTIN_SUITES`), "short" for any other checkpoint."""
    tasks: tuple[str, ...] | None = None
    """None: every task of the suite."""
    problems_per_task: int | None = None
    """None: the suite's default (`suites.SUITE_PROBLEMS_PER_TASK`)."""
    batch_size: int = 16
    repeats: int = 3
    gen_length: int | None = None
    """None: the suite's answer length (`suites.SUITE_GEN_LENGTHS`: 24 short, 128 long)."""
    block_lengths: tuple[int, ...] = (DEFAULT_BLOCK_LENGTH,)
    """Each one a full pass over the decodings and methods, with its own dense baseline."""
    device: str = "cpu"
    dtype: str | None = None
    threads: int | None = 1
    """torch CPU threads; None keeps torch's. One by default: the reference models' ops are too
    small to split, and with another busy process on the cores, two threads ran a generation 50x
    slower (OpenMP threads waiting on each other). Raise it for large models."""
    seed: int = 0
    check_invariants: bool = False
    tensor_parallel: int = 1
    """Processes the model is split over (run under torchrun with as many; every process runs
    the grid, the first one reports)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """ValueError for the first setting that cannot run (nothing is loaded)."""
        self.plan()

    def plan(self) -> BenchPlan:
        """The settings with every default filled in from the suite, checked: ValueError names
        the first bad one and its fix. Loads nothing."""
        suite = resolve_suite(self.model, self.suite)
        tasks = suite.tasks if self.tasks is None else tuple(self.tasks)
        if not tasks:
            raise ValueError("give at least one task")
        suite.check_tasks(tasks)
        problems = (
            suite.problems_per_task if self.problems_per_task is None else self.problems_per_task
        )
        if not 1 <= problems <= suite.heldout_per_task:
            raise ValueError(
                f"problems_per_task must be 1..{suite.heldout_per_task} (the {suite.name} "
                f"suite's held-out set per task), got {problems}"
            )
        for name, value in (("batch_size", self.batch_size), ("repeats", self.repeats)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(
                f"threads must be at least 1, got {self.threads} (--threads 0 keeps torch's)"
            )
        gen_length = self.gen_length or suite.gen_length
        longest = suite.longest_answer(tasks)
        if gen_length < longest:
            raise ValueError(
                f"gen length {gen_length} is shorter than the {suite.name} suite's longest answer "
                f"({longest} tokens); pass --gen-length {suite.gen_length} (the suite's default)"
            )
        blocks = tuple(self.block_lengths)
        _check_block_lengths(blocks, gen_length)
        decodings = default_decodings(self.tokens_per_step, self.thresholds)
        for block in blocks:  # refuse a bad nu before the first minute is spent
            for decoding in decodings:
                decoding.options(gen_length, block)
        return BenchPlan(suite, tasks, problems, gen_length, blocks, decodings)


@dataclass(frozen=True)
class BenchPlan:
    """`BenchSettings` with the suite's defaults filled in and every value checked."""

    suite: BenchSuite
    tasks: tuple[str, ...]
    problems_per_task: int
    gen_length: int
    block_lengths: tuple[int, ...]
    decodings: list[Decoding]


def _check_block_lengths(blocks: tuple[int, ...], gen_length: int) -> None:
    if not blocks:
        raise ValueError("give at least one block length")
    for block in blocks:
        if block < 1:
            raise ValueError(f"a block length must be at least 1, got {block}")
        if blocks.count(block) > 1:
            raise ValueError(f"block length {block} is given twice; give each once")
        if gen_length % block:
            raise ValueError(
                f"block length {block} does not divide gen length {gen_length}; pass block "
                f"lengths that do (divisors of {gen_length})"
            )


def select_batches(
    suite: BenchSuite, tasks: tuple[str, ...], problems_per_task: int, batch_size: int
) -> list[list[Any]]:
    """The first `problems_per_task` held-out problems of each task, in batches within a task."""
    batches = []
    for task in tasks:
        problems = suite.heldout(task, problems_per_task)
        batches.extend(
            problems[start : start + batch_size] for start in range(0, len(problems), batch_size)
        )
    return batches


def run_benchmark(
    settings: BenchSettings, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the grid and return the report (see `dyllm.bench.schema`)."""
    plan = settings.plan()
    log = log or (lambda line: None)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    model = agree(
        lambda: dyllm.load(
            settings.model,
            device=settings.device,
            dtype=settings.dtype,
            tensor_parallel=settings.tensor_parallel,
        )
    )
    if model.tokenizer is None:
        raise ValueError(
            f"{settings.model} has no tokenizer files, so answers cannot be scored; benchmark a "
            "checkpoint folder that ships tokenizer.json"
        )
    family = model.config.family
    methods = settings.methods or default_methods(family)
    methods = sorted(methods, key=lambda method: method.policy != BASELINE)
    if methods[0].policy != BASELINE:
        methods.insert(0, MethodSpec(BASELINE))
    workload = Workload(
        batches=select_batches(plan.suite, plan.tasks, plan.problems_per_task, settings.batch_size),
        options={"gen_length": plan.gen_length, "seed": settings.seed},
        calibration_prompts=plan.suite.calibration_prompts(),
        repeats=settings.repeats,
        check_invariants=settings.check_invariants,
    )
    workloads = {
        block: replace(workload, options={**workload.options, "block_length": block})
        for block in plan.block_lengths
    }
    # every policy is built before the first measurement, so a bad method fails at once; one
    # that calibrates does so at one token per step (fewer steps, nu = 4 or threshold decoding,
    # can leave no sparse step after the warm-up to read from), once per block length, and
    # serves every decoding at that block length
    policies = {
        block: [
            method.build(
                model,
                block_workload.calibration_prompts,
                {**block_workload.options, "steps": plan.gen_length},
            )
            for method in methods
        ]
        for block, block_workload in workloads.items()
    }
    runs = []
    for block, block_workload in workloads.items():
        for decoding in plan.decodings:
            for method, policy in zip(methods, policies[block], strict=True):
                began = time.perf_counter()
                row = measure(model, method, policy, decoding, block_workload)
                runs.append(row)
                log(
                    f"{method.label:<30} {decoding.label:<14} block {block:<4} exact "
                    f"{row['exact_match']:.3f} {row['tokens_per_second']:8.1f} tok/s "
                    f"({time.perf_counter() - began:.1f} s)"
                )
    _fill_speedups(runs)
    report = {
        "schema": SCHEMA_VERSION,
        "model": _describe_model(settings.model, model),
        "workload": {
            "suite": plan.suite.name,
            "tasks": list(plan.tasks),
            "problems_per_task": plan.problems_per_task,
            "problems": sum(len(batch) for batch in workload.batches),
            "batch_size": settings.batch_size,
            "gen_length": plan.gen_length,
            "block_lengths": list(plan.block_lengths),
            "prompt_lengths": _prompt_lengths(model, workload),
            "sampler": _sampler(model),
            "repeats": settings.repeats,
            "warmup": "one generation of the first batch per method, decoding and block length, "
            "untimed",
            "check_invariants": settings.check_invariants,
            "decodings": [decoding.to_dict() for decoding in plan.decodings],
            "seed": settings.seed,
        },
        "machine": {
            **describe_machine(next(model.parameters()).device),
            "dtype": str(model.dtype),
            "tensor_parallel": settings.tensor_parallel,
        },
        "runs": runs,
        "total_seconds": time.perf_counter() - started,
        **settings.extra,
    }
    report["headline"] = headline(report)
    check_report(report)
    return report


def _fill_speedups(runs: list[dict[str, Any]]) -> None:
    """Speed-ups over dense at the same block length: same decoding, and nu = 1."""
    dense = {
        (run["block_length"], run["decoding"]["label"]): run["tokens_per_second"]
        for run in runs
        if run["method"]["policy"] == BASELINE
    }
    for run in runs:
        block = run["block_length"]
        run["speedup"] = run["tokens_per_second"] / dense[(block, run["decoding"]["label"])]
        baseline = dense.get((block, "nu=1"))
        run["speedup_vs_dense_nu1"] = (
            None if baseline is None else run["tokens_per_second"] / baseline
        )


def _describe_model(name: str, model: torch.nn.Module) -> dict[str, Any]:
    return {
        "name": name,
        **model.config.shape_summary(),
        "parameters": (
            sum(p.numel() for p in model.parameters())
            if model.shard is None
            else model.config.num_parameters  # the whole model's, not one shard's
        ),
    }


def _prompt_lengths(model: torch.nn.Module, workload: Workload) -> dict[str, int]:
    tokenizer = model.tokenizer
    return {
        batch[0].task: max(len(tokenizer.encode(problem.prompt)) for problem in batch)
        for batch in workload.batches
    }


def _sampler(model: torch.nn.Module) -> dict[str, Any]:
    from dyllm.reference.evaluate import sampler_settings

    settings = sampler_settings(model)
    keep = ("sampler", "remasking", "alg", "temperature", "eps")
    return {key: settings[key] for key in keep if key in settings}
