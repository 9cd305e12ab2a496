"""The bidirectional transformer shared by every family, with its one forward.

One pre-norm block, repeated: `h = x + o_proj(attention(attn_norm(x)))`, then
`x = h + ffn(ffn_norm(h))`; embeddings unscaled, a final RMSNorm and an untied (or tied) head.
Family differences are config fields (q/k/v bias, grouped-query heads, RoPE precision; for
LLaDA-MoE and LLaDA2 also per-head QK-norm, partial RoPE, a fused QKV, clip_qkv and a
mixture-of-experts FFN on the layers the config names); the logit
shift Dream's sampler applies is *not* done here: `forward` returns logits exactly as both
reference modeling files do, position i's logits from position i's hidden state.

Each block exposes its stages once (`attn_norm`, `project_queries`, `project_keys`,
`project_values`, `attend`, `attention_output`, `feed_forward`, and `feed_forward_weights` for
kernels that take the FFN's matrices): the forward below strings them together, and the saliency
engine's sparse step (`dyllm.engine.sparse_step`) runs the same stages on gathered rows. The
forward takes an optional `ActivationSink` that receives each layer's K (after RoPE), V,
attention context and FFN output: that is how a dense step fills the engine's caches, with no
second copy of the forward.

Block diffusion (LLaDA2): `forward(..., block_length=b)` makes attention block-causal over the
position ids (a query at position q sees keys at positions k with k // b <= q // b), and an
optional `KeyValueStore` supplies keys and values beyond the input rows: each layer hands it the
rows' fresh K/V and attends to what it returns (finished blocks' K/V from a cache plus the fresh
ones). Both are arguments of the same forward, so the cached and the recomputing paths share
every stage.

Tensor parallelism (`shard`, see `dyllm.models.parallel`): a process holds some heads, some FFN
columns and some vocabulary rows, and the same stages compute its part. The sums over processes
sit in the stages themselves (`attention_output` after o_proj, `feed_forward` and the FFN
weights' `reduce` after the down projection, `embed_tokens`, and `logits` gathering the
vocabulary), so the dense forward and the sparse step both get them. Without a shard no stage
communicates and every computation is the single-process one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from dyllm.kernels.attention_variants import block_causal_key_mask, qk_norm
from dyllm.kernels.primitives import apply_rope, attention, rope_angles
from dyllm.kernels.reference_gathered_ffn import FeedForwardWeights
from dyllm.models.config import ModelConfig
from dyllm.models.layers import RMSNorm, SwiGLU
from dyllm.models.moe import MoEFeedForward
from dyllm.models.parallel import TensorParallelShard
from dyllm.tokenizer import Tokenizer


@dataclass(frozen=True)
class LayerActivations:
    """What one layer computed for every row of a dense forward."""

    key: torch.Tensor
    """[B, KV, L, D] after RoPE (KV: this process's key/value heads)."""
    value: torch.Tensor
    """[B, KV, L, D]."""
    context: torch.Tensor
    """[B, L, H * D]: attention output before o_proj (H: this process's query heads)."""
    ffn_out: torch.Tensor
    """[B, L, d]: FFN output before the residual add (summed over processes)."""
    query: torch.Tensor | None = None
    """[B, H, L, D] after RoPE, for a sink that derives softmax statistics (None: not given)."""


class ActivationSink(Protocol):
    """Receives each layer's activations during `DiffusionTransformer.forward`."""

    def record(self, layer: int, activations: LayerActivations) -> None: ...


class KeyValueStore(Protocol):
    """Keys and values a forward attends to instead of only its input rows' (a K/V cache).

    `key_positions` [B, Lk] are the position ids of the keys `extend` returns and `key_valid`
    [B, Lk] (or None: all valid) says which of them exist; with `block_length` the forward builds
    the block-causal mask from them. `extend(layer, key, value)` receives the input rows' fresh
    key [B, KV, Lq, D] (after RoPE) and value, stores them as it sees fit, and returns the keys
    and values [B, KV, Lk, D] that layer attends to.
    """

    key_positions: torch.Tensor
    key_valid: torch.Tensor | None

    def extend(
        self, layer: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class DecoderLayer(nn.Module):
    """Attention + FFN block with pre-RMSNorm and residuals, its variants set by the config.

    Attention: separate q/k/v projections (`q_proj`, `k_proj`, `v_proj`) or one fused
    `qkv_proj` (LLaDA2: rows all Q heads, all K heads, all V heads), optional per-head QK-norm
    (`q_norm`, `k_norm`) before RoPE, optional clamping (`clip_qkv`), RoPE on the first
    `rotary_dim` dims of each head. FFN: a dense SwiGLU, or on the config's MoE layers
    (`is_moe`) the mixture of experts (`dyllm.models.moe.MoEFeedForward`).

    With a `shard`, the block holds the shard's query and key/value heads and FFN columns; its
    two sums over processes are `attention_output` and the FFN's down projection.
    """

    ffn: SwiGLU | MoEFeedForward

    def __init__(
        self, config: ModelConfig, shard: TensorParallelShard | None = None, index: int = 0
    ) -> None:
        super().__init__()
        self.config = config
        self.shard = shard
        self.num_heads = config.num_heads if shard is None else shard.num_heads
        """Query heads this process computes (all of them in one process)."""
        self.num_kv_heads = config.num_kv_heads if shard is None else shard.num_kv_heads
        """Key/value heads this process holds."""
        self.is_moe = config.is_moe_layer(index)
        """Whether this layer's FFN is the mixture of experts."""
        intermediate = config.intermediate_size if shard is None else shard.intermediate_size
        d, head_dim = config.hidden_size, config.head_dim
        q_rows, kv_rows = self.num_heads * head_dim, self.num_kv_heads * head_dim
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        if config.fused_qkv:
            self.qkv_proj = nn.Linear(d, q_rows + 2 * kv_rows, bias=config.qkv_bias)
        else:
            self.q_proj = nn.Linear(d, q_rows, bias=config.qkv_bias)
            self.k_proj = nn.Linear(d, kv_rows, bias=config.qkv_bias)
            self.v_proj = nn.Linear(d, kv_rows, bias=config.qkv_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(head_dim, config.rms_norm_eps)
        self.o_proj = nn.Linear(q_rows, d, bias=False)
        self.ffn_norm = RMSNorm(d, config.rms_norm_eps)
        if self.is_moe:
            assert config.experts is not None
            self.ffn = MoEFeedForward(config.experts, d, 1 if shard is None else shard.world_size)
        else:
            self.ffn = SwiGLU(d, intermediate)

    def _projection(self, part: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of the query (0), key (1) or value (2) projection. A fused QKV's part is
        a slice of its rows (a view: no copy, and no other part's rows are computed)."""
        if not self.config.fused_qkv:
            linear = (self.q_proj, self.k_proj, self.v_proj)[part]
            return linear.weight, linear.bias
        q_rows = self.num_heads * self.config.head_dim
        kv_rows = self.num_kv_heads * self.config.head_dim
        start = (0, q_rows, q_rows + kv_rows)[part]
        end = start + (q_rows if part == 0 else kv_rows)
        bias = self.qkv_proj.bias
        return self.qkv_proj.weight[start:end], None if bias is None else bias[start:end]

    def _finish(self, rows: torch.Tensor, norm: RMSNorm | None) -> torch.Tensor:
        """Per-head QK-norm (when the config has it) and clamping (`clip_qkv`) of projected rows
        [..., heads * D]; RoPE comes after."""
        if norm is not None:
            heads = rows.unflatten(-1, (-1, self.config.head_dim))
            rows = qk_norm(heads, norm.weight, norm.eps).flatten(-2)
        clip = self.config.clip_qkv
        return rows if clip is None else rows.clamp(-clip, clip)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return apply_rope(x, cos, sin, bool(self.config.rope_full_precision))

    def project_queries(
        self, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """q [B, H, L, D], rotated, from normed rows [B, L, d] and their angles [B, L, R]
        (R: the rotary dims)."""
        q = self._finish(F.linear(normed, *self._projection(0)), self._norm("q_norm"))
        return self._rope(rearrange(q, "b l (h d) -> b h l d", d=self.config.head_dim), cos, sin)

    def project_keys(self, normed: torch.Tensor) -> torch.Tensor:
        """Keys before RoPE (after the QK-norm), heads concatenated: [..., d] -> [..., KV * D]."""
        return self._finish(F.linear(normed, *self._projection(1)), self._norm("k_norm"))

    def project_values(self, normed: torch.Tensor) -> torch.Tensor:
        """Values, heads concatenated: [..., d] -> [..., KV * D]."""
        return self._finish(F.linear(normed, *self._projection(2)), None)

    def project_qkv(
        self, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, H, L, D], k and v [B, KV, L, D] from normed rows [B, L, d]; q and k rotated.

        A fused QKV is one matmul here, split afterwards (the sparse step's separate stages
        multiply by the parts' row slices instead); separate projections are the stages
        themselves."""
        heads = partial(rearrange, pattern="b l (h d) -> b h l d", d=self.config.head_dim)
        if not self.config.fused_qkv:
            q = self.project_queries(normed, cos, sin)
            k = self._rope(heads(self.project_keys(normed)), cos, sin)
            return q, k, heads(self.project_values(normed))
        kv_rows = self.num_kv_heads * self.config.head_dim
        q, k, v = self.qkv_proj(normed).split(
            [self.num_heads * self.config.head_dim, kv_rows, kv_rows], dim=-1
        )
        q = self._finish(q, self._norm("q_norm"))
        k = self._finish(k, self._norm("k_norm"))
        v = self._finish(v, None)
        return self._rope(heads(q), cos, sin), self._rope(heads(k), cos, sin), heads(v)

    def _norm(self, name: str) -> RMSNorm | None:
        return getattr(self, name) if self.config.qk_norm else None

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Attention context before o_proj, heads concatenated: [B, Lq, H * D]."""
        return rearrange(attention(q, k, v, key_mask), "b h l d -> b l (h d)")

    def attention_output(self, context: torch.Tensor) -> torch.Tensor:
        """o_proj of contexts [..., H * D] -> [..., d], summed over processes (the block's first
        all-reduce)."""
        return self._sum_over_processes(self.o_proj(context))

    def feed_forward(self, h: torch.Tensor) -> torch.Tensor:
        """FFN output (before the residual add) for rows h [..., d], summed over processes (the
        block's second all-reduce). On a MoE layer: routed, the rows grouped by expert."""
        return self._sum_over_processes(self.ffn(self.ffn_norm(h)))

    def feed_forward_weights(self) -> FeedForwardWeights:
        """The FFN norm and SwiGLU matrices, as kernels that gather rows take them (with the
        same sum over processes as `feed_forward`, applied to the down projection's rows).
        A MoE layer has no single SwiGLU: use `feed_forward` on its rows."""
        if not isinstance(self.ffn, SwiGLU):
            raise TypeError(
                "this layer's FFN is a mixture of experts, which has no single SwiGLU's weights; "
                "run feed_forward on the rows instead"
            )
        return FeedForwardWeights(
            norm_weight=self.ffn_norm.weight,
            norm_eps=self.ffn_norm.eps,
            gate=self.ffn.gate_proj.weight,
            up=self.ffn.up_proj.weight,
            down=self.ffn.down_proj.weight,
            reduce=None if self.shard is None else self._sum_over_processes,
        )

    def _sum_over_processes(self, partial: torch.Tensor) -> torch.Tensor:
        """A row-parallel projection's output: this process's partial sum -> the whole sum."""
        return partial if self.shard is None else self.shard.all_reduce(partial)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_mask: torch.Tensor | None,
        record: Callable[[LayerActivations], None] | None = None,
        extend: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
        | None = None,
    ) -> torch.Tensor:
        """The block over every row: x [B, L, d] -> [B, L, d]; `record` gets what it computed.

        key_mask: [B, Lk] or [B, L, Lk] bool (see `attend`); extend: the K/V store's hook,
        fresh k, v [B, KV, L, D] -> the keys and values [B, KV, Lk, D] to attend to."""
        q, k, v = self.project_qkv(self.attn_norm(x), cos, sin)
        keys, values = (k, v) if extend is None else extend(k, v)
        context = self.attend(q, keys, values, key_mask)
        h = x + self.attention_output(context)
        ffn_out = self.feed_forward(h)
        if record is not None:
            record(LayerActivations(k, v, context, ffn_out, query=q))
        return h + ffn_out


class DiffusionTransformer(nn.Module):
    """A LLaDA- or Dream-layout masked diffusion LM: ids [B, L] -> logits [B, L, V].

    tokenizer: the checkpoint's tokenizer, or None (generate from token ids then);
    generation_defaults: its generation_config.json entries (empty when it ships none);
    shard: this process's part under tensor parallelism (None: the whole model). A sharded
    model's `forward` and `logits` still return every vocabulary entry's logits, the same on
    every process.
    """

    def __init__(
        self,
        config: ModelConfig,
        tokenizer: Tokenizer | None = None,
        generation_defaults: Mapping[str, Any] | None = None,
        shard: TensorParallelShard | None = None,
    ) -> None:
        super().__init__()
        if shard is not None:
            shard.check(config)
        self.config = config
        self.tokenizer = tokenizer
        self.generation_defaults: Mapping[str, Any] = dict(generation_defaults or {})
        self.shard = shard
        vocab = config.vocab_size if shard is None else shard.vocab_size
        self.embed = nn.Embedding(vocab, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, shard, index) for index in range(config.num_layers)
        )
        self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, vocab, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def num_heads(self) -> int:
        """Query heads this process computes (the config's in one process)."""
        return self.config.num_heads if self.shard is None else self.shard.num_heads

    @property
    def num_kv_heads(self) -> int:
        """Key/value heads this process holds (the config's in one process)."""
        return self.config.num_kv_heads if self.shard is None else self.shard.num_kv_heads

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02, seed: int | None = None) -> None:
        """Fresh weights for training: normal(0, std) matrices, zero biases, unit norms."""
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        for name, parameter in self.named_parameters():
            if name.endswith("norm.weight"):
                parameter.fill_(1.0)
            elif name.endswith((".bias", "expert_bias")):
                parameter.zero_()
            else:
                values = torch.randn(parameter.shape, generator=generator) * std
                parameter.copy_(values.to(parameter.dtype))

    def _check_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
    ) -> None:
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(
                f"input_ids must be an integer tensor [batch, length], got "
                f"{type(input_ids).__name__}; wrap token ids with torch.tensor([[...]])"
            )
        if input_ids.dim() != 2 or input_ids.numel() == 0:
            raise ValueError(
                f"input_ids must be a non-empty [batch, length] tensor, got shape "
                f"{list(input_ids.shape)}"
            )
        if (
            input_ids.dtype.is_floating_point
            or input_ids.dtype.is_complex
            or (input_ids.dtype == torch.bool)
        ):
            raise ValueError(f"input_ids must hold integer token ids, got {input_ids.dtype}")
        for name, tensor in (("attention_mask", attention_mask), ("position_ids", position_ids)):
            if tensor is not None and tuple(tensor.shape) != tuple(input_ids.shape):
                raise ValueError(
                    f"{name} must have the shape of input_ids {list(input_ids.shape)}, got "
                    f"{list(tensor.shape) if isinstance(tensor, torch.Tensor) else tensor!r}"
                )
        limit = self.config.max_position_embeddings
        length = input_ids.shape[1]
        if position_ids is None and length > limit:
            raise ValueError(
                f"input_ids has {length} positions, more than the model's "
                f"max_position_embeddings ({limit}); shorten the input"
            )
        low, high = torch.aminmax(input_ids)
        last_position = position_ids.max() if position_ids is not None else high.new_zeros(())
        low, high, last = torch.stack([low, high, last_position.to(high.dtype)]).tolist()
        vocab = self.config.vocab_size
        if low < 0 or high >= vocab:
            raise ValueError(
                f"input_ids holds token id {low if low < 0 else high}, outside the vocabulary "
                f"[0, {vocab}); encode the text with this model's tokenizer"
            )
        if last >= limit:
            raise ValueError(
                f"position_ids reach {last}, past the model's max_position_embeddings ({limit})"
            )

    @staticmethod
    def _key_mask(
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        block_length: int | None,
        kv_store: KeyValueStore | None,
    ) -> torch.Tensor | None:
        """The attention mask every layer uses: [B, Lk] key padding, or [B, L, Lk] block-causal."""
        if kv_store is not None:
            if attention_mask is not None:
                raise ValueError(
                    "pass either attention_mask or kv_store: with a K/V store, its key_valid says "
                    "which keys exist"
                )
            key_positions, key_valid = kv_store.key_positions, kv_store.key_valid
        else:
            key_positions = position_ids
            key_valid = None if attention_mask is None else attention_mask.bool()
        if block_length is None:
            return None if key_valid is None else key_valid.bool()
        return block_causal_key_mask(position_ids, key_positions, block_length, key_valid)

    def rope(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B, L, rotary_dim] (float32) for position ids [B, L] (rotary_dim: head_dim
        unless the config rotates part of each head)."""
        return rope_angles(position_ids, self.config.rotary_dim, self.config.rope_theta)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embeddings [..., d] of token ids [...].

        Split by vocabulary: each process looks up the ids in its rows, zeros elsewhere, and the
        sum over processes (one nonzero term per id) is exact.
        """
        if self.shard is None:
            return self.embed(input_ids)
        start, end = self.shard.vocab
        local = input_ids - start
        outside = (local < 0) | (local >= end - start)
        rows = self.embed(local.masked_fill(outside, 0)).masked_fill(outside[..., None], 0.0)
        return self.shard.all_reduce(rows)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The head over final hidden states [..., d] -> logits [..., V] (every vocabulary
        entry's: a sharded head's parts are gathered)."""
        logits = self.lm_head(self.final_norm(hidden))
        return logits if self.shard is None else self.shard.gather_vocab(logits)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logit_range: tuple[int, int] | None = None,
        sink: ActivationSink | None = None,
        block_length: int | None = None,
        kv_store: KeyValueStore | None = None,
    ) -> torch.Tensor:
        """Logits [B, L, V] in the model dtype ([B, end - start, V] with `logit_range`).

        input_ids: [B, L]; attention_mask: [B, L] (nonzero/True = real token) masks padded keys;
        position_ids: [B, L], by default 0..L-1 (the reference's absolute positions);
        logit_range: (start, end) to apply the LM head to those positions only;
        sink: receives every layer's activations (the engine's cache fills itself this way);
        block_length: block-causal attention (LLaDA2's block diffusion): a query sees the keys
            whose position's block (position // block_length) is not after its own; None =
            bidirectional;
        kv_store: keys and values to attend to beyond the input rows (`KeyValueStore`); its
            `key_positions` / `key_valid` then replace position_ids / attention_mask for keys.

        Ids outside the vocabulary, positions past `max_position_embeddings` and malformed
        tensors raise a ValueError (TypeError for what is not a tensor) naming the problem; the
        check reads the ids' extremes back from the device: one read-back per call.
        """
        self._check_inputs(input_ids, attention_mask, position_ids)
        batch, length = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(length, device=input_ids.device).expand(batch, length)
        key_mask = self._key_mask(attention_mask, position_ids, block_length, kv_store)
        cos, sin = self.rope(position_ids)
        x = self.embed_tokens(input_ids)
        for index, layer in enumerate(self.layers):
            record = None if sink is None else partial(sink.record, index)
            extend = None if kv_store is None else partial(kv_store.extend, index)
            x = layer(x, cos, sin, key_mask, record, extend)
        if logit_range is not None:
            x = x[:, logit_range[0] : logit_range[1]]
        return self.logits(x)
