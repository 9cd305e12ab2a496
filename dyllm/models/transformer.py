"""The bidirectional transformer shared by LLaDA and Dream.

One pre-norm block, repeated: `h = x + o_proj(attention(attn_norm(x)))`, then
`x = h + ffn(ffn_norm(h))`; embeddings unscaled, a final RMSNorm and an untied (or tied) head.
Family differences are config fields (q/k/v bias, grouped-query heads, RoPE precision); the logit
shift Dream's sampler applies is *not* done here: `forward` returns logits exactly as both
reference modeling files do, position i's logits from position i's hidden state.

The block exposes its stages (`project_qkv`, `attend`, `feed_forward`) so the sparse step can run
them on gathered rows without re-implementing them.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from dyllm.models.config import ModelConfig
from dyllm.models.layers import RMSNorm, SwiGLU, apply_rope, attention, rope_angles


class DecoderLayer(nn.Module):
    """Attention + SwiGLU block with pre-RMSNorm and residuals."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d, heads, kv_heads = config.hidden_size, config.num_heads, config.num_kv_heads
        head_dim = config.head_dim
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, heads * head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(d, kv_heads * head_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(d, kv_heads * head_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(heads * head_dim, d, bias=False)
        self.ffn_norm = RMSNorm(d, config.rms_norm_eps)
        self.ffn = SwiGLU(d, config.intermediate_size)

    def project_qkv(
        self, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, H, L, D], k and v [B, KV, L, D] from normed rows [B, L, d]; q and k rotated."""
        q = rearrange(self.q_proj(normed), "b l (h d) -> b h l d", d=self.config.head_dim)
        k = rearrange(self.k_proj(normed), "b l (h d) -> b h l d", d=self.config.head_dim)
        v = rearrange(self.v_proj(normed), "b l (h d) -> b h l d", d=self.config.head_dim)
        full = bool(self.config.rope_full_precision)
        return apply_rope(q, cos, sin, full), apply_rope(k, cos, sin, full), v

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Attention context before o_proj, heads concatenated: [B, Lq, H * D]."""
        return rearrange(attention(q, k, v, key_mask), "b h l d -> b l (h d)")

    def feed_forward(self, h: torch.Tensor) -> torch.Tensor:
        """FFN output (before the residual add) for rows h [B, L, d]."""
        return self.ffn(self.ffn_norm(h))

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        q, k, v = self.project_qkv(self.attn_norm(x), cos, sin)
        h = x + self.o_proj(self.attend(q, k, v, key_mask))
        return h + self.feed_forward(h)


class DiffusionTransformer(nn.Module):
    """A LLaDA- or Dream-layout masked diffusion LM: ids [B, L] -> logits [B, L, V]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        self.tokenizer = None
        self.generation_defaults: dict = {}

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02, seed: int | None = None) -> None:
        """Fresh weights for training: normal(0, std) matrices, zero biases, unit norms."""
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        for name, parameter in self.named_parameters():
            if name.endswith("norm.weight"):
                parameter.fill_(1.0)
            elif name.endswith(".bias"):
                parameter.zero_()
            else:
                values = torch.randn(parameter.shape, generator=generator) * std
                parameter.copy_(values.to(parameter.dtype))

    def rope(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B, L, head_dim] (float32) for position ids [B, L]."""
        return rope_angles(position_ids, self.config.head_dim, self.config.rope_theta)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logit_range: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Logits [B, L, V] in the model dtype ([B, end - start, V] with `logit_range`).

        input_ids: [B, L]; attention_mask: [B, L] (nonzero/True = real token) masks padded keys;
        position_ids: [B, L], by default 0..L-1 (the reference's absolute positions);
        logit_range: (start, end) to apply the LM head to those positions only.
        """
        batch, length = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(length, device=input_ids.device).expand(batch, length)
        key_mask = None if attention_mask is None else attention_mask.bool()
        cos, sin = self.rope(position_ids)
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin, key_mask)
        if logit_range is not None:
            x = x[:, logit_range[0] : logit_range[1]]
        return self.lm_head(self.final_norm(x))
