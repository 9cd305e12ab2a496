"""Both routers, the grouped expert FFN, the MoE FFN module, QK-norm, partial RoPE, a MoE layer's
attention stages (QK-norm, partial RoPE, fused QKV) and the block-causal mask, each held to a
plain restatement of its definition (REFERENCE-families.md)."""

from __future__ import annotations

import math

import pytest
import torch

from dyllm.kernels.attention_variants import block_causal_mask, qk_norm
from dyllm.kernels.moe import (
    grouped_experts,
    naive_experts,
    route_sigmoid_grouped,
    route_softmax_topk,
)
from dyllm.kernels.primitives import apply_rope, rope_angles


def make_experts(count: int, hidden: int, width: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        tuple(
            (torch.randn(shape, generator=g) / math.sqrt(shape[1])).to(dtype)
            for shape in ((width, hidden), (width, hidden), (hidden, width))
        )
        for _ in range(count)
    ]


def softmax_router_by_row(logits, top_k, bias):
    """One row at a time, from the definition: softmax over all, + bias, top-k, no renorm."""
    weights, indices = [], []
    for row in logits:
        p = [math.exp(v) for v in row.double().tolist()]
        p = [v / sum(p) for v in p]
        if bias is not None:
            p = [v + b for v, b in zip(p, bias.tolist(), strict=True)]
        order = sorted(range(len(p)), key=lambda e: -p[e])[:top_k]
        indices.append(order)
        weights.append([p[e] for e in order])
    return torch.tensor(weights, dtype=torch.float64), torch.tensor(indices)


def sigmoid_router_by_row(logits, top_k, bias, n_group, topk_group, scale):
    """One row at a time, from the definition of LLaDA2's router."""
    weights, indices = [], []
    experts = logits.shape[1]
    size = experts // n_group
    for row in logits:
        s = [1 / (1 + math.exp(-v)) for v in row.double().tolist()]
        b = [v + c for v, c in zip(s, bias.double().tolist(), strict=True)]
        group_score = [sum(sorted(b[g * size : (g + 1) * size])[-2:]) for g in range(n_group)]
        kept = sorted(range(n_group), key=lambda g: -group_score[g])[:topk_group]
        eligible = [e for e in range(experts) if e // size in kept]
        chosen = sorted(eligible, key=lambda e: -b[e])[:top_k]
        w = [s[e] for e in chosen]
        if top_k > 1:
            w = [v / (sum(w) + 1e-20) for v in w]
        indices.append(chosen)
        weights.append([v * scale for v in w])
    return torch.tensor(weights, dtype=torch.float64), torch.tensor(indices)


@pytest.mark.parametrize("with_bias", [False, True])
def test_softmax_router_follows_its_definition(with_bias: bool) -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 16, generator=g)
    bias = torch.randn(16, generator=g) * 0.1 if with_bias else None
    weights, indices = route_softmax_topk(logits, 4, bias)
    expected_w, expected_i = softmax_router_by_row(logits, 4, bias)
    assert torch.equal(indices, expected_i)
    torch.testing.assert_close(weights.double(), expected_w, rtol=1e-6, atol=1e-7)
    if not with_bias:  # no renormalisation: the chosen weights sum to less than 1
        assert (weights.sum(-1) < 1).all()
    else:  # the bias changes the weights too, not only the choice
        torch.testing.assert_close(
            weights, torch.softmax(logits, -1).gather(1, indices) + bias[indices]
        )


@pytest.mark.parametrize(("top_k", "n_group", "topk_group"), [(4, 4, 2), (1, 8, 3), (6, 2, 2)])
def test_sigmoid_grouped_router_follows_its_definition(top_k, n_group, topk_group) -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(10, 32, generator=g)
    bias = torch.randn(32, generator=g) * 0.5
    weights, indices = route_sigmoid_grouped(logits, top_k, bias, n_group, topk_group, 2.5)
    expected_w, expected_i = sigmoid_router_by_row(logits, top_k, bias, n_group, topk_group, 2.5)
    assert torch.equal(indices, expected_i)
    torch.testing.assert_close(weights.double(), expected_w, rtol=1e-6, atol=1e-7)
    if top_k > 1:  # renormalised, then scaled
        torch.testing.assert_close(weights.sum(-1), torch.full((10,), 2.5))


def test_sigmoid_router_uses_the_bias_for_the_choice_only() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    bias = torch.tensor([10.0, 10.0, 0.0, 0.0])
    weights, indices = route_sigmoid_grouped(logits, 2, bias, 1, 1, 1.0)
    assert sorted(indices[0].tolist()) == [0, 1]
    s = torch.sigmoid(logits[0, :2])
    torch.testing.assert_close(weights[0].sort().values, (s / s.sum()).sort().values)


