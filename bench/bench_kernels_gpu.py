"""Dense and sparse steps of an LLaDA-8B-shaped model, against the card's own limits.

Builds the LLaDA-8B layer stack (32 layers, d_model 4096, 32 heads, SwiGLU 12288, vocabulary
126464) with random bfloat16 weights on the GPU, a canvas of a 768-token prompt and 256 masked
positions, and measures in one run:

* the card's limits: copy bandwidth (a 4 GiB device-to-device copy, bytes read + written) and
  bfloat16 matmul throughput (8192^3), so every figure below reads against this card;
* a dense step (the full forward that fills the caches) over all 1024 rows;
* sparse steps over the 256 response rows with a fixed salient fraction p at every layer (p of
  the rows refreshed: K/V and exact attention; the same rows through the FFN), for p in 1, 5,
  10, 25, 50 and 100%, with the eager kernels and with the Triton kernels;

at batch 1 and 16. Per step: median time, tokens/s at one committed token per sequence per step
(steps = generation length, as in DyLLM's tables), achieved TFLOP/s and GB/s from counted FLOPs
and bytes (`step_cost`), and the roofline bound max(FLOPs / matmul peak, bytes / bandwidth)
as a fraction of the measured time. Weights are random: selections are forced, not measured.

    python bench/bench_kernels_gpu.py            # on CUDA: LLaDA-8B shape, bf16, batch 1 and 16
    python bench/bench_kernels_gpu.py --small --threads 1   # anywhere: small fp32 model
                                                            # (CPU: eager kernels only)

Prints a table, then one JSON line; on CUDA also writes the JSON to bench/results/ (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dyllm.engine import SaliencyDenoiser
from dyllm.generation import StepContext
from dyllm.models import DiffusionTransformer, ModelConfig, preset
from dyllm.policies import AttentionSignals, SaliencyPolicy, StepPlan

RESULTS = Path(__file__).resolve().parent / "results"
FRACTIONS = (0.01, 0.05, 0.10, 0.25, 0.50, 1.00)


class FixedFraction(SaliencyPolicy):
    """Step 0 dense; later steps sparse over the response rows, with the same random `fraction`
    of them refreshed at layer 0 and selected (so refreshed) at every layer."""

    name = "fixed-fraction"

    def __init__(self, fraction: float, seed: int = 0) -> None:
        self.fraction = fraction
        self.generator = torch.Generator().manual_seed(seed)
        self.chosen: torch.Tensor | None = None

    def plan(self, step: StepContext) -> StepPlan:
        if step.step == 0:
            return StepPlan.dense_step()
        queries = step.response_rows
        batch, length = queries.shape
        count = max(1, round(self.fraction * (length - step.response_start)))
        picks = torch.rand(batch, length - step.response_start, generator=self.generator)
        chosen = torch.zeros(batch, length, dtype=torch.bool)
        rows = picks.topk(count, dim=1).indices + step.response_start
        chosen.scatter_(1, rows, True)
        self.chosen = chosen.to(queries.device)
        self.count = count
        return StepPlan(dense=False, queries=queries, refresh=self.chosen)

    def select(self, layer: int, signals: AttentionSignals) -> torch.Tensor:
        return self.chosen

    def row_budget(self, step: StepContext, layer: int, query_count: int) -> int:
        return self.count


@dataclass(frozen=True)
class Workload:
    batch: int
    prompt: int
    gen: int
    block: int

    @property
    def rows(self) -> int:
        return self.prompt + self.gen


def step_cost(
    config: ModelConfig, work: Workload, queries: int, salient: int, element: int
) -> tuple[float, float]:
    """(FLOPs, bytes) of one step; queries = salient = rows for the dense step.

    Counted per layer: the projections and the FFN on the rows that run them, the attention
    scores of every query row against every key, `P V` for refreshed rows and `P dV` (with its
    scores) for the others; bytes: the weights the step reads, the K/V caches read by attention,
    cache rows written and read back, the residual stream read and written once. Intermediate
    activations (the FFN's [rows, 12288] tensors) are not counted. Then the LM head on the
    block's rows.
    """
    d, heads_width = config.hidden_size, config.num_heads * config.head_dim
    kv_width, ffn = config.num_kv_heads * config.head_dim, config.intermediate_size
    rows, batch = work.rows, work.batch
    dense = queries == rows and salient == rows
    flops = 2 * queries * d * 2 * heads_width  # q_proj, o_proj
    flops += 2 * salient * d * 2 * kv_width  # k_proj, v_proj
    flops += 2 * queries * rows * heads_width  # scores
    flops += 2 * salient * rows * heads_width  # exact P V
    if not dense:
        flops += 2 * 2 * (queries - salient) * salient * heads_width  # scores and P dV on A
    flops += 2 * salient * 3 * d * ffn  # SwiGLU
    weights = (2 * d * heads_width + 2 * d * kv_width + 3 * d * ffn) * element
    traffic = 2 * rows * kv_width * element  # K and V read by attention
    traffic += salient * 2 * kv_width * element  # K/V rows written
    traffic += queries * heads_width * element * (1 if dense else 2)  # context (read +) write
    traffic += (salient + (0 if dense else queries)) * d * element  # FFN rows written (+ read)
    traffic += 2 * queries * d * element  # residual stream
    total_flops = config.num_layers * batch * flops + 2 * batch * work.block * d * config.vocab_size
    total_bytes = config.num_layers * (weights + batch * traffic)
    total_bytes += config.vocab_size * d * element + batch * work.block * config.vocab_size * 4
    return float(total_flops), float(total_bytes)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(run: Callable[[], object], device: torch.device, warmup: int, repeats: int):
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, size_bytes: int) -> float:
    """Bytes/s of a device-to-device copy of `size_bytes`, counting bytes read and written."""
    source = torch.ones(size_bytes // 2, dtype=torch.float16, device=device)
    target = torch.empty_like(source)
    return 2 * size_bytes / median_seconds(lambda: target.copy_(source), device, 2, 5)


def matmul_throughput(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """FLOP/s of a `size`^3 matmul in `dtype`."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    return 2 * size**3 / median_seconds(lambda: a @ b, device, 2, 5)


def build_model(config: ModelConfig, device: torch.device, dtype: torch.dtype):
    """Random weights made on the device (normal 0.02, unit norms), no host copy."""
    with torch.device("meta"):
        model = DiffusionTransformer(config)
    model = model.to(dtype).to_empty(device=device)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, 0.02)
    return model.eval().requires_grad_(False)


