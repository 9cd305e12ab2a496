"""The `dyllm` command line: `generate` text, `info` on a checkpoint, draw a `trace`, `bench`,
list the registered `policies`.

Every option keeps the name the reference samplers use (`--steps`, `--gen-length`,
`--block-length`, `--remasking`, `--alg`, ...). Options left unset are not passed on, so the
checkpoint's generation_config.json and the sampler's defaults apply, as in the Python API: an
unset `--temperature` is greedy for LLaDA and the built-in models, 1.0 for a released Dream
checkpoint (its reference's). Bad input ends with one line on stderr saying what to change and
exit status 2, never a traceback.

Policies come from the registry (`dyllm.policies.registry`): `--policy NAME[:KEY=VALUE,...]` and
`--policy-arg KEY=VALUE` for generate, `--method` for bench, with `--plugin` (or DYLLM_PLUGINS) to
load a user's own; this file names no policy and no policy parameter.

Several processes (docs/tensor-parallel.md): under `torchrun --nproc-per-node N -m dyllm ...`,
`generate` and `bench` with `--tensor-parallel N` split the model over the N processes;
`generate` without it gives each process a share of the prompts (data parallel) and gathers the
answers in order. Only the first process prints. Setup errors on any process end every process
with that message (`dyllm.distributed.launch.agree`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed

from dyllm.distributed import launch
from dyllm.distributed.data_parallel import gather_in_order, my_share
from dyllm.generation import GenerationResult
from dyllm.models import DiffusionTransformer
from dyllm.models.config import ConfigError
from dyllm.models.loader import CheckpointError
from dyllm.policies import SaliencyPolicy
from dyllm.policies.arguments import parse_policy_text
from dyllm.policies.plugins import PLUGINS_VARIABLE, load_plugins, plugin_sources
from dyllm.policies.registry import BuildContext, build_policy, policy_names, registered_policy
from dyllm.reference.registry import BUILTIN_MODELS, DEFAULT_MODEL, resolve_model_path

USAGE_ERRORS = (ValueError, FileNotFoundError, CheckpointError, ConfigError, KeyError)

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
    try:
        return args.run(args)
    except launch.ProcessGroupError as error:  # the same on every process: one prints it
        if launch.is_main_process():
            print(f"dyllm {args.command}: error: {error}", file=sys.stderr)
        return 2
    except USAGE_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"dyllm {args.command}: error{_process_tag()}: {message}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        if not _collective_failed(error):
            raise
        print(
            f"dyllm {args.command}: error{_process_tag()}: a collective failed, most likely "
            f"because another process stopped (its message comes first): {error}",
            file=sys.stderr,
        )
        return 2


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
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="generate text from prompts")
    generate.add_argument(
        "prompts", nargs="*", help="prompt texts (a batch); none: read one prompt from stdin"
    )
    generate.add_argument("--model", help=_model_help())
    generate.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    generate.add_argument(
        "--token-ids", action="store_true", help="prompts are comma-separated token ids"
    )
    for name, (kind, text) in SAMPLER_OPTIONS.items():
        generate.add_argument("--" + name.replace("_", "-"), type=kind, help=text)
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
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    generate.add_argument("--dtype", help="float32, float16 or bfloat16 (default: checkpoint's)")
    generate.add_argument("--json", action="store_true", help="print one JSON object")
    generate.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_tensor_parallel_flag(generate)
    generate.set_defaults(run=_run_generate)

    trace = commands.add_parser("trace", help="draw a recompute trace as a PNG heatmap")
    trace.add_argument("trace_file", type=Path, help="JSON written by `dyllm generate --trace`")
    trace.add_argument("--out", type=Path, help="PNG path (default: next to the trace)")
    trace.set_defaults(run=_run_trace)

    _add_bench(commands)

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

    defaults = BenchSettings()
    bench = commands.add_parser(
        "bench", help="accuracy against throughput for every policy on the reference tasks"
    )
    bench.add_argument("--model", help=_model_help())
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
        default=defaults.problems_per_task,
        help=f"held-out problems per task (default {defaults.problems_per_task})",
    )
    bench.add_argument("--batch-size", type=int, default=defaults.batch_size)
    bench.add_argument(
        "--repeats", type=int, default=defaults.repeats, help="timed passes (median)"
    )
    bench.add_argument("--gen-length", type=int, help="default: the checkpoint's answer length")
    bench.add_argument("--block-length", type=int, default=defaults.block_length)
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


def _add_tensor_parallel_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tensor-parallel",
        type=int,
        default=1,
        metavar="N",
        help="split the model over N processes: run under `torchrun --nproc-per-node N -m dyllm` "
        "(default 1; under torchrun without it, generate splits the prompts instead)",
    )


def _join_group(args: argparse.Namespace) -> bool:
    """Join the process group torchrun describes; True when the model is split over it (False:
    one process, or generate's data parallelism)."""
    size = args.tensor_parallel
    if size < 1:
        raise ValueError(f"--tensor-parallel must be at least 1, got {size}")
    if not launch.join_from_environment(args.device) and size > 1:
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
    from dyllm.reference.tasks import TASK_NAMES

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

    launch.agree(setup)
    model = args.model or DEFAULT_MODEL
    settings = BenchSettings(
        model=model,
        methods=[parse_method(text) for text in args.method] if args.method else None,
        tokens_per_step=tuple(args.tokens_per_step),
        thresholds=tuple(args.threshold),
        tasks=tuple(args.tasks) if args.tasks else TASK_NAMES,
        problems_per_task=args.problems_per_task,
        batch_size=args.batch_size,
        repeats=args.repeats,
        gen_length=args.gen_length,
        block_length=args.block_length,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads or None,
        seed=args.seed,
        check_invariants=args.check_invariants,
        tensor_parallel=args.tensor_parallel,
    )
    for task in settings.tasks:
        if task not in TASK_NAMES:
            raise ValueError(f"unknown task {task!r}; the suite has {', '.join(TASK_NAMES)}")
    quiet = args.quiet or not launch.is_main_process()
    log = None if quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    report = run_benchmark(settings, log=log)
    if not launch.is_main_process():
        return 0
    stem = args.name or f"{Path(model).name}-{args.device.split(':')[0]}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    print("\n" + format_headline(report["headline"]))
    print(f"JSON: {json_path}")
    if not args.no_plot:
        print(f"PNG:  {draw_curves(report, args.out_dir / f'{stem}.png')}")
    print(f"total {report['total_seconds']:.1f} s")
    return 0


def _model_help() -> str:
    names = ", ".join(sorted(BUILTIN_MODELS))
    return f"checkpoint folder or built-in name ({names}); default {DEFAULT_MODEL}"


def resolve_model(name_or_path: str | None) -> Path:
    """A checkpoint folder from a path or a built-in name; the built-in default when None."""
    return resolve_model_path(name_or_path or DEFAULT_MODEL)


def _read_prompts(args: argparse.Namespace) -> list:
    prompts = list(args.prompts)
    if not prompts:
        if sys.stdin is None or sys.stdin.isatty():
            raise ValueError("give a prompt as an argument or on standard input")
        text = sys.stdin.read().strip()
        if not text:
            raise ValueError("standard input held no prompt")
        prompts = [text]
    if not args.token_ids:
        return prompts
    try:
        return [[int(token) for token in prompt.split(",")] for prompt in prompts]
    except ValueError:
        raise ValueError("--token-ids prompts must look like 12,7,301") from None


def _run_generate(args: argparse.Namespace) -> int:
    import dyllm

    tensor_parallel = _join_group(args)
    data_parallel = launch.world_size() > 1 and not tensor_parallel

    def setup() -> tuple[list, DiffusionTransformer, dict, SaliencyPolicy]:
        _check_group_size(args)
        if launch.world_size() > 1 and not args.prompts:
            raise ValueError("under torchrun give the prompts as arguments, not on standard input")
        if data_parallel and args.trace is not None:
            raise ValueError(
                "--trace records one process's steps; with prompts shared among processes run "
                "it without torchrun (or split the model with --tensor-parallel)"
            )
        _load_plugins(args)
        prompts = _read_prompts(args)
        device = launch.process_device(args.device) if data_parallel else args.device
        model = dyllm.load(
            resolve_model(args.model),
            device=device,
            dtype=args.dtype,
            tensor_parallel=args.tensor_parallel,
        )
        options = {name: getattr(args, name) for name in SAMPLER_OPTIONS}
        options = {name: value for name, value in options.items() if value is not None}
        for flag in ("logits_eos_inf", "confidence_eos_eot_inf", "stop_at_eos"):
            if getattr(args, flag):
                options[flag] = True
        options.update(chat=args.chat, seed=args.seed)
        return prompts, model, options, _policy(args, model, prompts, options)

    prompts, model, options, policy = launch.agree(setup)
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
    if args.trace is not None:
        extra = result.stats.extra
        args.trace.write_text(json.dumps({"policy": extra["policy"], "trace": extra["trace"]}))
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    texts = result.texts or [",".join(map(str, ids)) for ids in result.token_ids]
    for number, text in enumerate(texts):
        prefix = f"[{number}] " if len(texts) > 1 else ""
        print(prefix + text)
    stats = result.stats
    print(
        f"\n{stats.generated_tokens} tokens in {stats.wall_time_s:.2f} s "
        f"({stats.tokens_per_second:.1f} tokens/s), NFE {stats.nfe}, "
        f"{stats.tokens_per_forward:.2f} tokens per forward",
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
    return 0


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

    trace = read_trace(args.trace_file)
    out = draw_trace(trace, args.out or args.trace_file.with_suffix(".png"))
    print(out)
    return 0


def describe_checkpoint(folder: Path) -> dict:
    """Family, shapes, parameter count and memory per dtype, tokenizer and template found, and
    the tensor-parallel sizes the shapes allow."""
    from dyllm.distributed.plan import valid_sizes
    from dyllm.models.loader import checkpoint_folder, locate_tensors, read_config
    from dyllm.tokenizer import Tokenizer

    folder = checkpoint_folder(folder)
    config = read_config(folder)
    key_to_shard = locate_tensors(folder)
    tokenizer = Tokenizer.from_pretrained(folder)
    parameters = config.num_parameters
    return {
        "path": str(folder),
        **config.shape_summary(),
        "max_position_embeddings": config.max_position_embeddings,
        "checkpoint_dtype": config.torch_dtype,
        "parameters": parameters,
        "weight_memory_bytes": {
            "float32": parameters * 4,
            "bfloat16": parameters * 2,
            "float16": parameters * 2,
        },
        "shards": len(set(key_to_shard.values())),
        "tensor_parallel_sizes": valid_sizes(config),
        "tokenizer": None if tokenizer is None else {"vocab_size": tokenizer.vocab_size},
        "chat_template": bool(tokenizer is not None and tokenizer.has_chat_template),
        "mask_token_id": config.mask_token_id,
        "eos_token_id": config.eos_token_id,
    }


def _run_info(args: argparse.Namespace) -> int:
    info = describe_checkpoint(resolve_model(args.model))
    if args.json:
        print(json.dumps(info))
        return 0
    memory = info["weight_memory_bytes"]
    tokenizer = info["tokenizer"]
    lines = [
        f"path           {info['path']}",
        f"family         {info['family']}",
        f"shape          {info['layers']} layers, d_model {info['hidden_size']}, "
        f"{info['heads']} heads ({info['kv_heads']} kv), FFN {info['intermediate_size']}, "
        f"vocab {info['vocab_size']}",
        f"parameters     {info['parameters']:,} in {info['shards']} file(s), "
        f"stored as {info['checkpoint_dtype']}",
        f"weights        {_size(memory['float32'])} fp32, {_size(memory['bfloat16'])} bf16/fp16",
        "tensor parallel "
        + ", ".join(map(str, info["tensor_parallel_sizes"]))
        + " processes (--tensor-parallel)",
        "tokenizer      "
        + (
            "none (generate from token ids)"
            if tokenizer is None
            else f"{tokenizer['vocab_size']} tokens"
        ),
        f"chat template  {'yes' if info['chat_template'] else 'no'}",
    ]
    print("\n".join(lines))
    return 0


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes} B"


if __name__ == "__main__":
    raise SystemExit(main())
