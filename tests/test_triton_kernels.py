"""Every Triton kernel against its eager reference, and the Triton path through whole generations.

Without CUDA the kernels run in Triton's CPU interpreter at small shapes, irregular ones
included: TRITON_INTERPRET=1 is set here before triton is first imported, since Triton decides at
import time (for its own library functions such as `tl.max`) and when each kernel is defined
whether code is compiled or interpreted; dyllm imports triton only on a kernel's first request.
On a GPU the same tests run natively and the `gpu`-marked ones add model-sized shapes.
Outputs are poisoned: the launchers allocate them NaN-filled (DYLLM_POISON_OUTPUTS=1) and the
cache rows a kernel must overwrite are set to NaN first, so an element a kernel forgets to write
fails the comparison. Row sets have a fixed capacity; the padded cases give it more slots than
rows, and the padding rows must leave the caches untouched. Tolerances come from the storage dtype
(tests/tensor_diff.py). What only
the compiler checks is covered by compiling every kernel for sm_90 in a subprocess
(tests/triton_aot.py).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip(
            "triton was imported before this module could set TRITON_INTERPRET=1; run these "
            "tests in a process of their own",
            allow_module_level=True,
        )
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="the Triton kernels need the triton package")

from dyllm.kernels import (
    FeedForwardWeights,
    FlatRows,
    PaddedRows,
    gathered_ffn,
    gathered_ffn_reference,
    implementation,
    kv_update,
    kv_update_reference,
    saliency_attention,
    saliency_attention_reference,
)
from dyllm.kernels.primitives import cosine_from_partial_sums, rope_angles
from dyllm.kernels.triton_launch import block_size, row_tile
from dyllm.policies import CosineThreshold, EveryRow, SaliencyPolicy
from tests.checkpoints import tiny_model
from tests.recording import generate_recording
from tests.tensor_diff import TOLERANCES, assert_close_report

REPOSITORY = Path(__file__).resolve().parents[1]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _triton_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYLLM_POISON_OUTPUTS", "1")
    monkeypatch.delenv("DYLLM_KERNELS", raising=False)


def _random(generator: torch.Generator, dtype: torch.dtype, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator).to(dtype).to(DEVICE)


def _padded(mask: torch.Tensor, padding: int = 0) -> PaddedRows:
    """The rows of `mask` [B, L] with room for the most rows a sequence has plus `padding`."""
    capacity = min(int(mask.sum(dim=1).max()) + padding, mask.shape[1])
    return PaddedRows.from_mask(mask, capacity)


# ------------------------------------------------------------------ saliency attention

ATTENTION_SHAPES = [
    # batch, heads, kv_heads, queries, keys, head_dim
    (1, 2, 2, 5, 9, 8),  # smaller than every tile
    (2, 6, 2, 37, 70, 16),  # grouped-query heads 6/2, two key blocks
    (2, 5, 5, 123, 130, 16),  # 5 heads x 123 rows: two row blocks, three key blocks
    (3, 4, 1, 20, 80, 32),  # a single key/value head
]
ATTENTION_SHAPES_GPU = [
    (1, 32, 32, 256, 1024, 128),  # LLaDA-8B, batch 1, response rows
    (4, 28, 4, 1024, 1024, 128),  # Dream-7B, every row a query
]


def _attention_case(
    seed: int,
    shape: tuple,
    dtype: torch.dtype,
    refreshed_fraction: float = 0.3,
    padding: int = 0,
):
    """Inputs of one call: queries are the last positions, refreshed columns anywhere, the
    second sequence refreshes nothing, the last one is left-padded; `padding` extra slots in
    the exact rows and the refreshed columns."""
    batch, heads, kv_heads, queries, length, head_dim = shape
    g = torch.Generator().manual_seed(seed)
    q = _random(g, dtype, batch, heads, queries, head_dim)
    key = _random(g, dtype, batch, kv_heads, length, head_dim)
    value = _random(g, dtype, batch, kv_heads, length, head_dim)
    context_old = _random(g, dtype, batch, queries, heads * head_dim)
    refreshed = torch.rand(batch, length, generator=g) < refreshed_fraction
    refreshed[0, -1] = True
    if batch > 1:
        refreshed[1] = False
    refreshed = refreshed.to(DEVICE)
    exact = _padded(refreshed[:, length - queries :], padding)
    columns = _padded(refreshed, padding)
    delta = _random(g, dtype, batch, kv_heads, columns.width, head_dim)
    delta = delta * columns.valid[:, None, :, None]
    key_mask = torch.ones(batch, length, dtype=torch.bool, device=DEVICE)
    key_mask[-1, : length // 5] = False
    return q, key, value, context_old, exact, columns, delta, key_mask


def _check_attention(
    shape: tuple, dtype: torch.dtype, approximate: bool, seed: int = 0, padding: int = 0
) -> None:
    inputs = _attention_case(seed, shape, dtype, padding=padding)
    expected_context, expected_cosine = saliency_attention_reference(*inputs, approximate)
    context, cosine = saliency_attention(*inputs, approximate=approximate, backend="triton")
    atol, rtol = TOLERANCES[dtype]
    assert context.dtype == dtype and cosine.dtype == torch.float32
    assert_close_report(context, expected_context, atol=atol, rtol=rtol, name="context")
    assert_close_report(cosine, expected_cosine, atol=atol, rtol=rtol, name="cosine")


@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_saliency_attention_matches_reference(shape: tuple, dtype: torch.dtype) -> None:
    _check_attention(shape, dtype, approximate=True)


@pytest.mark.parametrize("shape", ATTENTION_SHAPES[1:3], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("approximate", [True, False], ids=["approximate", "frozen"])
def test_saliency_attention_partial_sums_match_reference(shape: tuple, approximate: bool) -> None:
    """Tensor parallelism asks for the cosine's sums over the launch's heads, uncombined; both
    paths give the reference's, and combined they are the cosine either path returns."""
    inputs = _attention_case(3, shape, torch.float32)
    _, expected = saliency_attention_reference(*inputs, approximate, partial_sums=True)
    _, sums = saliency_attention(
        *inputs, approximate=approximate, partial_sums=True, backend="triton"
    )
    _, cosine = saliency_attention(*inputs, approximate=approximate, backend="triton")
    atol, rtol = TOLERANCES[torch.float32]
    assert sums.shape == (3, shape[0], shape[3]) and sums.dtype == torch.float32
    assert_close_report(sums, expected, atol=atol, rtol=rtol, name="partial sums")
    torch.testing.assert_close(cosine_from_partial_sums(sums), cosine, atol=0, rtol=0)


