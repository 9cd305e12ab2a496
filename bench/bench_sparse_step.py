"""Dense step against sparse step on the CPU, random LLaDA-layout model, one run side by side.

Two measurements:

* **Steps, interleaved** (the headline): on one mid-generation canvas, a dense step and the
  sparse steps of top-k at 10% of rows (response-only queries, and the whole-sequence query step
  DyLLM's schedule runs every 4th step) are timed alternately, `--repeats` times, so that load
  drift on the machine hits both alike; medians and their ratio, beside the FLOP ratio the
  recompute counts imply (what the arithmetic allows). At batch 1 and at batch 16 (`--batches`):
  with one sequence the sparse step's few-row matmuls stream every weight matrix from memory for
  a handful of rows, so the CPU's memory bandwidth rather than its arithmetic sets their time; a
  batch gives them rows enough for compute to dominate, as in the paper's throughput runs
  (batch 16).
* **Whole generations** under dense, DyLLM's cosine threshold and top-k 10%: tokens/s, the
  median dense and sparse step within each run, the recomputed fractions.

Weights are random, so DyLLM's selections here say nothing about accuracy; top-k at a fixed
fraction is the controlled comparison. The cache's invariant checks are off, as in `dyllm bench`.

    python bench/bench_sparse_step.py                  # d_model 1024, 8 layers, 128 + 256
    python bench/bench_sparse_step.py --small          # a quick run for CI-sized machines

Prints a table, then one JSON line, and writes the JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import dyllm
from dyllm.bench.flops import step_flops
from dyllm.bench.timing import StepTimes
from dyllm.engine import SaliencyDenoiser
from dyllm.generation import DenseDenoiser, StepContext
from dyllm.models import DiffusionTransformer, ModelConfig
from dyllm.policies import CosineThreshold, SaliencyPolicy, TopK

RESULTS = Path(__file__).resolve().parent / "results"


def run_policy(model, prompt, policy: SaliencyPolicy | None, options: dict) -> dict:
    times = StepTimes()
    result = dyllm.generate(model, prompt, policy=policy, trace=True, on_step=times, **options)
    extra = result.stats.extra
    return {
        "policy": "dense" if policy is None else policy.describe(),
        "tokens_per_second": result.stats.tokens_per_second,
        "wall_time_s": result.stats.wall_time_s,
        "nfe": result.stats.nfe,
        "median_dense_step_s": times.median_step_s(dense=True),
        "median_sparse_step_s": times.median_step_s(dense=False),
        "computed_token_ratio": extra.get("computed_token_ratio", 1.0),
        "ffn_fraction_per_layer": extra.get("ffn_fraction_per_layer"),
        "attention_fraction_per_layer": extra.get("attention_fraction_per_layer"),
        "trace": extra.get("trace"),
    }


def step_canvas(config, batch: int, prompt: int, gen: int, block: int):
    """A canvas [batch, prompt + gen] of random prompts and a masked answer, and the
    `context(step, committed)` of a step on it in the first block (shared with
    bench_moe_step.py)."""
    generator = torch.Generator().manual_seed(2)
    prompts = torch.randint(2, config.vocab_size - 1, (batch, prompt), generator=generator)
    x = torch.cat([prompts, torch.full((batch, gen), config.mask_token_id)], dim=1)

    def context(step: int, committed: torch.Tensor | None) -> StepContext:
        return StepContext.on_canvas(
            x,
            step=step,
            block_start=prompt,
            block_end=prompt + block,
            prompt_length=prompt,
            mask_token_id=config.mask_token_id,
            logit_shift=config.logit_shift,
            newly_committed=committed,
        )

    return x, context


def interleaved_steps(model, args, fraction: float, repeats: int, batch: int) -> dict:
    """Median times of a dense step and of top-k sparse steps on `batch` sequences, timed
    alternately."""
    config = model.config
    x, context = step_canvas(config, batch, args.prompt, args.gen, args.block)
    start = args.prompt
    dense = DenseDenoiser(model)
    sparse = SaliencyDenoiser(model, TopK(fraction, warmup_steps=1), trace=True)
    times: dict[str, list[float]] = {"dense": [], "sparse_response": [], "sparse_whole": []}
    with torch.no_grad():
        sparse(x, context(0, None))  # the dense step that fills the cache
        committed = torch.zeros_like(x, dtype=torch.bool)
        committed[:, start] = True
        x[:, start] = 5
        calls = {
            "dense": lambda: dense(x, context(1, committed)),
            "sparse_response": lambda: sparse(x, context(1, committed)),  # response queries
            "sparse_whole": lambda: sparse(x, context(4, committed)),  # every 4th: all rows
        }
        for call in calls.values():  # one untimed call each
            call()
        for _ in range(repeats):
            for name, call in calls.items():
                begin = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - begin)
    rows = x.shape[1]
    entries = [e for e in sparse.statistics.trace if not e["dense"]]
    flops = {}
    for name, entry in (("sparse_response", entries[-2]), ("sparse_whole", entries[-1])):
        counts = [
            (round(a * rows), round(f * rows))
            for a, f in zip(entry["attention"], entry["ffn"], strict=True)
        ]
        queries = round(entry["queries"] * rows)
        flops[name] = step_flops(config, rows, queries, counts, args.block, approximate=True)
    dense_flops = step_flops(config, rows, rows, None, args.block, approximate=False)
    median = {name: statistics.median(values) for name, values in times.items()}
    schedule = (3 * median["sparse_response"] + median["sparse_whole"]) / 4
    schedule_flops = (3 * flops["sparse_response"] + flops["sparse_whole"]) / 4
    return {
        "batch": batch,
        "fraction": fraction,
        "repeats": repeats,
        "median_s": median,
        "speedup": {
            "sparse_response": median["dense"] / median["sparse_response"],
            "sparse_whole": median["dense"] / median["sparse_whole"],
            "dyllm_schedule": median["dense"] / schedule,
        },
        "flop_ratio": {
            "sparse_response": dense_flops / flops["sparse_response"],
            "sparse_whole": dense_flops / flops["sparse_whole"],
            "dyllm_schedule": dense_flops / schedule_flops,
        },
        "gflop_per_sequence": {
            "dense": dense_flops / 1e9,
            **{k: v / 1e9 for k, v in flops.items()},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="d_model 256, 4 layers, 32 + 64")
    parser.add_argument("--d-model", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--gen", type=int, default=256)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=15, help="interleaved step repeats")
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=[1, 16],
        help="batch sizes of the interleaved step timing (whole generations run at batch 1)",
    )
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/")
    args = parser.parse_args()
    if args.small:
        args.d_model, args.layers, args.heads, args.vocab = 256, 4, 4, 4096
        args.prompt, args.gen, args.block, args.steps = 32, 64, 16, 32
    if args.out is None:
        name = "sparse_step_cpu_small.json" if args.small else "sparse_step_cpu.json"
        args.out = RESULTS / name
    torch.set_num_threads(args.threads)

    config = ModelConfig(
        family="llada",
        vocab_size=args.vocab,
        hidden_size=args.d_model,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=args.heads,
        intermediate_size=3 * args.d_model,
        rope_theta=500000.0,
        max_position_embeddings=4096,
        mask_token_id=args.vocab - 1,
        eos_token_id=1,
        pad_token_id=1,
    )
    model = DiffusionTransformer(config)
    model.reset_parameters(std=0.02, seed=0)
    model.eval().requires_grad_(False)
    prompt = [
        torch.randint(
            2, args.vocab - 1, (args.prompt,), generator=torch.Generator().manual_seed(1)
        ).tolist()
    ]
    options = {"gen_length": args.gen, "steps": args.steps, "block_length": args.block}
    policies: dict[str, SaliencyPolicy | None] = {
        "dense": None,
        "dyllm": CosineThreshold(0.99),
        "topk-10%": TopK(0.1),
    }
    steps = [interleaved_steps(model, args, 0.1, args.repeats, batch) for batch in args.batches]
    runs = {name: run_policy(model, prompt, policy, options) for name, policy in policies.items()}

    rows = args.prompt + args.gen
    dense_step = runs["dense"]["median_dense_step_s"]
    dense_flops = step_flops(config, rows, rows, None, args.block, approximate=False)
    table = []
    for name, run in runs.items():
        sparse_step = run["median_sparse_step_s"]
        run["step_speedup"] = None if sparse_step is None else dense_step / sparse_step
        run["tokens_per_second_ratio"] = (
            run["tokens_per_second"] / runs["dense"]["tokens_per_second"]
        )
        if run["trace"]:
            sparse_entries = [entry for entry in run["trace"] if not entry["dense"]]
            flops = [
                step_flops(
                    config,
                    rows,
                    round(entry["queries"] * rows),
                    [
                        (round(a * rows), round(f * rows))
                        for a, f in zip(entry["attention"], entry["ffn"], strict=True)
                    ],
                    args.block,
                    approximate=True,  # DyLLM and top-k update the other rows approximately
                )
                for entry in sparse_entries
            ]
            run["flop_ratio"] = dense_flops / statistics.median(flops)
        else:
            run["flop_ratio"] = None
        table.append((name, run))
        run.pop("trace")

    machine = {
        "processor": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "device": "cpu",
        "dtype": "float32",
    }
    report = {
        "benchmark": "sparse_step_cpu",
        "machine": machine,
        "model": {
            "family": "llada",
            "d_model": args.d_model,
            "layers": args.layers,
            "heads": args.heads,
            "ffn": 3 * args.d_model,
            "vocab": args.vocab,
        },
        "workload": {
            "batch": 1,
            "interleaved_step_batches": args.batches,
            "prompt": args.prompt,
            "gen_length": args.gen,
            "block_length": args.block,
            "steps": args.steps,
        },
        "interleaved_steps_topk_10": steps,
        "runs": runs,
    }
    print(
        f"{'policy':<10} {'tok/s':>8} {'dense step':>11} {'sparse step':>12} "
        f"{'speed-up':>9} {'FLOP ratio':>11} {'computed':>9}"
    )
    for name, run in table:
        sparse = run["median_sparse_step_s"]
        print(
            f"{name:<10} {run['tokens_per_second']:>8.2f} "
            f"{(run['median_dense_step_s'] or 0) * 1e3:>9.1f}ms "
            f"{(sparse or 0) * 1e3:>10.1f}ms "
            f"{run['step_speedup'] or 1.0:>8.2f}x {run['flop_ratio'] or 1.0:>10.2f}x "
            f"{run['computed_token_ratio']:>9.3f}"
        )
    for entry in steps:
        median, speedup, flop = entry["median_s"], entry["speedup"], entry["flop_ratio"]
        print(
            f"\ninterleaved steps, top-k 10%, batch {entry['batch']} "
            f"({args.repeats} repeats, medians):"
        )
        for name in ("sparse_response", "sparse_whole", "dyllm_schedule"):
            measured = median.get(name)
            shown = f"{measured * 1e3:8.1f}ms" if measured else "  (3:1 mix)"
            print(
                f"  {name:<16} {shown}  speed-up {speedup[name]:5.2f}x  "
                f"FLOP ratio {flop[name]:5.2f}x"
            )
        print(f"  dense            {median['dense'] * 1e3:8.1f}ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
