"""The `dyllm` command line: `generate` text, `info` on a checkpoint, draw a `trace`, `bench`,
list the registered `policies`, `serve` a model over an OpenAI-compatible HTTP API.

Every option keeps the name the reference samplers use (`--steps`, `--gen-length`,
`--block-length`, `--remasking`, `--alg`, ...). Options left unset are not passed on, so the
checkpoint's generation_config.json and the sampler's defaults apply, as in the Python API: an
unset `--temperature` is greedy for LLaDA and the built-in models, 1.0 for a released Dream
checkpoint (its reference's). Two command-line defaults differ from the API's: without `--seed` a
fresh seed is drawn (and printed with the statistics), and prompts run `--max-batch-size` (16) at
a time.

Nothing ends in a traceback. Bad input ends with one line on stderr saying what to change and exit
status 2, checked before the model is loaded where it can be (output paths, matplotlib); Ctrl-C
ends with one line and status 130; a closed standard output (`| head`) ends quietly; any other
failure (a full disk, a file that cannot be written after the run, out of memory) with one line
and status 1, and the answer or table is printed before any side file is written, so it is not
lost when that write fails.

Policies come from the registry (`dyllm.policies.registry`): `--policy NAME[:KEY=VALUE,...]` and
`--policy-arg KEY=VALUE` for generate, `--method` for bench, with `--plugin` (or DYLLM_PLUGINS) to
load a user's own; this file names no policy and no policy parameter.

`serve` imports `dyllm.serve` only when run, so the core install needs none of the `serve`
extra's packages; without them it ends with one line saying which extra to install.

Several processes (docs/tensor-parallel.md): under `torchrun --nproc-per-node N -m dyllm ...`,
`generate`, `bench` and `serve` with `--tensor-parallel N` split the model over the N processes
(`serve`: the first process serves HTTP, the others follow its batches);
`generate` without it gives each process a share of the prompts (data parallel) and gathers the
answers in order. Only the first process prints. Setup errors on any process end every process
with that message (`dyllm.distributed.launch.agree`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed

from dyllm.distributed import launch
from dyllm.distributed.data_parallel import gather_in_order, my_share
from dyllm.generation import GenerationResult
from dyllm.generation.config import draw_seed
from dyllm.models import DiffusionTransformer
from dyllm.models.config import ConfigError
from dyllm.models.loader import CheckpointError
from dyllm.policies import SaliencyPolicy
from dyllm.policies.arguments import parse_policy_text
from dyllm.policies.plugins import PLUGINS_VARIABLE, load_plugins, plugin_sources
from dyllm.policies.registry import BuildContext, build_policy, policy_names, registered_policy
from dyllm.reference.registry import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    builtin_model_name,
    resolve_model_path,
)

USAGE_ERRORS = (ValueError, FileNotFoundError, CheckpointError, ConfigError, KeyError)
DEFAULT_MAX_BATCH_SIZE = 16
"""Prompts per batch on the command line (the API's default is one batch for all)."""
TRACEBACK_VARIABLE = "DYLLM_TRACEBACK"
"""Set to 1 to see the traceback of an unexpected error instead of its one-line summary."""

SAMPLER_OPTIONS = {
    # flag: (type, help)
    "gen_length": (int, "tokens to generate (default: the checkpoint's, else LLaDA 128, Dream 20)"),
    "steps": (
        int,
        "denoising steps in all (default: LLaDA gen length, Dream the checkpoint's or 512)",
    ),
    "block_length": (int, "semi-autoregressive block length (LLaDA default 32; Dream: one block)"),
    "temperature": (
        float,
        "sampling temperature, 0 = greedy (default: the checkpoint's, else LLaDA 0, Dream 1.0)",
    ),
    "cfg_scale": (float, "LLaDA classifier-free guidance scale"),
    "remasking": (str, "LLaDA unmasking rule: low_confidence or random"),
    "alg": (str, "Dream unmasking rule: origin, maskgit_plus, topk_margin or entropy"),
    "alg_temp": (float, "Dream: sample positions from softmax(confidence / alg_temp)"),
    "top_p": (float, "Dream: nucleus filtering, 1 = off (default: the checkpoint's, else 1)"),
    "top_k": (int, "Dream: top-k filtering, 0 = off (default: the checkpoint's, else 50)"),
    "eps": (float, "Dream: final timestep"),
    "threshold": (float, "Fast-dLLM parallel decoding: commit tokens above this confidence"),
    "factor": (float, "Fast-dLLM parallel decoding: the factor rule"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command = f"dyllm {args.command}"
    try:
        code = args.run(args)
        sys.stdout.flush()
        return code
    except launch.ProcessGroupError as error:  # the same on every process: one prints it
        if launch.is_main_process():
            print(f"{command}: error: {error}", file=sys.stderr)
        return 2
    except USAGE_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"{command}: error{_process_tag()}: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of standard output went away (`| head`): stop quietly
        _discard_stdout()
        return 141
    except OSError as error:  # e.g. standard output on a full disk
        _flush_or_discard_stdout()
        print(f"{command}: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        if os.environ.get(TRACEBACK_VARIABLE) == "1":
            raise
        if isinstance(error, RuntimeError) and _collective_failed(error):
            print(
                f"{command}: error{_process_tag()}: a collective failed, most likely because "
                f"another process stopped (its message comes first): {error}",
                file=sys.stderr,
            )
            return 2
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if "out of memory" in str(error).lower():
            advice = "run fewer prompts at once (--max-batch-size) or shorter answers"
            print(f"{command}: error: out of memory ({first_line}); {advice}", file=sys.stderr)
            return 1
        print(
            f"{command}: error: {type(error).__name__}: {first_line} "
            f"({TRACEBACK_VARIABLE}=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


def _discard_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so Python's last flush at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a test's capture)
        pass


def _flush_or_discard_stdout() -> None:
    try:
        sys.stdout.flush()
    except OSError:
        _discard_stdout()


def _process_tag() -> str:
    """' (process r of N)' inside a process group, '' outside one."""
    size = launch.world_size()
    return f" (process {launch.rank()} of {size})" if size > 1 else ""


COLLECTIVE_FAILURES = ("Connection closed by peer", "Connection reset by peer", "NCCL", "gloo")
"""What the backends' errors say when a collective breaks because a peer went away."""


def _collective_failed(error: RuntimeError) -> bool:
    """Whether `error` is a broken collective of this process's group (not a bug to show)."""
    if launch.world_size() == 1:
        return False
    if isinstance(error, getattr(torch.distributed, "DistError", ())):
        return True
    return any(marker in str(error) for marker in COLLECTIVE_FAILURES)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dyllm", description="Fast inference for masked diffusion language models."
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="generate text from prompts")
    generate.add_argument(
        "prompts",
        nargs="*",
        help="prompt texts (a batch); none and no --prompts-file: read one prompt from stdin",
    )
    generate.add_argument(
        "--prompts-file",
        type=Path,
        metavar="FILE",
        help="prompts, one per line (FILE.jsonl: one JSON value per line: a string, a list of "
        "token ids, a list of messages, or an object with 'prompt' or 'messages'); - for stdin",
    )
    generate.add_argument(
        "--output",
        type=Path,
        metavar="FILE.jsonl",
        help="write one JSON line per prompt (prompt, text, token ids) instead of printing",
    )
    generate.add_argument(
        "--max-batch-size",
        type=int,
        default=DEFAULT_MAX_BATCH_SIZE,
        help=f"prompts run together (default {DEFAULT_MAX_BATCH_SIZE}); greedy answers do not "
        "depend on it",
    )
    generate.add_argument("--model", help=_model_help())
    generate.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    generate.add_argument(
        "--token-ids", action="store_true", help="prompts are comma-separated token ids"
    )
    for name, (kind, text) in SAMPLER_OPTIONS.items():
        flags = ["--" + name.replace("_", "-")]
        if name == "gen_length":
            flags.append("--max-new-tokens")  # Dream's and Hugging Face's name
        generate.add_argument(*flags, dest=name, type=kind, help=text)
    generate.add_argument("--logits-eos-inf", action="store_true", help="LLaDA: never sample EOS")
    generate.add_argument(
        "--confidence-eos-eot-inf", action="store_true", help="LLaDA: the reference's EoT option"
    )
    generate.add_argument(
        "--stop-at-eos", action="store_true", help="stop once every row's finished blocks hold EOS"
    )
    policy = generate.add_argument_group("saliency policy (which rows each step recomputes)")
    policy.add_argument(
        "--policy",
        default="dense",
        metavar="NAME[:KEY=VALUE,...]",
        help=f"a registered policy ({', '.join(policy_names())}, or a plugin's); default dense "
        "(reference cost); `dyllm policies` lists each one's parameters",
    )
    policy.add_argument(
        "--policy-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter of the policy, repeatable (e.g. tau=0.99, k=0.25, target_fraction=0.2)",
    )
    _add_plugin_flag(policy)
    policy.add_argument("--trace", type=Path, help="write per-step, per-layer fractions to a JSON")
    generate.add_argument(
        "--seed", type=int, help="seed of every random draw (default: a fresh one, printed)"
    )
    generate.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    generate.add_argument("--dtype", help="float32, float16 or bfloat16 (default: checkpoint's)")
    generate.add_argument(
        "--no-check-weights",
        action="store_true",
        help="skip the scan of every weight for NaN and infinity at load (see docs/models.md)",
    )
    generate.add_argument("--json", action="store_true", help="print one JSON object")
    generate.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_tensor_parallel_flag(generate)
    generate.set_defaults(run=_run_generate)

    trace = commands.add_parser("trace", help="draw a recompute trace as a PNG heatmap")
    trace.add_argument("trace_file", type=Path, help="JSON written by `dyllm generate --trace`")
    trace.add_argument("--out", type=Path, help="PNG path (default: next to the trace)")
    trace.set_defaults(run=_run_trace)

    _add_bench(commands)
    _add_serve(commands)

    policies = commands.add_parser(
        "policies", help="list the registered policies and their parameters"
    )
    _add_plugin_flag(policies)
    policies.set_defaults(run=_run_policies)

    info = commands.add_parser("info", help="describe a checkpoint folder without loading it")
    info.add_argument("model", help="checkpoint folder (or a built-in model name)")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(run=_run_info)
    return parser


def _add_bench(commands) -> None:
    from dyllm.bench.decoding import DEFAULT_THRESHOLDS, DEFAULT_TOKENS_PER_STEP
    from dyllm.bench.runner import BenchSettings
    from dyllm.bench.suites import DEFAULT_SUITE, SUITE_GEN_LENGTHS, SUITE_PROBLEMS_PER_TASK
    from dyllm.reference.long_tasks import SUITES
    from dyllm.reference.registry import BUILTIN_SUITES

    defaults = BenchSettings()
    suites = ", ".join(f"{name} ({', '.join(suite.names)})" for name, suite in SUITES.items())
    own = ", ".join(f"{model} {suite}" for model, suite in BUILTIN_SUITES.items())
    per_suite = ", ".join(f"{name} {count}" for name, count in SUITE_PROBLEMS_PER_TASK.items())
    lengths = ", ".join(f"{name} {length}" for name, length in SUITE_GEN_LENGTHS.items())
    bench = commands.add_parser(
        "bench",
        help="accuracy against throughput for every policy on the reference tasks",
        description="Accuracy against throughput for every policy, on the held-out problems of "
        "the model's task suite: every method x decoding setting x block length, dense first at "
        "each as the speed-up baseline. The long-answer run of the DyLLM paper's regime: "
        "dyllm bench --model llada-long --block-length 8 32 (make bench-long).",
    )
    bench.add_argument("--model", help=_model_help())
    bench.add_argument(
        "--suite",
        help=f"task suite: {suites} (default: a built-in model's own: {own}; "
        f"{DEFAULT_SUITE} for any other checkpoint)",
    )
    bench.add_argument(
        "--method",
        action="append",
        help="NAME[:KEY=VALUE,...], repeatable, e.g. dyllm:tau=0.99 (default: the full grid)",
    )
    _add_plugin_flag(bench)
    bench.add_argument(
        "--tokens-per-step",
        type=int,
        nargs="+",
        default=list(DEFAULT_TOKENS_PER_STEP),
        help="nu values, steps = gen length / nu (default 1 2 4)",
    )
    bench.add_argument(
        "--threshold",
        type=float,
        nargs="*",
        default=list(DEFAULT_THRESHOLDS),
        help="parallel-decoding thresholds (default 0.9; give none to skip)",
    )
    bench.add_argument("--tasks", nargs="+", help="task names (default: the whole suite)")
    bench.add_argument(
        "--problems-per-task",
        type=int,
        help=f"held-out problems per task (default per suite: {per_suite})",
    )
    bench.add_argument("--batch-size", type=int, default=defaults.batch_size)
    bench.add_argument(
        "--repeats", type=int, default=defaults.repeats, help="timed passes (median)"
    )
    bench.add_argument(
        "--gen-length", type=int, help=f"answer tokens (default per suite: {lengths})"
    )
    bench.add_argument(
        "--block-length",
        type=int,
        nargs="+",
        default=list(defaults.block_lengths),
        help="one or more block lengths, each dividing the gen length; each gets the whole "
        f"grid with its own dense baseline (default {' '.join(map(str, defaults.block_lengths))})",
    )
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--dtype", help="float32, float16 or bfloat16 (default: checkpoint's)")
    bench.add_argument(
        "--threads",
        type=int,
        default=defaults.threads,
        help="torch CPU threads (default 1, right for the tiny reference models; 0: torch's)",
    )
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument(
        "--check-invariants", action="store_true", help="keep the cache invariant checks on"
    )
    bench.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    bench.add_argument("--name", help="file stem for the JSON and PNG (default MODEL-DEVICE)")
    bench.add_argument("--no-plot", action="store_true", help="write no PNG")
    bench.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    _add_tensor_parallel_flag(bench)
    bench.set_defaults(run=_run_bench)


SERVE_EXTRA_MODULES = ("fastapi", "starlette", "uvicorn", "prometheus_client", "pydantic")
"""What `pip install 'dyllm[serve]'` brings; a missing one gets the one-line hint."""


def _add_serve(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API (needs the serve extra)",
        description="OpenAI-compatible server: /v1/completions, /v1/chat/completions, "
        "/v1/models, /health, /metrics. Concurrent requests with the same options are "
        "batched; streams send each block's text as soon as it is final.",
    )
    serve.add_argument("--model", help=_model_help())
    serve.add_argument(
        "--served-model-name", help="the model name clients send (default: built-in or folder name)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    serve.add_argument(
        "--policy",
        default="dense",
        metavar="NAME[:KEY=VALUE,...]",
        help="default saliency policy of requests that name none (default dense)",
    )
    serve.add_argument(
        "--policy-arg", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    _add_plugin_flag(serve)
    serve.add_argument(
        "--max-batch-size", type=int, default=16, help="canvas rows per generate call (16)"
    )
    serve.add_argument(
        "--batch-window-ms",
        type=float,
        default=10.0,
        help="how long the oldest queued request waits for batch-mates (10 ms)",
    )
    serve.add_argument(
        "--max-queue", type=int, default=256, help="queued requests before 429 (256)"
    )
    serve.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="seconds a request may take, queue included (600)",
    )
    serve.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' (or set DYLLM_API_KEY, which ps cannot show)",
    )
    serve.add_argument(
        "--max-body-bytes", type=int, default=1 << 20, help="request body limit (1 MiB)"
    )
    serve.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    serve.add_argument("--dtype", help="float32, float16 or bfloat16 (default: checkpoint's)")
    serve.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn's log level (info)",
    )
    _add_tensor_parallel_flag(serve)
    serve.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    try:
        from dyllm.serve import ServeSettings, serve
    except ImportError as error:
        if error.name is None or error.name.split(".")[0] not in SERVE_EXTRA_MODULES:
            raise
        raise ValueError(
            f"dyllm serve needs the serve extra ({error.name} is not installed): "
            "pip install 'dyllm[serve]'"
        ) from None

    from dyllm.serve.tensor_parallel import IDLE_TIMEOUT

    _join_group(args, timeout=IDLE_TIMEOUT)  # a follower waits for requests in a collective

    def setup() -> ServeSettings:
        _check_group_size(args)
        if launch.world_size() > 1 and args.tensor_parallel == 1:
            raise ValueError(
                f"dyllm serve under torchrun splits the model: pass --tensor-parallel "
                f"{launch.world_size()} (one server process holds the whole model otherwise)"
            )
        _load_plugins(args)
        return ServeSettings(
            model=args.model or DEFAULT_MODEL,
            served_model_name=args.served_model_name,
            device=args.device,
            dtype=args.dtype,
            policy=args.policy,
            policy_args=tuple(args.policy_arg),
            host=args.host,
            port=args.port,
            max_batch_size=args.max_batch_size,
            batch_window_ms=args.batch_window_ms,
            max_queue=args.max_queue,
            request_timeout_s=args.request_timeout,
            api_key=args.api_key,
            max_body_bytes=args.max_body_bytes,
            threads=args.threads,
            tensor_parallel=args.tensor_parallel,
        )

    serve(launch.agree(setup), log_level=args.log_level)
    return 0


def _add_tensor_parallel_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tensor-parallel",
        type=int,
        default=1,
        metavar="N",
        help="split the model over N processes: run under `torchrun --nproc-per-node N -m dyllm` "
        "(default 1; under torchrun without it, generate splits the prompts instead)",
    )


def _join_group(args: argparse.Namespace, timeout: timedelta | None = None) -> bool:
    """Join the process group torchrun describes (`timeout`: how long a collective may wait,
    torch's default when None); True when the model is split over it (False: one process, or
    generate's data parallelism)."""
    size = args.tensor_parallel
    if size < 1:
        raise ValueError(f"--tensor-parallel must be at least 1, got {size}")
    if not launch.join_from_environment(args.device, timeout=timeout) and size > 1:
        raise ValueError(
            f"--tensor-parallel {size} needs {size} processes: run `torchrun --nproc-per-node "
            f"{size} -m dyllm {args.command} ... --tensor-parallel {size}`"
        )
    return size > 1


def _check_group_size(args: argparse.Namespace) -> None:
    """A split model needs exactly as many processes as parts (checked inside `agree`, so every
    process reports it once)."""
    size, processes = args.tensor_parallel, launch.world_size()
    if size > 1 and size != processes:
        raise ValueError(
            f"--tensor-parallel {size} with {processes} processes: start as many processes as "
            f"the model is split over (torchrun --nproc-per-node {size})"
        )


def _report_shares(args: argparse.Namespace, result: GenerationResult | None) -> int:
    """Data parallelism: gather every process's answers in prompt order; the first prints."""
    mine = []
    if result is not None:
        mine = [(result.token_ids, result.texts, result.stats.to_dict())]
    shares = gather_in_order(mine)
    if not launch.is_main_process():
        return 0
    token_ids = [ids for share in shares for ids in share[0]]
    texts = None
    if all(share[1] is not None for share in shares):
        texts = [text for share in shares for text in share[1]]
    stats = [share[2] for share in shares]
    if args.json:
        print(json.dumps({"token_ids": token_ids, "texts": texts, "process_stats": stats}))
        return 0
    shown = texts or [",".join(map(str, ids)) for ids in token_ids]
    for number, text in enumerate(shown):
        print((f"[{number}] " if len(shown) > 1 else "") + text)
    tokens = sum(entry["generated_tokens"] for entry in stats)
    wall = max(entry["wall_time_s"] for entry in stats)
    print(
        f"\n{tokens} tokens in {wall:.2f} s ({tokens / wall if wall else 0.0:.1f} tokens/s) on "
        f"{launch.world_size()} processes, {len(stats)} with prompts",
        file=sys.stderr,
    )
    return 0


def _add_plugin_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE.py|MODULE",
        help=f"import a module that registers policies, repeatable (also ${PLUGINS_VARIABLE}, "
        f"separated by {os.pathsep!r})",
    )