@pytest.mark.parametrize("shape", ATTENTION_SHAPES[:2], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("approximate", [True, False], ids=["approximate", "frozen"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_saliency_attention_with_padding_matches_reference(
    shape: tuple, approximate: bool, dtype: torch.dtype
) -> None:
    """Three slots more than rows in the exact rows and the refreshed columns."""
    _check_attention(shape, dtype, approximate, padding=3)


@pytest.mark.parametrize("shape", ATTENTION_SHAPES[1:3], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("padding", [0, 3], ids=["tight", "padded"])
def test_saliency_attention_frozen_rows_keep_their_context(shape: tuple, padding: int) -> None:
    _check_attention(shape, torch.float32, approximate=False, padding=padding)
    q, key, value, context_old, exact_rows, columns, delta, key_mask = _attention_case(
        0, shape, torch.float32, padding=padding
    )
    context, _ = saliency_attention(
        q,
        key,
        value,
        context_old,
        exact_rows,
        columns,
        delta,
        key_mask,
        approximate=False,
        backend="triton",
    )
    exact = exact_rows.mask(q.shape[2])
    assert torch.equal(context[~exact], context_old[~exact])


def test_saliency_attention_every_row_exact_is_plain_attention() -> None:
    shape = (2, 4, 2, 24, 24, 16)
    q, key, value, context_old, _, _, _, key_mask = _attention_case(1, shape, torch.float32)
    every = torch.ones(2, 24, dtype=torch.bool, device=DEVICE)
    columns = PaddedRows.from_mask(every, 24)
    delta = torch.zeros(2, 2, 24, 16, device=DEVICE)
    context, _ = saliency_attention(
        q, key, value, context_old, columns, columns, delta, key_mask, backend="triton"
    )
    plain = torch.nn.functional.scaled_dot_product_attention(
        q,
        key.repeat_interleave(2, dim=1),
        value.repeat_interleave(2, dim=1),
        key_mask[:, None, None],
    )
    expected = plain.transpose(1, 2).reshape(2, 24, 4 * 16)
    assert_close_report(context, expected, atol=1e-5, rtol=1e-5, name="context")


@pytest.mark.parametrize("capacity", [0, 3], ids=["tight", "padded"])
def test_saliency_attention_without_refreshed_rows_changes_nothing(capacity: int) -> None:
    shape = (2, 4, 2, 7, 12, 16)
    q, key, value, context_old, _, _, _, key_mask = _attention_case(2, shape, torch.float32)
    nothing = torch.zeros(2, 12, dtype=torch.bool, device=DEVICE)
    columns = PaddedRows.from_mask(nothing, capacity)
    exact = PaddedRows.from_mask(nothing[:, :7], capacity)
    delta = torch.zeros(2, 2, capacity, 16, device=DEVICE)
    context, cosine = saliency_attention(
        q, key, value, context_old, exact, columns, delta, key_mask, backend="triton"
    )
    assert torch.equal(context, context_old)
    assert_close_report(cosine, torch.ones(2, 7, device=DEVICE), atol=1e-6, rtol=0, name="cosine")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("shape", ATTENTION_SHAPES_GPU, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_saliency_attention_matches_reference_at_model_size(shape, dtype) -> None:
    _check_attention(shape, dtype, approximate=True, seed=5)


# ------------------------------------------------------------------ gathered FFN

FFN_SHAPES = [
    # batch, queries, length, width, intermediate
    (1, 5, 9, 16, 40),
    (3, 37, 50, 24, 72),  # width not a power of two
    (2, 123, 130, 40, 100),
]
FFN_SHAPES_GPU = [(1, 256, 1024, 4096, 12288), (16, 256, 1024, 3584, 18944)]


def _ffn_case(seed: int, shape: tuple, dtype: torch.dtype, padding: int | None = None):
    """Inputs of one call; `padding` None: exactly the selected rows, else padded rows with
    that many slots per sequence beyond the most a sequence selected."""
    batch, queries, length, width, intermediate = shape
    g = torch.Generator().manual_seed(seed)
    hidden = _random(g, dtype, batch, queries, width)
    weights = FeedForwardWeights(
        norm_weight=(1 + 0.1 * torch.randn(width, generator=g)).to(dtype).to(DEVICE),
        norm_eps=1e-5,
        gate=(torch.randn(intermediate, width, generator=g) / math.sqrt(width))
        .to(dtype)
        .to(DEVICE),
        up=(torch.randn(intermediate, width, generator=g) / math.sqrt(width)).to(dtype).to(DEVICE),
        down=(torch.randn(width, intermediate, generator=g) / math.sqrt(intermediate))
        .to(dtype)
        .to(DEVICE),
    )
    selected = torch.rand(batch, queries, generator=g) < 0.5
    selected[0, 0] = True
    if batch > 1:
        selected[-1] = False
    selected = selected.to(DEVICE)
    rows = FlatRows.from_mask(selected) if padding is None else _padded(selected, padding).flat()
    positions = rows.position + (length - queries)
    ffn_out = _random(g, dtype, batch, length, width)
    return hidden, rows, positions, weights, ffn_out


def _check_ffn(shape: tuple, dtype: torch.dtype, seed: int = 0, padding: int | None = None):
    hidden, rows, positions, weights, ffn_out = _ffn_case(seed, shape, dtype, padding)
    valid = rows.valid
    expected = ffn_out.clone()
    gathered_ffn_reference(hidden, rows, positions, weights, expected)
    actual = ffn_out.clone()
    actual[rows.batch_index[valid], positions[valid]] = float("nan")
    gathered_ffn(hidden, rows, positions, weights, actual, backend="triton")
    atol, rtol = TOLERANCES[dtype]
    assert_close_report(actual, expected, atol=atol, rtol=rtol, name="ffn_out")
    untouched = torch.ones(ffn_out.shape[:2], dtype=torch.bool, device=DEVICE)
    untouched[rows.batch_index[valid], positions[valid]] = False
    assert torch.equal(actual[untouched], ffn_out[untouched])
    assert torch.equal(expected[untouched], ffn_out[untouched])


@pytest.mark.parametrize("shape", FFN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gathered_ffn_matches_reference(shape: tuple, dtype: torch.dtype) -> None:
    _check_ffn(shape, dtype)


@pytest.mark.parametrize("shape", FFN_SHAPES[:2], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gathered_ffn_with_padding_writes_only_valid_rows(shape: tuple, dtype) -> None:
    """Padding rows (three slots per sequence beyond the most selected) leave the cache alone."""
    _check_ffn(shape, dtype, padding=3)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("shape", FFN_SHAPES_GPU, ids=lambda s: "x".join(map(str, s)))
def test_gathered_ffn_matches_reference_at_model_size(shape: tuple) -> None:
    _check_ffn(shape, torch.bfloat16, seed=5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gathered_ffn_reference_is_the_layers_feed_forward(dtype: torch.dtype) -> None:
    """The eager path computes bit for bit what DecoderLayer.feed_forward computes."""
    layer = tiny_model("dream", seed=3).to(dtype).layers[0]
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 6, layer.config.hidden_size, generator=g).to(dtype)
    rows = FlatRows(torch.tensor([0, 0, 1]), torch.tensor([1, 4, 2]), torch.ones(3, dtype=bool))
    ffn_out = torch.zeros(2, 9, layer.config.hidden_size, dtype=dtype)
    weights = FeedForwardWeights(
        layer.ffn_norm.weight,
        layer.ffn_norm.eps,
        layer.ffn.gate_proj.weight,
        layer.ffn.up_proj.weight,
        layer.ffn.down_proj.weight,
    )
    gathered_ffn_reference(hidden, rows, rows.position + 3, weights, ffn_out)
    assert torch.equal(
        ffn_out[rows.batch_index, rows.position + 3], layer.feed_forward(rows.gather(hidden))
    )
    assert int((ffn_out.abs().sum(-1) > 0).sum()) == 3


# ------------------------------------------------------------------ K/V update

KV_SHAPES = [
    # batch, length, kv_heads, head_dim, refreshed rows
    (1, 9, 2, 8, 3),
    (3, 50, 2, 16, 37),
    (2, 130, 5, 32, 123),
]
KV_SHAPES_GPU = [(16, 1024, 32, 128, 2048)]


def _kv_case(seed: int, shape: tuple, dtype: torch.dtype, padding: int = 0):
    """Inputs of one call: `count` refreshed rows, then `padding` other rows, not valid."""
    batch, length, kv_heads, head_dim, count = shape
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(batch * length, generator=g)
    chosen = torch.cat([order[:count].sort().values, order[count : count + padding]])
    valid = (torch.arange(count + padding) < count).to(DEVICE)
    rows = FlatRows((chosen // length).to(DEVICE), (chosen % length).to(DEVICE), valid)
    cos, sin = rope_angles(torch.arange(length).expand(batch, length), head_dim, 10000.0)
    key_rows = _random(g, dtype, count + padding, kv_heads * head_dim)
    value_rows = _random(g, dtype, count + padding, kv_heads * head_dim)
    key_cache = _random(g, dtype, batch, kv_heads, length, head_dim)
    value_cache = _random(g, dtype, batch, kv_heads, length, head_dim)
    angles = rows.gather(cos.to(DEVICE)), rows.gather(sin.to(DEVICE))
    return key_rows, value_rows, *angles, rows, key_cache, value_cache


def _check_kv_update(
    shape: tuple, dtype: torch.dtype, full_precision: bool, seed: int = 0, padding: int = 0
):
    key_rows, value_rows, cos, sin, rows, key_cache, value_cache = _kv_case(
        seed, shape, dtype, padding
    )
    expected_key, expected_value = key_cache.clone(), value_cache.clone()
    expected_delta = kv_update_reference(
        key_rows, value_rows, cos, sin, rows, expected_key, expected_value, full_precision
    )
    key, value = key_cache.clone(), value_cache.clone()
    valid = rows.valid
    key[rows.batch_index[valid], :, rows.position[valid]] = float("nan")
    delta = kv_update(
        key_rows, value_rows, cos, sin, rows, key, value, full_precision, backend="triton"
    )
    atol, rtol = TOLERANCES[dtype]
    assert_close_report(key, expected_key, atol=atol, rtol=rtol, name="key_cache")
    assert torch.equal(value, expected_value)
    assert_close_report(delta, expected_delta, atol=atol, rtol=rtol, name="delta_value")
    # padding rows: both caches untouched by either path, dV zero
    padding_rows = (rows.batch_index[~valid], slice(None), rows.position[~valid])
    for cache in (key, expected_key):
        assert torch.equal(cache[padding_rows], key_cache[padding_rows])
    for cache in (value, expected_value):
        assert torch.equal(cache[padding_rows], value_cache[padding_rows])
    assert not delta[~valid].any() and not expected_delta[~valid].any()


@pytest.mark.parametrize("shape", KV_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("full_precision", [True, False], ids=["rope-fp32", "rope-dtype"])
def test_kv_update_matches_reference(shape: tuple, dtype: torch.dtype, full_precision: bool):
    _check_kv_update(shape, dtype, full_precision)


@pytest.mark.parametrize("shape", KV_SHAPES[:2], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("full_precision", [True, False], ids=["rope-fp32", "rope-dtype"])
def test_kv_update_with_padding_leaves_padding_rows_alone(
    shape: tuple, dtype: torch.dtype, full_precision: bool
) -> None:
    _check_kv_update(shape, dtype, full_precision, padding=5)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("full_precision", [True, False], ids=["rope-fp32", "rope-dtype"])
def test_kv_update_matches_reference_at_model_size(full_precision: bool) -> None:
    _check_kv_update(KV_SHAPES_GPU[0], torch.bfloat16, full_precision, seed=5)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_kv_update_reference_writes_what_the_dense_forward_computes(family: str) -> None:
    """In bfloat16, where LLaDA's float32 rotation and Dream's bfloat16 one differ."""
    model = tiny_model(family, seed=6).to(torch.bfloat16)
    layer, config = model.layers[0], model.config
    g = torch.Generator().manual_seed(1)
    normed = torch.randn(2, 10, config.hidden_size, generator=g).to(torch.bfloat16)
    cos, sin = model.rope(torch.arange(10).expand(2, 10))
    _, dense_key, dense_value = layer.project_qkv(normed, cos, sin)  # [B, KV, L, D]
    rows = FlatRows(torch.tensor([0, 1, 1]), torch.tensor([7, 0, 9]), torch.ones(3, dtype=bool))
    key_cache = torch.zeros_like(dense_key)
    value_cache = torch.zeros_like(dense_value)
    delta = kv_update_reference(
        rows.gather(layer.k_proj(normed)),
        rows.gather(layer.v_proj(normed)),
        rows.gather(cos),
        rows.gather(sin),
        rows,
        key_cache,
        value_cache,
        bool(config.rope_full_precision),
    )
    written = (rows.batch_index, slice(None), rows.position)
    assert torch.equal(key_cache[written], dense_key[written])
    assert torch.equal(value_cache[written], dense_value[written])
    assert torch.equal(delta, dense_value[written])  # the old cached values were zero


# ------------------------------------------------------------------ dispatch and launchers


@pytest.mark.parametrize("name", ["saliency_attention", "gathered_ffn", "kv_update"])
def test_dispatch_forces_either_backend(name: str) -> None:
    triton_path = implementation(name, DEVICE, "triton")
    assert triton_path.__module__ == f"dyllm.kernels.triton_{name}"
    assert implementation(name, DEVICE, "eager").__module__ == f"dyllm.kernels.reference_{name}"
    automatic = implementation(name, torch.device("cpu"))
    # CPU tensors: the kernel's CPU fast path where it has one, else the reference
    prefix = "cpu" if name == "saliency_attention" else "reference"
    assert automatic.__module__ == f"dyllm.kernels.{prefix}_{name}"


def test_forcing_triton_on_cpu_tensors_needs_the_interpreter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("DYLLM_KERNELS", "triton")
    with pytest.raises(ValueError, match="set TRITON_INTERPRET=1"):
        implementation("kv_update", torch.device("cpu"))


def test_launchers_name_the_tensor_that_does_not_fit() -> None:
    inputs = list(_attention_case(0, ATTENTION_SHAPES[0], torch.float32))
    inputs[3] = inputs[3][..., :-1]  # context_old one column short
    with pytest.raises(ValueError, match=r"context_old must have shape \(1, 5, 16\)"):
        saliency_attention(*inputs, backend="triton")
    key_rows, value_rows, cos, sin, rows, key_cache, value_cache = _kv_case(
        0, KV_SHAPES[0], torch.float32
    )
    update = partial(kv_update, backend="triton")
    with pytest.raises(ValueError, match=r"value_rows must be torch\.float32"):
        update(key_rows, value_rows.half(), cos, sin, rows, key_cache, value_cache, True)
    with pytest.raises(ValueError, match="key_rows must be contiguous in its last dimension"):
        wide = torch.zeros(key_rows.shape[1], key_rows.shape[0], device=DEVICE).t()
        update(wide, value_rows, cos, sin, rows, key_cache, value_cache, True)


def test_tiles_cover_the_extent_within_the_preferred_size() -> None:
    assert [block_size(n, 64) for n in (0, 5, 16, 17, 123)] == [16, 16, 16, 32, 64]
    assert block_size(3, 128, minimum=1) == 4
    assert row_tile(69, 64) == (64, 64)  # narrow rows share a program
    assert row_tile(2048, 4096) == (4, 1024)  # LLaDA's d_model: 4 rows of 1024 columns
    assert row_tile(7, 3584) == (4, 1024)


def test_kernels_compile_for_an_sm90_gpu_without_one() -> None:
    """The interpreter does not type-check; the compiler does (see tests/triton_aot.py)."""
    pytest.importorskip("triton.backends.nvidia", reason="needs Triton's NVIDIA backend")
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.triton_aot"],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("compiled ") == 12


def test_poisoned_output_is_reported_as_unwritten() -> None:
    expected = torch.arange(6.0).view(2, 3)
    actual = expected.clone()
    actual[1, 2] = float("nan")
    with pytest.raises(
        AssertionError, match=r"1 are NaN \(never written\?\), the first at \(1, 2\)"
    ):
        assert_close_report(actual, expected, atol=1e-5, rtol=1e-5, name="out")


# ------------------------------------------------------------------ whole generations


PROMPTS_PADDED = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]]
OPTIONS = {
    "llada": {"gen_length": 16, "steps": 16, "block_length": 8, "remasking": "low_confidence"},
    "dream": {"gen_length": 16, "steps": 16, "alg": "entropy"},
}


def _generate(model, prompts, policy: SaliencyPolicy | None, options: dict):
    result, recorder = generate_recording(model, prompts, policy, **options)
    return result, recorder.logits


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_triton_path_generates_the_eager_tokens(family: str, monkeypatch: pytest.MonkeyPatch):
    model = tiny_model(family, seed=11).to(DEVICE)
    monkeypatch.setenv("DYLLM_KERNELS", "eager")
    eager, eager_logits = _generate(model, PROMPTS_PADDED, CosineThreshold(0.99), OPTIONS[family])
    monkeypatch.setenv("DYLLM_KERNELS", "triton")
    fast, fast_logits = _generate(model, PROMPTS_PADDED, CosineThreshold(0.99), OPTIONS[family])
    assert fast.token_ids == eager.token_ids
    for name in ("ffn_fraction_per_layer", "attention_fraction_per_layer"):
        assert fast.stats.extra[name] == eager.stats.extra[name]  # the same rows were selected
    assert 0 < eager.stats.extra["computed_token_ratio"] < 1
    for step, (got, want) in enumerate(zip(fast_logits, eager_logits, strict=True)):
        assert_close_report(got, want, atol=2e-5, rtol=1e-5, name=f"logits at step {step}")


def test_triton_path_keeps_dense_equivalence(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model("dream", seed=11).to(DEVICE)
    dense, dense_logits = _generate(model, PROMPTS_PADDED, None, OPTIONS["dream"])
    monkeypatch.setenv("DYLLM_KERNELS", "triton")
    sparse, sparse_logits = _generate(model, PROMPTS_PADDED, EveryRow(), OPTIONS["dream"])
    assert sparse.token_ids == dense.token_ids
    assert sparse.stats.extra["sparse_steps"] == 16
    for step, (got, want) in enumerate(zip(sparse_logits, dense_logits, strict=True)):
        assert_close_report(got, want, atol=2e-5, rtol=1e-5, name=f"logits at step {step}")
