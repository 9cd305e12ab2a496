"""The sparse step on a mixture-of-experts model against its dense step, on the CPU.

A random LLaDA-MoE-layout model (every layer MoE: softmax router over all experts, top-k, QK-norm;
the shape is LLaDA-MoE-7B-A1B's structure scaled down: d_model 512, 4 layers, 8 heads of 64,
32 experts of width 256, top 4, vocabulary 4096). Two measurements, side by side in one process:

* **Steps, interleaved**: on one mid-generation canvas, a dense step and the top-k 10% sparse
  step (response queries) are timed alternately, `--repeats` times; medians, their ratio, and
  the expert rows each step computed (rows x experts routed; the sparse step routes only the
  rows it selects).
* **Whole generations** under dense, DyLLM's cosine threshold and top-k 10%: tokens/s and the
  statistics' expert rows (`expert_rows_per_layer`, `expert_fraction`).

Weights are random: DyLLM's selections say nothing about accuracy here; top-k at a fixed
fraction is the controlled comparison. Invariant checks are off, as in `dyllm bench`.

    python bench/bench_moe_step.py            # writes bench/results/moe_step_cpu.json

Prints a table, then writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from bench_sparse_step import step_canvas

import dyllm
from dyllm.engine import SaliencyDenoiser
from dyllm.generation import DenseDenoiser
from dyllm.models import DiffusionTransformer
from dyllm.models.moe_config import read_moe_config
from dyllm.policies import CosineThreshold, SaliencyPolicy, TopK

RESULTS = Path(__file__).resolve().parent / "results"


def moe_config(args: argparse.Namespace) -> dict:
    """A LLaDA-MoE config.json (the keys its official config class reads), scaled down."""
    return {
        "architectures": ["LLaDAMoEModelLM"],
        "model_type": "llada",
        "vocab_size": args.vocab,
        "hidden_size": args.d_model,
        "dense_intermediate_size": 4 * args.d_model,
        "expert_intermediate_size": args.expert_width,
        "shared_expert_intermediate_size": None,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.heads,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "eos_token_id": 1,
        "mask_token_id": args.vocab - 1,
        "tie_word_embeddings": False,
        "rope_theta": 50000.0,
        "partial_rotary_factor": 1.0,
        "rope_scaling": None,
        "attention_bias": False,
        "clip_qkv": None,
        "num_experts": args.experts,
        "num_experts_per_tok": args.top_k,
        "norm_topk_prob": False,
        "qk_layernorm": True,
        "moe_layer_freq": [1] * args.layers,
        "moe_router_enable_expert_bias": False,
        "routed_scaling_factor": 1.0,
        "torch_dtype": "float32",
    }


def interleaved_steps(model: DiffusionTransformer, args: argparse.Namespace) -> dict:
    """Median dense and top-k sparse step times on `args.batch` sequences, timed alternately."""
    x, context = step_canvas(model.config, args.batch, args.prompt, args.gen, args.block)
    start = args.prompt

    dense = DenseDenoiser(model)
    sparse = SaliencyDenoiser(model, TopK(args.fraction, warmup_steps=1), trace=True)
    times: dict[str, list[float]] = {"dense": [], "sparse": []}
    with torch.no_grad():
        sparse(x, context(0, None))  # the dense step that fills the cache
        committed = torch.zeros_like(x, dtype=torch.bool)
        committed[:, start] = True
        x[:, start] = 5
        calls = {
            "dense": lambda: dense(x, context(1, committed)),
            "sparse": lambda: sparse(x, context(1, committed)),
        }
        for call in calls.values():  # one untimed call each
            call()
        for _ in range(args.repeats):
            for name, call in calls.items():
                begin = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - begin)
    rows = x.shape[1] * args.batch
    last = sparse.statistics.trace[-1]
    ffn_rows = [round(fraction * rows) for fraction in last["ffn"]]
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "batch": args.batch,
        "fraction": args.fraction,
        "repeats": args.repeats,
        "median_s": median,
        "speedup": median["dense"] / median["sparse"],
        "expert_rows": {
            "dense": rows * args.top_k * args.layers,
            "sparse": sum(ffn_rows) * args.top_k,
        },
        "expert_row_ratio": rows * args.layers / max(sum(ffn_rows), 1),
    }


def run_policy(model: DiffusionTransformer, prompts, policy: SaliencyPolicy | None, options):
    result = dyllm.generate(model, prompts, policy=policy, **options)
    extra = result.stats.extra
    return {
        "policy": "dense" if policy is None else policy.describe(),
        "tokens_per_second": result.stats.tokens_per_second,
        "wall_time_s": result.stats.wall_time_s,
        "nfe": result.stats.nfe,
        "computed_token_ratio": extra.get("computed_token_ratio", 1.0),
        "expert_rows_per_layer": extra.get("expert_rows_per_layer"),
        "expert_fraction": extra.get("expert_fraction", 1.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--expert-width", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "moe_step_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = DiffusionTransformer(read_moe_config(moe_config(args)))
    model.reset_parameters(std=0.02, seed=0)
    model.eval().requires_grad_(False)
    steps = interleaved_steps(model, args)

    generator = torch.Generator().manual_seed(1)
    prompts = torch.randint(2, args.vocab - 1, (args.batch, args.prompt), generator=generator)
    options = {"gen_length": args.gen, "steps": args.steps, "block_length": args.block}
    policies: dict[str, SaliencyPolicy | None] = {
        "dense": None,
        "dyllm": CosineThreshold(0.99),
        f"topk-{args.fraction:.0%}": TopK(args.fraction),
    }
    prompt_lists = prompts.tolist()
    run_policy(model, prompt_lists, None, {**options, "steps": 2, "gen_length": args.block})
    generations = {
        name: run_policy(model, prompt_lists, policy, options) for name, policy in policies.items()
    }

    print(
        f"MoE step, batch {args.batch}, {args.prompt}+{args.gen} tokens: dense "
        f"{steps['median_s']['dense'] * 1e3:.0f} ms, top-k {args.fraction:.0%} sparse "
        f"{steps['median_s']['sparse'] * 1e3:.0f} ms = {steps['speedup']:.2f}x "
        f"(expert rows {steps['expert_row_ratio']:.1f}x fewer)"
    )
    print(f"{'policy':<34}{'tokens/s':>10}{'expert rows':>14}{'NFE':>6}")
    for name, run in generations.items():
        print(
            f"{name:<34}{run['tokens_per_second']:>10.1f}"
            f"{run['expert_fraction']:>14.3f}{run['nfe']:>6}"
        )
    report = {
        "benchmark": "moe_step",
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "threads": args.threads,
            "torch": torch.__version__,
        },
        "shape": {k: v for k, v in vars(args).items() if k not in ("out", "threads")},
        "dtype": "float32",
        "steps": steps,
        "generations": generations,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
