"""Configuration of the mixture-of-experts families, read from their real `config.json`.

Two families (facts: REFERENCE-families.md):

* LLaDA-MoE-7B-A1B (`model_type` "llada", the string LLaDA-8B uses, or "lladamoe" as
  ZHZisZZ/dllm renames it; `architectures` LLaDAMoEModelLM / LLaDAMoEModel; Qwen2/OLMoE-style
  keys `hidden_size`, `num_experts`, `expert_intermediate_size`): an OLMoE block with QK-norm
  and a softmax top-k router.
* LLaDA2.0 / 2.1 (`model_type` "llada2_moe"): a Ling/Bailing-MoE-V2 block with fused QKV,
  QK-norm, partial RoPE, a grouped sigmoid router with routed scaling and one shared expert, and
  dense first layers (`first_k_dense_replace`).

Every key the official forward reads is read here, type- and range-checked under its own name;
keys the official code reads into its config but its forward ignores are listed in
`ignored_keys` (and `dyllm info` prints them) and have no effect here either, exactly as there.
Keys whose values change the network in a way dyllm does not implement are refused by name.

`read_moe_config` returns the one `ModelConfig` every family has (the attention variants as its
fields, the experts as its `ExpertConfig`); `ModelConfig.from_hf_config` calls it for these
families, so `dyllm.load` and `dyllm info` read them like any checkpoint. The mask and
end-of-text ids are not in the real config.json files: they default to the official samplers'
156895 and 156892, and a config.json that sets `mask_token_id` / `eos_token_id` overrides them
(the tiny test checkpoints do, since their vocabularies are small).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from dyllm.models.config import (
    ConfigError,
    ModelConfig,
    _dtype_name,
    _flag,
    _integer,
    _number,
    _refuse,
    _refuse_quantisation,
    describe_value,
)

MoEFamily = Literal["llada_moe", "llada2"]


LLADA_MOE_ARCHITECTURES = ("LLaDAMoEModelLM", "LLaDAMoEModel")
LLADA_MOE_KEYS = ("num_experts", "expert_intermediate_size")
"""Keys only LLaDA-MoE's config has among the "llada" model types (LLaDA-8B has none)."""

MOE_MASK_TOKEN_ID = 156895
MOE_EOS_TOKEN_ID = 156892
"""Both families' mask and end-of-text ids: the official samplers' defaults (LLaDA2) and what
inclusionAI/dInfer passes for LLaDA-MoE. Neither is in config.json; a config that sets
`mask_token_id` / `eos_token_id` overrides them."""

LLADA_MOE_IGNORED_KEYS = (
    "norm_topk_prob",
    "moe_router_score_function",
    "routed_scaling_factor",
    "router_num_group",
    "router_topk_group",
)
"""Read by LLaDA-MoE's config class but not by its forward: the MoE block hard-codes
norm_topk_prob False and softmax scores, and never scales or groups."""

LLADA2_IGNORED_KEYS = (
    "score_function",
    "norm_topk_prob",
    "moe_router_enable_expert_bias",
    "rotary_dim",
    "router_dtype",
    "norm_head",
    "norm_softmax",
    "use_rmsnorm",
    "embedding_dropout",
    "output_dropout",
    "max_window_layers",
    "use_sliding_window",
    "sliding_window",
    "using_split_qkv_in_self_attention",
)
"""In LLaDA2's config.json but not read by its forward (scores are always sigmoid, weights
always renormalised when top-k > 1, the expert bias always exists, the router is always fp32,
rotary_dim derives from head_dim x partial_rotary_factor; sliding_window is passed to the
attention function, which ignores it under sdpa, the reference implementation)."""


