"""Declarative maps from dyllm's parameter names to each family's checkpoint keys.

A table per family says where each of our parameters lives in the real Hugging Face files; the
loader and the checkpoint writer both read it, so loading and saving cannot drift apart.
Per-layer entries are templates over the block index.
"""

from __future__ import annotations

from dataclasses import dataclass

from dyllm.models.config import ModelConfig
from dyllm.models.moe_config import MoEModelConfig


@dataclass(frozen=True)
class KeyLayout:
    """Where a family keeps its tensors: top-level names and a per-block template."""

    top_level: dict[str, str]
    block_prefix: str
    block: dict[str, str]


LLADA_LAYOUT = KeyLayout(
    top_level={
        "embed.weight": "model.transformer.wte.weight",
        "final_norm.weight": "model.transformer.ln_f.weight",
        "lm_head.weight": "model.transformer.ff_out.weight",
    },
    block_prefix="model.transformer.blocks.{index}.",
    block={
        "attn_norm.weight": "attn_norm.weight",
        "q_proj.weight": "q_proj.weight",
        "q_proj.bias": "q_proj.bias",
        "k_proj.weight": "k_proj.weight",
        "k_proj.bias": "k_proj.bias",
        "v_proj.weight": "v_proj.weight",
        "v_proj.bias": "v_proj.bias",
        "o_proj.weight": "attn_out.weight",
        "ffn_norm.weight": "ff_norm.weight",
        "ffn.gate_proj.weight": "ff_proj.weight",
        "ffn.up_proj.weight": "up_proj.weight",
        "ffn.down_proj.weight": "ff_out.weight",
    },
)

DREAM_LAYOUT = KeyLayout(
    top_level={
        "embed.weight": "model.embed_tokens.weight",
        "final_norm.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight",
    },
    block_prefix="model.layers.{index}.",
    block={
        "attn_norm.weight": "input_layernorm.weight",
        "q_proj.weight": "self_attn.q_proj.weight",
        "q_proj.bias": "self_attn.q_proj.bias",
        "k_proj.weight": "self_attn.k_proj.weight",
        "k_proj.bias": "self_attn.k_proj.bias",
        "v_proj.weight": "self_attn.v_proj.weight",
        "v_proj.bias": "self_attn.v_proj.bias",
        "o_proj.weight": "self_attn.o_proj.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
        "ffn.gate_proj.weight": "mlp.gate_proj.weight",
        "ffn.up_proj.weight": "mlp.up_proj.weight",
        "ffn.down_proj.weight": "mlp.down_proj.weight",
    },
)

LAYOUTS = {"llada": LLADA_LAYOUT, "dream": DREAM_LAYOUT}


def checkpoint_key(config: ModelConfig, parameter_name: str) -> str:
    """The checkpoint key of dyllm parameter `parameter_name` (e.g. 'layers.3.o_proj.weight')."""
    layout = LAYOUTS[config.family]
    if parameter_name in layout.top_level:
        return layout.top_level[parameter_name]
    head, index, rest = parameter_name.split(".", 2)
    if head != "layers" or rest not in layout.block:
        raise KeyError(f"no checkpoint key is defined for parameter {parameter_name!r}")
    return layout.block_prefix.format(index=index) + layout.block[rest]


def checkpoint_keys(
    config: ModelConfig, parameter_shapes: dict[str, tuple[int, ...]]
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """checkpoint key -> (parameter name, expected shape), for every parameter of a model.

    A tied head shares the embedding's tensor and has no key of its own.
    """
    expected = {}
    for name, shape in parameter_shapes.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        expected[checkpoint_key(config, name)] = (name, shape)
    return expected


def moe_checkpoint_shapes(config: MoEModelConfig) -> dict[str, tuple[int, ...]]:
    """Every checkpoint key of a LLaDA-MoE or LLaDA2 checkpoint and its shape.

    The real layouts (REFERENCE-families.md, "Checkpoint key names"): LLaDA-MoE keeps
    `model.layers.{i}.self_attn.{q,k,v,o}_proj`, `q_norm`/`k_norm` (if qk_layernorm),
    `mlp.gate` (router), `mlp.expert_bias` (if enabled), `mlp.experts.{e}.*` and a shared
    expert on the layer (`shared_expert.*`, not under mlp); LLaDA2 keeps
    `model.word_embeddings`, a fused `attention.query_key_value`, `query_layernorm` /
    `key_layernorm`, `attention.dense`, `mlp.gate` with `mlp.gate.expert_bias`, `mlp.experts.{e}.*`
    and `mlp.shared_experts.*`. Dense layers are `mlp.{gate,up,down}_proj` in both.
    """
    d, hd = config.hidden_size, config.head_dim
    q, kv = config.num_heads * hd, config.num_kv_heads * hd
    llada2 = config.family == "llada2"
    shapes: dict[str, tuple[int, ...]] = {
        ("model.word_embeddings.weight" if llada2 else "model.embed_tokens.weight"): (
            config.vocab_size,
            d,
        ),
        "model.norm.weight": (d,),
    }
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, d)

    def swiglu(prefix: str, width: int) -> None:
        shapes[prefix + "gate_proj.weight"] = (width, d)
        shapes[prefix + "up_proj.weight"] = (width, d)
        shapes[prefix + "down_proj.weight"] = (d, width)

    for i, moe in enumerate(config.moe_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
        if llada2:
            shapes[p + "attention.query_key_value.weight"] = (q + 2 * kv, d)
            if config.qkv_bias:
                shapes[p + "attention.query_key_value.bias"] = (q + 2 * kv,)
            shapes[p + "attention.dense.weight"] = (d, q)
            if config.qk_norm:
                shapes[p + "attention.query_layernorm.weight"] = (hd,)
                shapes[p + "attention.key_layernorm.weight"] = (hd,)
        else:
            for name, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
                shapes[p + f"self_attn.{name}.weight"] = (rows, d)
            shapes[p + "self_attn.o_proj.weight"] = (d, q)
            if config.qk_norm:
                shapes[p + "self_attn.q_norm.weight"] = (hd,)
                shapes[p + "self_attn.k_norm.weight"] = (hd,)
        if not moe:
            swiglu(p + "mlp.", config.dense_intermediate_size or 0)
            continue
        shapes[p + "mlp.gate.weight"] = (config.num_experts, d)
        if config.expert_bias:
            bias_key = "mlp.gate.expert_bias" if llada2 else "mlp.expert_bias"
            shapes[p + bias_key] = (config.num_experts,)
        for e in range(config.num_experts):
            swiglu(p + f"mlp.experts.{e}.", config.expert_intermediate_size)
        if config.shared_expert_intermediate_size is not None:
            shared = "mlp.shared_experts." if llada2 else "shared_expert."
            swiglu(p + shared, config.shared_expert_intermediate_size)
    return shapes
