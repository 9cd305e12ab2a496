"""The transformer's pieces against their definitions, written out naively here."""

from __future__ import annotations

import math

import pytest
import torch

from dyllm.kernels.primitives import apply_rope, attention, rope_angles
from dyllm.models.layers import RMSNorm
from tests.checkpoints import tiny_model


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "dtype,ulp", [(torch.float32, 2.0**-23), (torch.bfloat16, 2.0**-7)], ids=["fp32", "bf16"]
)
def test_rmsnorm_matches_definition(dtype: torch.dtype, ulp: float) -> None:
    """Equal to the float64 definition up to one unit in the last place of the output dtype
    (the statistic is taken in float32, then cast, then scaled by the weight)."""
    x = (torch.randn(3, 7, 24, generator=_generator(1)) * 3).to(dtype)
    norm = RMSNorm(24, eps=1e-5)
    norm.weight.data = torch.randn(24, generator=_generator(2)).to(dtype)
    expected = torch.empty_like(x)
    for row in range(3):
        for col in range(7):
            v = x[row, col].double()
            scale = 1.0 / math.sqrt(float((v * v).mean()) + 1e-5)
            expected[row, col] = (v * scale).to(torch.float32).to(dtype) * norm.weight
    torch.testing.assert_close(norm(x), expected, rtol=2 * ulp, atol=0)


def _naive_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate each pair (j, j + D/2) by angle position * theta^(-2j/D), in float64."""
    out = x.double().clone()
    half = x.shape[-1] // 2
    for b in range(x.shape[0]):
        for t in range(x.shape[2]):
            for j in range(half):
                angle = float(positions[b, t]) * theta ** (-2 * j / x.shape[-1])
                c, s = math.cos(angle), math.sin(angle)
                x1, x2 = x[b, :, t, j].double(), x[b, :, t, j + half].double()
                out[b, :, t, j] = x1 * c - x2 * s
                out[b, :, t, j + half] = x2 * c + x1 * s
    return out


def test_rope_full_precision_matches_definition() -> None:
    x = torch.randn(2, 3, 9, 16, generator=_generator(3))
    positions = torch.tensor([list(range(9)), [0, 0, 0, 0, 1, 2, 3, 4, 5]])
    cos, sin = rope_angles(positions, 16, theta=500000.0)
    rotated = apply_rope(x, cos, sin, full_precision=True)
    torch.testing.assert_close(
        rotated.double(), _naive_rope(x, positions, 500000.0), atol=1e-5, rtol=0
    )


def test_rope_precisions_differ_in_bfloat16_as_the_references_do() -> None:
    """LLaDA rotates in fp32 then casts once; Dream casts cos/sin to bf16 and rotates in bf16.
    Both approximate the exact rotation; they are not bitwise equal, which is why the choice is
    a config field."""
    x = torch.randn(1, 4, 64, 32, generator=_generator(4)).to(torch.bfloat16)
    positions = torch.arange(64)[None] * 37
    cos, sin = rope_angles(positions, 32, theta=1e6)
    full = apply_rope(x, cos, sin, full_precision=True)
    low = apply_rope(x, cos, sin, full_precision=False)
    exact = _naive_rope(x.float(), positions, 1e6)
    expected_low = x * cos[:, None].to(torch.bfloat16) + torch.cat(
        (-x[..., 16:], x[..., :16]), dim=-1
    ) * sin[:, None].to(torch.bfloat16)
    torch.testing.assert_close(low, expected_low, atol=0, rtol=0)
    # full precision: one rounding of a float32 rotation, so within half a bf16 ulp (2^-9
    # relative) of the exact value plus float32 error
    torch.testing.assert_close(full.double(), exact, atol=1e-6, rtol=2.0**-8)
    full_error = (full.double() - exact).abs().mean()
    low_error = (low.double() - exact).abs().mean()
    assert full_error < low_error
    assert not torch.equal(full, low)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (5, 1)])
def test_grouped_attention_matches_plain_softmax(heads: int, kv_heads: int) -> None:
    batch, length, dim = 2, 11, 8
    g = _generator(heads * 10 + kv_heads)
    q = torch.randn(batch, heads, length, dim, generator=g)
    k = torch.randn(batch, kv_heads, length, dim, generator=g)
    v = torch.randn(batch, kv_heads, length, dim, generator=g)
    key_mask = torch.ones(batch, length, dtype=torch.bool)
    key_mask[1, :4] = False
    out = attention(q, k, v, key_mask)
    group = heads // kv_heads
    for b in range(batch):
        keep = key_mask[b]
        for h in range(heads):
            kh, vh = k[b, h // group][keep], v[b, h // group][keep]
            weights = torch.softmax(q[b, h] @ kh.T / math.sqrt(dim), dim=-1)
            torch.testing.assert_close(out[b, h], weights @ vh, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_left_padding_with_mask_positions_reproduces_the_unpadded_logits(family: str) -> None:
    model = tiny_model(family, seed=3)
    ids = torch.randint(2, 90, (1, 9), generator=_generator(5))
    alone = model(ids)
    pad = model.config.pad_token_id
    padded = torch.cat([torch.full((1, 4), pad), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.bool), torch.ones(1, 9, dtype=torch.bool)], 1)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    torch.testing.assert_close(model(padded, mask, positions)[:, 4:], alone, atol=1e-5, rtol=1e-5)


def test_forward_is_bidirectional() -> None:
    """Changing the last token changes the first position's logits (no causal mask)."""
    model = tiny_model("llada", seed=5)
    ids = torch.randint(2, 90, (1, 8), generator=_generator(6))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 90
    assert not torch.allclose(model(ids)[0, 0], model(changed)[0, 0])


def test_logit_range_applies_the_head_to_those_positions_only() -> None:
    model = tiny_model("dream", seed=2)
    ids = torch.randint(2, 90, (2, 10), generator=_generator(8))
    window = model(ids, logit_range=(3, 7))
    assert window.shape == (2, 4, model.config.vocab_size)
    torch.testing.assert_close(window, model(ids)[:, 3:7], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("full_precision", [True, False])
def test_rope_is_bitwise_the_rotate_half_form_on_permuted_heads(dtype, full_precision) -> None:
    """`apply_rope` never builds rotate_half(x) (speed), yet each output element is the same
    product and sum as `x * cos + cat(-x2, x1) * sin`, in the references' rounding order; on a
    [B, H, L, D] view of [B, L, H * D] rows, as the layers call it."""
    rows = torch.randn(3, 10, 4 * 16, generator=_generator(5)).to(dtype)
    x = rows.view(3, 10, 4, 16).transpose(1, 2)
    cos, sin = rope_angles(torch.arange(10)[None].expand(3, 10) * 13, 16, theta=1e4)
    work = x.float() if full_precision else x
    c, s = cos[:, None].to(work.dtype), sin[:, None].to(work.dtype)
    written_out = work * c + torch.cat((-work[..., 8:], work[..., :8]), dim=-1) * s
    out = apply_rope(x, cos, sin, full_precision)
    assert out.dtype == dtype
    torch.testing.assert_close(out, written_out.to(dtype), atol=0, rtol=0)
