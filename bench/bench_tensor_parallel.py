"""Tensor parallelism's memory and communication: computed from the shapes, checked by a run.

Computed (`dyllm.distributed.accounting`) at LLaDA-8B's shape in bfloat16, for 2, 4 and 8
processes: the weight bytes each process holds, and the bytes each process hands to collectives
per dense step and per sparse step (with what it sends over the wire under ring algorithms).
The setting is stated in the JSON: batch 1 (every term grows linearly with the batch), a
512-position canvas (prompt 256, answer 256), logits for a block of 32 columns, and DyLLM's two
kinds of sparse step: the response's 256 query rows and the whole canvas's 512, each with the
selection capacity the engine guesses after a step that selected 10% of the rows
(ceil(1.5 x 0.1 x Q) + 8, `dyllm.engine.denoiser`).

Checked: the same formulas against a run at a small shape on the CPU, 2 and 4 processes with
gloo: each process's parameters are summed and what it hands to every collective is counted
step by step (`CountingCommunicator`) over a top-k generation (dense and sparse steps). The
check fails loudly on any difference.

    python bench/bench_tensor_parallel.py            # writes bench/results/tensor_parallel_cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dyllm
from dyllm.distributed import CountingCommunicator, ProcessGroupCommunicator, plan_tensor_parallel
from dyllm.distributed.accounting import (
    dense_step_bytes,
    replicated_weight_bytes,
    ring_send_bytes,
    sparse_step_bytes,
    weight_bytes,
)
from dyllm.generation import StepContext
from dyllm.models import DiffusionTransformer, load, preset, save_pretrained
from dyllm.models.loader import read_config
from dyllm.policies import StepPlan, TopK

SETTING = {
    "batch": 1,
    "prompt": 256,
    "answer": 256,
    "window": 32,
    "selected_fraction": 0.1,
    "dtype": "bfloat16",
}
SMALL = {
    "hidden_size": 256,
    "num_heads": 8,
    "num_kv_heads": 8,
    "head_dim": 32,  # the preset's own head_dim would survive the override of the width
    "intermediate_size": 768,
}
SMALL_PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15]]
SMALL_OPTIONS = {"gen_length": 32, "steps": 32, "block_length": 16}


def guessed_capacity(queries: int, fraction: float) -> int:
    """The engine's capacity after a step whose busiest layer selected `fraction` of Q."""
    return min(math.ceil(fraction * queries * 1.5) + 8, queries)


def computed(sizes: tuple[int, ...] = (2, 4, 8)) -> list[dict[str, Any]]:
    config = preset("llada-8b")
    element = 2
    batch, window = SETTING["batch"], SETTING["window"]
    length = SETTING["prompt"] + SETTING["answer"]
    whole_model = weight_bytes(config, 1, element)[0]
    rows = []
    for size in sizes:
        per_process = weight_bytes(config, size, element)
        dense = dense_step_bytes(config, size, batch, length, window, element)
        entry: dict[str, Any] = {
            "processes": size,
            "plan": plan_tensor_parallel(config, size).describe(),
            "weight_bytes_per_process": max(per_process),
            "weight_bytes_replicated": replicated_weight_bytes(config, element),
            "weight_fraction_of_model": max(per_process) / whole_model,
            "dense_step": {**dense, "ring_send_bytes": ring_send_bytes(dense, size)},
        }
        for label, queries in (("response", SETTING["answer"]), ("whole_canvas", length)):
            capacity = guessed_capacity(queries, SETTING["selected_fraction"])
            sparse = sparse_step_bytes(
                config, size, batch, queries, window, [capacity] * config.num_layers, element
            )
            entry[f"sparse_step_{label}"] = {
                **sparse,
                "queries": queries,
                "select_capacity": capacity,
                "ring_send_bytes": ring_send_bytes(sparse, size),
            }
        rows.append(entry)
    return rows


class RecordingTopK(TopK):
    """TopK that remembers each step's query count and logit window."""

    def __init__(self) -> None:
        super().__init__(0.25, warmup_steps=2)
        self.steps: list[tuple[int | None, int]] = []

    def plan(self, step: StepContext) -> StepPlan:
        plan = super().plan(step)
        queries = None if plan.dense else int(plan.queries[0].sum())
        self.steps.append((queries, step.logit_end - step.logit_start))
        return plan


