"""Measure one method under one decoding setting over the benchmark's batches.

Order of work per (method, decoding), with the method's policy built once beforehand
(`dyllm.bench.runner`, which also calibrates a policy that asks for it):

The row is for one block length: the one in `workload.options`.

1. warm-up: one generation of the first batch, discarded;
2. profile: the first batch again, with peak memory and per-step times recorded (kept out of
   the timed runs, whose clocks nothing else touches);
3. `repeats` timed passes over every batch; throughput is each pass's generated tokens over its
   denoising-loop seconds, and the reported figure is the median pass. Answers, NFE and recompute
   fractions come from the first pass (greedy decoding repeats them exactly).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import torch

from dyllm.bench.decoding import Decoding
from dyllm.bench.memory import PeakMemory
from dyllm.bench.methods import MethodSpec
from dyllm.bench.timing import StepTimes
from dyllm.engine import generate
from dyllm.generation import GenerationResult
from dyllm.policies import SaliencyPolicy
from dyllm.reference.scoring import score_predictions
from dyllm.reference.tasks import Problem


@dataclass(frozen=True)
class Workload:
    """What every method runs: the problems in batches and the shared generation options."""

    batches: list[list[Problem]]
    options: dict[str, Any]
    """gen_length, block_length, seed (the decoding adds steps or threshold)."""
    calibration_prompts: list[str]
    """Prompts a policy that calibrates on the model is built on (never the scored ones)."""
    repeats: int
    check_invariants: bool


def measure(
    model: torch.nn.Module,
    method: MethodSpec,
    policy: SaliencyPolicy,
    decoding: Decoding,
    workload: Workload,
) -> dict[str, Any]:
    """One result row (see `dyllm.bench.schema.RUN_KEYS`), speed-ups not yet filled in.

    policy: `method` built (`MethodSpec.build`).
    """
    options = {
        **workload.options,
        **decoding.options(workload.options["gen_length"], workload.options["block_length"]),
    }
    first_prompts = [problem.prompt for problem in workload.batches[0]]

    def run(prompts: list[str], times: StepTimes | None = None) -> GenerationResult:
        return generate(
            model,
            prompts,
            policy=policy,
            check_invariants=workload.check_invariants,
            on_step=times,
            **options,
        )

    run(first_prompts)
    times = StepTimes()
    with PeakMemory(next(model.parameters()).device) as memory:
        run(first_prompts, times)

    passes: list[list[GenerationResult]] = []
    for _ in range(workload.repeats):
        passes.append([run([problem.prompt for problem in batch]) for batch in workload.batches])
    throughputs = [
        sum(r.stats.generated_tokens for r in results) / sum(r.stats.wall_time_s for r in results)
        for results in passes
    ]
    first = passes[0]
    problems = [problem for batch in workload.batches for problem in batch]
    texts = [text for result in first for text in _texts(result)]
    score = score_predictions(problems, texts)
    return {
        "method": method.to_dict(),
        "decoding": decoding.to_dict(),
        "block_length": workload.options["block_length"],
        "policy": policy.describe(),
        "exact_match": score.overall.exact_match,
        "token_accuracy": score.overall.token_accuracy,
        "per_task": {name: s.to_dict() for name, s in score.per_task.items()},
        "tokens_per_second": statistics.median(throughputs),
        "tokens_per_second_runs": throughputs,
        "wall_time_s": statistics.median(
            sum(r.stats.wall_time_s for r in results) for results in passes
        ),
        "generated_tokens": sum(r.stats.generated_tokens for r in first),
        "nfe": sum(r.stats.nfe for r in first),
        "steps_run": sum(r.stats.steps_run for r in first),
        "tokens_per_forward": _tokens_per_forward(first),
        "tokens_per_forward_per_sequence": _tokens_per_forward(first, per_sequence=True),
        **_recompute_fractions(model, first),
        "median_dense_step_s": times.median_step_s(dense=True),
        "median_sparse_step_s": times.median_step_s(dense=False),
        "peak_memory_bytes": memory.peak_bytes,
        "peak_memory_kind": memory.kind,
    }


def _texts(result: GenerationResult) -> list[str]:
    if result.texts is None:
        raise ValueError(
            "the model has no tokenizer files, so answers cannot be decoded and scored; "
            "benchmark a checkpoint folder with tokenizer.json"
        )
    return result.texts


def _tokens_per_forward(results: list[GenerationResult], per_sequence: bool = False) -> float:
    """Generated tokens over forward passes; per sequence divides by the rows of each pass."""
    forwards = sum(r.stats.nfe * (len(r.token_ids) if per_sequence else 1) for r in results)
    return sum(r.stats.generated_tokens for r in results) / forwards


def _recompute_fractions(model: torch.nn.Module, results: list[GenerationResult]) -> dict:
    """Per-layer attention and FFN fractions over all batches, weighted by each batch's
    row-steps (NFE x rows); dense runs recompute everything (1.0)."""
    layers = model.config.num_layers
    weights = [r.stats.nfe * len(r.token_ids) for r in results]
    total = sum(weights)

    def pooled(key: str) -> list[float]:
        return [
            sum(
                w * r.stats.extra.get(key, [1.0] * layers)[layer]
                for w, r in zip(weights, results, strict=True)
            )
            / total
            for layer in range(layers)
        ]

    attention, ffn = pooled("attention_fraction_per_layer"), pooled("ffn_fraction_per_layer")
    return {
        "attention_fraction_per_layer": attention,
        "ffn_fraction_per_layer": ffn,
        "computed_token_ratio": sum(ffn) / layers,
        "dense_steps": sum(r.stats.extra.get("dense_steps", r.stats.steps_run) for r in results),
        "sparse_steps": sum(r.stats.extra.get("sparse_steps", 0) for r in results),
        "cache_bytes": max((r.stats.extra.get("cache_bytes", 0) for r in results), default=0),
    }