def test_sigmoid_router_drops_the_weaker_groups() -> None:
    # group 1 (experts 2, 3) has the best single expert, group 0 the best two-expert sum
    logits = torch.tensor([[2.0, 1.9, 5.0, -5.0]])
    _, indices = route_sigmoid_grouped(logits, 1, torch.zeros(4), 2, 1, 1.0)
    assert indices.tolist() == [[0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("accumulate", [None, torch.float32])
def test_grouped_experts_equal_the_per_row_loop(dtype, accumulate) -> None:
    g = torch.Generator().manual_seed(3)
    experts = make_experts(8, 16, 12, dtype)
    x = torch.randn(20, 16, generator=g).to(dtype)
    weights, indices = route_softmax_topk(torch.randn(20, 8, generator=g), 3)
    weights = weights.to(dtype) if accumulate is None else weights
    fast = grouped_experts(x, indices, weights, experts, accumulate)
    slow = naive_experts(x, indices, weights, experts, accumulate)
    assert fast.dtype == dtype and fast.shape == (20, 16)
    tolerance = {} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(fast, slow, **tolerance)


def test_grouped_experts_runs_only_the_chosen_experts() -> None:
    experts = make_experts(4, 8, 6)
    poisoned = [experts[0], experts[1], tuple(torch.full_like(w, math.nan) for w in experts[2])]
    poisoned.append(experts[3])
    x = torch.randn(5, 8)
    indices = torch.tensor([[0, 1], [1, 3], [3, 0], [0, 1], [1, 0]])
    weights = torch.rand(5, 2)
    out = grouped_experts(x, indices, weights, poisoned)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, naive_experts(x, indices, weights, experts))


def test_router_and_expert_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="top_k must be in"):
        route_softmax_topk(torch.zeros(2, 4), 5)
    with pytest.raises(ValueError, match="expert_bias must have shape"):
        route_softmax_topk(torch.zeros(2, 4), 2, torch.zeros(3))
    with pytest.raises(ValueError, match="cannot be split into n_group=3"):
        route_sigmoid_grouped(torch.zeros(2, 8), 2, torch.zeros(8), 3, 1, 1.0)
    with pytest.raises(ValueError, match="expert indices must be in"):
        grouped_experts(
            torch.zeros(1, 8), torch.tensor([[4]]), torch.ones(1, 1), make_experts(4, 8, 6)
        )


def test_qk_norm_is_rms_norm_per_head() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 5, 8, generator=g)
    weight = torch.randn(8, generator=g)
    expected = weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(qk_norm(x, weight, 1e-6), expected)
    with pytest.raises(ValueError, match="head_dim"):
        qk_norm(x, torch.ones(4), 1e-6)


def rope_by_definition(x, positions, rotary_dim, theta):
    """Pairs (i, i + rotary_dim/2) rotated by angle p * theta^(-2i/rotary_dim); the rest kept."""
    out = x.clone().double()
    half = rotary_dim // 2
    for pos_index, p in enumerate(positions.tolist()):
        for i in range(half):
            angle = p * theta ** (-2 * i / rotary_dim)
            a = x[..., pos_index, i].double()
            b = x[..., pos_index, i + half].double()
            out[..., pos_index, i] = a * math.cos(angle) - b * math.sin(angle)
            out[..., pos_index, i + half] = b * math.cos(angle) + a * math.sin(angle)
    return out


@pytest.mark.parametrize("full_precision", [False, True])
@pytest.mark.parametrize("factor", [0.5, 1.0, 0.25])
def test_partial_rope_follows_its_definition(factor: float, full_precision: bool) -> None:
    head_dim = 16
    rotary = int(head_dim * factor)
    x = torch.randn(1, 2, 6, head_dim)
    positions = torch.arange(6)[None]
    cos, sin = rope_angles(positions, rotary, 600000.0)
    out = apply_rope(x, cos, sin, full_precision)
    expected = rope_by_definition(x, positions[0], rotary, 600000.0)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[..., rotary:], x[..., rotary:])


