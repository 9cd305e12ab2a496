"""Tiny LLaDA-MoE and LLaDA2 checkpoints in the real on-disk layouts (config.json keys and
checkpoint key names as the official code reads them; REFERENCE-families.md), random weights.

The configs are small but keep every structural feature: LLaDA-MoE with QK-norm, expert bias
and a shared expert; LLaDA2 with a dense first layer, grouped routing, GQA and partial RoPE.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from dyllm.models.config import ModelConfig
from dyllm.models.moe_config import read_moe_config
from tests.checkpoints import write_character_tokenizer

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llada_moe": {
        "architectures": ["LLaDAMoEModelLM"],
        "model_type": "llada",
        "vocab_size": 64,
        "hidden_size": 16,
        "dense_intermediate_size": 24,
        "expert_intermediate_size": 12,
        "shared_expert_intermediate_size": 10,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "eos_token_id": 62,
        "mask_token_id": 63,
        "tie_word_embeddings": False,
        "rope_theta": 50000.0,
        "partial_rotary_factor": 1.0,
        "rope_scaling": None,
        "attention_bias": False,
        "clip_qkv": None,
        "num_experts": 8,
        "num_experts_per_tok": 3,
        "norm_topk_prob": False,
        "qk_layernorm": True,
        "moe_layer_freq": [0, 1],
        "moe_router_enable_expert_bias": True,
        "routed_scaling_factor": 1.0,
        "torch_dtype": "bfloat16",
    },
    "llada2": {
        "architectures": ["LLaDA2MoeModelLM"],
        "model_type": "llada2_moe",
        "vocab_size": 64,
        "hidden_size": 16,
        "intermediate_size": 24,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "hidden_act": "silu",
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "pad_token_id": 62,
        "eos_token_id": 62,
        "mask_token_id": 63,
        "tie_word_embeddings": False,
        "rope_theta": 600000,
        "partial_rotary_factor": 0.5,
        "rotary_dim": 4,
        "rope_scaling": None,
        "use_bias": False,
        "use_qkv_bias": False,
        "num_experts": 8,
        "num_shared_experts": 1,
        "num_experts_per_tok": 3,
        "n_group": 4,
        "topk_group": 2,
        "routed_scaling_factor": 2.5,
        "moe_intermediate_size": 12,
        "first_k_dense_replace": 1,
        "score_function": "sigmoid",
        "moe_router_enable_expert_bias": True,
        "norm_topk_prob": True,
        "router_dtype": "fp32",
        "dtype": "bfloat16",
    },
}


def write_tiny_moe_checkpoint(family: str, folder: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write config.json and model.safetensors (bfloat16) of a tiny `family` checkpoint into
    `folder`; returns the tensors written, by checkpoint key."""
    raw = TINY_CONFIGS[family]
    config = read_moe_config(raw)
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        key: torch.randn(shape, generator=generator).to(torch.bfloat16)
        for key, shape in moe_checkpoint_shapes(config).items()
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(raw, indent=2))
    save_file(tensors, str(folder / "model.safetensors"))
    return tensors


def moe_checkpoint_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every checkpoint key of a LLaDA-MoE or LLaDA2 checkpoint and its shape.

    Written from the reference's key lists, independently of `dyllm.models.keymaps` (which the
    loader reads), so a checkpoint written from this table tests the loader's key maps.

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
    experts = config.experts
    assert experts is not None
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

    for i, moe in enumerate(experts.moe_layers):
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
            swiglu(p + "mlp.", config.intermediate_size)
            continue
        shapes[p + "mlp.gate.weight"] = (experts.num_experts, d)
        if experts.expert_bias:
            bias_key = "mlp.gate.expert_bias" if llada2 else "mlp.expert_bias"
            shapes[p + bias_key] = (experts.num_experts,)
        for e in range(experts.num_experts):
            swiglu(p + f"mlp.experts.{e}.", experts.expert_intermediate_size)
        if experts.shared_expert_intermediate_size is not None:
            shared = "mlp.shared_experts." if llada2 else "shared_expert."
            swiglu(p + shared, experts.shared_expert_intermediate_size)
    return shapes


MOE_TOKENIZER_CHARACTERS = " 0123456789abcdefghijklmnopqrstuvwxyz+-*=:.,?!'()<>/\n"
"""The tiny tokenizer's characters, ids 0 to 52; ids 53-59 are never produced by encoding."""


def write_tiny_moe_tokenizer(folder: Path) -> None:
    """A character-level tokenizer.json (with a chat template) for the tiny MoE checkpoints'
    64-entry vocabulary: characters at ids 0-52, <|startoftext|> 60, <|eot_id|> 61,
    <|endoftext|> 62 and <|mdm_mask|> 63, matching their config's eos and mask ids."""
    specials = {"<|startoftext|>": 60, "<|eot_id|>": 61, "<|endoftext|>": 62, "<|mdm_mask|>": 63}
    vocab = {character: i for i, character in enumerate(MOE_TOKENIZER_CHARACTERS)}
    vocab.update({f"<|unused_{i}|>": i for i in range(len(vocab), 60)})
    template = (
        "{{ bos_token }}{% for message in messages %}"
        "{{ message['role'] + ': ' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    write_character_tokenizer(folder, vocab, specials, template)
