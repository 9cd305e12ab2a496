"""What each process of a test's process group runs (`tests/test_tensor_parallel.py`).

`python -m tests.distributed_jobs RANK WORLD FOLDER` joins a gloo group through a file store in
FOLDER, runs the jobs named in FOLDER/payload.pt and saves their results to FOLDER/result-RANK.pt.
The test starts these processes itself; this module imports only torch and dyllm (not pytest),
since starting processes is what the tests' time goes to.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import dyllm
from dyllm.generation import StepContext
from dyllm.models import DiffusionTransformer
from dyllm.policies import (
    AttentionSignals,
    CosineThreshold,
    DLLMCache,
    DualCache,
    EveryRow,
    LayerAdaptive,
    LayerSignals,
    PrefixCache,
    SaliencyPolicy,
    StepPlan,
    TopK,
)
from tests.recording import generate_recording

PROMPTS = {
    "one": [[5, 6, 7, 8, 9, 10, 11]],
    "padded": [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]],
}
POLICIES = ("dense", "dyllm", "topk", "dual-cache", "dllm-cache")
"""The policies the issue names; `MORE_POLICIES` adds the others."""
MORE_POLICIES = ("fast-prefix", "adaptive")


def make_policy(name: str) -> SaliencyPolicy | None:
    return {
        "dense": lambda: None,
        "dyllm": lambda: CosineThreshold(0.99, warmup_steps=2),
        "topk": lambda: TopK(0.25, warmup_steps=2),
        "dual-cache": DualCache,
        "dllm-cache": lambda: DLLMCache(prompt_interval=5, gen_interval=3),
        "every-row": EveryRow,
        "fast-prefix": PrefixCache,
        "adaptive": lambda: LayerAdaptive(taus=[0.995, 0.98], warmup_steps=2),
    }[name]()


def options(family: str) -> dict[str, Any]:
    """LLaDA greedy in two blocks; Dream sampling at temperature 0.7 (the seeded generator's
    draws are the same on every process)."""
    if family == "llada":
        return {"gen_length": 16, "steps": 16, "block_length": 8}
    return {"gen_length": 16, "steps": 16, "alg": "entropy", "temperature": 0.7}


def never_predicts_mask(model: DiffusionTransformer) -> DiffusionTransformer:
    """Push the mask token's logit to -30 at the model's one logits stage (dense and sparse
    steps alike), as a trained model effectively does. Random weights otherwise commit the mask
    token now and then; the position then stays masked, its embedding does not change, and at
    the next step nothing moves at layer 0: every cosine is 1 up to rounding, and a top-k
    selection picks among rounding noise, which a split model rounds differently."""
    mask = torch.tensor([model.config.mask_token_id])
    model.logits = lambda hidden: DiffusionTransformer.logits(model, hidden).index_fill(
        -1, mask, -30.0
    )
    return model


def forward_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids [2, 12] (the mask token among them), a left-padded second row, positions from it."""
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(3))
    ids[:, -4:] = 96
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0
    return ids, mask, (mask.cumsum(1) - 1).clamp_min(0)


class WholeReads:
    """Wraps `safe_open` and records the keys its handles read whole (`get_tensor`)."""

    def __init__(self, open_file) -> None:
        self.open_file = open_file
        self.keys: list[str] = []

    def __call__(self, *args, **kwargs):
        return _RecordingHandle(self.open_file(*args, **kwargs), self.keys)


class _RecordingHandle:
    def __init__(self, handle, read_whole: list[str]) -> None:
        self.handle, self.read_whole = handle, read_whole

    def __enter__(self):
        self.inner = self.handle.__enter__()
        return self

    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def get_tensor(self, key):
        self.read_whole.append(key)
        return self.inner.get_tensor(key)