def test_block_causal_mask() -> None:
    mask = block_causal_mask(7, 3, torch.device("cpu"))
    for q in range(7):
        for k in range(7):
            assert bool(mask[q, k]) == (k // 3 <= q // 3)


def tiny_moe_config(family: str, **changes):
    from dyllm.models.moe_config import read_moe_config

    if family == "llada_moe":
        raw = {
            "model_type": "llada",
            "architectures": ["LLaDAMoEModelLM"],
            "vocab_size": 64,
            "hidden_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "expert_intermediate_size": 12,
            "shared_expert_intermediate_size": None,
            "num_experts": 8,
            "num_experts_per_tok": 3,
            "moe_layer_freq": [1, 1],
            "max_position_embeddings": 64,
            "mask_token_id": 63,
            "eos_token_id": 62,
        }
    else:
        raw = {
            "model_type": "llada2_moe",
            "vocab_size": 64,
            "hidden_size": 16,
            "intermediate_size": 24,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "num_experts": 8,
            "num_experts_per_tok": 3,
            "n_group": 4,
            "topk_group": 2,
            "num_shared_experts": 1,
            "moe_intermediate_size": 12,
            "routed_scaling_factor": 2.5,
            "first_k_dense_replace": 1,
            "max_position_embeddings": 64,
            "mask_token_id": 63,
            "eos_token_id": 62,
        }
    return read_moe_config({**raw, **changes})


@pytest.mark.parametrize(
    ("family", "changes"),
    [
        ("llada_moe", {}),
        (
            "llada_moe",
            {"moe_router_enable_expert_bias": True, "shared_expert_intermediate_size": 10},
        ),
        ("llada2", {}),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moe_module_equals_its_definition(family, changes, dtype) -> None:
    from dyllm.models.moe import MoEFeedForward

    torch.manual_seed(5)
    config = tiny_moe_config(family, **changes)
    module = MoEFeedForward(config.experts, config.hidden_size)
    if module.expert_bias is not None:
        module.expert_bias.copy_(torch.randn(8) * 0.05)
    module = module.to(dtype)
    x = torch.randn(2, 5, 16).to(dtype)
    out = module(x)
    assert out.shape == x.shape and out.dtype == dtype

    rows = x.reshape(-1, 16)
    experts = [(e.gate_proj.weight, e.up_proj.weight, e.down_proj.weight) for e in module.experts]
    if family == "llada_moe":
        p = torch.softmax((rows @ module.gate.weight.T).float(), -1)
        if module.expert_bias is not None:
            p = p + module.expert_bias
        w, idx = p.topk(3, -1)
        expected = naive_experts(rows, idx, w.to(dtype), experts)
    else:
        s = torch.sigmoid(rows.float() @ module.gate.weight.float().T)
        w, idx = sigmoid_router_by_row(
            rows.float() @ module.gate.weight.float().T, 3, module.expert_bias, 4, 2, 2.5
        )
        idx, w = idx, s.gather(1, idx)
        w = w / (w.sum(-1, keepdim=True) + 1e-20) * 2.5
        expected = naive_experts(rows, idx, w, experts, torch.float32)
    if module.shared_expert is not None:
        shared = module.shared_expert
        expected = expected + torch.nn.functional.linear(
            torch.nn.functional.silu(rows @ shared.gate_proj.weight.T)
            * (rows @ shared.up_proj.weight.T),
            shared.down_proj.weight,
        )
    tolerance = {} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(out.reshape(-1, 16), expected, **tolerance)


def attention_by_definition(layer, x):
    """Per head, from the definition: project, QK-norm, RoPE by angle, softmax(q k^T / sqrt D)."""
    c = layer.config
    hd, heads, kv_heads = c.head_dim, c.num_heads, c.num_kv_heads
    x64 = x.double()
    if c.fused_qkv:
        fused = x64 @ layer.qkv_proj.weight.double().T
        q_all, k_all, v_all = fused.split([heads * hd, kv_heads * hd, kv_heads * hd], -1)
    else:
        q_all = x64 @ layer.q_proj.weight.double().T
        k_all = x64 @ layer.k_proj.weight.double().T
        v_all = x64 @ layer.v_proj.weight.double().T
    length = x.shape[1]
    positions = torch.arange(length)
    outputs = []
    for h in range(heads):
        g = h // (heads // kv_heads)
        q = q_all[0, :, h * hd : (h + 1) * hd]
        k = k_all[0, :, g * hd : (g + 1) * hd]
        v = v_all[0, :, g * hd : (g + 1) * hd]
        q = layer.q_norm.weight.double() * q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + 1e-5)
        k = layer.k_norm.weight.double() * k / torch.sqrt(k.pow(2).mean(-1, keepdim=True) + 1e-5)
        q = rope_by_definition(q, positions, c.rotary_dim, c.rope_theta)
        k = rope_by_definition(k, positions, c.rotary_dim, c.rope_theta)
        scores = q @ k.T / math.sqrt(hd)
        outputs.append(torch.softmax(scores, -1) @ v)
    return torch.cat(outputs, -1) @ layer.o_proj.weight.double().T


@pytest.mark.parametrize("family", ["llada_moe", "llada2"])
def test_moe_attention_stages_equal_their_definition(family) -> None:
    """A MoE layer's attention stages (QK-norm before partial RoPE, fused QKV for LLaDA2), as the
    one forward strings them together, against the per-head definition."""
    from dyllm.models.transformer import DecoderLayer

    torch.manual_seed(6)
    changes = {"qk_layernorm": True} if family == "llada_moe" else {"partial_rotary_factor": 0.5}
    config = tiny_moe_config(family, rope_theta=1000.0, rms_norm_eps=1e-5, **changes)
    assert config.qk_norm and config.rotary_dim == (8 if family == "llada_moe" else 4)
    assert config.fused_qkv == (family == "llada2")
    layer = DecoderLayer(config, index=1)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.normal_()
    x = torch.randn(1, 7, 16)
    cos, sin = rope_angles(torch.arange(7)[None], config.rotary_dim, config.rope_theta)
    out = layer.attention_output(layer.attend(*layer.project_qkv(x, cos, sin), None))
    torch.testing.assert_close(
        out[0].double(), attention_by_definition(layer, x), rtol=1e-4, atol=1e-4
    )
