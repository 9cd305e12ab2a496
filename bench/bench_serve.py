"""Load benchmark of `dyllm serve` over loopback: requests/s and latency at concurrency 1, 4, 16.

Two servers run as subprocesses (`dyllm serve`, one torch thread each): one that batches
(`--max-batch-size 16`) and one that serves one request at a time (`--max-batch-size 1`). For the
dense policy and for DyLLM (chosen per request, the `policy` field) and each concurrency, a client
keeps `concurrency` requests in flight until a fixed number has been sent (or the time limit has
passed), against one server and then the other, in ABBA order over `--passes` passes, so that
load drifting on a shared machine hits both servers alike. Every request is a greedy completion
of a reference task prompt (the prompts cycle through the four tasks, so batches are
left-padded).

Reported per server, policy and concurrency (all passes together): requests/s (completed
requests over the wall time of the passes), p50 / p95 latency, the mean batch the server formed
(from its /metrics), errors; and the speed-up batching gives over serving one request at a time
(requests/s of the batching server over that of the one-at-a-time server at the same
concurrency and policy).

    python bench/bench_serve.py                          # 24 requests x 2 passes a cell, ~2 min
    python bench/bench_serve.py --requests 8 --passes 1  # a quick look

Writes bench/results/serve-llada-ref-cpu.json (and a PNG when matplotlib is installed). Loopback
only: the servers bind 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from dyllm.bench.machine import cpu_model
from dyllm.reference.tasks import heldout_problems

ROOT = Path(__file__).resolve().parents[1]

CONCURRENCY = (1, 4, 16)
POLICIES = ("dense", "dyllm")
TASKS = ("mul3", "sort", "cumsum", "rot13")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llada-ref")
    parser.add_argument("--requests", type=int, default=24, help="requests per pass (24)")
    parser.add_argument("--passes", type=int, default=2, help="ABBA passes per cell (2)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per pass (60)")
    parser.add_argument("--batch-window-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/serve-llada-ref-cpu.json")
    args = parser.parse_args()
    prompts = [p.prompt for task in TASKS for p in heldout_problems(task)[:16]]
    prompts = [prompts[(i % 4) * 16 + i // 4] for i in range(len(prompts))]  # tasks interleaved

    runs = []
    began = time.perf_counter()
    with (
        ServerProcess(args.model, 16, args.batch_window_ms) as batching,
        ServerProcess(args.model, 1, args.batch_window_ms) as single,
    ):
        servers = {"batching": batching, "one at a time": single}
        for policy in POLICIES:
            for server in servers.values():
                warm(server.url, args.model, prompts, policy)
            for concurrency in CONCURRENCY:
                passes: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
                for number in range(args.passes):
                    order = list(servers) if number % 2 == 0 else list(servers)[::-1]
                    for name in order:
                        passes[name].append(
                            measure(servers[name], prompts, policy, concurrency, args)
                        )
                for name, measured in passes.items():
                    run = summarize(measured, name, servers[name].max_batch, policy, concurrency)
                    runs.append(run)
                    print(format_run(run), flush=True)
    speedups = {
        f"{policy} c{concurrency}": ratio(runs, policy, concurrency)
        for policy in POLICIES
        for concurrency in CONCURRENCY
    }
    report = {
        "what": "dyllm serve over loopback: completions of reference task prompts",
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "gpu": None,
            "note": "2-core CPU shared with other work, no GPU; each server: 1 torch thread",
            "python": platform.python_version(),
        },
        "settings": {
            "model": args.model,
            "requests_per_pass": args.requests,
            "passes": args.passes,
            "time_limit_s": args.time_limit,
            "batch_window_ms": args.batch_window_ms,
            "request": {"max_tokens": "checkpoint default (24)", "temperature": 0},
        },
        "runs": runs,
        "speedup_batching_over_one_at_a_time": speedups,
        "total_seconds": time.perf_counter() - began,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("\nspeed-up of batching over one request at a time (requests/s ratio):")
    for name, value in speedups.items():
        print(f"  {name:<10} {value:.2f}x")
    print(f"JSON: {args.out}")
    picture = draw(report, args.out.with_suffix(".png"))
    if picture is not None:
        print(f"PNG:  {picture}")
    print(f"total {report['total_seconds']:.0f} s")


def measure(
    server: ServerProcess, prompts: list[str], policy: str, concurrency: int, args
) -> dict[str, Any]:
    """One pass against `server`, with the batches it formed meanwhile."""
    before = batch_totals(server.url)
    measured = asyncio.run(load(server.url, args.model, prompts, policy, concurrency, args))
    after = batch_totals(server.url)
    measured["batched_requests"] = after[0] - before[0]
    measured["batches"] = after[1] - before[1]
    return measured


def summarize(
    passes: list[dict[str, Any]], server: str, max_batch: int, policy: str, concurrency: int
) -> dict[str, Any]:
    latencies = sorted(latency for one in passes for latency in one["latencies"])
    seconds = sum(one["seconds"] for one in passes)
    batches = sum(one["batches"] for one in passes)
    return {
        "server": server,
        "max_batch_size": max_batch,
        "policy": policy,
        "concurrency": concurrency,
        "passes": len(passes),
        "requests": sum(one["sent"] for one in passes),
        "completed": len(latencies),
        "errors": sum(one["errors"] for one in passes),
        "seconds": seconds,
        "requests_per_s": len(latencies) / seconds,
        "requests_per_s_per_pass": [len(one["latencies"]) / one["seconds"] for one in passes],
        "p50_latency_s": statistics.median(latencies) if latencies else None,
        "p95_latency_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
        if latencies
        else None,
        "mean_batch_size": sum(one["batched_requests"] for one in passes) / batches
        if batches
        else None,
    }


class ServerProcess:
    """`dyllm serve` in a subprocess on a free loopback port."""

    def __init__(self, model: str, max_batch: int, window_ms: float) -> None:
        self.max_batch = max_batch
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable,
            "-m",
            "dyllm.cli",
            "serve",
            "--model",
            model,
            "--port",
            str(self.port),
            "--threads",
            "1",
            "--max-batch-size",
            str(max_batch),
            "--batch-window-ms",
            str(window_ms),
            "--max-queue",
            "1024",
            "--log-level",
            "warning",
        ]

    def __enter__(self) -> ServerProcess:
        self.process = subprocess.Popen(self.command)
        limit = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/health").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > limit:
                raise RuntimeError("dyllm serve did not start")
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def body(model: str, prompt: str, policy: str) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "temperature": 0, "policy": policy}


def warm(url: str, model: str, prompts: list[str], policy: str) -> None:
    for prompt in prompts[:2]:
        httpx.post(url + "/v1/completions", json=body(model, prompt, policy), timeout=60)


async def load(
    url: str, model: str, prompts: list[str], policy: str, concurrency: int, args
) -> dict[str, Any]:
    """`args.requests` requests, `concurrency` in flight, stopped at the time limit: the wall
    time and each completed request's latency."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.monotonic() + args.time_limit

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent, errors
        while sent < args.requests and time.monotonic() < deadline:
            prompt = prompts[sent % len(prompts)]
            sent += 1
            began = time.perf_counter()
            response = await client.post(
                "/v1/completions", json=body(model, prompt, policy), timeout=args.time_limit
            )
            if response.status_code == 200:
                latencies.append(time.perf_counter() - began)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - began
    return {"sent": sent, "errors": errors, "seconds": seconds, "latencies": latencies}