def equivalence(rank: int, world: int, payload: dict[str, Any]) -> dict[Any, Any]:
    """Per model: whole reads, weight bytes, forward logits; per case: tokens and step logits."""
    import dyllm.models.loader as loader

    results: dict[Any, Any] = {}
    for name, folder in payload["folders"].items():
        spy = WholeReads(loader.safe_open)
        loader.safe_open = spy
        try:
            model = dyllm.load(folder, tensor_parallel=world)
        finally:
            loader.safe_open = spy.open_file
        results[(name, "whole reads")] = spy.keys
        results[(name, "weight bytes")] = sum(
            p.numel() * p.element_size() for p in model.parameters()
        )
        ids, mask, positions = forward_inputs()
        results[(name, "logits")] = model(ids, attention_mask=mask, position_ids=positions)
        never_predicts_mask(model)
        for policy, prompts in payload["cases"]:
            result, recorder = generate_recording(
                model, PROMPTS[prompts], make_policy(policy), **options(model.config.family)
            )
            results[(name, policy, prompts)] = (result.token_ids, recorder.logits)
    return results


MOE_OPTIONS = {"gen_length": 16, "steps": 16, "block_length": 8, "sampler": "llada"}
"""LLaDA's sampler, greedy, two blocks: what `tests/test_moe_models.py` runs the MoE models with
(LLaDA2's own samplers: `BLOCK_OPTIONS`)."""


BLOCK_OPTIONS = {
    "llada2": {"sampler": "llada2", "gen_length": 16, "block_length": 4, "steps": 4},
    "llada2.1": {"sampler": "llada2.1", "gen_length": 16, "block_length": 4, "max_post_steps": 2},
}
"""LLaDA2's own samplers (block diffusion, token editing) at a size that runs four blocks."""


def moe_forward_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`forward_inputs` for the tiny MoE checkpoints' 64-entry vocabulary (mask id 63)."""
    ids, mask, positions = forward_inputs()
    return torch.where(ids == 96, 63, ids % 63), mask, positions


def moe_equivalence(rank: int, world: int, payload: dict[str, Any]) -> dict[Any, Any]:
    """`equivalence` for the mixture-of-experts checkpoints, loaded in float32: per model the
    whole reads, weight bytes and forward logits; per (model, policy) the tokens and step logits
    of LLaDA's sampler."""
    import dyllm.models.loader as loader

    results: dict[Any, Any] = {}
    for name, folder in payload["folders"].items():
        spy = WholeReads(loader.safe_open)
        loader.safe_open = spy
        try:
            model = dyllm.load(folder, dtype="float32", tensor_parallel=world)
        finally:
            loader.safe_open = spy.open_file
        results[(name, "whole reads")] = spy.keys
        results[(name, "weight bytes")] = sum(
            p.numel() * p.element_size() for p in model.parameters()
        )
        ids, mask, positions = moe_forward_inputs()
        results[(name, "logits")] = model(ids, attention_mask=mask, position_ids=positions)
        never_predicts_mask(model)
        for policy in payload["policies"].get(name, ()):
            result, recorder = generate_recording(
                model, PROMPTS["padded"], make_policy(policy), **MOE_OPTIONS
            )
            results[(name, policy)] = (result.token_ids, recorder.logits)
        for sampler, policy in payload.get("block_runs", {}).get(name, ()):
            options = BLOCK_OPTIONS[sampler]
            result = dyllm.generate(model, PROMPTS["padded"], policy=make_policy(policy), **options)
            results[(name, sampler, policy)] = result.token_ids
    return results