def step_context(step: int, work: Workload, canvas: torch.Tensor, config) -> StepContext:
    """Step `step` of the first block (logits for the block's rows)."""
    return StepContext.on_canvas(
        canvas,
        step=step,
        block_start=work.prompt,
        block_end=work.prompt + work.block,
        prompt_length=work.prompt,
        mask_token_id=config.mask_token_id,
        logit_shift=config.logit_shift,
    )


def measure(model, work: Workload, backends: list[str], limits, args) -> list[dict]:
    """The dense step, then each fraction's sparse step with each backend, at one batch size."""
    config, device = model.config, model.device
    element = torch.finfo(model.dtype).bits // 8
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randint(2, config.vocab_size - 1, (work.batch, work.prompt), generator=generator)
    masks = torch.full((work.batch, work.gen), config.mask_token_id)
    canvas = torch.cat([prompt, masks], dim=1).to(device)
    policy = FixedFraction(1.0)
    denoiser = SaliencyDenoiser(model, policy)
    bandwidth, matmul_peak = limits

    def record(kind: str, backend: str, fraction: float, seconds: float, queries: int) -> dict:
        salient = work.rows if kind == "dense" else max(1, round(fraction * work.gen))
        flops, moved = step_cost(config, work, queries, salient, element)
        bound = max(flops / matmul_peak, moved / bandwidth)
        return {
            "batch": work.batch,
            "step": kind,
            "kernels": backend,
            "salient_fraction": fraction,
            "seconds": seconds,
            "tokens_per_second": work.batch / seconds,
            "tflops": flops / seconds / 1e12,
            "gb_per_second": moved / seconds / 1e9,
            "roofline_fraction": bound / seconds,
            "bound": "compute" if flops / matmul_peak >= moved / bandwidth else "memory",
        }

    with torch.no_grad():
        dense_step = step_context(0, work, canvas, config)
        seconds = median_seconds(
            lambda: denoiser(canvas, dense_step), device, args.warmup, args.repeats
        )
        rows = [record("dense", "-", 1.0, seconds, work.rows)]
        sparse_step = step_context(1, work, canvas, config)
        for backend in backends:
            os.environ["DYLLM_KERNELS"] = backend
            for fraction in FRACTIONS:
                policy.fraction = fraction
                seconds = median_seconds(
                    lambda: denoiser(canvas, sparse_step), device, args.warmup, args.repeats
                )
                rows.append(record("sparse", backend, fraction, seconds, work.gen))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="d_model 256, 4 layers, fp32, 96+32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (CUDA default: results)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    config, dtype = preset("llada-8b"), torch.bfloat16
    work = Workload(batch=1, prompt=768, gen=256, block=32)
    copy_bytes, matmul_size = 4 << 30, 8192
    if args.small:
        config = replace(
            config,
            vocab_size=4096,
            hidden_size=256,
            num_layers=4,
            num_heads=4,
            num_kv_heads=4,
            intermediate_size=768,
            mask_token_id=4095,
            eos_token_id=1,
            pad_token_id=1,
            bos_token_id=0,
            eot_token_id=2,
        )
        dtype, work = torch.float32, Workload(batch=1, prompt=96, gen=32, block=16)
        copy_bytes, matmul_size = 256 << 20, 1024
        if args.batches == [1, 16]:
            args.batches = [1, 4]
    backends = ["eager", "triton"] if device.type == "cuda" else ["eager"]

    limits = copy_bandwidth(device, copy_bytes), matmul_throughput(device, dtype, matmul_size)
    model = build_model(config, device, dtype)
    results = []
    for batch in args.batches:
        results += measure(model, replace(work, batch=batch), backends, limits, args)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the previous batch's caches

    machine = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "measured_copy_gb_per_second": limits[0] / 1e9,
        "measured_matmul_tflops": limits[1] / 1e12,
    }
    report = {
        "benchmark": "kernels_gpu" if device.type == "cuda" else "kernels_cpu_small",
        "machine": machine,
        "model": {
            "shape": "llada-8b" if not args.small else "small",
            "d_model": config.hidden_size,
            "layers": config.num_layers,
            "heads": config.num_heads,
            "ffn": config.intermediate_size,
            "vocab": config.vocab_size,
        },
        "workload": {"prompt": work.prompt, "gen_length": work.gen, "block_length": work.block},
        "results": results,
    }
    print(
        f"{machine['device']} {machine['dtype']}: copy {machine['measured_copy_gb_per_second']:.0f}"
        f" GB/s, matmul {machine['measured_matmul_tflops']:.1f} TFLOP/s"
    )
    print(
        f"{'batch':>5} {'step':<7} {'kernels':<7} {'salient':>7} {'time':>10} {'tok/s':>9} "
        f"{'TFLOP/s':>8} {'GB/s':>8} {'roofline':>9} {'bound':<7}"
    )
    for row in results:
        print(
            f"{row['batch']:>5} {row['step']:<7} {row['kernels']:<7} "
            f"{row['salient_fraction']:>7.0%} {row['seconds'] * 1e3:>8.2f}ms "
            f"{row['tokens_per_second']:>9.1f} {row['tflops']:>8.2f} {row['gb_per_second']:>8.1f} "
            f"{row['roofline_fraction']:>9.1%} {row['bound']:<7}"
        )
    out = args.out or (RESULTS / "kernels_gpu.json" if device.type == "cuda" else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
