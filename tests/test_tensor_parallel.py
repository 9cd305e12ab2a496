"""Tensor parallelism on the CPU with gloo: every process computes what one process computes.

The tests spawn their own process groups (gloo, a file store in the test's folder, one torch
thread per process) over tiny checkpoints of both families written by `tests/checkpoints.py`:
LLaDA (4 heads, 4 key/value heads), Dream (4 heads, 2 key/value heads: split at 2 processes,
replicated at 4) and Dream with 1 key/value head (replicated at 2). Vocabularies of 97 entries
split unevenly. Each spawned run does many checks, since starting processes is what costs.

Tolerance of the logits: 2e-5 absolute, 1e-5 relative, as the sparse step's own contract test.
A split changes only the order of float32 sums: o_proj and the FFN's down projection add N
partial products of d / N terms each instead of one of d terms (the embedding's sum over
processes adds exact zeros, the vocabulary gather moves values unchanged). Each reordering moves
a result by a few units in the last place (about 1e-7 relative); two layers and the LM head keep
the logits of these models (magnitude 1 to 10) within about 1e-6 of the single process, so the
bound has a margin of 10 while any wrong split or missing sum is off by order 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import dyllm
from dyllm.cli import main as cli_main
from dyllm.distributed import TensorParallelError, plan_tensor_parallel, valid_sizes
from dyllm.distributed.accounting import dense_step_bytes, sparse_step_bytes, weight_bytes
from dyllm.distributed.data_parallel import share
from dyllm.models import ModelConfig, preset
from dyllm.models.keymaps import checkpoint_keys
from dyllm.models.parallel import SPLITS
from tests.checkpoints import write_tiny_checkpoint, write_tiny_tokenizer
from tests.distributed_jobs import (
    MORE_POLICIES,
    POLICIES,
    PROMPTS,
    forward_inputs,
    make_policy,
    never_predicts_mask,
    options,
)
from tests.recording import generate_recording

ATOL, RTOL = 2e-5, 1e-5
REPOSITORY = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240

MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "llada": ("llada", {}),
    "dream": ("dream", {}),
    "dream-kv1": ("dream", {"num_kv_heads": 1}),
}


def environment() -> dict[str, str]:
    """This checkout first on the path, one thread per process."""
    paths = [str(REPOSITORY), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(paths)}


def spawn(
    world: int, payload: dict[str, Any], folder: Path, expect_exit: dict[int, int] | None = None
) -> list[dict[str, Any] | None]:
    """Run the jobs of `payload` in a group of `world` fresh processes
    (`tests/distributed_jobs.py`); their results by rank (None for a process expected to exit
    early with the status `expect_exit` gives)."""
    expect_exit = expect_exit or {}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(payload, folder / "payload.pt")
    command = [sys.executable, "-m", "tests.distributed_jobs"]
    processes = [
        subprocess.Popen([*command, str(rank), str(world), str(folder)], env=environment())
        for rank in range(world)
    ]
    deadline = time.monotonic() + TIMEOUT_S
    statuses = {}
    for rank, process in enumerate(processes):
        try:
            statuses[rank] = process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            pytest.fail(f"process {rank} of {world} did not finish in time (a hang?)")
    assert statuses == {rank: expect_exit.get(rank, 0) for rank in range(world)}, statuses
    results = [folder / f"result-{rank}.pt" for rank in range(world)]
    return [
        None if rank in expect_exit else torch.load(results[rank], weights_only=False)
        for rank in range(world)
    ]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tp-checkpoints")
    folders = {}
    for name, (family, overrides) in MODELS.items():
        folders[name] = root / name
        # LLaDA's in shards with an index, as the released checkpoints are
        shard_bytes = 40_000 if family == "llada" else None
        write_tiny_checkpoint(
            family, folders[name], seed=11, max_shard_bytes=shard_bytes, **overrides
        )
    write_tiny_tokenizer(folders["llada"])
    return folders


CLI_COMMON = ["generate", "--gen-length", "16", "--steps", "16", "--block-length", "8"]
CLI_COMMON += ["--json", "--no-progress"]
CLI_PROMPTS = ["1+2=", "sort 312 =", "abc"]


@pytest.fixture(scope="module")
def two_processes(
    checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    """One group of 2 processes runs every check that needs one (starting processes is what
    costs): the equivalence cases, the byte accounting and the command line."""
    folder = tmp_path_factory.mktemp("two-processes")
    plugin = folder / "fails_on_rank_1.py"
    plugin.write_text(
        "import torch.distributed as dist\n"
        "if dist.get_rank() == 1:\n"
        "    raise ValueError('the plugin refuses process 1')\n"
    )
    model = ["--model", str(checkpoints["llada"])]
    folders = {name: str(path) for name, path in checkpoints.items()}
    split = ["--tensor-parallel", "2"]
    runs = [("llada", "topk"), ("dream-kv1", "dllm-cache")]
    payload = {
        "jobs": ["equivalence", "accounting", "command_line", "host_syncs"],
        "equivalence": {
            "folders": folders,
            "cases": [(policy, prompts) for policy in POLICIES for prompts in PROMPTS]
            + [(policy, "padded") for policy in MORE_POLICIES],
        },
        "host_syncs": {"folder": folders["llada"], "policies": ["dyllm", "topk", "dllm-cache"]},
        "accounting": {"folders": folders, "runs": runs},
        "command_line": {
            "commands": {
                "tensor": [*CLI_COMMON, *model, *CLI_PROMPTS, "--policy", "dyllm", *split],
                "data": [*CLI_COMMON, *model, *CLI_PROMPTS, "--policy", "dyllm"],
                "fails": [*CLI_COMMON, *model, "x", "--plugin", str(plugin), *split],
            }
        },
    }
    return spawn(2, payload, folder / "run")  # type: ignore[return-value]


# ------------------------------------------------------------------ single-process references


def _reference(folder: Path, policy: str, prompts: str):
    model = never_predicts_mask(dyllm.load(folder))
    result, recorder = generate_recording(
        model, PROMPTS[prompts], make_policy(policy), **options(model.config.family)
    )
    return result.token_ids, recorder.logits


def _check_equivalence(
    results: list[dict[Any, Any]], checkpoints: dict[str, Path], world: int
) -> None:
    for name, folder in checkpoints.items():
        if (name, "logits") not in results[0]:
            continue
        single = dyllm.load(folder)
        config = single.config
        ids, mask, positions = forward_inputs()
        expected = single(ids, attention_mask=mask, position_ids=positions)
        full_shapes = {n: tuple(p.shape) for n, p in single.named_parameters()}
        names = {key: entry[0] for key, entry in checkpoint_keys(config, full_shapes).items()}
        for rank, result in enumerate(results):
            torch.testing.assert_close(result[(name, "logits")], expected, atol=ATOL, rtol=RTOL)
            # the loader read only slices of the split tensors: whole reads are the norms
            whole = {names[key] for key in result[(name, "whole reads")]}
            assert whole and all(n.endswith("norm.weight") for n in whole), (name, whole)
            assert result[(name, "weight bytes")] == weight_bytes(config, world, 4)[rank]
        cases = [key for key in results[0] if key[0] == name and len(key) == 3]
        assert cases
        for _, policy, prompts in cases:
            tokens, logits = _reference(folder, policy, prompts)
            for result in results:  # every process: the single process's tokens
                got_tokens, got_logits = result[(name, policy, prompts)]
                assert got_tokens == tokens, (name, policy, prompts)
                assert len(got_logits) == len(logits)
                for step, (got, want) in enumerate(zip(got_logits, logits, strict=True)):
                    torch.testing.assert_close(
                        got, want, atol=ATOL, rtol=RTOL, msg=f"{name} {policy} step {step}"
                    )


def test_two_processes_equal_one_for_both_families_every_policy_and_batch(
    two_processes: list[dict[str, Any]], checkpoints: dict[str, Path]
) -> None:
    results = [result["equivalence"] for result in two_processes]
    _check_equivalence(results, checkpoints, 2)


def test_no_read_back_inside_the_layer_loop_of_a_split_model(
    two_processes: list[dict[str, Any]],
) -> None:
    """The collectives are device operations: the sparse step's layer loop still reads nothing
    back to the host (tests/test_host_syncs.py, one process)."""
    for result in two_processes:
        for policy, steps in result["host_syncs"].items():
            assert steps, f"{policy} ran no sparse step"
            assert all(not calls for calls in steps), (policy, steps)


@pytest.mark.parametrize(
    "cases",
    [
        pytest.param([("dyllm", "padded"), ("dllm-cache", "padded")], id="dyllm-dllm-cache"),
        pytest.param(
            [(policy, prompts) for policy in POLICIES for prompts in PROMPTS],
            id="every-policy-and-batch",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_four_processes_equal_one_with_replicated_key_value_heads(
    cases: list[tuple[str, str]], checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """4 processes: LLaDA one head each, Dream's 2 key/value heads each on 2 processes (the V
    cosine of dLLM-Cache counts each once). The default run takes DyLLM and dLLM-Cache on the
    padded batch (4 processes on 2 cores are slow to start and to synchronise); `make
    test-slow` runs every policy and both batches."""
    folders = {n: str(checkpoints[n]) for n in ("llada", "dream")}
    payload = {"jobs": ["equivalence"], "equivalence": {"folders": folders, "cases": cases}}
    results = [result["equivalence"] for result in spawn(4, payload, tmp_path / "run")]
    _check_equivalence(results, {n: checkpoints[n] for n in folders}, 4)


def test_bytes_communicated_per_step_match_the_formulas(
    two_processes: list[dict[str, Any]], checkpoints: dict[str, Path]
) -> None:
    records = [result["accounting"] for result in two_processes]
    assert records[0] == records[1]  # every process hands the same bytes to the collectives
    for record in records[0]:
        config = dyllm.load(checkpoints[record["model"]]).config
        batch, length = record["batch"], 7 + 16
        kinds = set()
        for step in record["steps"]:
            if step["dense"]:
                expected = dense_step_bytes(config, 2, batch, length, step["window"], 4)
            else:
                queries = step["queries"]
                capacities = [min(max(b, 0), queries) for b in step["budgets"]]
                expected = sparse_step_bytes(
                    config,
                    2,
                    batch,
                    queries,
                    step["window"],
                    capacities,
                    4,
                    value_cosine_layers=step["value_cosine_layers"],
                )
            kinds.add((step["dense"], step["value_cosine_layers"] > 0))
            assert step["bytes"] == expected, (record["model"], record["policy"], step)
        assert (True, False) in kinds and (False, False) in kinds
        if record["policy"] == "dllm-cache":
            assert (False, True) in kinds


def test_command_line_under_a_process_group(
    two_processes: list[dict[str, Any]], checkpoints: dict[str, Path], capsys
) -> None:
    """generate split over 2 processes, generate with the prompts shared between them, and a
    setup error on process 1 only: it ends both, the first process prints it once."""
    outputs = [result["command_line"] for result in two_processes]
    model = ["--model", str(checkpoints["llada"])]
    assert cli_main([*CLI_COMMON, *model, *CLI_PROMPTS, "--policy", "dyllm"]) == 0
    single = json.loads(capsys.readouterr().out)

    status, out, _ = outputs[0]["tensor"]
    assert status == 0 and outputs[1]["tensor"][:2] == (0, "")  # only the first one prints
    assert json.loads(out)["token_ids"] == single["token_ids"]
    assert json.loads(out)["texts"] == single["texts"]

    status, out, _ = outputs[0]["data"]
    assert status == 0 and outputs[1]["data"][:2] == (0, "")
    shared = json.loads(out)
    assert shared["token_ids"] == single["token_ids"]  # 2 prompts on one process, 1 on the other
    assert [len(stats["generated_tokens_per_row"]) for stats in shared["process_stats"]] == [2, 1]

    for rank, (status, out, err) in enumerate(output["fails"] for output in outputs):
        assert status == 2 and out == ""
        if rank == 0:  # one line, naming the process and its error
            assert err.startswith("dyllm generate: error: process 1 of 2: plugin ")
            assert err.count("\n") == 1 and "the plugin refuses process 1" in err
        else:
            assert err == ""


CRASHING_PLUGIN = """
import os