class Accounting(SaliencyPolicy):
    """Answers as `inner` does; records per step what the byte formulas need."""

    def __init__(self, inner: SaliencyPolicy) -> None:
        self.inner, self.name, self.attention = inner, inner.name, inner.attention
        self.steps: dict[int, dict[str, Any]] = {}

    def reset(self, num_layers: int) -> None:
        self.inner.reset(num_layers)

    def plan(self, step: StepContext) -> StepPlan:
        plan = self.inner.plan(step)
        self.steps[step.step] = {
            "queries": None if plan.dense else int(plan.queries[0].sum()),
            "window": step.logit_end - step.logit_start,
            "budgets": [],
            "value_cosine_layers": 0,
        }
        return plan

    def row_budget(self, step: StepContext, layer: int, query_count: int) -> int | None:
        budget = self.inner.row_budget(step, layer, query_count)
        self.steps[step.step]["budgets"].append(budget)
        return budget

    def rows_to_refresh(self, layer: int, signals: LayerSignals) -> torch.Tensor:
        rows = self.inner.rows_to_refresh(layer, signals)
        if "value_cosine" in vars(signals):  # a cached_property lands here once read
            self.steps[signals.step.step]["value_cosine_layers"] += 1
        return rows

    def select(self, layer: int, signals: AttentionSignals) -> torch.Tensor:
        return self.inner.select(layer, signals)


def accounting(rank: int, world: int, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Per run: each step's payload bytes per collective and the step's shape."""
    from dyllm.distributed import (
        CountingCommunicator,
        ProcessGroupCommunicator,
        plan_tensor_parallel,
    )
    from dyllm.models import load as load_folder
    from dyllm.models.loader import read_config

    records = []
    for name, policy in payload["runs"]:
        folder = payload["folders"][name]
        counter = CountingCommunicator(ProcessGroupCommunicator())
        plan = plan_tensor_parallel(read_config(Path(folder)), world)
        model = never_predicts_mask(load_folder(folder, shard=plan.shard(rank, counter)))
        recorder = Accounting(make_policy(policy))
        steps: list[dict[str, Any]] = []

        def on_step(report, counter=counter, steps=steps) -> None:
            steps.append({"dense": report.dense, "bytes": dict(counter.bytes)})
            counter.reset()

        batch = PROMPTS["padded"]
        family = model.config.family
        dyllm.generate(model, batch, policy=recorder, on_step=on_step, **options(family))
        for number, step in enumerate(steps):
            step.update(recorder.steps[number])
        records.append({"model": name, "policy": policy, "batch": len(batch), "steps": steps})
    return records


def command_line(rank: int, world: int, payload: dict[str, Any]) -> dict[str, Any]:
    """Each command's exit status, standard output and standard error on this process."""
    from dyllm.cli import main

    outputs = {}
    for label, argv in payload["commands"].items():
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = main(argv)
        outputs[label] = (status, stdout.getvalue(), stderr.getvalue())
    return outputs


def host_syncs(rank: int, world: int, payload: dict[str, Any]) -> dict[str, list[dict]]:
    """Per policy: the read-backs inside each sparse step's layer loop (must be none with
    capacities planned before the step, what CUDA gets; the CPU default reads counts back)."""
    from dyllm.engine.sparse_step import SparseStep
    from tests.sync_counter import SyncCounter

    os.environ["DYLLM_ROW_CAPACITY"] = "planned"

    model = dyllm.load(payload["folder"], tensor_parallel=world)
    counts: dict[str, list[dict]] = {}
    original = SparseStep.run

    def counted_run(self, *args, **kwargs):
        with SyncCounter() as counter:
            logits = original(self, *args, **kwargs)
        counts[current].append(dict(counter.calls))
        return logits

    SparseStep.run = counted_run
    try:
        for current in payload["policies"]:
            counts[current] = []
            dyllm.generate(
                model, PROMPTS["padded"], policy=make_policy(current), **options("llada")
            )
    finally:
        SparseStep.run = original
    return counts


JOBS = {
    "equivalence": equivalence,
    "moe_equivalence": moe_equivalence,
    "accounting": accounting,
    "command_line": command_line,
    "host_syncs": host_syncs,
}


def main(rank: int, world: int, folder: Path) -> None:
    torch.set_num_threads(1)
    payload = torch.load(folder / "payload.pt", weights_only=False)
    store = folder / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    results = {job: JOBS[job](rank, world, payload[job]) for job in payload["jobs"]}
    torch.save(results, folder / f"result-{rank}.pt")
    if not payload.get("peer_crashes"):
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skips the interpreter's teardown of torch: seconds with 4 processes on 2 cores


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
