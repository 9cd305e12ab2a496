"""One configuration for every model family, read from and written to their real `config.json`.

LLaDA (OLMo-style keys such as `d_model`, `n_layers`, `mlp_hidden_size`) and Dream (Qwen2 keys such
as `hidden_size`, `num_hidden_layers`, `intermediate_size`) describe the same network: a
bidirectional pre-norm transformer with RoPE, RMSNorm and a SwiGLU FFN. Their differences
become fields here (`qkv_bias`, `num_kv_heads`, `logit_shift`, `rope_full_precision`), so the
model code has one path and no `if family == ...` branches. The mixture-of-experts families
(LLaDA-MoE, LLaDA2; read by `dyllm.models.moe_config`) are the same network with four more
attention fields (`qk_norm`, `rotary_dim`, `fused_qkv`, `clip_qkv`) and an `experts` part
(`ExpertConfig`: which layers are MoE, the router, the experts' widths). Unsupported variants of
either format (ALiBi, LayerNorm, sliding windows, RoPE scaling, quantisation, ...) are refused
with a message naming the key, and every value dyllm reads is checked for its type and range
under the key's own name (`d_model must be an integer >= 1, got '128' (a string)`), so a damaged
config.json fails when it is read, never later as a shape error or a silently wrong model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from dyllm.models.moe_config import ExpertConfig

Family = Literal["llada", "dream", "llada_moe", "llada2"]
FAMILIES = ("llada", "dream", "llada_moe", "llada2")

MODEL_TYPES: dict[str, Family] = {"llada": "llada", "dream": "dream"}
"""`model_type` values of config.json (compared case-insensitively) and the family they load as."""

SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")


class ConfigError(ValueError):
    """A config.json this engine cannot run, with the key at fault in the message."""


@dataclass
class ModelConfig:
    """Shape and special tokens of a LLaDA-, Dream-, LLaDA-MoE- or LLaDA2-layout model.

    `head_dim`, `qkv_bias`, `logit_shift` and `rope_full_precision` follow from the family
    unless given; `rotary_dim` 0 means the whole head. `intermediate_size` is the dense FFN's
    width (0 when `experts` makes every layer a mixture of experts).
    """

    family: Family
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    qkv_bias: bool | None = None
    max_position_embeddings: int = 4096
    mask_token_id: int = 0
    eos_token_id: int = 1
    pad_token_id: int = 1
    bos_token_id: int | None = None
    eot_token_id: int | None = None
    tie_word_embeddings: bool = False
    torch_dtype: str = "float32"
    head_dim: int = 0
    logit_shift: bool | None = None
    rope_full_precision: bool | None = None
    qk_norm: bool = False
    """Per-head RMSNorm (one [head_dim] weight) on q and k before RoPE."""
    rotary_dim: int = 0
    """RoPE on the first rotary_dim dims of each head (0: all of them)."""
    fused_qkv: bool = False
    """One query_key_value projection (rows: all Q heads, all K heads, all V heads)."""
    clip_qkv: float | None = None
    """Clamp q, k (after the QK-norm) and v to [-clip, clip]."""
    experts: ExpertConfig | None = None
    """The mixture-of-experts FFN and the layers that have it (None: every FFN is dense)."""
    ignored_keys: tuple[str, ...] = ()
    """config.json keys the official forward ignores, ignored here too (`dyllm info` lists them)."""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        all_moe = self.experts is not None and all(self.experts.moe_layers)
        for name in POSITIVE_INTEGER_FIELDS:
            check_integer(name, getattr(self, name), minimum=1)
        check_integer("intermediate_size", self.intermediate_size, minimum=0 if all_moe else 1)
        check_integer("head_dim", self.head_dim, minimum=0)
        check_integer("rotary_dim", self.rotary_dim, minimum=0)
        for name in POSITIVE_NUMBER_FIELDS:
            check_positive_number(name, getattr(self, name))
        if self.head_dim == 0 and self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden size {self.hidden_size} is not divisible by {self.num_heads} heads"
            )
        if self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"{self.num_heads} attention heads cannot be grouped over "
                f"{self.num_kv_heads} key/value heads (must divide)"
            )
        if self.head_dim == 0:
            self.head_dim = self.hidden_size // self.num_heads
        if self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head dimension, got {self.head_dim}")
        if self.rotary_dim == 0:
            self.rotary_dim = self.head_dim
        if self.rotary_dim % 2 or not 2 <= self.rotary_dim <= self.head_dim:
            raise ConfigError(
                f"{self.rotary_dim} rotary dims of head_dim {self.head_dim}: RoPE needs an even "
                f"number in [2, {self.head_dim}] (check partial_rotary_factor)"
            )
        if self.experts is not None and len(self.experts.moe_layers) != self.num_layers:
            raise ConfigError(
                f"{len(self.experts.moe_layers)} MoE-layer flags for {self.num_layers} layers"
            )
        if self.qkv_bias is None:
            self.qkv_bias = self.family == "dream"
        if self.family == "dream" and not self.qkv_bias:
            raise ConfigError("the Dream (Qwen2) layout always has q/k/v biases; set qkv_bias=True")
        if self.logit_shift is None:
            self.logit_shift = self.family == "dream"
        if self.rope_full_precision is None:
            self.rope_full_precision = self.family == "llada"
        if self.torch_dtype not in SUPPORTED_DTYPES:
            raise ConfigError(
                f"torch_dtype {self.torch_dtype!r} is not supported; use one of {SUPPORTED_DTYPES}"
            )
        if self.clip_qkv is not None:
            check_positive_number("clip_qkv", self.clip_qkv)
        for name in ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id"):
            token = getattr(self, name)
            if token is None and name == "bos_token_id":
                continue
            check_integer(name, token, minimum=0)
            if not 0 <= token < self.vocab_size:
                raise ConfigError(
                    f"{name}={token} is outside the vocabulary [0, {self.vocab_size})"
                )

    def is_moe_layer(self, index: int) -> bool:
        """Whether layer `index`'s FFN is the mixture of experts (else a dense SwiGLU)."""
        return self.experts is not None and self.experts.moe_layers[index]

    @property
    def num_parameters(self) -> int:
        """Parameter count implied by the shapes (embedding and head counted separately)."""
        d, h = self.hidden_size, self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        attention = d * h * 2 + d * kv * 2 + (h + 2 * kv if self.qkv_bias else 0)
        attention += 2 * self.head_dim if self.qk_norm else 0
        total = 0
        for index in range(self.num_layers):
            total += attention + 2 * d
            if self.is_moe_layer(index):
                assert self.experts is not None
                total += self.experts.parameters_per_layer(d)
            else:
                total += 3 * d * self.intermediate_size
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + total + d + head

    @property
    def active_parameters(self) -> int:
        """Parameters one token uses: only num_experts_per_tok experts of each MoE layer."""
        if self.experts is None:
            return self.num_parameters
        e = self.experts
        idle = (e.num_experts - e.num_experts_per_tok) * 3 * self.hidden_size
        return self.num_parameters - sum(e.moe_layers) * idle * e.expert_intermediate_size

    def shape_summary(self) -> dict[str, Any]:
        """Family and shapes, as `dyllm info` and benchmark reports print them (with the
        experts and the ignored config keys for a mixture-of-experts model)."""
        summary: dict[str, Any] = {
            "family": self.family,
            "layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "heads": self.num_heads,
            "kv_heads": self.num_kv_heads,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
        }
        if self.experts is not None:
            e = self.experts
            summary["experts"] = {
                "moe_layers": sum(e.moe_layers),
                "dense_layers": self.num_layers - sum(e.moe_layers),
                "experts": e.num_experts,
                "experts_per_token": e.num_experts_per_tok,
                "expert_intermediate_size": e.expert_intermediate_size,
                "shared_expert_intermediate_size": e.shared_expert_intermediate_size,
                "router": e.router,
                "expert_bias": e.expert_bias,
                "active_parameters": self.active_parameters,
            }
            summary["ignored_keys"] = list(self.ignored_keys)
        return summary

    # ----------------------------------------------------------------- config.json <-> config

    @classmethod
    def from_hf_config(cls, raw: dict[str, Any]) -> ModelConfig:
        """Read a Hugging Face `config.json` dictionary of any family (LLaDA-MoE and LLaDA2 by
        `dyllm.models.moe_config.read_moe_config`)."""
        from dyllm.models.moe_config import moe_family, read_moe_config

        if moe_family(raw) is not None:
            return read_moe_config(raw)
        model_type = str(raw.get("model_type", ""))
        family = MODEL_TYPES.get(model_type.lower())
        if family is None:
            raise ConfigError(
                f"unsupported model_type {model_type!r} in config.json; dyllm runs LLaDA "
                "(model_type 'llada'), Dream ('Dream'), LLaDA-MoE ('llada' with MoE keys) and "
                "LLaDA2 ('llada2_moe') checkpoints"
            )
        return _read_llada(raw) if family == "llada" else _read_dream(raw)

    def to_hf_config(self) -> dict[str, Any]:
        """The `config.json` dictionary the real family ships, for these shapes (LLaDA and
        Dream; dyllm writes no mixture-of-experts checkpoint)."""
        if self.family not in ("llada", "dream"):
            raise ConfigError(
                f"dyllm writes LLaDA and Dream checkpoints only, not {self.family!r} ones"
            )
        return _write_llada(self) if self.family == "llada" else _write_dream(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


POSITIVE_INTEGER_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "max_position_embeddings",
)
POSITIVE_NUMBER_FIELDS = ("rope_theta", "rms_norm_eps")

