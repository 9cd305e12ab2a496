"""Load an unmodified Hugging Face LLaDA, Dream, LLaDA-MoE or LLaDA2 folder into dyllm's modules.

Stance: safetensors only (a pickle can execute code when loaded, so `.bin` weights are refused),
every key and shape checked against the model before a byte of weight is read, parameters created
on the meta device and filled once from the files (no double allocation), and nothing returned
half-loaded: any problem raises before the model is assembled, with a message naming the file or
key at fault and what to do about it. Every tensor's stored dtype must be a floating one
(quantised int8 / float8 tensors are refused, never cast into garbage), and every weight is
scanned for NaN and infinity once cast (`check_finite=False` skips that scan; its cost is in
docs/models.md).

Tensor parallelism (`shard`): each process builds the parts of the modules it holds and reads
only its slices of the split tensors (`safe_open(...).get_slice(key)[start:end]`, by rows or by
columns; a fused QKV's Q, K and V row ranges read and concatenated), so no process ever holds
a whole split tensor; the replicated ones (the norms, a MoE layer's router) are read whole.
Shapes are checked against the whole model before any slice is read. Which tensor is split how:
`dyllm.models.parallel.SPLITS`; the split itself is planned by `dyllm.distributed`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from dyllm.json_files import read_json, read_json_object
from dyllm.models.config import ConfigError, ModelConfig, describe_value
from dyllm.models.keymaps import checkpoint_keys
from dyllm.models.parallel import ParameterSlice, TensorParallelShard
from dyllm.models.safetensors_header import unsupported_dtype
from dyllm.models.transformer import DiffusionTransformer
from dyllm.tokenizer import Tokenizer

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
NAMES_SHOWN = 8
GENERATION_VALUE_TYPES: dict[str, tuple[type, ...]] = {
    "gen_length": (int,),
    "max_new_tokens": (int,),
    "steps": (int,),
    "top_k": (int,),
    "temperature": (int, float),
    "top_p": (int, float),
    "alg_temp": (int, float),
    "eps": (int, float),
    "alg": (str,),
}
"""generation_config.json keys dyllm reads as defaults, and the JSON types each may hold (or
null); their ranges are checked with the other options when `generate` runs."""


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded, with the reason and the fix in the message."""


def load(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    check_finite: bool = True,
    *,
    shard: TensorParallelShard | None = None,
) -> DiffusionTransformer:
    """Load a LLaDA, Dream, LLaDA-MoE or LLaDA2 folder (config.json + safetensors) to run.

    shard: this process's part of a tensor-parallel model (see `dyllm.distributed`, which
    plans it; `dyllm.load(..., tensor_parallel=N)` is the usual way in); only its slices are read.

    dtype defaults to the checkpoint's `torch_dtype`. The returned model is in eval mode without
    gradients; `model.tokenizer` is the folder's tokenizer (None when it ships none) and
    `model.generation_defaults` the contents of its generation_config.json (how they act as
    defaults: `dyllm.generation.config`). The tokenizer's end-of-turn id, when it has one, is the
    config's `eot_token_id`. check_finite: scan every weight for NaN and infinity (a damaged
    file otherwise loads and generates noise); False skips the scan.
    """
    folder = checkpoint_folder(path)
    config = read_config(folder)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype if dtype is not None else config.torch_dtype)
    check_dtype_runs(dtype, device)
    key_to_shard = locate_tensors(folder)
    tokenizer = Tokenizer.from_pretrained(folder)
    if tokenizer is not None and tokenizer.eot_token_id is not None:
        config = dataclasses.replace(config, eot_token_id=tokenizer.eot_token_id)

    with torch.device("meta"):
        model = DiffusionTransformer(config, tokenizer, read_generation_defaults(folder), shard)
        whole = model if shard is None else DiffusionTransformer(config)
    shapes = {name: tuple(p.shape) for name, p in whole.named_parameters()}
    expected = checkpoint_keys(config, shapes)
    _check_key_sets(folder, expected, key_to_shard)
    slices = {}
    if shard is not None:
        slices = {name: shard.parameter_slice(name, config) for name in shapes}
    state = _read_tensors(key_to_shard, expected, device, dtype, slices, check_finite)
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed.weight
    return model.eval().requires_grad_(False)


def checkpoint_folder(path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder} is a file; pass the folder that holds config.json and the safetensors"
        )
    return folder