def _load_plugins(args: argparse.Namespace) -> None:
    load_plugins(plugin_sources(args.plugin))


def _run_policies(args: argparse.Namespace) -> int:
    _load_plugins(args)
    for name in policy_names():
        entry = registered_policy(name)
        print(f"{name}: {entry.summary}" if entry.summary else name)
        for parameter in entry.parameters:
            print(f"    {parameter.describe()}")
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from dyllm.bench import BenchSettings, draw_curves, format_table, parse_method, run_benchmark
    from dyllm.bench.headline import format_headline

    tensor_parallel = _join_group(args)

    def setup() -> None:
        _check_group_size(args)
        if launch.world_size() > 1 and not tensor_parallel:
            raise ValueError(
                "dyllm bench under torchrun splits the model (--tensor-parallel N with N "
                "processes); benchmarking shares of the problems on separate processes is not "
                "supported"
            )
        _load_plugins(args)
        resolve_model(model)  # an empty name or a missing folder fails before the run

    model = args.model if args.model is not None else DEFAULT_MODEL
    launch.agree(setup)
    settings = BenchSettings(
        model=model,
        methods=[parse_method(text) for text in args.method] if args.method else None,
        tokens_per_step=tuple(args.tokens_per_step),
        thresholds=tuple(args.threshold),
        suite=args.suite,
        tasks=tuple(args.tasks) if args.tasks else None,
        problems_per_task=args.problems_per_task,
        batch_size=args.batch_size,
        repeats=args.repeats,
        gen_length=args.gen_length,
        block_lengths=tuple(args.block_length),
        device=args.device,
        dtype=args.dtype,
        threads=None if args.threads == 0 else args.threads,
        seed=args.seed,
        check_invariants=args.check_invariants,
        tensor_parallel=args.tensor_parallel,
    )
    settings.validate()  # suite, tasks, block lengths and nu checked before the model loads
    main_process = launch.is_main_process()
    if main_process:
        if not args.no_plot:
            _require_matplotlib("drawing the benchmark", "or pass --no-plot")
        _prepare_folder(args.out_dir, "--out-dir")
    stem = args.name or f"{Path(model).name}-{args.device.split(':')[0]}"
    json_path = args.out_dir / f"{stem}.json"
    png_path = args.out_dir / f"{stem}.png"
    if main_process:
        for path in (json_path, *(() if args.no_plot else (png_path,))):
            check_writable(path, "--out-dir")
    quiet = args.quiet or not main_process
    log = None if quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    report = run_benchmark(settings, log=log)
    if not main_process:
        return 0
    print(format_table(report))
    print("\n" + format_headline(report["headline"]))
    sys.stdout.flush()
    text = json.dumps(report, indent=2) + "\n"
    failed = False
    if _write_side_file("the JSON report", json_path, lambda: json_path.write_text(text)):
        print(f"JSON: {json_path}")
    else:
        failed = True
    if not args.no_plot:
        if _write_side_file("the plot", png_path, lambda: draw_curves(report, png_path)):
            print(f"PNG:  {png_path}")
        else:
            failed = True
    print(f"total {report['total_seconds']:.1f} s")
    return 1 if failed else 0


