"""A safetensors file's header read without its tensors: names, stored dtypes, shapes, and the
size the file must have.

The format is an 8-byte little-endian header length N, N bytes of JSON
(`{name: {"dtype": "BF16", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}`)
and then the tensor bytes, offsets counted from the end of the header. So the header alone says
how large a complete file is: a download cut short is found by comparing that with the file's
size, without reading a byte of weight. `dyllm info` reports shards this way, and the loader
refuses stored dtypes it cannot load (int8, float8, ...) by the same table.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_HEADER_BYTES = 100_000_000
"""The safetensors library refuses larger headers; so does this reader."""

DTYPE_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}
"""safetensors dtype codes and the torch names dyllm reports them by."""

LOADABLE_DTYPES = ("F32", "F16", "BF16", "F64")
"""Stored dtypes a checkpoint of these models may hold: floating weights, cast at load.
Integer and float8 tensors are quantised weights, which need scales this engine does not apply."""


class SafetensorsHeaderError(ValueError):
    """A file whose header cannot be read as safetensors."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header describes it."""

    dtype: str
    """The safetensors code, e.g. "BF16"."""
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class ShardHeader:
    """What a safetensors file's header says, and how large the file really is."""

    path: Path
    tensors: dict[str, TensorEntry]
    header_bytes: int
    """8 + the JSON header's length: where the tensor data starts."""
    data_bytes: int
    """Bytes of tensor data the header accounts for (its largest end offset)."""
    file_bytes: int

    @property
    def expected_bytes(self) -> int:
        return self.header_bytes + self.data_bytes

    def size_problem(self) -> str | None:
        """Why the file's size does not match its header, or None when it does."""
        if self.file_bytes == self.expected_bytes:
            return None
        if self.file_bytes < self.expected_bytes:
            missing = self.expected_bytes - self.file_bytes
            return (
                f"{self.path.name} is truncated: {self.file_bytes:,} bytes, but its header "
                f"describes {self.expected_bytes:,} ({missing:,} missing); download it again"
            )
        return (
            f"{self.path.name} has {self.file_bytes - self.expected_bytes:,} bytes more than its "
            f"header describes ({self.expected_bytes:,}); it is damaged: download it again"
        )

    def stored_dtypes(self) -> dict[str, int]:
        """Torch dtype name -> number of tensors stored in it."""
        counts: dict[str, int] = {}
        for entry in self.tensors.values():
            name = dtype_name(entry.dtype)
            counts[name] = counts.get(name, 0) + 1
        return counts


def dtype_name(code: str) -> str:
    """The torch name of a safetensors dtype code ("BF16" -> "bfloat16")."""
    return DTYPE_NAMES.get(code, code.lower())


def unsupported_dtype(code: str) -> str | None:
    """Why a stored dtype cannot be loaded, or None when it can."""
    if code in LOADABLE_DTYPES:
        return None
    floating = ", ".join(dtype_name(c) for c in LOADABLE_DTYPES)
    kind = "quantised weights" if code.startswith(("I", "U", "F8")) else "not weights"
    return (
        f"stored as {dtype_name(code)} ({kind}); dyllm loads {floating} tensors only: use the "
        "checkpoint's original floating-point weights"
    )


def read_header(path: Path) -> ShardHeader:
    """The header of the safetensors file `path`; SafetensorsHeaderError when it is not one."""
    file_bytes = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise SafetensorsHeaderError(f"{path.name} has {file_bytes} bytes, no header")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES or length > file_bytes - 8:
            raise SafetensorsHeaderError(
                f"{path.name} declares a {length:,}-byte header in a {file_bytes:,}-byte file"
            )
        text = handle.read(length)
    try:
        raw = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SafetensorsHeaderError(f"{path.name} has no JSON header ({error})") from None
    if not isinstance(raw, dict):
        raise SafetensorsHeaderError(f"{path.name}: the header is not a JSON object")
    tensors = {
        name: _entry(path, name, value) for name, value in raw.items() if name != "__metadata__"
    }
    data_bytes = max((entry.end for entry in tensors.values()), default=0)
    return ShardHeader(path, tensors, 8 + length, data_bytes, file_bytes)


def _entry(path: Path, name: str, value: Any) -> TensorEntry:
    try:
        dtype, shape, (begin, end) = value["dtype"], value["shape"], value["data_offsets"]
        if not (
            isinstance(dtype, str)
            and all(isinstance(n, int) and n >= 0 for n in (*shape, begin, end))
            and begin <= end
        ):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise SafetensorsHeaderError(
            f"{path.name}: the header's entry for {name!r} is malformed ({value!r:.80})"
        ) from None
    return TensorEntry(dtype, tuple(shape), begin, end)