import torch.distributed as dist

from dyllm.policies import TopK
from dyllm.policies.registry import register_policy


@register_policy("crashes-on-1")
class CrashesOnOne(TopK):
    def __init__(self) -> None:
        super().__init__(0.25, warmup_steps=2)

    def select(self, layer, signals):
        if dist.get_rank() == 1 and signals.step.step == 4 and layer == 1:
            os._exit(3)  # a crash in the middle of a step: no message, no cleanup
        return super().select(layer, signals)
"""


def test_a_process_crashing_mid_step_ends_the_others_with_a_message(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    plugin = tmp_path / "crashing.py"
    plugin.write_text(CRASHING_PLUGIN)
    argv = [*CLI_COMMON, "--model", str(checkpoints["llada"]), "sort 312 ="]
    argv += ["--plugin", str(plugin), "--policy", "crashes-on-1", "--tensor-parallel", "2"]
    payload = {
        "jobs": ["command_line"],
        "command_line": {"commands": {"crash": argv}},
        "peer_crashes": True,
    }
    results = spawn(2, payload, tmp_path / "run", expect_exit={1: 3})
    status, out, err = results[0]["command_line"]["crash"]  # type: ignore[index]
    assert status == 2 and out == ""
    assert "dyllm generate: error (process 0 of 2): a collective failed" in err


def test_torchrun_runs_dyllm_split_over_two_processes(checkpoints: dict[str, Path], capsys) -> None:
    """The documented launch: torchrun ... -m dyllm generate ... --tensor-parallel 2."""
    argv = [*CLI_COMMON, "--model", str(checkpoints["llada"]), "sort 312 ="]
    argv += ["--policy", "topk:k=0.25"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    completed = subprocess.run(
        [*launcher, "--nproc-per-node", "2", "-m", "dyllm", *argv, "--tensor-parallel", "2"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=environment(),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1  # one JSON object: only the first process printed
    assert cli_main(argv) == 0
    assert json.loads(lines[0])["token_ids"] == json.loads(capsys.readouterr().out)["token_ids"]


# ------------------------------------------------------------------ the plan, without processes


def test_plans_refuse_impossible_splits_and_name_the_sizes_that_work() -> None:
    assert valid_sizes(preset("llada-8b")) == [1, 2, 4, 8, 16, 32]
    assert valid_sizes(preset("dream-7b")) == [1, 2, 4]
    with pytest.raises(TensorParallelError, match=r"28 attention heads .* \(1, 2, 4\)"):
        plan_tensor_parallel(preset("dream-7b"), 8)
    odd = ModelConfig(
        family="llada",
        vocab_size=64,
        hidden_size=96,
        num_layers=1,
        num_heads=12,
        num_kv_heads=4,
        intermediate_size=96,
    )
    with pytest.raises(TensorParallelError, match="4 key/value heads can be neither divided"):
        plan_tensor_parallel(odd, 6)
    with pytest.raises(TensorParallelError, match="at least 1"):
        plan_tensor_parallel(odd, 0)


def test_a_plan_replicates_key_value_heads_when_there_are_fewer_than_processes() -> None:
    config = preset("tiny-dream")  # 4 query heads, 2 key/value heads, vocabulary 97
    plan = plan_tensor_parallel(config, 4)
    shards = [plan.shard(rank, ProcessGroupCommunicatorStub()) for rank in range(4)]
    assert [s.heads for s in shards] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert [s.kv_heads for s in shards] == [(0, 1), (0, 1), (1, 2), (1, 2)]
    assert [s.owns_kv_heads for s in shards] == [True, False, True, False]
    assert [s.vocab for s in shards] == [(0, 25), (25, 50), (50, 75), (75, 97)]
    assert shards[0].parameter_slice("layers.1.k_proj.weight", config) == (0, ((0, 16),))
    assert shards[3].parameter_slice("layers.0.o_proj.weight", config) == (1, ((48, 64),))
    assert shards[2].parameter_slice("final_norm.weight", config) is None
    assert set(SPLITS) >= {"q_proj.weight", "ffn.down_proj.weight", "lm_head.weight"}


def test_info_names_the_tensor_parallel_sizes(checkpoints: dict[str, Path], capsys) -> None:
    assert cli_main(["info", str(checkpoints["dream"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tensor_parallel_sizes"] == [1, 2, 4]
    assert cli_main(["info", str(checkpoints["dream"])]) == 0
    assert "tensor parallel 1, 2, 4 processes" in capsys.readouterr().out


def test_load_with_tensor_parallel_needs_a_process_group(checkpoints: dict[str, Path]) -> None:
    with pytest.raises(TensorParallelError, match="torchrun --nproc-per-node 2"):
        dyllm.load(checkpoints["llada"], tensor_parallel=2)
    with pytest.raises(ValueError, match="at least 1"):
        dyllm.load(checkpoints["llada"], tensor_parallel=0)
    command = ["generate", "--model", str(checkpoints["llada"]), "x", "--tensor-parallel", "2"]
    assert cli_main(command) == 2


def test_shares_of_prompts_concatenate_in_order() -> None:
    items = list(range(7))
    shares = [share(items, rank, 3) for rank in range(3)]
    assert shares == [[0, 1, 2], [3, 4], [5, 6]]
    assert share(items[:1], 1, 2) == []


class ProcessGroupCommunicatorStub:
    """A communicator for plans that are only inspected."""

    rank, world_size = 0, 1

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        raise AssertionError("not used")

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        raise AssertionError("not used")