def _write_side_file(what: str, path: Path, write: Any) -> bool:
    """Write a file after the run's output is printed; on failure one line, and False."""
    try:
        write()
    except (OSError, ValueError) as error:
        print(
            f"dyllm: error: could not write {what} to {path} ({error}); the output above is "
            "complete",
            file=sys.stderr,
        )
        return False
    return True


def check_writable(path: Path, flag: str) -> None:
    """A ValueError naming `flag` when `path` cannot be written (checked before any work)."""
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{flag} {path}: permission denied; choose a path you can write")


def _prepare_folder(folder: Path, flag: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{flag} {folder} cannot be created ({error.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{flag} {folder}: permission denied; choose a folder you can write")


def _require_matplotlib(what: str, alternative: str = "") -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise ValueError(
            f"{what} needs matplotlib: pip install 'dyllm[plots]'"
            + (f" ({alternative})" if alternative else "")
        )


def _version() -> str:
    import platform

    import torch

    from dyllm import __version__

    return f"dyllm {__version__} (torch {torch.__version__}, Python {platform.python_version()})"


def _model_help() -> str:
    names = ", ".join(sorted(BUILTIN_MODELS))
    return f"checkpoint folder or built-in name ({names}); default {DEFAULT_MODEL}"


def resolve_model(name_or_path: str | None) -> Path:
    """A checkpoint folder from a path or a built-in name; the built-in default when None."""
    return resolve_model_path(DEFAULT_MODEL if name_or_path is None else name_or_path)


def _read_prompts(args: argparse.Namespace) -> list:
    if args.prompts_file is not None:
        if args.prompts:
            raise ValueError("give prompts as arguments or with --prompts-file, not both")
        from dyllm.prompt_files import read_prompts_file

        return read_prompts_file(args.prompts_file, token_ids=args.token_ids)
    prompts = list(args.prompts)
    if not prompts:
        if sys.stdin is None or sys.stdin.isatty():
            raise ValueError(
                "give a prompt as an argument, on standard input, or with --prompts-file"
            )
        text = _read_stdin().strip()
        if not text:
            raise ValueError("standard input held no prompt")
        prompts = [text]
    if not args.token_ids:
        return prompts
    try:
        return [[int(token) for token in prompt.split(",")] for prompt in prompts]
    except ValueError:
        raise ValueError("--token-ids prompts must look like 12,7,301") from None


def _read_stdin() -> str:
    """Standard input as UTF-8 text; a ValueError naming the first byte that is not."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:
        return sys.stdin.read()
    data = stream.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"standard input is not UTF-8 text (byte {data[error.start]:#04x} at offset "
            f"{error.start}); convert it, e.g. with iconv -t UTF-8"
        ) from None


def _run_generate(args: argparse.Namespace) -> int:
    import dyllm

    tensor_parallel = _join_group(args)
    data_parallel = launch.world_size() > 1 and not tensor_parallel
    # every process draws with the same seed: a fresh one is drawn once and shared
    seed = args.seed if args.seed is not None else launch.shared_value(draw_seed())

    def setup() -> tuple[list, Path, DiffusionTransformer, dict, SaliencyPolicy]:
        _check_group_size(args)
        if launch.world_size() > 1 and not (args.prompts or args.prompts_file):
            raise ValueError("under torchrun give the prompts as arguments or a --prompts-file")
        if data_parallel and (args.trace is not None or args.output is not None):
            raise ValueError(
                "--trace and --output are written by one process; with prompts shared among "
                "processes run without torchrun (or split the model with --tensor-parallel)"
            )
        _load_plugins(args)
        prompts = _read_prompts(args)
        if launch.is_main_process():
            for path, flag in ((args.trace, "--trace"), (args.output, "--output")):
                if path is not None:
                    check_writable(path, flag)
        folder = resolve_model(args.model)
        if launch.is_main_process():
            _warn_off_task(folder, prompts, args)
        device = launch.process_device(args.device) if data_parallel else args.device
        model = dyllm.load(
            folder,
            device=device,
            dtype=args.dtype,
            check_finite=not args.no_check_weights,
            tensor_parallel=args.tensor_parallel,
        )
        options = {name: getattr(args, name) for name in SAMPLER_OPTIONS}
        options = {name: value for name, value in options.items() if value is not None}
        for flag in ("logits_eos_inf", "confidence_eos_eot_inf", "stop_at_eos"):
            if getattr(args, flag):
                options[flag] = True
        options.update(chat=args.chat, seed=seed, max_batch_size=args.max_batch_size)
        return prompts, folder, model, options, _policy(args, model, prompts, options)

    prompts, folder, model, options, policy = launch.agree(setup)
    if data_parallel:
        prompts = my_share(prompts)

    def run() -> GenerationResult | None:
        if not prompts:  # a process gets none when there are fewer prompts than processes
            return None
        return dyllm.generate(
            model,
            prompts,
            policy=policy,
            trace=args.trace is not None,
            progress=not (args.no_progress or args.json) and launch.is_main_process(),
            **options,
        )

    if data_parallel:  # no collective inside: a failure on one share can be agreed on
        return _report_shares(args, launch.agree(run))
    result = run()
    assert result is not None
    if not launch.is_main_process():
        return 0
    record = {
        "model": {
            "name": args.model if args.model is not None else DEFAULT_MODEL,
            "path": str(folder),
            "family": model.config.family,
            "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "tensor_parallel": args.tensor_parallel,
        },
        "policy": policy.describe(),
        **result.to_dict(),
    }
    texts = result.texts or [",".join(map(str, ids)) for ids in result.token_ids]
    failed = False
    if args.output is not None:
        lines = _answer_lines(prompts, result)
        written = _write_side_file(
            f"{len(lines)} answer(s)", args.output, lambda: args.output.write_text("".join(lines))
        )
        if not written:  # never lose the answers: they go to standard output instead
            sys.stdout.write("".join(lines))
            failed = True
    elif args.json:
        print(json.dumps(record))
    else:
        for number, text in enumerate(texts):
            prefix = f"[{number}] " if len(texts) > 1 else ""
            print(prefix + text)
    sys.stdout.flush()
    _print_statistics(result)
    if args.trace is not None:
        extra = result.stats.extra
        trace = json.dumps({"policy": extra["policy"], "trace": extra["trace"]})
        failed |= not _write_side_file(
            "the trace", args.trace, lambda: args.trace.write_text(trace)
        )
    return 1 if failed else 0


def _answer_lines(prompts: list, result: Any) -> list[str]:
    """One JSON line per prompt: its index, the prompt as given, the text and the token ids."""
    texts = result.texts or [None] * len(result.token_ids)
    return [
        json.dumps({"index": index, "prompt": prompt, "text": text, "token_ids": ids}) + "\n"
        for index, (prompt, text, ids) in enumerate(
            zip(prompts, texts, result.token_ids, strict=True)
        )
    ]


def _print_statistics(result: Any) -> None:
    stats = result.stats
    print(
        f"\n{stats.generated_tokens} tokens in {stats.wall_time_s:.2f} s "
        f"({stats.tokens_per_second:.1f} tokens/s), NFE {stats.nfe}, "
        f"{stats.tokens_per_forward:.2f} tokens per forward, seed {result.options.seed}",
        file=sys.stderr,
    )
    if "computed_token_ratio" in stats.extra:
        ffn = " ".join(f"{f:.2f}" for f in stats.extra["ffn_fraction_per_layer"])
        print(
            f"policy {stats.extra['policy']['name']}: computed-token ratio "
            f"{stats.extra['computed_token_ratio']:.3f}, FFN rows per layer [{ffn}], "
            f"cache {stats.extra['cache_bytes'] / 2**20:.1f} MiB",
            file=sys.stderr,
        )


def _warn_off_task(folder: Path, prompts: list, args: argparse.Namespace) -> None:
    """One stderr line when a built-in reference model gets what it was never trained on."""
    from dyllm.reference.long_tasks import SUITES
    from dyllm.reference.registry import BUILTIN_SUITES

    name = builtin_model_name(folder)
    if name is None:
        return
    suite = SUITES[BUILTIN_SUITES.get(name, "short")]
    matches, formats = suite.matches_format, suite.formats
    texts = [prompt for prompt in prompts if isinstance(prompt, str)]
    if any("\ud800" <= character <= "\udfff" for text in texts for character in text):
        return  # bytes that were not UTF-8: generate refuses the prompt, no warning first
    off_task = [text for text in texts if not matches(text)]
    conversations = len(texts) < len(prompts) and not args.token_ids
    if not (args.chat or off_task or conversations):
        return
    what = "--chat" if args.chat or conversations else f"the prompt {off_task[0][:40]!r}"
    print(
        f"dyllm generate: warning: {name} is a tiny reference model trained only on the task "
        f"prompts {formats}; for {what} it gives noise (docs/reference-models.md)",
        file=sys.stderr,
    )


def _policy(args: argparse.Namespace, model, prompts: list, options: dict) -> SaliencyPolicy:
    """The policy `--policy` and `--policy-arg` name; a builder that calibrates (adaptive with
    target_fraction) gets the model, the prompts themselves and the generation options."""
    name, params = parse_policy_text(args.policy, args.policy_arg)
    context = BuildContext(
        family=model.config.family, model=model, prompts=prompts, generation_options=options
    )
    return build_policy(name, params, context)


def _run_trace(args: argparse.Namespace) -> int:
    from dyllm.engine.trace_plot import draw_trace, read_trace

    _require_matplotlib("drawing a trace")
    out = args.out or args.trace_file.with_suffix(".png")
    check_writable(out, "--out")
    trace = read_trace(args.trace_file)
    print(draw_trace(trace, out))
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from dyllm.models.inspection import describe_checkpoint, format_description

    info = describe_checkpoint(resolve_model(args.model))
    print(json.dumps(info) if args.json else format_description(info))
    if info["problems"]:
        sys.stdout.flush()
        print(
            f"dyllm info: error: {len(info['problems'])} problem(s) in {info['path']}: "
            f"{info['problems'][0]}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