def read_config(folder: Path) -> ModelConfig:
    """The ModelConfig of a checkpoint folder, from its config.json."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{folder} has no config.json; a checkpoint folder holds config.json next to its "
            "safetensors files (download the model's whole folder, not only the weights)"
        )
    raw = read_json_object(config_file, CheckpointError)
    try:
        return ModelConfig.from_hf_config(raw)
    except ConfigError as error:
        raise CheckpointError(f"{config_file}: {error}") from error


def resolve_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device this machine has; CheckpointError naming the choices if not."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise CheckpointError(
            f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N' (an index)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CheckpointError(
                "device 'cuda' was asked for but CUDA is not available; use 'cpu'"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise CheckpointError(
                f"device {device} was asked for but this machine has {count} GPU(s)"
            )
    elif device.type != "cpu":
        try:
            torch.empty(1, device=device)
        except (RuntimeError, AssertionError) as error:
            raise CheckpointError(
                f"device {str(device)!r} is not available here ({str(error).splitlines()[0]}); "
                "use 'cpu' or 'cuda'"
            ) from None
    return device


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise CheckpointError(
                f"dtype {dtype} is not supported; use float32, float16 or bfloat16"
            )
        return dtype
    if dtype not in DTYPES:
        raise CheckpointError(
            f"unknown dtype {dtype!r}; use one of float32, float16, bfloat16 (or fp32/fp16/bf16)"
        )
    return DTYPES[dtype]


def check_dtype_runs(dtype: torch.dtype, device: torch.device) -> None:
    """Refuse a dtype the device cannot compute in, before any weight is read."""
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise CheckpointError(
            f"{torch.cuda.get_device_name(device)} cannot run bfloat16; pass dtype='float16' "
            "or 'float32'"
        )
    try:
        probe = torch.ones(2, 4, device=device, dtype=dtype)
        torch.nn.functional.scaled_dot_product_attention(probe[None], probe[None], probe[None])
        torch.nn.functional.linear(probe, probe).softmax(-1)
    except RuntimeError as error:
        raise CheckpointError(
            f"dtype {dtype} cannot run on {device} ({error}); pass dtype='float32'"
        ) from error


def locate_tensors(folder: Path) -> dict[str, Path]:
    """checkpoint key -> the safetensors file holding it, from the index or the single file."""
    index_file = folder / INDEX_FILE
    if index_file.is_file():
        return _keys_from_index(folder, index_file)
    single = folder / SINGLE_FILE
    if single.is_file():
        with _open_safetensors(single) as handle:
            return dict.fromkeys(handle.keys(), single)
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLED_SUFFIXES)
    if pickled:
        raise CheckpointError(
            f"{folder} holds pickled weights ({', '.join(pickled[:NAMES_SHOWN])}); dyllm loads "
            "safetensors only, because unpickling can execute code. Convert them to "
            "model.safetensors with the safetensors library first"
        )
    raise FileNotFoundError(f"{folder} has neither {SINGLE_FILE} nor {INDEX_FILE}")


def _keys_from_index(folder: Path, index_file: Path) -> dict[str, Path]:
    weight_map, shards = read_index(folder, index_file)
    missing = [name for name, shard in shards.items() if not shard.is_file()]
    if missing:
        raise CheckpointError(
            f"{index_file} names {len(missing)} shard(s) that are not in {folder}: "
            f"{_names(missing)}; download the missing files"
        )
    return {key: shards[name] for key, name in weight_map.items()}


def read_index(folder: Path, index_file: Path) -> tuple[dict[str, str], dict[str, Path]]:
    """The index's weight map and {shard name: path}, every shard a .safetensors file inside
    `folder` (present or not: `dyllm info` describes a folder whose shards are not downloaded)."""
    index = read_json(index_file, CheckpointError)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_file} has no 'weight_map' object mapping keys to shards")
    root = folder.resolve()
    shards: dict[str, Path] = {}
    for shard_name in sorted(set(map(str, weight_map.values()))):
        shard = (folder / shard_name).resolve()
        if Path(shard_name).is_absolute() or not shard.is_relative_to(root):
            raise CheckpointError(
                f"{index_file} names the shard {shard_name!r}, which lies outside {folder}; "
                "refusing to read it (shards must be files inside the checkpoint folder)"
            )
        if not shard.name.endswith(".safetensors"):
            raise CheckpointError(
                f"{index_file} names {shard_name!r}, which is not a .safetensors file; dyllm "
                "loads safetensors only, because unpickling can execute code"
            )
        shards[shard_name] = shard
    return {key: str(name) for key, name in weight_map.items()}, shards


def _check_key_sets(
    folder: Path, expected: dict[str, tuple[str, tuple[int, ...]]], present: dict[str, Path]
) -> None:
    missing = sorted(set(expected) - set(present))
    unexpected = sorted(set(present) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing: {_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {_names(unexpected)}")
    if problems:
        raise CheckpointError(
            f"the weights in {folder} do not match its config.json ({'; '.join(problems)}); "
            "check that config.json belongs to these weights"
        )


def _read_tensors(
    key_to_shard: dict[str, Path],
    expected: dict[str, tuple[str, tuple[int, ...]]],
    device: torch.device,
    dtype: torch.dtype,
    slices: dict[str, ParameterSlice | None],
    check_finite: bool = True,
) -> dict[str, torch.Tensor]:
    """Every tensor, checked for presence, shape, stored dtype and (check_finite) NaN or
    infinity after the cast, then moved: {parameter name: tensor}.

    slices: parameter name -> (dimension, ranges) to read only those parts of its tensor
    (tensor parallelism); a name absent or None is read whole.
    """
    by_shard: dict[Path, list[str]] = {}
    for key, shard in key_to_shard.items():
        by_shard.setdefault(shard, []).append(key)
    state: dict[str, torch.Tensor] = {}
    for shard, keys in sorted(by_shard.items()):
        with _open_safetensors(shard) as handle:
            stored = set(handle.keys())
            absent = sorted(set(keys) - stored)
            if absent:
                raise CheckpointError(
                    f"the index maps {_names(absent)} to {shard.name}, but that file does not "
                    "contain them; the shard or the index is stale"
                )
            for key in sorted(keys):
                name, shape = expected[key]
                stored = handle.get_slice(key)
                refusal = unsupported_dtype(stored.get_dtype())
                if refusal is not None:
                    raise CheckpointError(f"{key} in {shard.name} is {refusal}")
                stored_shape = tuple(stored.get_shape())
                if stored_shape != shape:
                    raise CheckpointError(
                        f"{key} in {shard.name} has shape {list(stored_shape)}, but config.json "
                        f"implies {list(shape)}; check that config.json belongs to these weights"
                    )
                try:
                    tensor = _read_part(handle, key, slices.get(name))
                except (SafetensorError, RuntimeError) as error:
                    raise CheckpointError(f"cannot read {key} from {shard} ({error})") from error
                state[name] = tensor.to(device=device, dtype=dtype)
                if check_finite:
                    _check_finite(key, shard, tensor, state[name])
    return state


def _check_finite(key: str, shard: Path, stored: torch.Tensor, loaded: torch.Tensor) -> None:
    """Refuse a weight holding NaN or infinity, read or made by the cast (one read-back).

    Its minimum and maximum are finite exactly when every value is (NaN propagates through both):
    one fused pass, about 0.05 s per GiB on a CPU core, 20 to 50 times faster than
    `isfinite(...).all()` on bfloat16 there."""
    if loaded.numel() == 0:
        return
    if bool(torch.isfinite(torch.stack(torch.aminmax(loaded))).all()):
        return
    bad = ~torch.isfinite(loaded)
    count = int(bad.sum())
    first = [int(i) for i in torch.unravel_index(bad.flatten().int().argmax(), bad.shape)]
    if bool(torch.isfinite(stored).all()):
        raise CheckpointError(
            f"{key} in {shard.name} overflows {loaded.dtype} when cast ({count} value(s) become "
            f"infinite, the first at index {first}); load it in float32 or its stored "
            f"{stored.dtype}"
        )
    raise CheckpointError(
        f"{key} in {shard.name} holds {count} NaN or infinite value(s), the first at index "
        f"{first}; the file is damaged: download it again"
    )


def _read_part(handle: Any, key: str, part: ParameterSlice | None) -> torch.Tensor:
    """Tensor `key`, or only the row (dimension 0) / column (dimension 1) ranges of `part` of
    it, concatenated in order (a fused QKV's three ranges, else one)."""
    if part is None:
        return handle.get_tensor(key)
    dimension, ranges = part
    view = handle.get_slice(key)
    pieces = [view[start:end] if dimension == 0 else view[:, start:end] for start, end in ranges]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dimension)


