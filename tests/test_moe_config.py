"""Config reading of the new families: LLaDA-MoE and LLaDA2 recognised, checked, described by
`dyllm info`, their key maps the real layouts; DiffuCoder loads as Dream.

The LLaDA2 config is dFactory's LLaDA2.0-mini file (fixtures/hf/README.md) with model_type set to
the release's "llada2_moe". No LLaDA-MoE config.json was found: `llada_moe_config` writes the
real checkpoint's values as a third party annotates them (REFERENCE-families.md, "Real sizes").
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from dyllm.models.config import ConfigError, ModelConfig
from dyllm.models.inspection import describe_checkpoint, format_description
from dyllm.models.keymaps import checkpoint_keys
from dyllm.models.loader import CheckpointError
from dyllm.models.moe_config import moe_family, read_moe_config
from dyllm.models.transformer import DiffusionTransformer
from tests.checkpoints import HF
from tests.moe_checkpoints import TINY_CONFIGS, moe_checkpoint_shapes


def llada2_config() -> dict[str, Any]:
    raw = json.loads((HF / "LLaDA2.0-mini" / "dfactory-llada2_mini-config.json").read_text())
    raw["model_type"] = "llada2_moe"
    return raw


def llada_moe_config() -> dict[str, Any]:
    return {
        "architectures": ["LLaDAMoEModelLM"],
        "model_type": "llada",
        "vocab_size": 157184,
        "hidden_size": 2048,
        "dense_intermediate_size": 8192,
        "expert_intermediate_size": 1024,
        "shared_expert_intermediate_size": None,
        "num_hidden_layers": 16,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "hidden_act": "silu",
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "eos_token_id": 156892,
        "tie_word_embeddings": False,
        "rope_theta": 50000.0,
        "partial_rotary_factor": 1,
        "rope_scaling": None,
        "attention_bias": False,
        "clip_qkv": None,
        "num_experts_per_tok": 8,
        "num_experts": 64,
        "norm_topk_prob": False,
        "qk_layernorm": True,
        "moe_layer_freq": [1] * 16,
        "moe_router_enable_expert_bias": False,
        "routed_scaling_factor": 1.0,
        "router_aux_loss_coef": 0.01,
        "torch_dtype": "bfloat16",
    }


def write_config(folder: Path, raw: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(raw))
    return folder


def test_llada_moe_is_told_from_llada_8b() -> None:
    assert moe_family(llada_moe_config()) == "llada_moe"
    llada_8b = json.loads((HF / "LLaDA-8B-Instruct" / "config.json").read_text())
    assert moe_family(llada_8b) is None
    assert ModelConfig.from_hf_config(llada_8b).family == "llada"
    by_keys = llada_moe_config()
    del by_keys["architectures"]
    assert moe_family(by_keys) == "llada_moe"
    assert moe_family({**llada_moe_config(), "model_type": "lladamoe"}) == "llada_moe"
    with pytest.raises(ConfigError, match="d_model"):
        moe_family({**llada_moe_config(), "d_model": 2048})


def test_llada_moe_config_reads_the_real_shapes() -> None:
    config = read_moe_config(llada_moe_config())
    assert config.family == "llada_moe"
    assert (config.num_layers, config.hidden_size, config.head_dim) == (16, 2048, 128)
    experts = config.experts
    assert experts is not None
    assert experts.moe_layers == (True,) * 16 and config.intermediate_size == 0
    assert (experts.num_experts, experts.num_experts_per_tok) == (64, 8)
    assert experts.router == "softmax" and not experts.expert_bias
    assert experts.shared_expert_intermediate_size is None
    assert config.qk_norm and config.rotary_dim == 128 and not config.fused_qkv
    assert (config.mask_token_id, config.eos_token_id) == (156895, 156892)
    # read into the official config class but not used by its forward: listed, without effect
    assert set(config.ignored_keys) == {"norm_topk_prob", "routed_scaling_factor"}
    assert experts.routed_scaling_factor == 1.0
    # "7B-A1B": about 7 billion parameters, about 1 billion active per token besides the
    # embedding and the head
    assert 6.5e9 < config.num_parameters < 7.5e9
    embedding_and_head = 2 * 157184 * 2048
    assert 1.0e9 < config.active_parameters - embedding_and_head < 1.2e9


def test_llada2_config_reads_the_real_shapes() -> None:
    config = read_moe_config(llada2_config())
    assert config.family == "llada2"
    experts = config.experts
    assert experts is not None
    assert experts.moe_layers == (False,) + (True,) * 19
    assert config.intermediate_size == 5120
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (16, 4, 128)
    assert config.rotary_dim == 64 and config.fused_qkv and config.qk_norm
    assert experts.router == "sigmoid_grouped" and experts.expert_bias
    assert (experts.n_group, experts.topk_group, experts.routed_scaling_factor) == (8, 4, 2.5)
    assert experts.shared_expert_intermediate_size == 512
    assert config.pad_token_id == 156892 and config.eos_token_id == 156892
    assert {"score_function", "norm_topk_prob", "rotary_dim", "router_dtype"} <= set(
        config.ignored_keys
    )
    # "mini (16B)": 16.26 billion parameters, 1.43 billion active
    assert 16.0e9 < config.num_parameters < 16.5e9
    assert 1.3e9 < config.active_parameters < 1.5e9


@pytest.mark.parametrize("make", [llada_moe_config, llada2_config], ids=["llada_moe", "llada2"])
def test_the_key_map_sizes_the_model(make) -> None:
    config = read_moe_config(make())
    shapes = moe_checkpoint_shapes(config)
    assert sum(math.prod(shape) for shape in shapes.values()) == config.num_parameters


def test_key_maps_use_each_real_layout() -> None:
    moe = moe_checkpoint_shapes(read_moe_config(llada_moe_config()))
    assert moe["model.layers.0.self_attn.q_norm.weight"] == (128,)
    assert moe["model.layers.3.mlp.experts.63.down_proj.weight"] == (2048, 1024)
    assert moe["model.layers.3.mlp.gate.weight"] == (64, 2048)
    assert "model.layers.3.mlp.expert_bias" not in moe
    assert not any("shared_expert" in key for key in moe)
    with_extras = {
        **llada_moe_config(),
        "moe_router_enable_expert_bias": True,
        "shared_expert_intermediate_size": 256,
    }
    moe = moe_checkpoint_shapes(read_moe_config(with_extras))
    assert moe["model.layers.0.mlp.expert_bias"] == (64,)
    assert moe["model.layers.0.shared_expert.up_proj.weight"] == (256, 2048)

    two = moe_checkpoint_shapes(read_moe_config(llada2_config()))
    assert two["model.word_embeddings.weight"] == (157184, 2048)
    assert two["model.layers.1.attention.query_key_value.weight"] == ((16 + 8) * 128, 2048)
    assert two["model.layers.1.attention.dense.weight"] == (2048, 2048)
    assert two["model.layers.1.attention.key_layernorm.weight"] == (128,)
    assert two["model.layers.0.mlp.gate_proj.weight"] == (5120, 2048)
    assert "model.layers.0.mlp.gate.weight" not in two
    assert two["model.layers.1.mlp.gate.expert_bias"] == (256,)
    assert two["model.layers.19.mlp.shared_experts.down_proj.weight"] == (2048, 512)


@pytest.mark.parametrize(
    ("make", "change", "message"),
    [
        (llada_moe_config, {"num_experts": "64"}, r"num_experts must be an integer >= 1, got '64'"),
        (llada_moe_config, {"num_experts_per_tok": 65}, "num_experts_per_tok=65 exceeds"),
        (llada_moe_config, {"moe_layer_freq": [1] * 15}, "15 entries for num_hidden_layers=16"),
        (llada_moe_config, {"moe_layer_freq": [2] * 16}, "moe_layer_freq must be a list of 0"),
        (llada_moe_config, {"moe_layer_freq": None}, "lacks the required key 'moe_layer_freq'"),
        (llada_moe_config, {"shared_expert_intermediate_size": -1}, "set it to null"),
        (llada_moe_config, {"qk_layernorm": "yes"}, "qk_layernorm must be true or false"),
        (
            llada_moe_config,
            {"partial_rotary_factor": 1.5},
            r"partial_rotary_factor must be .*\(0, 1\]",
        ),
        (llada_moe_config, {"attention_bias": True}, "attention biases is not supported"),
        (llada_moe_config, {"hidden_act": "gelu"}, "hidden_act='gelu'"),
        (llada_moe_config, {"clip_qkv": -1}, "clip_qkv must be a positive number"),
        (llada2_config, {"n_group": 7}, "must split into n_group=7"),
        (llada2_config, {"topk_group": 9}, "topk_group=9 exceeds n_group=8"),
        (llada2_config, {"num_shared_experts": 0}, "always adds a shared expert"),
        (llada2_config, {"first_k_dense_replace": 21}, "first_k_dense_replace=21 exceeds"),
        (llada2_config, {"head_dim": 128.0}, "head_dim must be an integer"),
        (llada2_config, {"use_bias": True}, "use_bias"),
        (llada2_config, {"rope_scaling": {"type": "linear"}}, "RoPE scaling"),
        (llada2_config, {"mask_token_id": 157184}, r"mask_token_id=157184 is outside"),
    ],
)
def test_bad_values_are_refused_by_key(make, change, message) -> None:
    with pytest.raises(ConfigError, match=message):
        read_moe_config({**make(), **change})


@pytest.mark.parametrize(
    "changes",
    [{}, {"moe_router_enable_expert_bias": False, "shared_expert_intermediate_size": None}],
)
@pytest.mark.parametrize("family", ["llada_moe", "llada2"])
def test_the_loaders_key_map_is_the_real_layout(family: str, changes: dict[str, Any]) -> None:
    """dyllm's modules, named through the loader's key map, are exactly the reference's key list
    (written independently in tests/moe_checkpoints.py), shape for shape."""
    raw = {**TINY_CONFIGS[family], **(changes if family == "llada_moe" else {})}
    config = read_moe_config(raw)
    with torch.device("meta"):
        model = DiffusionTransformer(config)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    mapped = {key: shape for key, (_, shape) in checkpoint_keys(config, shapes).items()}
    assert mapped == moe_checkpoint_shapes(config)


def test_info_describes_an_moe_checkpoint(tmp_path: Path) -> None:
    folder = write_config(tmp_path / "model", llada2_config())
    info = describe_checkpoint(folder)
    config = read_moe_config(llada2_config())
    assert info["family"] == "llada2"
    assert info["parameters"] == config.num_parameters
    assert info["experts"]["experts"] == 256 and info["experts"]["moe_layers"] == 19
    # 16 query heads, 4 key/value heads (replicated at 8 and 16), widths 5120, 512 and 512
    assert info["problems"] == [] and info["tensor_parallel_sizes"] == [1, 2, 4, 8, 16]
    text = format_description(info)
    assert "256 per MoE layer, top-8" in text
    assert "shared expert 512" in text
    assert "ignored keys   score_function" in text


def test_info_reports_a_bad_moe_config_with_its_file(tmp_path: Path) -> None:
    folder = write_config(tmp_path / "model", {**llada_moe_config(), "num_experts": 0})
    with pytest.raises(CheckpointError, match=r"config.json: num_experts must be an integer >= 1"):
        describe_checkpoint(folder)


def test_diffucoder_reads_as_dream() -> None:
    raw = json.loads((HF / "DiffuCoder-7B-Instruct" / "config.json").read_text())
    config = ModelConfig.from_hf_config(raw)
    dream = ModelConfig.from_hf_config(
        json.loads((HF / "Dream-v0-Instruct-7B" / "config.json").read_text())
    )
    assert config.family == "dream"
    assert config.to_dict() == dream.to_dict()


def test_the_info_command_describes_an_moe_checkpoint(capsys, tmp_path: Path) -> None:
    from dyllm.cli import main

    folder = write_config(tmp_path / "model", llada_moe_config())
    code = main(["info", str(folder), "--json"])
    captured = capsys.readouterr()
    info = json.loads(captured.out)
    assert info["family"] == "llada_moe"
    assert info["experts"]["experts"] == 64 and info["experts"]["router"] == "softmax"
    assert info["ignored_keys"] == ["norm_topk_prob", "routed_scaling_factor"]
    assert info["tensor_parallel_sizes"] == [1, 2, 4, 8, 16]  # 16 heads; expert width 1024
    # described in full from config.json alone, nothing stopping a load once the weights are there
    assert code == 0 and captured.err == ""


@pytest.mark.parametrize("family", ["llada_moe", "llada2"])
def test_info_reads_a_tiny_checkpoint_in_the_real_layout(tmp_path: Path, family: str) -> None:
    from tests.moe_checkpoints import write_tiny_moe_checkpoint

    tensors = write_tiny_moe_checkpoint(family, tmp_path / family)
    info = describe_checkpoint(tmp_path / family)
    count = sum(t.numel() for t in tensors.values())
    assert info["family"] == family
    assert info["parameters"] == count
    assert info["stored_dtypes"] == {"bfloat16": len(tensors)}
    assert info["experts"]["dense_layers"] == 1 and info["experts"]["moe_layers"] == 1
    assert info["problems"] == []
