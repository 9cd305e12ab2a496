"""Declarative maps from dyllm's parameter names to each family's checkpoint keys.

A table per family says where each of our parameters lives in the real Hugging Face files; the
loader and the checkpoint writer both read it, so loading and saving cannot drift apart.
Per-layer entries are templates over the block index; the experts of a mixture-of-experts layer
(`ffn.experts.{e}.*`) map by prefix.

The MoE layouts differ from dyllm's module names in a few places (REFERENCE-families.md,
"Checkpoint key names"): LLaDA-MoE keeps the expert bias at `mlp.expert_bias` and the shared
expert on the layer (`shared_expert.*`, not under `mlp`); LLaDA2 keeps `mlp.gate.expert_bias`,
`mlp.shared_experts.*`, a fused `attention.query_key_value`, `attention.dense` and
`model.word_embeddings`. A dense layer's FFN is `mlp.{gate,up,down}_proj` in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dyllm.models.config import ModelConfig


@dataclass(frozen=True)
class KeyLayout:
    """Where a family keeps its tensors: top-level names and a per-block template.

    `block_prefixes`: parameter-name prefixes within a block (e.g. 'ffn.experts.') and the
    checkpoint prefix that replaces them, for the parameters that `block` does not name.
    """

    top_level: dict[str, str]
    block_prefix: str
    block: dict[str, str]
    block_prefixes: dict[str, str] = field(default_factory=dict)


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

_MOE_FFN = {
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn.gate_proj.weight": "mlp.gate_proj.weight",
    "ffn.up_proj.weight": "mlp.up_proj.weight",
    "ffn.down_proj.weight": "mlp.down_proj.weight",
    "ffn.gate.weight": "mlp.gate.weight",
}
"""The FFN entries both MoE layouts share: the dense layers' SwiGLU and the router."""

LLADA_MOE_LAYOUT = KeyLayout(
    top_level=DREAM_LAYOUT.top_level,
    block_prefix="model.layers.{index}.",
    block={
        "attn_norm.weight": "input_layernorm.weight",
        "q_proj.weight": "self_attn.q_proj.weight",
        "k_proj.weight": "self_attn.k_proj.weight",
        "v_proj.weight": "self_attn.v_proj.weight",
        "q_norm.weight": "self_attn.q_norm.weight",
        "k_norm.weight": "self_attn.k_norm.weight",
        "o_proj.weight": "self_attn.o_proj.weight",
        **_MOE_FFN,
        "ffn.expert_bias": "mlp.expert_bias",
    },
    block_prefixes={"ffn.experts.": "mlp.experts.", "ffn.shared_expert.": "shared_expert."},
)

LLADA2_LAYOUT = KeyLayout(
    top_level={
        "embed.weight": "model.word_embeddings.weight",
        "final_norm.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight",
    },
    block_prefix="model.layers.{index}.",
    block={
        "attn_norm.weight": "input_layernorm.weight",
        "qkv_proj.weight": "attention.query_key_value.weight",
        "qkv_proj.bias": "attention.query_key_value.bias",
        "q_norm.weight": "attention.query_layernorm.weight",
        "k_norm.weight": "attention.key_layernorm.weight",
        "o_proj.weight": "attention.dense.weight",
        **_MOE_FFN,
        "ffn.expert_bias": "mlp.gate.expert_bias",
    },
    block_prefixes={"ffn.experts.": "mlp.experts.", "ffn.shared_expert.": "mlp.shared_experts."},
)

LAYOUTS = {
    "llada": LLADA_LAYOUT,
    "dream": DREAM_LAYOUT,
    "llada_moe": LLADA_MOE_LAYOUT,
    "llada2": LLADA2_LAYOUT,
}


def checkpoint_key(config: ModelConfig, parameter_name: str) -> str:
    """The checkpoint key of dyllm parameter `parameter_name` (e.g. 'layers.3.o_proj.weight')."""
    layout = LAYOUTS[config.family]
    if parameter_name in layout.top_level:
        return layout.top_level[parameter_name]
    head, index, rest = parameter_name.split(".", 2)
    prefix = layout.block_prefix.format(index=index)
    if head == "layers" and rest in layout.block:
        return prefix + layout.block[rest]
    for ours, theirs in layout.block_prefixes.items():
        if head == "layers" and rest.startswith(ours):
            return prefix + theirs + rest[len(ours) :]
    raise KeyError(f"no checkpoint key is defined for parameter {parameter_name!r}")


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
