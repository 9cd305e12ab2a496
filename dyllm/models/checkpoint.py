"""Write a model in its family's real on-disk layout: config.json, safetensors, optional index.

Used by the reference-model trainer and by the tests, which build small checkpoints exactly as
LLaDA and Dream ship (same keys, same config keys, `model-0000i-of-0000N.safetensors` shards with
`model.safetensors.index.json`) so that the real loading code is what gets exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from dyllm.models.keymaps import checkpoint_keys
from dyllm.models.loader import INDEX_FILE, SINGLE_FILE
from dyllm.models.transformer import DiffusionTransformer

DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def save_pretrained(
    model: DiffusionTransformer,
    folder: str | Path,
    *,
    max_shard_bytes: int | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Save `model` to `folder`; shard when the tensors exceed `max_shard_bytes`.

    Returns the folder. dtype defaults to the model's parameter dtype.
    """
    if model.shard is not None:
        raise ValueError(
            f"this model is tensor-parallel shard {model.shard.rank} of "
            f"{model.shard.world_size} and holds only part of the weights; save the "
            "single-process model (dyllm.load without tensor_parallel) instead"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    dtype = dtype or model.dtype
    hf_config = config.to_hf_config()
    hf_config["torch_dtype"] = DTYPE_NAMES[dtype]
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")

    parameters = dict(model.named_parameters())
    shapes = {name: tuple(p.shape) for name, p in parameters.items()}
    tensors = {
        key: parameters[name].detach().to("cpu", dtype).contiguous()
        for key, (name, _) in sorted(checkpoint_keys(config, shapes).items())
    }
    shards = _split(tensors, max_shard_bytes)
    if len(shards) == 1:
        save_file(tensors, str(folder / SINGLE_FILE), metadata={"format": "pt"})
        return folder
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return folder


def _split(
    tensors: dict[str, torch.Tensor], max_shard_bytes: int | None
) -> list[dict[str, torch.Tensor]]:
    """Greedy, in key order: a new shard starts when the next tensor would overflow this one."""
    if max_shard_bytes is None:
        return [tensors]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards
