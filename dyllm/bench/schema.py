"""The benchmark's JSON report: its keys, and a check that a report has them all.

A report is one object:

* `schema`: `SCHEMA_VERSION`;
* `model`: name, family, shape and parameter count;
* `workload`: the task suite and its tasks, problem counts, batch size, gen length, the block
  lengths, prompt lengths, sampler, repeats, warm-up, decoding settings;
* `machine`: CPU model, core count, torch threads, torch/Python versions, device, dtype;
* `runs`: one object per (block length, decoding, method) with the keys in `RUN_KEYS`;
* `total_seconds`: the whole benchmark's wall time;
* `headline`: a list, per block length at which the grid has what it needs, of DyLLM at its
  default tau against dense and Fast-dLLM dual cache (`dyllm.bench.headline`); empty when it
  lacks one of them.

Throughput is generated tokens (up to the first EOS, prompt excluded) per second of denoising
loop, median over the timed passes; accuracies are fractions in [0, 1].

Version 2 added the block length grid (`workload.block_lengths`, each run's `block_length`, a
headline per block length) and `workload.suite`. A version-1 report (one block length, always
the short suite: `bench/results/llada-ref-cpu.json` and the other files written before it) is
read by `read_report`, which turns it into version 2 with `upgrade_report`; `check_report`
itself takes version 2 only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_VERSION = "dyllm-bench/2"
OLD_SCHEMA_VERSIONS = ("dyllm-bench/1",)

TOP_KEYS = ("schema", "model", "workload", "machine", "runs", "total_seconds", "headline")
MACHINE_KEYS = ("cpu", "cpu_count", "torch_threads", "torch", "device", "dtype")
WORKLOAD_KEYS = (
    "tasks",
    "problems",
    "batch_size",
    "suite",
    "gen_length",
    "block_lengths",
    "prompt_lengths",
    "repeats",
    "decodings",
)
RUN_KEYS = (
    "method",
    "decoding",
    "block_length",
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
    if "schema" not in report:
        raise ValueError("benchmark report lacks schema")
    if report["schema"] != SCHEMA_VERSION:
        hint = (
            "; read the file with dyllm.bench.read_report, which upgrades it"
            if report["schema"] in OLD_SCHEMA_VERSIONS
            else ""
        )
        raise ValueError(
            f"benchmark schema {report['schema']!r}; this dyllm checks {SCHEMA_VERSION}{hint}"
        )
    for keys, where, part in (
        (TOP_KEYS, "report", report),
        (MACHINE_KEYS, "machine", report.get("machine", {})),
        (WORKLOAD_KEYS, "workload", report.get("workload", {})),
    ):
        missing = [key for key in keys if key not in part]
        if missing:
            raise ValueError(f"benchmark {where} lacks {', '.join(missing)}")
    if not report["runs"]:
        raise ValueError("benchmark report has no runs")
    if not isinstance(report["headline"], list):
        raise ValueError("benchmark headline is not a list (one entry per block length)")
    blocks = report["workload"]["block_lengths"]
    for run in report["runs"]:
        missing = [key for key in RUN_KEYS if key not in run]
        label = (
            f"{run.get('method', {}).get('label')} {run.get('decoding', {}).get('label')} "
            f"block {run.get('block_length')}"
        )
        if missing:
            raise ValueError(f"benchmark run {label} lacks {', '.join(missing)}")
        if run["block_length"] not in blocks:
            raise ValueError(
                f"benchmark run {label} has block length {run['block_length']}, not one of the "
                f"workload's {blocks}"
            )
        for key in ("exact_match", "token_accuracy", "computed_token_ratio"):
            if not 0.0 <= run[key] <= 1.0:
                raise ValueError(f"benchmark run field {key} = {run[key]} is not a fraction")


def upgrade_report(report: dict[str, Any]) -> dict[str, Any]:
    """A version-1 report as version 2 (a new object; a version-2 one is returned as is).

    Version 1 ran one block length (`workload.block_length`) on the short suite: the block length
    moves into `workload.block_lengths` and every run, the suite is "short", and the headline
    (an object or null) becomes a list of zero or one entries tagged with the block length.
    """
    if report.get("schema") != "dyllm-bench/1":
        return report
    upgraded = json.loads(json.dumps(report))
    workload = upgraded["workload"]
    block = workload.pop("block_length")
    workload["block_lengths"] = [block]
    workload["suite"] = "short"
    for run in upgraded["runs"]:
        run["block_length"] = block
    old = upgraded["headline"]
    upgraded["headline"] = [] if old is None else [{**old, "block_length": block}]
    upgraded["schema"] = SCHEMA_VERSION
    return upgraded


def read_report(path: str | Path) -> dict[str, Any]:
    """The report in a JSON file, upgraded to the current version and checked."""
    report = upgrade_report(json.loads(Path(path).read_text(encoding="utf-8")))
    check_report(report)
    return report
