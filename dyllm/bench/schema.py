"""The benchmark's JSON report: its keys, and a check that a report has them all.

A report is one object:

* `schema`: `SCHEMA_VERSION`;
* `model`: name, family, shape and parameter count;
* `workload`: tasks, problem counts, batch size, gen and block length, prompt lengths, sampler,
  repeats, warm-up, decoding settings;
* `machine`: CPU model, core count, torch threads, torch/Python versions, device, dtype;
* `runs`: one object per (method, decoding) with the keys in `RUN_KEYS`;
* `total_seconds`: the whole benchmark's wall time;
* `headline`: DyLLM at its default tau against dense and Fast-dLLM dual cache
  (`dyllm.bench.headline`), or null when the grid lacks one of them.

Throughput is generated tokens (up to the first EOS, prompt excluded) per second of denoising
loop, median over the timed passes; accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = "dyllm-bench/1"

TOP_KEYS = ("schema", "model", "workload", "machine", "runs", "total_seconds", "headline")
MACHINE_KEYS = ("cpu", "cpu_count", "torch_threads", "torch", "device", "dtype")
WORKLOAD_KEYS = (
    "tasks",
    "problems",
    "batch_size",
    "gen_length",
    "block_length",
    "prompt_lengths",
    "repeats",
    "decodings",
)
RUN_KEYS = (
    "method",
    "decoding",
    "exact_match",
    "token_accuracy",
    "per_task",
    "tokens_per_second",
    "tokens_per_second_runs",
    "speedup",
    "speedup_vs_dense_nu1",
    "nfe",
    "tokens_per_forward",
    "tokens_per_forward_per_sequence",
    "attention_fraction_per_layer",
    "ffn_fraction_per_layer",
    "computed_token_ratio",
    "median_dense_step_s",
    "median_sparse_step_s",
    "peak_memory_bytes",
    "peak_memory_kind",
)


def check_report(report: dict[str, Any]) -> None:
    """Raise ValueError naming the first missing or malformed part of a benchmark report."""
    for keys, where, part in (
        (TOP_KEYS, "report", report),
        (MACHINE_KEYS, "machine", report.get("machine", {})),
        (WORKLOAD_KEYS, "workload", report.get("workload", {})),
    ):
        missing = [key for key in keys if key not in part]
        if missing:
            raise ValueError(f"benchmark {where} lacks {', '.join(missing)}")
    if report["schema"] != SCHEMA_VERSION:
        raise ValueError(
            f"benchmark schema {report['schema']!r}; this dyllm reads {SCHEMA_VERSION}"
        )
    if not report["runs"]:
        raise ValueError("benchmark report has no runs")
    for run in report["runs"]:
        missing = [key for key in RUN_KEYS if key not in run]
        if missing:
            label = f"{run.get('method', {}).get('label')} {run.get('decoding', {}).get('label')}"
            raise ValueError(f"benchmark run {label} lacks {', '.join(missing)}")
        for key in ("exact_match", "token_accuracy", "computed_token_ratio"):
            if not 0.0 <= run[key] <= 1.0:
                raise ValueError(f"benchmark run field {key} = {run[key]} is not a fraction")
