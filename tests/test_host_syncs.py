"""With planned capacities (a GPU's default), the sparse step reads nothing back to the host
inside its layer loop.

On a GPU every read-back (`.item()`, `bool(t)`, `int(t)`, `.tolist()`, `nonzero`, a boolean-mask
index) waits for the launch queue to drain. `SyncCounter` (`tests/sync_counter.py`), a
`TorchFunctionMode`, records each such call; the tests count them inside `SparseStep.run` (the
layer loop: none allowed) and over whole generations of tiny models with 2 and with 6 layers
(the count must not grow with depth). Under tensor parallelism the same holds
(`tests/test_tensor_parallel.py`).

Mixture-of-experts layers (LLaDA-MoE, LLaDA2) are the documented exception: the grouped expert
matmuls are sized by the rows each expert got, read back once per MoE layer
(`dyllm.kernels.moe.grouped_experts`, docs/architecture.md), and nothing else is.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import dyllm
from dyllm.engine.sparse_step import SparseStep
from dyllm.policies import CosineThreshold, DLLMCache, DualCache, EveryRow, TopK
from tests.checkpoints import tiny_model
from tests.sync_counter import SyncCounter

PROMPTS = [[5, 17, 33, 8], [9, 4, 61, 2, 70, 12]]


@pytest.fixture(autouse=True)
def planned_capacities(monkeypatch: pytest.MonkeyPatch) -> None:
    """What CUDA tensors get by default (the CPU default reads counts back: free there)."""
    monkeypatch.setenv("DYLLM_ROW_CAPACITY", "planned")


OPTIONS = {"gen_length": 16, "steps": 16, "block_length": 8}


def _policies():
    return [
        CosineThreshold(0.99, warmup_steps=2),
        TopK(0.25, warmup_steps=2),
        DualCache(),
        DLLMCache(prompt_interval=5, gen_interval=3),
        EveryRow(),
        CosineThreshold(0.99, warmup_steps=2, softmax_statistics="cached"),
        TopK(0.25, warmup_steps=2, softmax_statistics="cached"),
    ]


def _policy_id(policy) -> str:
    cached = getattr(policy, "softmax_statistics", "exact") == "cached"
    return policy.name + ("-cached-statistics" if cached else "")


def test_the_counter_sees_read_backs():
    x = torch.arange(6.0)
    with SyncCounter() as counter:
        int(x.sum())
        bool((x > 2).any())
        x[x > 2] = 0.0
        x.tolist()
        torch.sort(x)  # stays on the device
    assert counter.calls == {"__int__": 1, "__bool__": 1, "__setitem__[bool]": 1, "tolist": 1}


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("policy", _policies(), ids=_policy_id)
def test_no_read_back_inside_the_layer_loop(family, policy, monkeypatch):
    counts: list[Counter[str]] = []
    original = SparseStep.run

    def counted_run(self, *args, **kwargs):
        with SyncCounter() as counter:
            logits = original(self, *args, **kwargs)
        counts.append(counter.calls)
        return logits

    monkeypatch.setattr(SparseStep, "run", counted_run)
    model = tiny_model(family, num_layers=6, never_predicts_mask=True)
    dyllm.generate(model, PROMPTS, policy=policy, **OPTIONS)
    assert counts, "the policy ran no sparse step"
    assert all(not calls for calls in counts), [dict(c) for c in counts if c]


@pytest.mark.parametrize("family", ["llada_moe", "llada2"])
def test_moe_layers_read_back_once_each(family, monkeypatch, tmp_path):
    from tests.moe_checkpoints import write_tiny_moe_checkpoint

    counts: list[Counter[str]] = []
    original = SparseStep.run

    def counted_run(self, *args, **kwargs):
        with SyncCounter() as counter:
            logits = original(self, *args, **kwargs)
        counts.append(counter.calls)
        return logits

    monkeypatch.setattr(SparseStep, "run", counted_run)
    write_tiny_moe_checkpoint(family, tmp_path / family)
    model = dyllm.load(tmp_path / family, dtype="float32")
    moe_layers = sum(layer.is_moe for layer in model.layers)
    prompts = [[5, 17, 33, 8], [9, 4, 61, 2, 60, 12]]  # the tiny vocabulary has 64 ids
    dyllm.generate(model, prompts, policy=TopK(0.25, warmup_steps=2), sampler="llada", **OPTIONS)
    assert counts, "the policy ran no sparse step"
    # one rows-per-expert read-back for each MoE layer the selection reaches, nothing else
    assert all(set(calls) <= {"tolist"} and calls["tolist"] <= moe_layers for calls in counts)
    assert any(calls["tolist"] == moe_layers for calls in counts)


def _syncs_per_generation(num_layers: int, policy, family: str) -> tuple[int, int]:
    model = tiny_model(family, num_layers=num_layers, never_predicts_mask=True)
    with SyncCounter() as counter:
        result = dyllm.generate(model, PROMPTS, policy=policy, **OPTIONS)
    return counter.total, result.stats.extra["capacity_retries"]


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("policy_name", ["topk", "fast-dual", "dllm-cache", "dyllm"])
def test_syncs_do_not_grow_with_the_layers(family, policy_name):
    """Every read-back is counted over the whole call: the sampler's and the engine's."""
    build = {
        "topk": lambda: TopK(0.25, warmup_steps=2),
        "fast-dual": DualCache,
        "dllm-cache": lambda: DLLMCache(prompt_interval=5, gen_interval=3),
        "dyllm": lambda: CosineThreshold(0.99, warmup_steps=2),
    }[policy_name]
    shallow, shallow_retries = _syncs_per_generation(2, build(), family)
    deep, deep_retries = _syncs_per_generation(6, build(), family)
    if shallow_retries == deep_retries:
        assert deep == shallow
    else:  # a step run again reads its outcome back once more, whatever the depth
        assert deep - shallow == deep_retries - shallow_retries


def test_the_cpu_default_reads_counts_back_per_layer(monkeypatch):
    """Documented behaviour: on the CPU each layer's row counts are read back (exact sizes)."""
    monkeypatch.setenv("DYLLM_ROW_CAPACITY", "auto")
    shallow, _ = _syncs_per_generation(2, TopK(0.25, warmup_steps=2), "llada")
    deep, _ = _syncs_per_generation(6, TopK(0.25, warmup_steps=2), "llada")
    assert deep > shallow