@dataclass(frozen=True)
class ExpertConfig:
    """The mixture-of-experts part of a LLaDA-MoE or LLaDA2 `ModelConfig`.

    `moe_layers[i]` says whether layer i has the MoE FFN (else a dense SwiGLU of the config's
    `intermediate_size`). `router` is "softmax" (LLaDA-MoE) or "sigmoid_grouped" (LLaDA2).
    `shared_expert_intermediate_size` is None without a shared expert.
    """

    moe_layers: tuple[bool, ...]
    num_experts: int
    num_experts_per_tok: int
    expert_intermediate_size: int
    shared_expert_intermediate_size: int | None
    router: Literal["softmax", "sigmoid_grouped"]
    expert_bias: bool
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.num_experts_per_tok > self.num_experts:
            raise ConfigError(
                f"num_experts_per_tok={self.num_experts_per_tok} exceeds "
                f"num_experts={self.num_experts}"
            )

    def parameters_per_layer(self, hidden_size: int) -> int:
        """One MoE layer's tensors: router, expert bias, experts, shared expert."""
        d = hidden_size
        total = self.num_experts * d + (self.num_experts if self.expert_bias else 0)
        total += self.num_experts * 3 * d * self.expert_intermediate_size
        return total + 3 * d * (self.shared_expert_intermediate_size or 0)


def moe_family(raw: dict[str, Any]) -> MoEFamily | None:
    """Which MoE family a config.json dictionary is, or None for any other checkpoint.

    "llada2_moe" is LLaDA2. "lladamoe" is LLaDA-MoE. "llada" is LLaDA-MoE when `architectures`
    names LLaDAMoEModelLM / LLaDAMoEModel or the config has LLaDA-MoE's expert keys, LLaDA-8B
    otherwise; a config whose architecture and keys disagree is refused.
    """
    model_type = str(raw.get("model_type", "")).lower()
    if model_type == "llada2_moe":
        return "llada2"
    if model_type == "lladamoe":
        return "llada_moe"
    if model_type != "llada":
        return None
    architectures = raw.get("architectures") or []
    named = isinstance(architectures, list) and any(
        a in LLADA_MOE_ARCHITECTURES for a in architectures
    )
    keyed = any(key in raw for key in LLADA_MOE_KEYS)
    if named and "d_model" in raw:
        raise ConfigError(
            f"config.json names architecture {architectures} (LLaDA-MoE) but has LLaDA-8B's "
            "key 'd_model'; fix architectures or the keys so that they describe one model"
        )
    return "llada_moe" if named or keyed else None


def read_moe_config(raw: dict[str, Any]) -> ModelConfig:
    """The ModelConfig of a LLaDA-MoE or LLaDA2 config.json dictionary."""
    family = moe_family(raw)
    if family is None:
        raise ConfigError(
            f"config.json (model_type {raw.get('model_type')!r}) is not a LLaDA-MoE or LLaDA2 "
            "checkpoint"
        )
    _refuse_quantisation(raw)
    _refuse(raw, "hidden_act", "silu", "an activation other than SwiGLU/silu")
    _refuse(raw, "rope_scaling", None, "RoPE scaling")
    return _read_llada_moe(raw) if family == "llada_moe" else _read_llada2(raw)


