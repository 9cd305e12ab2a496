"""Small checkpoints in the real on-disk layouts, for tests that exercise the real loader.

`shrunk_real_checkpoint` copies a real config.json from `fixtures/hf`, shrinks only the width keys
(layer count, vocabulary and special tokens stay as shipped), writes random tensors into the
shards the real `model.safetensors.index.json` names, and copies that index unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from dyllm.models import DiffusionTransformer, ModelConfig, preset, save_pretrained
from dyllm.models.keymaps import checkpoint_keys

HF = Path(__file__).resolve().parent / "fixtures" / "hf"
"""The released checkpoints' config and tokenizer files, vendored (see fixtures/hf/README.md)."""
LLADA_DIR = HF / "LLaDA-8B-Instruct"
DREAM_DIR = HF / "Dream-v0-Instruct-7B"

WIDTH_OVERRIDES = {
    "llada": {"d_model": 8, "n_heads": 2, "n_kv_heads": 2, "mlp_hidden_size": 16},
    "dream": {
        "hidden_size": 8,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 16,
    },
}


def real_dir(family: str) -> Path:
    return LLADA_DIR if family == "llada" else DREAM_DIR


def tiny_model(
    family: str, seed: int = 0, never_predicts_mask: bool = False, **overrides: object
) -> DiffusionTransformer:
    """A randomly initialised tiny model of the family's layout (see dyllm.models.presets).

    never_predicts_mask: push the mask token's logit to -30, as a trained model effectively
    does. Random weights otherwise propose the mask token now and then; committing it leaves
    the position masked (the reference samplers allow that), which changes a row's mask count
    and so Dream's batch-averaged step size and Fast-dLLM's block loop.
    """
    model = DiffusionTransformer(preset(f"tiny-{family}", **overrides))
    model.reset_parameters(std=0.2, seed=seed)
    if never_predicts_mask:
        mask = torch.tensor([model.config.mask_token_id])
        model.lm_head.register_forward_hook(
            lambda module, inputs, logits: logits.index_fill(-1, mask, -30.0)
        )
    return model.eval().requires_grad_(False)


def write_tiny_checkpoint(
    family: str,
    folder: Path,
    *,
    seed: int = 0,
    max_shard_bytes: int | None = None,
    **overrides: object,
) -> DiffusionTransformer:
    """Save a tiny model of the family (preset fields changed by `overrides`, e.g.
    num_kv_heads=1) to `folder` and return it."""
    model = tiny_model(family, seed, **overrides)
    save_pretrained(model, folder, max_shard_bytes=max_shard_bytes)
    return model


def shrunk_real_checkpoint(family: str, folder: Path, seed: int = 0) -> ModelConfig:
    """A real config.json with narrow widths, shards laid out as the real index says."""
    source = real_dir(family)
    folder.mkdir(parents=True, exist_ok=True)
    raw = json.loads((source / "config.json").read_text())
    raw.update(WIDTH_OVERRIDES[family])
    (folder / "config.json").write_text(json.dumps(raw, indent=2))
    config = ModelConfig.from_hf_config(raw)
    with torch.device("meta"):
        shapes = {n: tuple(p.shape) for n, p in DiffusionTransformer(config).named_parameters()}
    generator = torch.Generator().manual_seed(seed)
    expected = checkpoint_keys(config, shapes)
    weight_map = json.loads((source / "model.safetensors.index.json").read_text())["weight_map"]
    shards: dict[str, dict[str, torch.Tensor]] = {}
    for key, shard in weight_map.items():
        shape = expected[key][1]
        tensor = torch.randn(shape, generator=generator) * 0.1
        shards.setdefault(shard, {})[key] = tensor.to(torch.bfloat16)
    for shard, tensors in shards.items():
        save_file(tensors, str(folder / shard), metadata={"format": "pt"})
    shutil.copy(source / "model.safetensors.index.json", folder)
    shutil.copy(source / "generation_config.json", folder)
    return config


def write_tiny_tokenizer(folder: Path) -> None:
    """A character-level tokenizer.json for the tiny presets (97 ids), with a chat template.

    Ids: 0 <|startoftext|>, 1 <|endoftext|>, 2 <|eot_id|>, 3-94 printable ASCII, 95 newline,
    96 <|mdm_mask|>, matching the presets' bos/eos/mask ids.
    """
    specials = {"<|startoftext|>": 0, "<|endoftext|>": 1, "<|eot_id|>": 2, "<|mdm_mask|>": 96}
    vocab = {chr(code): 3 + code - 32 for code in range(32, 124)}
    vocab["\n"] = 95
    template = (
        "{% for message in messages %}{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}"
        "{{ message['role'] + ': ' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{{ 'assistant: ' }}"
    )
    write_character_tokenizer(folder, vocab, specials, template)


def write_character_tokenizer(
    folder: Path, vocab: dict[str, int], specials: dict[str, int], chat_template: str
) -> None:
    """tokenizer.json (one token per character, `specials` as special tokens) and
    tokenizer_config.json (the Llama-style special-token names and `chat_template`) in `folder`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({**vocab, **specials}, unk_token="<|endoftext|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in specials])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "mask_token": "<|mdm_mask|>",
        "chat_template": chat_template,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
