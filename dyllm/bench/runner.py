"""The benchmark run: settings, problem selection, the method x decoding grid, speed-ups.

Problems are the reference suite's held-out problems, the first `problems_per_task` of each task,
batched within a task (every prompt of a task has the same width, so a batch has no padding).
Dense runs first under each decoding setting, so every other method's speed-up is over dense
measured in the same run, on the same machine state: `speedup` is against dense at the same
decoding setting, `speedup_vs_dense_nu1` against dense at one token per step (the paper's
"original" baseline).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch

import dyllm
from dyllm.bench.decoding import DEFAULT_THRESHOLDS, DEFAULT_TOKENS_PER_STEP, default_decodings
from dyllm.bench.headline import headline
from dyllm.bench.machine import describe_machine
from dyllm.bench.measure import Workload, measure
from dyllm.bench.methods import BASELINE, MethodSpec, default_methods
from dyllm.bench.schema import SCHEMA_VERSION, check_report
from dyllm.distributed.launch import agree
from dyllm.reference.evaluate import default_gen_length
from dyllm.reference.tasks import HELDOUT_PER_TASK, TASK_NAMES, heldout_problems, training_stream

DEFAULT_BLOCK_LENGTH = 8
"""Semi-autoregressive blocks of 8, as in the paper's GSM8K runs: with one block Fast-dLLM's
prefix and dual caches would be the same method."""

CALIBRATION_SEED = 90_210
CALIBRATION_PROMPTS = 16


@dataclass
class BenchSettings:
    """Everything a benchmark run depends on; the defaults fit one reference model on 2 CPU
    cores in under 15 minutes."""

    model: str = "llada-ref"
    methods: list[MethodSpec] | None = None
    """None: `default_methods(family)`."""
    tokens_per_step: tuple[int, ...] = DEFAULT_TOKENS_PER_STEP
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    tasks: tuple[str, ...] = TASK_NAMES
    problems_per_task: int = 64
    batch_size: int = 16
    repeats: int = 3
    gen_length: int | None = None
    """None: the checkpoint's trained answer length (generation_config.json)."""
    block_length: int = DEFAULT_BLOCK_LENGTH
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
        if not 1 <= self.problems_per_task <= HELDOUT_PER_TASK:
            raise ValueError(
                f"problems_per_task must be 1..{HELDOUT_PER_TASK} (the held-out set's size), "
                f"got {self.problems_per_task}"
            )
        for name, value in (("batch_size", self.batch_size), ("repeats", self.repeats)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(
                f"threads must be at least 1, got {self.threads} (--threads 0 keeps torch's)"
            )
        if not self.tasks:
            raise ValueError("give at least one task")


def select_batches(
    tasks: tuple[str, ...], problems_per_task: int, batch_size: int
) -> list[list[Any]]:
    """The first `problems_per_task` held-out problems of each task, in batches within a task."""
    batches = []
    for task in tasks:
        problems = heldout_problems(task)[:problems_per_task]
        batches.extend(
            problems[start : start + batch_size] for start in range(0, len(problems), batch_size)
        )
    return batches


def run_benchmark(
    settings: BenchSettings, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the grid and return the report (see `dyllm.bench.schema`)."""
    settings.validate()
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
    gen_length = settings.gen_length or default_gen_length(model)
    if gen_length % settings.block_length:
        raise ValueError(
            f"block length {settings.block_length} does not divide gen length {gen_length}; "
            "pass a block length that does"
        )
    decodings = default_decodings(settings.tokens_per_step, settings.thresholds)
    for decoding in decodings:  # refuse a bad nu before the first minute is spent
        decoding.options(gen_length, settings.block_length)
    methods = settings.methods or default_methods(family)
    methods = sorted(methods, key=lambda method: method.policy != BASELINE)
    if methods[0].policy != BASELINE:
        methods.insert(0, MethodSpec(BASELINE))
    workload = Workload(
        batches=select_batches(settings.tasks, settings.problems_per_task, settings.batch_size),
        options={
            "gen_length": gen_length,
            "block_length": settings.block_length,
            "seed": settings.seed,
        },
        calibration_prompts=[
            p.prompt for p in islice(training_stream(CALIBRATION_SEED), CALIBRATION_PROMPTS)
        ],
        repeats=settings.repeats,
        check_invariants=settings.check_invariants,
    )
    # every policy is built before the first measurement, so a bad method fails at once; one
    # that calibrates does so at one token per step (fewer steps, nu = 4 or threshold decoding,
    # can leave no sparse step after the warm-up to read from) and serves every decoding
    calibration_options = {**workload.options, "steps": gen_length}
    policies = [
        method.build(model, workload.calibration_prompts, calibration_options) for method in methods
    ]
    runs = []
    for decoding in decodings:
        for method, policy in zip(methods, policies, strict=True):
            began = time.perf_counter()
            row = measure(model, method, policy, decoding, workload)
            runs.append(row)
            log(
                f"{method.label:<30} {decoding.label:<14} exact {row['exact_match']:.3f} "
                f"{row['tokens_per_second']:8.1f} tok/s ({time.perf_counter() - began:.1f} s)"
            )
    _fill_speedups(runs)
    report = {
        "schema": SCHEMA_VERSION,
        "model": _describe_model(settings.model, model),
        "workload": {
            "tasks": list(settings.tasks),
            "problems_per_task": settings.problems_per_task,
            "problems": sum(len(batch) for batch in workload.batches),
            "batch_size": settings.batch_size,
            "gen_length": gen_length,
            "block_length": settings.block_length,
            "prompt_lengths": _prompt_lengths(model, workload),
            "sampler": _sampler(model),
            "repeats": settings.repeats,
            "warmup": "one generation of the first batch per method and decoding, untimed",
            "check_invariants": settings.check_invariants,
            "decodings": [decoding.to_dict() for decoding in decodings],
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
    dense = {
        run["decoding"]["label"]: run["tokens_per_second"]
        for run in runs
        if run["method"]["policy"] == BASELINE
    }
    baseline = dense.get("nu=1")
    for run in runs:
        run["speedup"] = run["tokens_per_second"] / dense[run["decoding"]["label"]]
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