def _ignored(raw: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(key for key in keys if key in raw)


def _fraction(raw: dict[str, Any], key: str, default: float) -> float:
    """A number in (0, 1]."""
    value = _number(raw, key, default)
    if value > 1:
        raise ConfigError(f"{key} must be a number in (0, 1], got {value!r}")
    return value


def _dtype(raw: dict[str, Any]) -> str:
    for key in ("torch_dtype", "dtype"):
        if raw.get(key) is not None:
            return _dtype_name(key, raw[key])
    return "float32"


def _rotary_dim(head_dim: int, factor: float) -> int:
    rotary = int(head_dim * factor)
    if rotary % 2 or not 2 <= rotary <= head_dim:
        raise ConfigError(
            f"partial_rotary_factor={factor} gives {rotary} rotary dims of head_dim {head_dim}; "
            f"it must give an even number in [2, {head_dim}]"
        )
    return rotary


def _head_dim(raw: dict[str, Any], hidden: int, heads: int) -> int:
    head_dim = _integer(raw, "head_dim", None)
    if head_dim is not None:
        return head_dim
    if hidden % heads:
        raise ConfigError(f"hidden_size {hidden} is not divisible by {heads} attention heads")
    return hidden // heads


def _clip_qkv(raw: dict[str, Any]) -> float | None:
    value = raw.get("clip_qkv")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(
            f"clip_qkv must be a positive number or null, got {describe_value(value)}"
        )
    if value <= 0:
        raise ConfigError(f"clip_qkv must be a positive number or null, got {value!r}")
    return float(value)


def _moe_layer_freq(raw: dict[str, Any], num_layers: int) -> tuple[bool, ...]:
    value = raw.get("moe_layer_freq")
    if value is None:
        raise ConfigError(
            "config.json lacks the required key 'moe_layer_freq' (a list with one entry per "
            "layer, 1 = MoE layer, 0 = dense layer); its default in the official config class is "
            "not known to dyllm, so it is not guessed"
        )
    if not isinstance(value, list) or any(isinstance(v, bool) or v not in (0, 1) for v in value):
        raise ConfigError(
            f"moe_layer_freq must be a list of 0 and 1 (one per layer), got {describe_value(value)}"
        )
    if len(value) != num_layers:
        raise ConfigError(
            f"moe_layer_freq has {len(value)} entries for num_hidden_layers={num_layers}; it "
            "needs one per layer"
        )
    return tuple(v == 1 for v in value)


def _read_shared(
    raw: dict[str, Any],
    hidden: int,
    heads: int,
    layers: int,
    head_dim: int,
    default_rms_norm_eps: float,
) -> dict[str, Any]:
    """The fields both MoE families read under the same keys (their shapes, RoPE, norm and
    special tokens), checked, as ModelConfig arguments."""
    eos = _integer(raw, "eos_token_id", MOE_EOS_TOKEN_ID, minimum=0)
    return {
        "vocab_size": _integer(raw, "vocab_size"),
        "hidden_size": hidden,
        "num_layers": layers,
        "num_heads": heads,
        "num_kv_heads": _integer(raw, "num_key_value_heads", heads),
        "head_dim": head_dim,
        "rope_theta": _number(raw, "rope_theta", 10000.0),
        "rms_norm_eps": _number(raw, "rms_norm_eps", default_rms_norm_eps),
        "max_position_embeddings": _integer(raw, "max_position_embeddings"),
        "tie_word_embeddings": _flag(raw, "tie_word_embeddings", False),
        "torch_dtype": _dtype(raw),
        "mask_token_id": _integer(raw, "mask_token_id", MOE_MASK_TOKEN_ID, minimum=0),
        "eos_token_id": eos,
        "pad_token_id": _integer(raw, "pad_token_id", eos, minimum=0),
        "bos_token_id": _integer(raw, "bos_token_id", None, minimum=0),
        "rope_full_precision": False,  # cos/sin cast to the activation dtype, rotated there
        "extra": {k: raw[k] for k in ("architectures",) if k in raw},
    }


def _read_llada_moe(raw: dict[str, Any]) -> ModelConfig:
    _refuse(raw, "attention_bias", False, "LLaDA-MoE with attention biases")
    hidden = _integer(raw, "hidden_size")
    heads = _integer(raw, "num_attention_heads")
    layers = _integer(raw, "num_hidden_layers")
    head_dim = _head_dim({}, hidden, heads)  # LLaDA-MoE has no head_dim key
    shared = raw.get("shared_expert_intermediate_size", -1)
    if shared == -1:
        raise ConfigError(
            "shared_expert_intermediate_size is absent or -1: the official code then builds a "
            "shared expert of size -1, which cannot load; set it to null (no shared expert) or "
            "to the shared expert's size"
        )
    moe_layers = _moe_layer_freq(raw, layers)
    experts = ExpertConfig(
        moe_layers=moe_layers,
        num_experts=_integer(raw, "num_experts"),
        num_experts_per_tok=_integer(raw, "num_experts_per_tok"),
        expert_intermediate_size=_integer(raw, "expert_intermediate_size"),
        shared_expert_intermediate_size=_integer(raw, "shared_expert_intermediate_size", None),
        router="softmax",
        expert_bias=_flag(raw, "moe_router_enable_expert_bias", False),
    )
    dense = 0 if all(moe_layers) else _integer(raw, "dense_intermediate_size")
    return ModelConfig(
        family="llada_moe",
        **_read_shared(raw, hidden, heads, layers, head_dim, default_rms_norm_eps=1e-5),
        intermediate_size=dense,
        qkv_bias=False,
        qk_norm=_flag(raw, "qk_layernorm", False),
        rotary_dim=_rotary_dim(head_dim, _fraction(raw, "partial_rotary_factor", 1.0)),
        clip_qkv=_clip_qkv(raw),
        experts=experts,
        ignored_keys=_ignored(raw, LLADA_MOE_IGNORED_KEYS),
    )


def _read_llada2(raw: dict[str, Any]) -> ModelConfig:
    _refuse(raw, "use_bias", False, "LLaDA2 with linear-layer biases (use_bias)")
    hidden = _integer(raw, "hidden_size")
    heads = _integer(raw, "num_attention_heads")
    layers = _integer(raw, "num_hidden_layers")
    head_dim = _head_dim(raw, hidden, heads)
    first_dense = _integer(raw, "first_k_dense_replace", 0, minimum=0)
    if first_dense > layers:
        raise ConfigError(f"first_k_dense_replace={first_dense} exceeds num_hidden_layers={layers}")
    experts = _integer(raw, "num_experts")
    n_group = _integer(raw, "n_group")
    topk_group = _integer(raw, "topk_group")
    top_k = _integer(raw, "num_experts_per_tok")
    if experts % n_group or experts // n_group < 2:
        raise ConfigError(
            f"num_experts={experts} must split into n_group={n_group} groups of at least 2 "
            "experts (a group is scored by its two largest scores)"
        )
    if topk_group > n_group:
        raise ConfigError(f"topk_group={topk_group} exceeds n_group={n_group}")
    if top_k > topk_group * (experts // n_group):
        raise ConfigError(
            f"num_experts_per_tok={top_k} cannot be chosen from topk_group={topk_group} "
            f"group(s) of {experts // n_group} experts"
        )
    moe_inter = _integer(raw, "moe_intermediate_size")
    shared = _integer(raw, "num_shared_experts", 0, minimum=0)
    if shared == 0:
        raise ConfigError(
            "num_shared_experts is absent or 0: LLaDA2's MoE block always adds a shared expert "
            "(moe_intermediate_size x num_shared_experts wide); dyllm does not run one without"
        )
    moe_layers = tuple(i >= first_dense for i in range(layers))
    return ModelConfig(
        family="llada2",
        **_read_shared(raw, hidden, heads, layers, head_dim, default_rms_norm_eps=1e-6),
        intermediate_size=_integer(raw, "intermediate_size") if first_dense else 0,
        qkv_bias=_flag(raw, "use_qkv_bias", False),
        qk_norm=_flag(raw, "use_qk_norm", True),
        rotary_dim=_rotary_dim(head_dim, _fraction(raw, "partial_rotary_factor", 1.0)),
        fused_qkv=True,
        experts=ExpertConfig(
            moe_layers=moe_layers,
            num_experts=experts,
            num_experts_per_tok=top_k,
            expert_intermediate_size=moe_inter,
            shared_expert_intermediate_size=moe_inter * shared,
            router="sigmoid_grouped",
            expert_bias=True,
            n_group=n_group,
            topk_group=topk_group,
            routed_scaling_factor=_number(raw, "routed_scaling_factor", 1.0),
        ),
        ignored_keys=_ignored(raw, LLADA2_IGNORED_KEYS),
    )
