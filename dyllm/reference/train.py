"""Train a reference model on the task suite with the masked diffusion objective.

    python -m dyllm.reference.train --family llada --out /tmp/train/llada --seed 1 --steps 9000

Deterministic under `--seed` for a given device and thread count: the problem order comes from
the seeded task stream, the masks of step s from a generator seeded with (seed, s), the weights
from `reset_parameters(seed=...)`. A run checkpoints every `--checkpoint-every` steps
(`train_state.pt`: weights, optimizer, step) and `--resume` continues from it to the same result
as an uninterrupted run. The model folder (`<out>/model`) is the shipped format: config.json,
model.safetensors, tokenizer files, generation_config.json.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from dyllm.models import DiffusionTransformer, ModelConfig
from dyllm.reference.encoding import DEFAULT_GEN_LENGTH, collate
from dyllm.reference.export import export_checkpoint
from dyllm.reference.long_tasks import LONG_ANSWER_LENGTH, SUITES
from dyllm.reference.objective import diffusion_loss
from dyllm.reference.quick_eval import quick_score
from dyllm.reference.tasks import Problem
from dyllm.reference.vocab import VOCAB_SIZE, build_tokenizer, special_token_ids

STATE_FILE = "train_state.pt"
MODEL_FOLDER = "model"


def reference_config(
    family: str,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    max_position_embeddings: int = 256,
) -> ModelConfig:
    """Shape of a reference model; special token ids come from the family's vocabulary."""
    ids = special_token_ids(family)
    return ModelConfig(
        family=family,
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        rope_theta=10000.0,
        rms_norm_eps=1e-5 if family == "llada" else 1e-6,
        max_position_embeddings=max_position_embeddings,
        mask_token_id=ids["mask"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        bos_token_id=ids["bos"],
        torch_dtype="float32",
    )


def learning_rate(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up to `peak`, then cosine decay to a tenth of it at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms and biases)."""
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": matrices, "weight_decay": weight_decay},
        {"params": vectors, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-8)


LONG_MAX_POSITIONS = 512
"""Position limit written into a long-suite model's config (prompt 137 + answer 128 fit)."""


def suite_quick_problems(suite: str, per_task: int) -> list[Problem]:
    """The first `per_task` held-out problems of each task of `suite`, for the quick evals."""
    tasks = SUITES[suite]
    return [p for name in tasks.names for p in tasks.heldout(name)[:per_task]]


def batches(seed: int, batch_size: int, skip: int, suite: str = "short") -> Iterator[list[Problem]]:
    """Batches of the seeded training stream, the first `skip` batches dropped (for resume)."""
    tasks = SUITES[suite]
    stream = tasks.training_stream(seed, tasks.training_mix, tasks.heldout_prompts)
    for _ in range(skip * batch_size):
        next(stream)
    while True:
        yield [next(stream) for _ in range(batch_size)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dyllm.reference.train", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--family", choices=("llada", "dream"), required=True)
    parser.add_argument(
        "--suite",
        choices=tuple(SUITES),
        default="short",
        help="task suite: short (24-token answers) or long (128-token answers)",
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder (state, model, log)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=9000, help="optimizer steps (sets schedule)")
    parser.add_argument(
        "--minutes", type=float, default=None, help="wall-clock cap: stop and save when reached"
    )
    parser.add_argument(
        "--stop-at-step",
        type=int,
        default=None,
        help="stop and save after this step; the schedule still runs over --steps",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument(
        "--kv-heads",
        type=int,
        default=None,
        help="key/value heads; default: all heads for llada, half of them for dream (GQA)",
    )
    parser.add_argument("--intermediate-size", type=int, default=384)
    parser.add_argument(
        "--gen-length",
        type=int,
        default=None,
        help=f"answer region; default {DEFAULT_GEN_LENGTH} (short suite), "
        f"{LONG_ANSWER_LENGTH} (long suite)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--quick-eval-per-task", type=int, default=24, help="held-out problems per task in evals"
    )
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--resume", action="store_true", help="continue from <out>/train_state.pt")
    args = parser.parse_args(argv)
    if args.gen_length is None:
        args.gen_length = LONG_ANSWER_LENGTH if args.suite == "long" else DEFAULT_GEN_LENGTH
    return args


def save_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    args: argparse.Namespace,
) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    temporary.replace(path)


def log_line(log_file: Path, record: dict[str, object]) -> None:
    with log_file.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def train(args: argparse.Namespace) -> Path:
    """Run (or resume) training; returns the exported model folder."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device; use cpu")
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    config = reference_config(
        args.family,
        args.hidden_size,
        args.layers,
        args.heads,
        args.kv_heads or (args.heads if args.family == "llada" else args.heads // 2),
        args.intermediate_size,
        LONG_MAX_POSITIONS if args.suite == "long" else 256,
    )
    tokenizer = build_tokenizer(args.family)
    model = DiffusionTransformer(config)
    model.reset_parameters(std=0.02, seed=args.seed)
    model.to(device)
    optimizer = build_optimizer(model, args.lr, args.weight_decay)
    args.out.mkdir(parents=True, exist_ok=True)
    state_path = args.out / STATE_FILE
    log_file = args.out / "train_log.jsonl"
    step = 0
    if args.resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"--resume: no {STATE_FILE} in {args.out}; start without it")
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
    quick_problems = suite_quick_problems(args.suite, args.quick_eval_per_task)
    ids = special_token_ids(args.family)
    logit_shift = bool(config.logit_shift)
    started = time.monotonic()
    tokens_seen, running_loss, window_started = 0, 0.0, time.monotonic()
    data = batches(args.seed, args.batch_size, skip=step, suite=args.suite)
    progress = tqdm(total=args.steps, initial=step, desc=f"{args.family} train", file=sys.stderr)
    model.train()
    while step < args.steps:
        batch = collate(tokenizer, next(data), ids["eos"], args.gen_length)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.lr, args.warmup, args.steps)
        noise = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        loss = diffusion_loss(model, batch, ids["mask"], logit_shift, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        progress.update(1)
        tokens_seen += int(batch.attention_mask.sum())
        running_loss += loss.item()
        if step % args.log_every == 0:
            elapsed = time.monotonic() - window_started
            record = {
                "step": step,
                "loss": running_loss / args.log_every,
                "tokens_per_s": tokens_seen / elapsed,
                "lr": optimizer.param_groups[0]["lr"],
                "minutes": (time.monotonic() - started) / 60,
            }
            progress.set_postfix(
                loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}"
            )
            log_line(log_file, record)
            tokens_seen, running_loss, window_started = 0, 0.0, time.monotonic()
        out_of_time = args.minutes is not None and time.monotonic() - started > args.minutes * 60
        out_of_time = out_of_time or (args.stop_at_step is not None and step >= args.stop_at_step)
        if step % args.eval_every == 0 or step == args.steps or out_of_time:
            model.eval()
            score = quick_score(
                model,
                tokenizer,
                quick_problems,
                args.gen_length,
                ids["mask"],
                ids["eos"],
                logit_shift,
            )
            model.train()
            summary = " ".join(
                f"{name}={s.exact_match:.2f}/{s.token_accuracy:.3f}"
                for name, s in score.per_task.items()
            )
            progress.write(f"step {step} quick eval (exact/token): {summary}")
            log_line(log_file, {"step": step, "quick_eval": score.to_dict()})
        if step % args.checkpoint_every == 0 or step == args.steps or out_of_time:
            save_state(state_path, model, optimizer, step, args)
            export_checkpoint(model, args.out / MODEL_FOLDER, args.gen_length)
        if out_of_time:
            progress.write(
                f"stopping early at step {step} of {args.steps} (--minutes or --stop-at-step)"
            )
            break
    progress.close()
    return args.out / MODEL_FOLDER


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
