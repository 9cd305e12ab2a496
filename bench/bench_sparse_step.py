"""Dense step against sparse step on the CPU, random LLaDA-layout model, one run side by side.

Times every denoising step of whole generations under three policies (dense, DyLLM's cosine
threshold, top-k at 10% of rows), and reports per policy: tokens/s, the median time of a dense
and of a sparse step, their ratio, the recomputed fractions, and the FLOP ratio the recompute
counts imply (so the measured speed-up can be read against what the arithmetic allows).
Weights are random, so DyLLM's selections here say nothing about accuracy; top-k at a fixed
fraction is the controlled comparison.

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

from dyllm.engine import SaliencyDenoiser
from dyllm.generation import generate
from dyllm.generation.context import Denoiser, DenseDenoiser, StepContext
from dyllm.models import DiffusionTransformer, ModelConfig
from dyllm.policies import CosineThreshold, SaliencyPolicy, TopK

RESULTS = Path(__file__).resolve().parent / "results"


class TimedDenoiser(Denoiser):
    """Wraps a denoiser; records each step's wall time and whether it ran dense."""

    def __init__(self, inner: Denoiser) -> None:
        super().__init__()
        self.inner = inner
        self.step_times: list[tuple[bool, float]] = []

    def __call__(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        dense_before = getattr(getattr(self.inner, "statistics", None), "dense_steps", None)
        start = time.perf_counter()
        logits = self.inner(x, ctx)
        elapsed = time.perf_counter() - start
        dense = dense_before is None or self.inner.statistics.dense_steps > dense_before
        self.step_times.append((dense, elapsed))
        self.nfe = self.inner.nfe
        return logits

    def extra_stats(self):
        return self.inner.extra_stats()


def step_flops(config: ModelConfig, rows: int, queries: int, counts, window: int) -> float:
    """Multiply-adds x 2 of one step: `counts` per layer (refreshed, selected) or None = dense.

    window: rows that get logits (the current block, for dense and sparse steps alike).
    """
    d, hd, kvd = (
        config.hidden_size,
        config.num_heads * config.head_dim,
        (config.num_kv_heads * config.head_dim),
    )
    f = config.intermediate_size
    total = 0.0
    for layer in range(config.num_layers):
        refreshed, selected = (rows, rows) if counts is None else counts[layer]
        q_rows = rows if counts is None else queries
        total += q_rows * d * hd * 2  # q_proj and o_proj
        total += refreshed * d * kvd * 2  # k_proj and v_proj
        total += q_rows * rows * hd  # scores
        total += (rows if counts is None else refreshed) * rows * hd  # exact P V rows
        if counts is not None:
            total += q_rows * refreshed * hd  # approximate P dV columns
        total += selected * 3 * d * f  # SwiGLU
    total += window * d * config.vocab_size  # LM head
    return 2 * total


def run_policy(model, prompt, policy: SaliencyPolicy | None, options: dict) -> dict:
    timers: list[TimedDenoiser] = []

    def factory(m, mask, positions):
        inner = (
            DenseDenoiser(m, mask, positions)
            if policy is None
            else SaliencyDenoiser(m, policy, mask, positions, trace=True)
        )
        timers.append(TimedDenoiser(inner))
        return timers[-1]

    result = generate(model, prompt, denoiser_factory=factory, **options)
    timer = timers[0]
    dense_times = [t for dense, t in timer.step_times if dense]
    sparse_times = [t for dense, t in timer.step_times if not dense]
    extra = result.stats.extra
    return {
        "policy": "dense" if policy is None else policy.describe(),
        "tokens_per_second": result.stats.tokens_per_second,
        "wall_time_s": result.stats.wall_time_s,
        "nfe": result.stats.nfe,
        "median_dense_step_s": statistics.median(dense_times) if dense_times else None,
        "median_sparse_step_s": statistics.median(sparse_times) if sparse_times else None,
        "computed_token_ratio": extra.get("computed_token_ratio", 1.0),
        "ffn_fraction_per_layer": extra.get("ffn_fraction_per_layer"),
        "attention_fraction_per_layer": extra.get("attention_fraction_per_layer"),
        "trace": extra.get("trace"),
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
    parser.add_argument("--out", type=Path, default=RESULTS / "sparse_step_cpu.json")
    args = parser.parse_args()
    if args.small:
        args.d_model, args.layers, args.heads, args.vocab = 256, 4, 4, 4096
        args.prompt, args.gen, args.block, args.steps = 32, 64, 16, 32
        args.out = RESULTS / "sparse_step_cpu_small.json"
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
    runs = {name: run_policy(model, prompt, policy, options) for name, policy in policies.items()}

    rows = args.prompt + args.gen
    dense_step = runs["dense"]["median_dense_step_s"]
    dense_flops = step_flops(config, rows, rows, None, args.block)
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
            "prompt": args.prompt,
            "gen_length": args.gen,
            "block_length": args.block,
            "steps": args.steps,
        },
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
