"""The attention of LLaDA-MoE and LLaDA2 as a config-driven module.

Both: per-head QK-norm (RMSNorm over head_dim, one [head_dim] weight) after the projection and
before RoPE, NeoX RoPE on the first `rotary_dim` dims (cos/sin in float32 cast to the activation
dtype), GQA by repeating K/V heads, scale head_dim^-0.5, no bias unless configured.

* LLaDA-MoE: separate `q_proj`, `k_proj`, `v_proj`, `o_proj`; `q_norm`, `k_norm`; with
  `clip_qkv` set, q and k are clamped to [-clip, clip] after the norm and v after its projection.
  Its model drops any attention mask: attention is bidirectional over the whole input.
* LLaDA2: one fused `query_key_value` (rows: all Q heads, all K heads, all V heads), then
  `query_layernorm`, `key_layernorm`, output `dense`. Bidirectional without a mask (the sdpa
  reference); the block-diffusion samplers pass the block-causal mask.

Parameter names are the checkpoints' per-layer suffixes under `self_attn.` (LLaDA-MoE) or
`attention.` (LLaDA2). Not yet called by `DiffusionTransformer` (issue 17's integration step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dyllm.kernels.attention_variants import (
    apply_partial_rope,
    partial_rope_angles,
    qk_norm,
    split_fused_qkv,
)
from dyllm.kernels.primitives import expand_kv_heads
from dyllm.models.layers import RMSNorm
from dyllm.models.moe_config import MoEModelConfig


class MoEAttention(nn.Module):
    """Self-attention of one LLaDA-MoE / LLaDA2 layer: x [B, L, d] -> [B, L, d]."""

    def __init__(self, config: MoEModelConfig) -> None:
        super().__init__()
        self.config = config
        d, hd = config.hidden_size, config.head_dim
        q, kv = config.num_heads * hd, config.num_kv_heads * hd
        if config.fused_qkv:
            self.query_key_value = nn.Linear(d, q + 2 * kv, bias=config.qkv_bias)
            self.dense = nn.Linear(q, d, bias=False)
            norms = ("query_layernorm", "key_layernorm")
        else:
            self.q_proj = nn.Linear(d, q, bias=config.qkv_bias)
            self.k_proj = nn.Linear(d, kv, bias=config.qkv_bias)
            self.v_proj = nn.Linear(d, kv, bias=config.qkv_bias)
            self.o_proj = nn.Linear(q, d, bias=False)
            norms = ("q_norm", "k_norm")
        self.norm_names = norms if config.qk_norm else None
        if config.qk_norm:
            for name in norms:
                self.add_module(name, RMSNorm(hd, config.rms_norm_eps))

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, H, L, D], k and v [B, KV, L, D], before QK-norm and RoPE."""
        c = self.config
        if c.fused_qkv:
            return split_fused_qkv(self.query_key_value(x), c.num_heads, c.num_kv_heads, c.head_dim)
        batch, length, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, -1, c.head_dim).transpose(1, 2)

        return heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))

    def forward(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, L, d]; position_ids [B, L] (default 0..L-1); attention [L, L] or [B, L, L]
        bool (True = may attend) or None (bidirectional). Returns [B, L, d] in x's dtype."""
        c = self.config
        batch, length, _ = x.shape
        q, k, v = self.project(x)
        if self.norm_names is not None:
            q = qk_norm(q, getattr(self, self.norm_names[0]).weight, c.rms_norm_eps)
            k = qk_norm(k, getattr(self, self.norm_names[1]).weight, c.rms_norm_eps)
        if c.clip_qkv is not None:
            q, k, v = (t.clamp(-c.clip_qkv, c.clip_qkv) for t in (q, k, v))
        if position_ids is None:
            position_ids = torch.arange(length, device=x.device).expand(batch, length)
        cos, sin = partial_rope_angles(position_ids, c.rotary_dim, c.rope_theta)
        q, k = apply_partial_rope(q, cos, sin), apply_partial_rope(k, cos, sin)
        k, v = expand_kv_heads(k, c.num_heads), expand_kv_heads(v, c.num_heads)
        mask = None
        if attention is not None:
            mask = attention[None, None] if attention.dim() == 2 else attention[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(batch, length, c.num_heads * c.head_dim)
        return self.dense(out) if c.fused_qkv else self.o_proj(out)
