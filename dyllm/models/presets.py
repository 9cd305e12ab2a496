"""Named model shapes: the two real 8B-class models and tiny ones for tests and examples.

The real presets let benchmarks build random-weight models of the true shapes; the tiny presets
keep the same structure (GQA and biases for the Dream layout) at a size that runs in milliseconds.
"""

from __future__ import annotations

from dataclasses import replace

from dyllm.models.config import ModelConfig

_TINY_SHAPE = dict(
    vocab_size=97,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    intermediate_size=160,
    rope_theta=10000.0,
    max_position_embeddings=256,
    mask_token_id=96,
    eos_token_id=1,
    pad_token_id=1,
    bos_token_id=0,
)
"""What the tiny presets share; the Dream one adds grouped-query heads (and, from its family,
q/k/v biases and the logit shift)."""

PRESETS: dict[str, ModelConfig] = {
    "llada-8b": ModelConfig(
        family="llada",
        vocab_size=126464,
        hidden_size=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        intermediate_size=12288,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=4096,
        mask_token_id=126336,
        eos_token_id=126081,
        pad_token_id=126081,
        bos_token_id=126080,
        eot_token_id=126348,
        torch_dtype="bfloat16",
    ),
    "dream-7b": ModelConfig(
        family="dream",
        vocab_size=152064,
        hidden_size=3584,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        intermediate_size=18944,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=131072,
        mask_token_id=151666,
        eos_token_id=151643,
        pad_token_id=151643,
        bos_token_id=151643,
        eot_token_id=151645,
        torch_dtype="bfloat16",
    ),
    "tiny-llada": ModelConfig(family="llada", **_TINY_SHAPE, num_kv_heads=4, rms_norm_eps=1e-5),
    "tiny-dream": ModelConfig(family="dream", **_TINY_SHAPE, num_kv_heads=2, rms_norm_eps=1e-6),
}


def preset(name: str, **overrides: object) -> ModelConfig:
    """A copy of the named preset with `overrides` applied (e.g. num_layers=4)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
