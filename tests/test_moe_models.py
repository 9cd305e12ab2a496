"""LLaDA-MoE and LLaDA2 through dyllm's one forward: tiny checkpoints in the real layouts
(tests/moe_checkpoints.py) load with `dyllm.load`, their logits equal a per-row restatement of
the families' definitions (REFERENCE-families.md), LLaDA's sampler runs on LLaDA-MoE, and the
sparse step runs on both (EveryRow = dense; DyLLM, top-k, Fast-dLLM's prefix and dual caches and
dLLM-Cache route only the rows they select, with the cache's invariant checks on).

The tiny checkpoints' config.json set `mask_token_id` 63 and `eos_token_id` 62: the real ids
(156895, 156892, the loader's defaults when config.json has none) do not fit a 64-token
vocabulary.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import dyllm
from dyllm.models.loader import CheckpointError
from dyllm.policies import CosineThreshold, DLLMCache, DualCache, EveryRow, PrefixCache, TopK
from tests.moe_checkpoints import TINY_CONFIGS, write_tiny_moe_checkpoint
from tests.recording import generate_recording

FAMILIES = ["llada_moe", "llada2"]
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]
OPTIONS = {"gen_length": 16, "steps": 16, "block_length": 8, "sampler": "llada"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("moe")
    for family in FAMILIES:
        write_tiny_moe_checkpoint(family, root / family, seed=3)
    return {family: root / family for family in FAMILIES}


# ------------------------------------------------------------- the definition, row by row


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _swiglu(x: torch.Tensor, t: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    gate = x @ t[prefix + "gate_proj.weight"].T
    return (gate * torch.sigmoid(gate) * (x @ t[prefix + "up_proj.weight"].T)) @ t[
        prefix + "down_proj.weight"
    ].T


def _rope(x: torch.Tensor, position: int, rotary: int, theta: float) -> torch.Tensor:
    """One head's vector [D]: pairs (i, i + rotary/2) rotated by position * theta^(-2i/rotary)."""
    out = x.clone()
    half = rotary // 2
    for i in range(half):
        angle = position * theta ** (-2 * i / rotary)
        a, b = x[i], x[i + half]
        out[i] = a * math.cos(angle) - b * math.sin(angle)
        out[i + half] = b * math.cos(angle) + a * math.sin(angle)
    return out


def _route(x: torch.Tensor, t: dict[str, torch.Tensor], p: str, family: str, raw: dict):
    """(expert indices, weights) of one row x [d], from the family's routing definition."""
    logits = t[p + "mlp.gate.weight"] @ x
    k = raw["num_experts_per_tok"]
    if family == "llada_moe":
        probs = torch.softmax(logits, -1)
        if raw.get("moe_router_enable_expert_bias"):
            probs = probs + t[p + "mlp.expert_bias"]
        weights, indices = probs.topk(k)  # the biased values weight too; no renormalisation
        return indices.tolist(), weights
    scores = torch.sigmoid(logits)
    biased = scores + t[p + "mlp.gate.expert_bias"]
    size = raw["num_experts"] // raw["n_group"]
    groups = [biased[g * size : (g + 1) * size].topk(2).values.sum() for g in range(raw["n_group"])]
    kept = torch.tensor(groups).topk(raw["topk_group"]).indices.tolist()
    eligible = torch.full_like(biased, float("-inf"))
    for g in kept:
        eligible[g * size : (g + 1) * size] = biased[g * size : (g + 1) * size]
    indices = eligible.topk(k).indices
    weights = scores[indices] / (scores[indices].sum() + 1e-20)
    return indices.tolist(), weights * raw["routed_scaling_factor"]


