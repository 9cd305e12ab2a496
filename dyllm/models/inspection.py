"""What `dyllm info` says about a checkpoint folder, read from its config, index, safetensors
headers and tokenizer files without loading a weight.

It works on a folder that is only partly downloaded: config.json alone (with the index, when the
weights are sharded) is enough to size the model (parameters, memory per dtype, bytes to
download), so a model can be sized before its shards are fetched. Shards that are present are
read only as far as their headers: the stored dtypes come from there (not from config.json's
`torch_dtype`, which may say otherwise), and each file's size is compared with what its header
describes, so a truncated download is reported here and not only when loading fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dyllm.json_files import read_json
from dyllm.models.loader import (
    INDEX_FILE,
    PICKLED_SUFFIXES,
    SINGLE_FILE,
    CheckpointError,
    checkpoint_folder,
    read_config,
    read_index,
)
from dyllm.models.parallel import valid_sizes
from dyllm.models.safetensors_header import (
    SafetensorsHeaderError,
    read_header,
    unsupported_dtype,
)
from dyllm.tokenizer import Tokenizer


def describe_checkpoint(folder: str | Path) -> dict[str, Any]:
    """Family, shapes, parameter count and memory per dtype, stored dtypes, shards (present,
    missing, damaged), tokenizer and chat template; `problems` lists what would stop `load`."""
    folder = checkpoint_folder(folder)
    config = read_config(folder)
    shard_names, indexed_bytes = _weight_files(folder)
    present = [name for name in shard_names if (folder / name).is_file()]
    problems: list[str] = []
    stored: dict[str, int] = {}
    header_bytes = 0
    for name in present:
        try:
            header = read_header(folder / name)
        except SafetensorsHeaderError as error:
            problems.append(f"{error}: it is not a readable safetensors file; download it again")
            continue
        header_bytes += header.expected_bytes
        size_problem = header.size_problem()
        if size_problem is not None:
            problems.append(size_problem)
        for code in sorted({entry.dtype for entry in header.tensors.values()}):
            refusal = unsupported_dtype(code)
            if refusal is not None:
                count = sum(entry.dtype == code for entry in header.tensors.values())
                problems.append(f"{count} tensor(s) in {name} are {refusal}")
        for dtype, count in header.stored_dtypes().items():
            stored[dtype] = stored.get(dtype, 0) + count
    if not shard_names:
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLED_SUFFIXES)
        if pickled:
            problems.append(
                f"the weights are pickled ({', '.join(pickled)}); dyllm loads safetensors only"
            )
    tokenizer = Tokenizer.from_pretrained(folder)
    parameters = config.num_parameters
    return {
        "path": str(folder),
        **config.shape_summary(),
        "max_position_embeddings": config.max_position_embeddings,
        "tensor_parallel_sizes": valid_sizes(config),
        "checkpoint_dtype": "+".join(sorted(stored)) if stored else config.torch_dtype,
        "config_dtype": config.torch_dtype,
        "stored_dtypes": stored,
        "parameters": parameters,
        "weight_memory_bytes": {
            "float32": parameters * 4,
            "bfloat16": parameters * 2,
            "float16": parameters * 2,
        },
        "shards": len(shard_names),
        "shards_present": len(present),
        "missing_shards": [name for name in shard_names if name not in present],
        "stored_bytes": indexed_bytes if indexed_bytes is not None else header_bytes or None,
        "tokenizer": None if tokenizer is None else {"vocab_size": tokenizer.vocab_size},
        "chat_template": bool(tokenizer is not None and tokenizer.has_chat_template),
        "mask_token_id": config.mask_token_id,
        "eos_token_id": config.eos_token_id,
        "problems": problems,
    }


def _weight_files(folder: Path) -> tuple[list[str], int | None]:
    """The safetensors files the folder should hold (from the index, else the single file) and
    the index's `total_size` of tensor bytes (None without one)."""
    index_file = folder / INDEX_FILE
    if index_file.is_file():
        _, shards = read_index(folder, index_file)
        return sorted(shards), _total_size(index_file)
    if (folder / SINGLE_FILE).is_file():
        return [SINGLE_FILE], None
    return [], None


def _total_size(index_file: Path) -> int | None:
    metadata = read_json(index_file, CheckpointError).get("metadata")
    total = metadata.get("total_size") if isinstance(metadata, dict) else None
    return total if isinstance(total, int) and not isinstance(total, bool) else None


def format_description(info: dict[str, Any]) -> str:
    """The text `dyllm info` prints for `describe_checkpoint`'s dictionary."""
    memory = info["weight_memory_bytes"]
    tokenizer = info["tokenizer"]
    stored = info["stored_dtypes"]
    if stored:
        dtypes = "stored as " + ", ".join(
            f"{name} ({count} tensors)" if len(stored) > 1 else name
            for name, count in sorted(stored.items())
        )
        if set(stored) != {info["config_dtype"]}:
            dtypes += f" (config.json says {info['config_dtype']})"
    else:
        dtypes = f"config.json says {info['config_dtype']}"
    files = f"{info['shards']} file(s)"
    if info["shards"] == 0:
        files = "no weight files (neither model.safetensors nor an index)"
    elif info["shards_present"] < info["shards"]:
        files += (
            " (none downloaded yet)"
            if info["shards_present"] == 0
            else f" ({info['shards_present']} downloaded, {len(info['missing_shards'])} missing)"
        )
    lines = [
        f"path           {info['path']}",
        f"family         {info['family']}",
        f"shape          {info['layers']} layers, d_model {info['hidden_size']}, "
        f"{info['heads']} heads ({info['kv_heads']} kv), FFN {info['intermediate_size']}, "
        f"vocab {info['vocab_size']}",
        f"parameters     {info['parameters']:,} in {files}, {dtypes}",
        f"weights        {_size(memory['float32'])} fp32, {_size(memory['bfloat16'])} bf16/fp16"
        + (f"; {_size(info['stored_bytes'])} on disk" if info["stored_bytes"] else ""),
        "tokenizer      "
        + (
            "none (generate from token ids)"
            if tokenizer is None
            else f"{tokenizer['vocab_size']} tokens"
        ),
        f"chat template  {'yes' if info['chat_template'] else 'no'}",
        "tensor parallel "
        + ", ".join(map(str, info["tensor_parallel_sizes"]))
        + " processes (--tensor-parallel)",
    ]
    experts = info.get("experts")
    if experts:
        shared = experts["shared_expert_intermediate_size"]
        lines.insert(
            3,
            f"experts        {experts['experts']} per MoE layer, top-{experts['experts_per_token']}"
            f", width {experts['expert_intermediate_size']}, {experts['router']} router"
            + (" with expert bias" if experts["expert_bias"] else "")
            + (f", shared expert {shared}" if shared else ", no shared expert")
            + f"; {experts['moe_layers']} MoE + {experts['dense_layers']} dense layers; "
            f"{experts['active_parameters']:,} parameters active per token",
        )
    if info.get("ignored_keys"):
        lines.append(
            "ignored keys   "
            + ", ".join(info["ignored_keys"])
            + " (read by the official config, not by its forward; ignored here too)"
        )
    lines += [f"problem        {problem}" for problem in info["problems"]]
    return "\n".join(lines)


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes} B"