def _open_safetensors(file: Path):
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except (SafetensorError, OSError, RuntimeError) as error:
        raise CheckpointError(
            f"{file} is not a readable safetensors file ({error}); it may be truncated or "
            "corrupt: download it again"
        ) from error


def read_generation_defaults(folder: Path) -> dict[str, Any]:
    """generation_config.json's entries (transformers' bookkeeping keys left out); {} when the
    folder has no such file."""
    generation_file = folder / "generation_config.json"
    if not generation_file.is_file():
        return {}
    raw = read_json_object(generation_file, CheckpointError)
    if raw.get("_from_model_config") is not True:  # a derived file is never read as defaults
        for key, kinds in GENERATION_VALUE_TYPES.items():
            value = raw.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
                kind = {(str,): "a string", (int,): "an integer"}.get(kinds, "a number")
                raise CheckpointError(
                    f"{generation_file}: {key} must be {kind} or null, got "
                    f"{describe_value(value)}; fix the file or delete the key"
                )
    # Nulls stay (for Dream's top_k / top_p a null means "no filter"), and so does
    # `_from_model_config`: dyllm.generation.config skips a file transformers derived.
    return {
        key: value
        for key, value in raw.items()
        if key != "transformers_version"
        and (key == "_from_model_config" or not key.startswith("_"))
    }


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")