def _worker(rank: int, world: int, folder: str, out: str) -> None:
    torch.set_num_threads(1)
    store = Path(out) / f"store-{world}"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        counter = CountingCommunicator(ProcessGroupCommunicator())
        plan = plan_tensor_parallel(read_config(Path(folder)), world)
        model = load(folder, shard=plan.shard(rank, counter))
        policy = RecordingTopK()
        steps: list[dict[str, Any]] = []

        def on_step(report) -> None:
            steps.append({"dense": report.dense, "bytes": dict(counter.bytes)})
            counter.reset()

        dyllm.generate(model, SMALL_PROMPTS, policy=policy, on_step=on_step, **SMALL_OPTIONS)
        for step, (queries, window) in zip(steps, policy.steps, strict=True):
            step.update(queries=queries, window=window)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        torch.save({"weights": weights, "steps": steps}, Path(out) / f"{world}-{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def checked(sizes: tuple[int, ...] = (2, 4)) -> dict[str, Any]:
    """Formulas against counted bytes at the small shape; raises on any difference."""
    config = preset("tiny-llada", **SMALL)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "model"
        model = DiffusionTransformer(config)
        model.reset_parameters(seed=0)
        save_pretrained(model, folder)
        runs = []
        for size in sizes:
            began = time.perf_counter()
            mp.start_processes(
                _worker, args=(size, str(folder), scratch), nprocs=size, start_method="spawn"
            )
            results = [torch.load(Path(scratch) / f"{size}-{r}.pt") for r in range(size)]
            expected_weights = weight_bytes(config, size, 4)
            batch = len(SMALL_PROMPTS)
            length = max(map(len, SMALL_PROMPTS)) + SMALL_OPTIONS["gen_length"]
            budget = TopK(0.25).budget
            steps = dense = sparse = 0
            for rank, result in enumerate(results):
                if result["weights"] != expected_weights[rank]:
                    raise AssertionError(f"process {rank} of {size}: weights {result}")
                for step in result["steps"]:
                    queries, window = step["queries"], step["window"]
                    if step["dense"]:
                        want = dense_step_bytes(config, size, batch, length, window, 4)
                        dense += rank == 0
                    else:
                        capacities = [budget(queries)] * config.num_layers
                        want = sparse_step_bytes(
                            config, size, batch, queries, window, capacities, 4
                        )
                        sparse += rank == 0
                    if step["bytes"] != want:
                        raise AssertionError(f"process {rank} of {size}: {step} != {want}")
                    steps += 1
            runs.append(
                {
                    "processes": size,
                    "weight_bytes_per_process": expected_weights,
                    "dense_steps_checked": dense,
                    "sparse_steps_checked": sparse,
                    "steps_checked_all_processes": steps,
                    "equal": True,
                    "seconds": round(time.perf_counter() - began, 1),
                }
            )
    return {"shape": {**SMALL, "num_layers": 2, "vocab_size": 97}, "runs": runs}


def _table(rows: list[dict[str, Any]]) -> str:
    gib, mib = 2**30, 2**20
    lines = [
        "| processes | weights / process | dense step | sparse step (256 queries) "
        "| sparse step (512 queries) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in rows:

        def cell(part: dict[str, int]) -> str:
            payload = (part["all_reduce"] + part["all_gather"]) / mib
            return f"{payload:.1f} MiB ({part['ring_send_bytes'] / mib:.1f} MiB sent)"

        lines.append(
            f"| {row['processes']} | {row['weight_bytes_per_process'] / gib:.2f} GiB "
            f"| {cell(row['dense_step'])} | {cell(row['sparse_step_response'])} "
            f"| {cell(row['sparse_step_whole_canvas'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/tensor_parallel_cpu.json"))
    args = parser.parse_args()
    rows = computed()
    check = checked()
    report = {
        "model": "llada-8b",
        "setting": SETTING,
        "whole_model_weight_bytes": weight_bytes(preset("llada-8b"), 1, 2)[0],
        "computed": rows,
        "check_at_small_shape": check,
        "gpu": "none available to this run: tokens/s at tensor parallel 1 vs 2 not measured",
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(_table(rows))
    print(json.dumps(check, indent=2))
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