_MISSING: Any = object()


def describe_value(value: Any) -> str:
    """`'128' (a string)`, `128.0 (a float)`, ...: a value and its JSON type, for messages."""
    kinds = {
        str: "a string",
        float: "a float",
        bool: "a boolean",
        int: "an integer",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }
    return f"{value!r} ({kinds.get(type(value), f'a {type(value).__name__}')})"


def check_integer(key: str, value: Any, minimum: int) -> int:
    """`value` if it is an integer >= minimum (a JSON float such as 128.0 is not)."""
    if isinstance(value, bool) or not isinstance(value, int):
        hint = "; write it without quotes" if isinstance(value, str) else ""
        raise ConfigError(
            f"{key} must be an integer >= {minimum}, got {describe_value(value)}{hint}"
        )
    if value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value}")
    return value


def check_positive_number(key: str, value: Any) -> float:
    """`value` as a float if it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = "; write it without quotes" if isinstance(value, str) else ""
        raise ConfigError(f"{key} must be a positive number, got {describe_value(value)}{hint}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key} must be a finite number > 0, got {value!r}")
    return float(value)


def _integer(raw: dict[str, Any], key: str, default: Any = _MISSING, minimum: int = 1) -> Any:
    """config.json's `key` as an integer >= minimum; `default` when absent or null (required
    when no default is given)."""
    value = raw.get(key)
    if value is None:
        if default is _MISSING:
            raise ConfigError(f"config.json lacks the required key {key!r}")
        return default
    return check_integer(key, value, minimum)


def _number(raw: dict[str, Any], key: str, default: float) -> float:
    value = raw.get(key)
    return default if value is None else check_positive_number(key, value)


def _flag(raw: dict[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {describe_value(value)}")
    return value


def _dtype_name(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(
            f"{key} must be one of {', '.join(SUPPORTED_DTYPES)}, got {describe_value(value)}"
        )
    return value


def _refuse_quantisation(raw: dict[str, Any]) -> None:
    if raw.get("quantization_config") is not None:
        method = raw["quantization_config"]
        method = method.get("quant_method", "?") if isinstance(method, dict) else method
        raise ConfigError(
            f"config.json sets quantization_config (method {method!r}): quantised checkpoints "
            "are not supported by dyllm; use the original float16 / bfloat16 / float32 weights"
        )


def _refuse(raw: dict[str, Any], key: str, supported: Any, what: str) -> None:
    value = raw.get(key, supported)
    if value != supported:
        raise ConfigError(f"config.json sets {key}={value!r}: {what} is not supported by dyllm")


def _read_llada(raw: dict[str, Any]) -> ModelConfig:
    _refuse(raw, "alibi", False, "ALiBi attention")
    _refuse(raw, "rope", True, "a model without RoPE")
    _refuse(raw, "layer_norm_type", "rms", "a norm other than RMSNorm")
    _refuse(raw, "block_type", "llama", "a block type other than 'llama'")
    _refuse(raw, "activation_type", "silu", "an activation other than SwiGLU/silu")
    _refuse(raw, "attention_layer_norm", False, "QK layer norm")
    _refuse(raw, "input_emb_norm", False, "embedding normalisation")
    _refuse(raw, "scale_logits", False, "logit scaling")
    _refuse_quantisation(raw)
    d_model = _integer(raw, "d_model")
    n_heads = _integer(raw, "n_heads")
    n_kv_heads = _integer(raw, "n_kv_heads", default=None)
    if _flag(raw, "multi_query_attention", False):
        n_kv_heads = 1
    mlp_hidden = _integer(raw, "mlp_hidden_size", default=None)
    if mlp_hidden is None:
        mlp_hidden = int(_number(raw, "mlp_ratio", 4.0) * d_model)
    vocab = _integer(raw, "embedding_size", default=None) or _integer(raw, "vocab_size")
    eos = _integer(raw, "eos_token_id", minimum=0)
    return ModelConfig(
        family="llada",
        vocab_size=vocab,
        hidden_size=d_model,
        num_layers=_integer(raw, "n_layers"),
        num_heads=n_heads,
        num_kv_heads=n_kv_heads or n_heads,
        intermediate_size=mlp_hidden,
        rope_theta=_number(raw, "rope_theta", 10000.0),
        rms_norm_eps=_number(raw, "rms_norm_eps", 1e-5),
        qkv_bias=_flag(raw, "include_qkv_bias", False) or _flag(raw, "include_bias", False),
        max_position_embeddings=_integer(raw, "max_sequence_length", 4096),
        mask_token_id=_integer(raw, "mask_token_id", 126336, minimum=0),
        eos_token_id=eos,
        pad_token_id=_integer(raw, "pad_token_id", eos, minimum=0),
        bos_token_id=_integer(raw, "bos_token_id", None, minimum=0),
        tie_word_embeddings=_flag(raw, "weight_tying", False),
        torch_dtype=_llada_dtype(raw),
        rope_full_precision=_flag(raw, "rope_full_precision", True),
        extra={k: raw[k] for k in ("architectures",) if k in raw},
    )


def _llada_dtype(raw: dict[str, Any]) -> str:
    if raw.get("torch_dtype") is not None:
        return _dtype_name("torch_dtype", raw["torch_dtype"])
    return "bfloat16" if "bf16" in str(raw.get("precision", "")) else "float32"


def _read_dream(raw: dict[str, Any]) -> ModelConfig:
    _refuse(raw, "rope_scaling", None, "RoPE scaling")
    _refuse(raw, "use_sliding_window", False, "sliding-window attention")
    _refuse(raw, "use_mrope", False, "multimodal RoPE")
    _refuse(raw, "hidden_act", "silu", "an activation other than SwiGLU/silu")
    _refuse_quantisation(raw)
    heads = _integer(raw, "num_attention_heads")
    eos = _integer(raw, "eos_token_id", minimum=0)
    dtype = raw.get("torch_dtype")
    return ModelConfig(
        family="dream",
        vocab_size=_integer(raw, "vocab_size"),
        hidden_size=_integer(raw, "hidden_size"),
        num_layers=_integer(raw, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=_integer(raw, "num_key_value_heads", heads),
        intermediate_size=_integer(raw, "intermediate_size"),
        rope_theta=_number(raw, "rope_theta", 10000.0),
        rms_norm_eps=_number(raw, "rms_norm_eps", 1e-6),
        qkv_bias=True,
        max_position_embeddings=_integer(raw, "max_position_embeddings", 32768),
        mask_token_id=_integer(raw, "mask_token_id", minimum=0),
        eos_token_id=eos,
        pad_token_id=_integer(raw, "pad_token_id", eos, minimum=0),
        bos_token_id=_integer(raw, "bos_token_id", None, minimum=0),
        tie_word_embeddings=_flag(raw, "tie_word_embeddings", False),
        torch_dtype="float32" if dtype is None else _dtype_name("torch_dtype", dtype),
        extra={k: raw[k] for k in ("architectures",) if k in raw},
    )


def _write_llada(c: ModelConfig) -> dict[str, Any]:
    return {
        "architectures": ["LLaDAModelLM"],
        "model_type": "llada",
        "activation_type": "silu",
        "alibi": False,
        "attention_layer_norm": False,
        "block_type": "llama",
        "d_model": c.hidden_size,
        "embedding_size": c.vocab_size,
        "vocab_size": c.vocab_size,
        "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id,
        "mask_token_id": c.mask_token_id,
        "include_bias": False,
        "include_qkv_bias": c.qkv_bias,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "max_sequence_length": c.max_position_embeddings,
        "mlp_hidden_size": c.intermediate_size,
        "n_heads": c.num_heads,
        "n_kv_heads": c.num_kv_heads,
        "n_layers": c.num_layers,
        "rms_norm_eps": c.rms_norm_eps,
        "rope": True,
        "rope_full_precision": c.rope_full_precision,
        "rope_theta": c.rope_theta,
        "scale_logits": False,
        "weight_tying": c.tie_word_embeddings,
        "torch_dtype": c.torch_dtype,
    }


def _write_dream(c: ModelConfig) -> dict[str, Any]:
    return {
        "architectures": ["DreamModel"],
        "model_type": "Dream",
        "hidden_act": "silu",
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "num_hidden_layers": c.num_layers,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": None,
        "use_sliding_window": False,
        "sliding_window": None,
        "tie_word_embeddings": c.tie_word_embeddings,
        "vocab_size": c.vocab_size,
        "mask_token_id": c.mask_token_id,
        "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id,
        "bos_token_id": c.bos_token_id if c.bos_token_id is not None else c.eos_token_id,
        "torch_dtype": c.torch_dtype,
    }
