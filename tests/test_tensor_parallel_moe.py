"""Tensor parallelism of the mixture-of-experts families on the CPU with gloo: 2 processes
compute what one process computes.

LLaDA-MoE (tiny: 2 heads, a dense layer 0 and a MoE layer 1 with expert bias and a shared
expert) and LLaDA2 (4 heads, 2 key/value heads, fused QKV, partial RoPE, a dense layer 0 and a
grouped-sigmoid MoE layer 1), written by `tests/moe_checkpoints.py` in bfloat16 and loaded in
float32. One spawned group runs every check that needs processes (`tests/distributed_jobs.py`,
job `moe_equivalence`).

Tolerance: 1e-4 absolute, 1e-5 relative (the dense families' test uses 2e-5 absolute). The
split changes only the order of float32 sums: the router's input is the all-reduced hidden state
(the same bits on every process) and its weights are whole, so every process picks the same
experts with the same float32 weights; each expert's down projection adds d_e / N columns per
process instead of d_e, the routed weights multiply those partial sums (w (a + b) = w a + w b up
to one rounding), and the layer's one all-reduce adds them. LLaDA2 sums the weighted experts in
float32 and casts to the activation dtype; in float32 the cast is exact, so whether it comes
before or after the all-reduce does not matter here (bfloat16: docs/tensor-parallel.md). The
absolute rounding is larger than the dense test models': these checkpoints' random weights have
standard deviation 1, so the final hidden states reach 285 (rms 63) and one unit in the last
place there is 3e-5. Measured: the single process's own float32 logits are 1.3e-5 (LLaDA-MoE)
and 6e-6 (LLaDA2) from its float64 logits; the split's are 3.8e-5 and 7.6e-6 from the single
process's (logits up to 16). 1e-4 is 2.6 times the worst of these, while a wrong slice or a
missing sum moves logits by order 1 (swapping a fused QKV's K and V ranges fails every LLaDA2
check here).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

import dyllm
from dyllm.distributed import TensorParallelError, plan_tensor_parallel, valid_sizes
from dyllm.distributed.accounting import replicated_weight_bytes, weight_bytes
from dyllm.models import DiffusionTransformer, preset
from dyllm.models.keymaps import checkpoint_keys
from dyllm.models.moe_config import read_moe_config
from tests.distributed_jobs import (
    BLOCK_OPTIONS,
    MOE_OPTIONS,
    PROMPTS,
    make_policy,
    moe_forward_inputs,
    never_predicts_mask,
)
from tests.moe_checkpoints import TINY_CONFIGS, write_tiny_moe_checkpoint
from tests.recording import generate_recording
from tests.test_tensor_parallel import ProcessGroupCommunicatorStub, spawn

ATOL, RTOL = 1e-4, 1e-5
FAMILIES = ("llada_moe", "llada2")
POLICIES = {"llada_moe": ("dense", "dyllm", "every-row"), "llada2": ("dense", "dyllm")}
"""LLaDA's sampler under every policy the issue names on LLaDA-MoE; on LLaDA2 a dense and a
DyLLM run of the same sampler, which drive the fused QKV's per-part row slices through the
sparse step."""

BLOCK_RUNS = {
    "llada2": (("llada2", "dense"), ("llada2", "dyllm"), ("llada2.1", "dense")),
}
"""LLaDA2's own samplers split over processes: block diffusion (exact block cache) dense and
with DyLLM selecting rows inside the current block, and token editing."""

REPLICATED = ("norm.weight", "ffn.gate.weight", "ffn.expert_bias")
"""Parameter-name endings every process reads whole: norms (QK-norms too), router, expert bias."""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tp-moe")
    for family in FAMILIES:
        write_tiny_moe_checkpoint(family, root / family, seed=5)
    return {family: root / family for family in FAMILIES}


@pytest.fixture(scope="module")
def two_processes(
    checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> list[dict[Any, Any]]:
    folders = {family: str(path) for family, path in checkpoints.items()}
    payload = {
        "jobs": ["moe_equivalence"],
        "moe_equivalence": {"folders": folders, "policies": POLICIES, "block_runs": BLOCK_RUNS},
    }
    runs = spawn(2, payload, tmp_path_factory.mktemp("tp-moe-run") / "run")
    return [run["moe_equivalence"] for run in runs]  # type: ignore[index]


@pytest.mark.parametrize("family", FAMILIES)
def test_split_logits_equal_one_process(
    family: str, two_processes: list[dict[Any, Any]], checkpoints: dict[str, Path]
) -> None:
    single = dyllm.load(checkpoints[family], dtype="float32")
    ids, mask, positions = moe_forward_inputs()
    expected = single(ids, attention_mask=mask, position_ids=positions)
    shapes = {name: tuple(p.shape) for name, p in single.named_parameters()}
    names = {key: entry[0] for key, entry in checkpoint_keys(single.config, shapes).items()}
    for rank, result in enumerate(two_processes):
        torch.testing.assert_close(result[(family, "logits")], expected, atol=ATOL, rtol=RTOL)
        # only the replicated tensors were read whole; every split one by its slices
        whole = {names[key] for key in result[(family, "whole reads")]}
        assert any(name.endswith("ffn.gate.weight") for name in whole), whole
        assert all(name.endswith(REPLICATED) for name in whole), whole
        held = result[(family, "weight bytes")]
        assert held == weight_bytes(single.config, 2, 4)[rank]
        assert held < sum(p.numel() * 4 for p in single.parameters()) * 0.75


@pytest.mark.parametrize(
    ("family", "policy"), [(f, p) for f, policies in POLICIES.items() for p in policies]
)
def test_split_generation_gives_the_single_process_tokens(
    family: str, policy: str, two_processes: list[dict[Any, Any]], checkpoints: dict[str, Path]
) -> None:
    model = never_predicts_mask(dyllm.load(checkpoints[family], dtype="float32"))
    result, recorder = generate_recording(
        model, PROMPTS["padded"], make_policy(policy), **MOE_OPTIONS
    )
    if policy != "dense":
        assert not all(recorder.dense), "the policy ran no sparse step"
    for rank, run in enumerate(two_processes):
        tokens, logits = run[(family, policy)]
        assert tokens == result.token_ids, (family, policy, rank)
        assert len(logits) == len(recorder.logits)
        for step, (got, want) in enumerate(zip(logits, recorder.logits, strict=True)):
            torch.testing.assert_close(
                got, want, atol=ATOL, rtol=RTOL, msg=f"{family} {policy} step {step}"
            )


@pytest.mark.parametrize(
    ("sampler", "policy"), [run for runs in BLOCK_RUNS.values() for run in runs]
)
def test_split_block_diffusion_gives_the_single_process_tokens(
    sampler: str, policy: str, two_processes: list[dict[Any, Any]], checkpoints: dict[str, Path]
) -> None:
    model = never_predicts_mask(dyllm.load(checkpoints["llada2"], dtype="float32"))
    expected = dyllm.generate(
        model, PROMPTS["padded"], policy=make_policy(policy), **BLOCK_OPTIONS[sampler]
    )
    for rank, run in enumerate(two_processes):
        assert run[("llada2", sampler, policy)] == expected.token_ids, (sampler, policy, rank)


# ------------------------------------------------------------------ the plan, without processes


def test_moe_plans_name_the_sizes_that_divide_heads_and_every_width() -> None:
    llada_moe = read_moe_config(TINY_CONFIGS["llada_moe"])  # 2 heads; widths 24, 12, 10
    llada2 = read_moe_config(TINY_CONFIGS["llada2"])  # 4 heads, 2 KV; widths 24, 12, 12
    assert valid_sizes(llada_moe) == [1, 2]
    assert valid_sizes(llada2) == [1, 2, 4]  # 4: each KV head on 2 processes
    assert plan_tensor_parallel(llada2, 4).describe()["expert_columns"] == 3
    experts = dataclasses.replace(llada2.experts, expert_intermediate_size=14)
    odd = dataclasses.replace(llada2, experts=experts)
    with pytest.raises(TensorParallelError, match=r"14 columns of each expert .* \(1, 2\)"):
        plan_tensor_parallel(odd, 4)
    shared = dataclasses.replace(llada2.experts, shared_expert_intermediate_size=6)
    with pytest.raises(TensorParallelError, match="6 columns of the shared expert"):
        plan_tensor_parallel(dataclasses.replace(llada2, experts=shared), 4)
    # every layer a mixture of experts: no dense width to divide
    all_moe = dataclasses.replace(
        llada_moe,
        intermediate_size=0,
        experts=dataclasses.replace(llada_moe.experts, moe_layers=(True, True)),
    )
    assert valid_sizes(all_moe) == [1, 2]
    shard = plan_tensor_parallel(all_moe, 2).shard(1, ProcessGroupCommunicatorStub())
    assert shard.intermediate == (0, 0)
    shard.check(all_moe)


def test_fused_qkv_and_expert_slices() -> None:
    """LLaDA2 at 4 processes: rank 1 holds query head 1 and key/value head 0 (shared with rank
    0); its fused QKV rows are Q head 1, K head 0 and V head 0 of the [Q | K | V] layout."""
    config = read_moe_config(TINY_CONFIGS["llada2"])  # head_dim 8: Q rows 0-31, K 32-47, V 48-63
    shard = plan_tensor_parallel(config, 4).shard(1, ProcessGroupCommunicatorStub())
    assert shard.parameter_slice("layers.0.qkv_proj.weight", config) == (
        0,
        ((8, 16), (32, 40), (48, 56)),
    )
    assert shard.parameter_slice("layers.1.ffn.experts.5.gate_proj.weight", config) == (
        0,
        ((3, 6),),
    )
    assert shard.parameter_slice("layers.1.ffn.experts.7.down_proj.weight", config) == (
        1,
        ((3, 6),),
    )
    assert shard.parameter_slice("layers.1.ffn.shared_expert.up_proj.weight", config) == (
        0,
        ((3, 6),),
    )
    assert shard.parameter_slice("layers.0.ffn.down_proj.weight", config) == (1, ((6, 12),))
    for replicated in (
        "layers.1.ffn.gate.weight",
        "layers.1.ffn.expert_bias",
        "layers.0.q_norm.weight",
    ):
        assert shard.parameter_slice(replicated, config) is None


@pytest.mark.parametrize("name", ["llada_moe", "llada2", "tiny-dream"])
def test_replicated_bytes_are_the_parameters_no_process_splits(name: str) -> None:
    config = preset(name) if name.startswith("tiny") else read_moe_config(TINY_CONFIGS[name])
    shard = plan_tensor_parallel(config, 2).shard(0, ProcessGroupCommunicatorStub())
    with torch.device("meta"):
        model = DiffusionTransformer(config)
    whole = sum(
        p.numel() for n, p in model.named_parameters() if shard.parameter_slice(n, config) is None
    )
    assert replicated_weight_bytes(config, 2) == whole * 2