def batch_totals(url: str) -> tuple[float, float]:
    """(requests in batches, batches) so far, from the server's batch-size histogram."""
    text = httpx.get(url + "/metrics").text
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "dyllm_batch_size_sum":
                total = sample.value
            elif sample.name == "dyllm_batch_size_count":
                count = sample.value
    return total, count


def ratio(runs: list[dict[str, Any]], policy: str, concurrency: int) -> float:
    rates = {
        run["max_batch_size"]: run["requests_per_s"]
        for run in runs
        if run["policy"] == policy and run["concurrency"] == concurrency
    }
    return rates[16] / rates[1]


def format_run(run: dict[str, Any]) -> str:
    batch = run["mean_batch_size"]
    return (
        f"{run['server']:<14} {run['policy']:<6} c{run['concurrency']:<3} "
        f"{run['requests_per_s']:6.2f} req/s  p50 {run['p50_latency_s'] * 1000:7.1f} ms  "
        f"p95 {run['p95_latency_s'] * 1000:7.1f} ms  mean batch "
        f"{'-' if batch is None else f'{batch:.1f}'}  errors {run['errors']}"
    )


def draw(report: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for policy in POLICIES:
        for server, style in (("batching", "-o"), ("one at a time", "--s")):
            runs = [r for r in report["runs"] if r["policy"] == policy and r["server"] == server]
            levels = [r["concurrency"] for r in runs]
            axes[0].plot(
                levels, [r["requests_per_s"] for r in runs], style, label=f"{policy}, {server}"
            )
            axes[1].plot(
                levels,
                [r["p95_latency_s"] * 1000 for r in runs],
                style,
                label=f"{policy}, {server}",
            )
    for ax, label in zip(axes, ("requests / s", "p95 latency (ms)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(CONCURRENCY), [str(c) for c in CONCURRENCY])
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"dyllm serve, {report['settings']['model']}, {report['machine']['note']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


if __name__ == "__main__":
    main()
