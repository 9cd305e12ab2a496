"""The loader on checkpoints in the real layouts, and every bad input it must refuse clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import dyllm
from dyllm.generation import GenerationConfig
from dyllm.generation.config import resolve_config
from dyllm.models import CheckpointError, DiffusionTransformer, ModelConfig
from dyllm.models.keymaps import checkpoint_keys
from tests.checkpoints import real_dir, shrunk_real_checkpoint, write_tiny_checkpoint

FAMILIES = ["llada", "dream"]


def _ids(vocab: int = 97, shape: tuple[int, int] = (2, 13)) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("family", FAMILIES)
def test_real_config_parses_to_the_published_shapes(family: str) -> None:
    raw = json.loads((real_dir(family) / "config.json").read_text())
    config = ModelConfig.from_hf_config(raw)
    if family == "llada":
        assert (config.hidden_size, config.num_layers, config.num_heads) == (4096, 32, 32)
        assert (config.num_kv_heads, config.intermediate_size, config.vocab_size) == (
            32,
            12288,
            126464,
        )
        assert (config.rope_theta, config.rms_norm_eps, config.qkv_bias) == (500000.0, 1e-5, False)
        assert (config.mask_token_id, config.eos_token_id, config.logit_shift) == (
            126336,
            126081,
            False,
        )
        assert config.rope_full_precision
    else:
        assert (config.hidden_size, config.num_layers, config.num_heads) == (3584, 28, 28)
        assert (config.num_kv_heads, config.intermediate_size, config.vocab_size) == (
            4,
            18944,
            152064,
        )
        assert (config.rope_theta, config.rms_norm_eps, config.qkv_bias) == (1e6, 1e-6, True)
        assert (config.mask_token_id, config.eos_token_id, config.logit_shift) == (
            151666,
            151643,
            True,
        )
        assert not config.rope_full_precision
    assert config.head_dim == 128
    assert config.torch_dtype == "bfloat16"


@pytest.mark.parametrize("family", FAMILIES)
def test_key_map_covers_the_real_index_exactly(family: str) -> None:
    """Our modules, built on the meta device from the real config, have exactly the real keys
    and as many parameters as the real shards hold (total_size / 2 bytes per bf16 value)."""
    folder = real_dir(family)
    config = ModelConfig.from_hf_config(json.loads((folder / "config.json").read_text()))
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    with torch.device("meta"):
        model = DiffusionTransformer(config)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert set(checkpoint_keys(config, shapes)) == set(index["weight_map"])
    parameters = sum(p.numel() for p in model.parameters())
    assert parameters * 2 == index["metadata"]["total_size"]
    assert config.num_parameters == parameters


@pytest.mark.parametrize("family", FAMILIES)
def test_shrunk_real_checkpoint_loads_through_the_real_index(family: str, tmp_path: Path) -> None:
    config = shrunk_real_checkpoint(family, tmp_path)
    model = dyllm.load(tmp_path)
    assert model.dtype == torch.bfloat16
    assert model.config.num_layers == config.num_layers
    assert model.tokenizer is None
    assert model.generation_defaults["eos_token_id"] == config.eos_token_id
    logits = model(_ids(config.vocab_size, (1, 5)))
    assert logits.shape == (1, 5, config.vocab_size)
    assert torch.isfinite(logits.float()).all()


def test_the_released_dream_folder_leaves_every_unset_option_to_the_reference(
    tmp_path: Path,
) -> None:
    # The released generation_config.json says temperature 0, top_k null; the reference never
    # reads it (transformers derived it from config.json), so generate() must not either.
    shrunk_real_checkpoint("dream", tmp_path)
    model = dyllm.load(tmp_path)
    assert model.generation_defaults["_from_model_config"] is True
    resolved = resolve_config(GenerationConfig(), "dream", model.generation_defaults)
    options = ("gen_length", "steps", "temperature", "top_p", "top_k", "alg", "alg_temp", "eps")
    assert [getattr(resolved, name) for name in options] == [
        20,
        512,
        1.0,
        1.0,
        50,
        "origin",
        None,
        1e-3,
    ]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("max_shard_bytes", [None, 40_000])
def test_round_trip_gives_identical_logits(
    family: str, max_shard_bytes: int | None, tmp_path: Path
) -> None:
    saved = write_tiny_checkpoint(family, tmp_path, max_shard_bytes=max_shard_bytes)
    sharded = (tmp_path / "model.safetensors.index.json").exists()
    assert sharded == (max_shard_bytes is not None)
    loaded = dyllm.load(tmp_path, dtype="float32")
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(loaded(ids), saved(ids))
    assert not any(p.requires_grad for p in loaded.parameters())
    assert not loaded.training


def test_dtype_argument_casts_every_parameter(tmp_path: Path) -> None:
    write_tiny_checkpoint("dream", tmp_path)
    model = dyllm.load(tmp_path, dtype="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# ------------------------------------------------------------------------- bad inputs


def _first_shard(folder: Path) -> Path:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return folder / sorted(set(index["weight_map"].values()))[0]


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        dyllm.load(tmp_path / "nowhere")


def test_missing_config(tmp_path: Path) -> None:
    write_tiny_checkpoint("llada", tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        dyllm.load(tmp_path)


def test_unsupported_model_type(tmp_path: Path) -> None:
    write_tiny_checkpoint("llada", tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["model_type"] = "llama"
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"unsupported model_type 'llama'"):
        dyllm.load(tmp_path)


def test_unsupported_variant_is_named(tmp_path: Path) -> None:
    write_tiny_checkpoint("dream", tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["rope_scaling"] = {"type": "yarn", "factor": 4.0}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"rope_scaling"):
        dyllm.load(tmp_path)


def test_config_that_is_not_json(tmp_path: Path) -> None:
    write_tiny_checkpoint("llada", tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"not valid JSON"):
        dyllm.load(tmp_path)


def test_missing_tensor(tmp_path: Path) -> None:
    model = write_tiny_checkpoint("llada", tmp_path)
    state = {
        key: model.get_parameter(name).detach()
        for key, (name, _) in checkpoint_keys(
            model.config, {n: tuple(p.shape) for n, p in model.named_parameters()}
        ).items()
        if key != "model.transformer.blocks.1.up_proj.weight"
    }
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing: model\.transformer\.blocks\.1\.up_proj"):
        dyllm.load(tmp_path)


def test_unexpected_tensor(tmp_path: Path) -> None:
    write_tiny_checkpoint("llada", tmp_path)
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "model.safetensors"))
    state["model.transformer.blocks.0.extra.weight"] = torch.zeros(2)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\): .*blocks\.0\.extra"):
        dyllm.load(tmp_path)


def test_wrong_shape(tmp_path: Path) -> None:
    write_tiny_checkpoint("dream", tmp_path)
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "model.safetensors"))
    state["model.layers.0.self_attn.k_proj.bias"] = torch.zeros(5)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"k_proj\.bias .* shape \[5\].*implies \[32\]"):
        dyllm.load(tmp_path)


def test_shard_named_in_index_but_absent(tmp_path: Path) -> None:
    write_tiny_checkpoint("llada", tmp_path, max_shard_bytes=40_000)
    shard = _first_shard(tmp_path)
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"not in .*{shard.name}"):
        dyllm.load(tmp_path)


@pytest.mark.parametrize("escape", ["../outside.safetensors", "/etc/outside.safetensors"])
def test_shard_outside_the_folder_is_refused(tmp_path: Path, escape: str) -> None:
    folder = tmp_path / "ckpt"
    write_tiny_checkpoint("llada", folder, max_shard_bytes=40_000)
    shard = _first_shard(folder)
    shutil.copy(shard, tmp_path / "outside.safetensors")
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"] = {
        k: (escape if v == shard.name else v) for k, v in index["weight_map"].items()
    }
    index_file.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"outside .*refusing"):
        dyllm.load(folder)


def test_truncated_shard(tmp_path: Path) -> None:
    write_tiny_checkpoint("dream", tmp_path, max_shard_bytes=40_000)
    shard = _first_shard(tmp_path)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt"):
        dyllm.load(tmp_path)


def test_corrupt_single_file(tmp_path: Path) -> None:
    write_tiny_checkpoint("llada", tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(CheckpointError, match=r"truncated or corrupt"):
        dyllm.load(tmp_path)


def test_pickled_weights_are_refused(tmp_path: Path) -> None:
    write_tiny_checkpoint("llada", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even opened")
    with pytest.raises(CheckpointError, match=r"pickled weights .*pytorch_model.bin"):
        dyllm.load(tmp_path)


def test_index_naming_a_pickle_is_refused(tmp_path: Path) -> None:
    write_tiny_checkpoint("llada", tmp_path, max_shard_bytes=40_000)
    index_file = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = "pytorch_model-00001.bin"
    (tmp_path / "pytorch_model-00001.bin").write_bytes(b"x")
    index_file.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"not a .safetensors file"):
        dyllm.load(tmp_path)


def test_no_weights_at_all(tmp_path: Path) -> None:
    write_tiny_checkpoint("llada", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"neither model.safetensors"):
        dyllm.load(tmp_path)


def test_unknown_dtype(tmp_path: Path) -> None:
    write_tiny_checkpoint("llada", tmp_path)
    with pytest.raises(CheckpointError, match=r"unknown dtype 'float64'"):
        dyllm.load(tmp_path, dtype="float64")


def test_dtype_the_device_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A device that fails the probe computation for a dtype gets a clear error, not a crash
    at the first forward (simulated: CPU cannot fail on the three dtypes it is asked for)."""
    write_tiny_checkpoint("llada", tmp_path)
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def refuse_half(q, k, v, *args, **kwargs):
        if q.dtype == torch.float16:
            raise RuntimeError("\"baddbmm\" not implemented for 'Half'")
        return real_sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", refuse_half)
    with pytest.raises(CheckpointError, match=r"cannot run on cpu.*dtype='float32'"):
        dyllm.load(tmp_path, dtype="float16")


def test_cuda_without_cuda(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    write_tiny_checkpoint("llada", tmp_path)
    with pytest.raises(CheckpointError, match=r"CUDA is not available"):
        dyllm.load(tmp_path, device="cuda")
