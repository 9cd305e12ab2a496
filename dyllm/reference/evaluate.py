"""Score a checkpoint on the held-out task suite with `dyllm.generation.generate` and its defaults.

    python -m dyllm.reference.evaluate --model llada-ref --out eval.json
    python -m dyllm.reference.evaluate --model RUN/model --suite long --out eval.json

Dense generation, the model's own default sampler (what `generation_config.json` sets: LLaDA's
low-confidence remasking, Dream's entropy order, greedy), answer length from the checkpoint's
`gen_length` (LLaDA) or `max_new_tokens` (Dream). The JSON records the per-task and overall
scores, the resolved sampler options, the time taken and the machine, so the figure a test
compares against is tied to how it was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

import dyllm
from dyllm.generation import GenerationConfig
from dyllm.generation.config import LLADA_ONLY_DEFAULTS, resolve_config
from dyllm.models import DiffusionTransformer
from dyllm.reference.long_tasks import SUITES
from dyllm.reference.registry import resolve_model_path
from dyllm.reference.scoring import SuiteScore, score_predictions
from dyllm.reference.tasks import Problem


def default_gen_length(model: DiffusionTransformer) -> int:
    """The answer length the checkpoint was trained for, from its generation_config.json."""
    defaults = model.generation_defaults
    for key in ("gen_length", "max_new_tokens"):
        if isinstance(defaults.get(key), int):
            return defaults[key]
    raise ValueError(
        "the checkpoint's generation_config.json has neither gen_length nor max_new_tokens; "
        "it is not a reference model folder (retrain or re-export it)"
    )


def sampler_settings(model: DiffusionTransformer) -> dict[str, Any]:
    """The fully resolved default sampler options `generate` will use for `model`."""
    requested = GenerationConfig(gen_length=default_gen_length(model))
    config = resolve_config(requested, model.config.family, model.generation_defaults)
    resolved = config.to_dict()
    foreign = LLADA_ONLY_DEFAULTS if resolved["sampler"] == "dream" else {}
    return {
        key: value
        for key, value in resolved.items()
        if value is not None and key not in foreign and key != "progress"
    }


def generate_answers(
    model: DiffusionTransformer, problems: list[Problem], batch_size: int
) -> tuple[list[str], float]:
    """Answer texts for `problems` with the default sampler, and the seconds spent generating."""
    gen_length = default_gen_length(model)
    answers: list[str] = []
    seconds = 0.0
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        result = dyllm.generate(model, [p.prompt for p in chunk], gen_length=gen_length)
        if result.texts is None:
            raise ValueError("the checkpoint has no tokenizer files; cannot decode answers")
        answers.extend(result.texts)
        seconds += result.stats.wall_time_s
    return answers, seconds


def evaluate(
    model: DiffusionTransformer, problems: list[Problem], batch_size: int = 50
) -> tuple[SuiteScore, float]:
    """Score `model` on `problems`; returns the scores and the generation seconds."""
    answers, seconds = generate_answers(model, problems, batch_size)
    return score_predictions(problems, answers), seconds


def suite_heldout(suite: str, per_task: int | None) -> tuple[list[Problem], dict[str, Any]]:
    """The held-out problems of `suite` ("short" or "long"), the first `per_task` of each task
    if given, and their description for the JSON."""
    tasks = SUITES[suite]
    problems = [p for name in tasks.names for p in tasks.heldout(name)[:per_task]]
    description = {"suite": suite, "seed": tasks.heldout_seed, "tasks": list(tasks.names)}
    return problems, {**description, "problems": len(problems)}


def machine_description() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def training_record(run: Path) -> dict[str, Any]:
    """Arguments, steps and wall time of the training run in folder `run` (from train.py)."""
    state_file, log_file = run / "train_state.pt", run / "train_log.jsonl"
    if not state_file.is_file() or not log_file.is_file():
        raise FileNotFoundError(f"{run} is not a training run folder (no train_state.pt/log)")
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    timed = [r for r in records if "minutes" in r]
    return {
        "arguments": state["args"],
        "steps_completed": state["step"],
        "minutes": round(timed[-1]["minutes"], 1) if timed else None,
        "mean_tokens_per_s": round(sum(r["tokens_per_s"] for r in timed) / len(timed))
        if timed
        else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dyllm.reference.evaluate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", required=True, help="built-in name or checkpoint folder")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument(
        "--suite", choices=("short", "long"), default="short", help="which held-out set"
    )
    parser.add_argument(
        "--per-task", type=int, default=None, help="only the first N held-out problems per task"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--train-run", type=Path, default=None, help="training folder to record in the JSON"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    folder = resolve_model_path(args.model)
    model = dyllm.load(folder, device="cpu")
    problems, heldout = suite_heldout(args.suite, args.per_task)
    started = time.perf_counter()
    score, generation_seconds = evaluate(model, problems, args.batch_size)
    report = {
        "model": args.model,
        "family": model.config.family,
        "heldout": heldout,
        "generation": "dyllm.generation.generate, dense, the checkpoint's default sampler",
        "sampler": sampler_settings(model),
        "batch_size": args.batch_size,
        **score.to_dict(),
        "generation_seconds": round(generation_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "machine": machine_description(),
    }
    if args.train_run is not None:
        report["training"] = training_record(args.train_run)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"{name}: exact {s.exact_match:.3f} token {s.token_accuracy:.3f}"
        for name, s in score.per_task.items()
    ]
    print(
        "\n".join(
            [
                *lines,
                f"overall: exact {score.overall.exact_match:.3f} "
                f"token {score.overall.token_accuracy:.3f}",
            ]
        )
    )


if __name__ == "__main__":
    main()
