"""The benchmark report as a terminal table, one line per block length, decoding and method.

Columns: the method, the decoding setting, the block length, exact match and per-token accuracy
(%), tokens/s (median), speed-up over dense at the same block length and decoding and over dense
at the same block length and nu = 1, NFE, tokens per forward per sequence, the FFN and attention
recompute fractions (mean over layers), the median sparse and dense step (ms), and peak memory
(MiB).
"""

from __future__ import annotations

from typing import Any

HEADER = (
    f"{'method':<30} {'decoding':<13} {'block':>5} {'exact%':>6} {'tok%':>6} {'tok/s':>8} "
    f"{'x dense':>7} {'x nu=1':>7} {'NFE':>6} {'tok/fwd':>7} {'FFN':>5} {'attn':>5} "
    f"{'sparse ms':>9} {'dense ms':>8} {'mem MiB':>8}"
)


def _milliseconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def format_row(run: dict[str, Any]) -> str:
    attention = run["attention_fraction_per_layer"]
    speedup_nu1 = run["speedup_vs_dense_nu1"]
    return (
        f"{run['method']['label']:<30} {run['decoding']['label']:<13} {run['block_length']:>5} "
        f"{run['exact_match'] * 100:>6.1f} {run['token_accuracy'] * 100:>6.1f} "
        f"{run['tokens_per_second']:>8.1f} {run['speedup']:>6.2f}x "
        f"{'-' if speedup_nu1 is None else f'{speedup_nu1:.2f}x':>7} {run['nfe']:>6} "
        f"{run['tokens_per_forward_per_sequence']:>7.2f} {run['computed_token_ratio']:>5.2f} "
        f"{sum(attention) / len(attention):>5.2f} {_milliseconds(run['median_sparse_step_s']):>9} "
        f"{_milliseconds(run['median_dense_step_s']):>8} "
        f"{run['peak_memory_bytes'] / 2**20:>8.1f}"
    )


def format_table(report: dict[str, Any]) -> str:
    """Title line (model, machine, workload), header, and one row per run."""
    model, machine, workload = report["model"], report["machine"], report["workload"]
    title = (
        f"{model['name']} ({model['family']}), {workload['problems']} problems, "
        f"{batch_text(workload)}, {workload['suite']} suite, gen {workload['gen_length']} "
        f"{_blocks(workload['block_lengths'])}, median of {workload['repeats']}; "
        f"{machine['device']} {machine['cpu']}, "
        f"{_threads(machine)}, torch {machine['torch']}, {machine['dtype']}"
    )
    return "\n".join([title, HEADER, *(format_row(run) for run in report["runs"])])


def batch_text(workload: dict[str, Any]) -> str:
    """`batch 16`, or `batch 5 (of 16)` when a task has fewer problems than a batch holds
    (batches are formed within a task)."""
    size, per_task = workload["batch_size"], workload.get("problems_per_task")
    if per_task is not None and per_task < size:
        return f"batch {per_task} (of {size})"
    return f"batch {size}"


def _blocks(lengths: list[int]) -> str:
    return ("block " if len(lengths) == 1 else "blocks ") + ", ".join(map(str, lengths))


def _threads(machine: dict[str, Any]) -> str:
    count = machine["torch_threads"]
    return f"{count} thread" + ("" if count == 1 else "s")