def logits_by_definition(folder: Path, family: str, ids: list[int]) -> torch.Tensor:
    """float64 logits [L, V] of one sequence, bidirectional, from the checkpoint's tensors by
    their real key names, one row and one head at a time."""
    raw = TINY_CONFIGS[family]
    t = {key: value.double() for key, value in load_file(folder / "model.safetensors").items()}
    heads, kv_heads = raw["num_attention_heads"], raw["num_key_value_heads"]
    hd = raw.get("head_dim") or raw["hidden_size"] // heads
    rotary, theta, eps = (
        int(hd * raw["partial_rotary_factor"]),
        raw["rope_theta"],
        raw["rms_norm_eps"],
    )
    embed = "model.word_embeddings.weight" if family == "llada2" else "model.embed_tokens.weight"
    h = t[embed][ids]  # [L, d]
    length = len(ids)
    for i in range(raw["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = _rms(h, t[p + "input_layernorm.weight"], eps)
        if family == "llada2":
            qkv = x @ t[p + "attention.query_key_value.weight"].T
            q, k, v = qkv.split([heads * hd, kv_heads * hd, kv_heads * hd], -1)
            q_norm, k_norm = (
                t[p + "attention.query_layernorm.weight"],
                t[p + "attention.key_layernorm.weight"],
            )
            out_proj = t[p + "attention.dense.weight"]
        else:
            q, k, v = (x @ t[p + f"self_attn.{n}_proj.weight"].T for n in "qkv")
            q_norm, k_norm = t[p + "self_attn.q_norm.weight"], t[p + "self_attn.k_norm.weight"]
            out_proj = t[p + "self_attn.o_proj.weight"]
        context = []
        for head in range(heads):
            g = head // (heads // kv_heads)
            qh = [
                _rope(_rms(q[r, head * hd : (head + 1) * hd], q_norm, eps), r, rotary, theta)
                for r in range(length)
            ]
            kh = [
                _rope(_rms(k[r, g * hd : (g + 1) * hd], k_norm, eps), r, rotary, theta)
                for r in range(length)
            ]
            scores = torch.stack(qh) @ torch.stack(kh).T / math.sqrt(hd)
            context.append(torch.softmax(scores, -1) @ v[:, g * hd : (g + 1) * hd])
        h = h + torch.cat(context, -1) @ out_proj.T
        x = _rms(h, t[p + "post_attention_layernorm.weight"], eps)
        moe = (
            (i >= raw["first_k_dense_replace"]) if family == "llada2" else raw["moe_layer_freq"][i]
        )
        if not moe:
            h = h + _swiglu(x, t, p + "mlp.")
            continue
        rows = []
        for r in range(length):
            indices, weights = _route(x[r], t, p, family, raw)
            total = sum(
                w * _swiglu(x[r], t, p + f"mlp.experts.{e}.")
                for e, w in zip(indices, weights, strict=True)
            )
            shared = "mlp.shared_experts." if family == "llada2" else "shared_expert."
            rows.append(total + _swiglu(x[r], t, p + shared))
        h = h + torch.stack(rows)
    return _rms(h, t["model.norm.weight"], eps) @ t["lm_head.weight"].T


@pytest.mark.parametrize("family", FAMILIES)
def test_a_tiny_checkpoint_loads_and_its_logits_follow_the_definition(checkpoints, family) -> None:
    model = dyllm.load(checkpoints[family], dtype="float32")
    assert model.config.family == family
    assert [layer.is_moe for layer in model.layers] == [False, True]
    ids = [5, 17, 33, 8, 61, 2, 40]
    logits = model(torch.tensor([ids]))[0].double()
    expected = logits_by_definition(checkpoints[family], family, ids)
    # float32 against float64: the difference is float32 rounding of values of size ~10
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_loading_runs_in_bfloat16(checkpoints, family) -> None:
    """The stored dtype: bf16 weights, activations and logits (no silent upcast)."""
    model = dyllm.load(checkpoints[family])
    assert model.dtype == torch.bfloat16
    assert model.layers[1].ffn.expert_bias.dtype == torch.bfloat16
    logits = model(torch.tensor([[5, 17, 33, 8]]))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_llada2_without_a_mask_is_bidirectional(checkpoints) -> None:
    model = dyllm.load(checkpoints["llada2"], dtype="float32")
    ids = torch.tensor([[5, 17, 33, 8, 61, 2]])
    changed = ids.clone()
    changed[0, -1] = 9
    before, after = model(ids)[0, 0], model(changed)[0, 0]
    assert not torch.allclose(before, after), "position 0 must see the last token"


def test_the_loader_names_missing_and_misshapen_moe_tensors(tmp_path: Path) -> None:
    folder = tmp_path / "llada2"
    tensors = write_tiny_moe_checkpoint("llada2", folder)
    del tensors["model.layers.1.mlp.experts.3.up_proj.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) missing: .*experts\.3\.up_proj"):
        dyllm.load(folder)
    tensors["model.layers.1.mlp.experts.3.up_proj.weight"] = torch.zeros(12, 16)
    tensors["model.layers.1.mlp.gate.expert_bias"] = torch.zeros(7)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"mlp\.gate\.expert_bias .* shape \[7\].*\[8\]"):
        dyllm.load(folder)


# ------------------------------------------------------------------------- generation


def test_llada_moe_generates_with_llada_s_sampler_by_default(checkpoints) -> None:
    model = dyllm.load(checkpoints["llada_moe"], dtype="float32")
    result = dyllm.generate(model, PROMPTS, gen_length=16, steps=16, block_length=8)
    assert result.options.sampler == "llada"
    assert all(len(row) == 16 and 63 not in row for row in result.token_ids)


def test_llada2_generates_with_its_block_diffusion_sampler_by_default(checkpoints) -> None:
    model = dyllm.load(checkpoints["llada2"], dtype="float32")
    result = dyllm.generate(model, PROMPTS, gen_length=8, steps=4, block_length=4)
    assert result.options.sampler == "llada2" and result.options.block_cache is True
    assert all(
        0 < len(row) <= 8 and model.config.mask_token_id not in row for row in result.token_ids
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_every_row_equals_dense(checkpoints, family) -> None:
    model = dyllm.load(checkpoints[family], dtype="float32")
    dense, dense_steps = generate_recording(model, PROMPTS, None, **OPTIONS)
    sparse, sparse_steps = generate_recording(model, PROMPTS, EveryRow(), **OPTIONS)
    assert sparse.token_ids == dense.token_ids
    assert len(sparse_steps.logits) == len(dense_steps.logits) == 16
    for dense_logits, sparse_logits in zip(dense_steps.logits, sparse_steps.logits, strict=True):
        torch.testing.assert_close(sparse_logits, dense_logits, atol=2e-5, rtol=1e-5)
    extra = sparse.stats.extra
    assert extra["expert_fraction"] == 1.0 and extra["expert_rows_per_layer"][0] == 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "make_policy",
    [
        lambda: CosineThreshold(0.99, warmup_steps=2),
        lambda: TopK(0.25, warmup_steps=2),
        PrefixCache,
        DualCache,
        lambda: DLLMCache(prompt_interval=8, gen_interval=4),
    ],
    ids=["dyllm", "topk", "fast-prefix", "fast-dual", "dllm-cache"],
)
def test_saliency_policies_route_only_the_rows_they_select(checkpoints, family, make_policy):
    model = dyllm.load(checkpoints[family], dtype="float32")
    result = dyllm.generate(model, PROMPTS, policy=make_policy(), check_invariants=True, **OPTIONS)
    assert all(len(row) == 16 for row in result.token_ids)
    extra = result.stats.extra
    assert extra["sparse_steps"] > 0
    # expert work is the FFN rows of each MoE layer times its experts (top-3 + the shared one):
    # none on the dense layer 0, and on layer 1 the share of a dense run's that its FFN rows are
    assert extra["expert_rows_per_layer"][0] == 0
    assert extra["expert_fraction"] == pytest.approx(extra["ffn_fraction_per_layer"][1])
    if not isinstance(make_policy(), CosineThreshold):  # budgets or block caches: fewer rows
        assert extra["expert_fraction"] < 1.0
