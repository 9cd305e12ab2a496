"""Host-side rules shared by every Triton launcher: block sizes, argument checks, outputs.

Each `triton_*.py` module holds one `@triton.jit` kernel and a launcher; the launchers take their
decisions here so that the rules live in one place:

* block sizes are powers of two that cover an extent up to a preferred tile and never go below
  16, the smallest tile `tl.dot` accepts on NVIDIA GPUs;
* arguments are checked (device, dtype, unit stride on the last dimension, shapes) with errors
  that name the tensor and say what to change, instead of a fault inside a kernel;
* outputs come from `new_output`, which fills them with NaN when `DYLLM_POISON_OUTPUTS=1`, so a
  test sees any element a kernel forgot to write;
* `dot_in_float32` decides whether a kernel's products run on float32 operands: always for
  float32 inputs (with IEEE precision, since TF32 would cost three decimal digits), and under
  Triton's CPU interpreter (`TRITON_INTERPRET=1`), which stores bfloat16 as raw 16-bit integers
  and would multiply those bits in `tl.dot`. On a GPU, half-precision tiles go to the tensor
  cores as they are, with float32 accumulation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from dyllm.kernels.dispatch import triton_interpreting

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SMALLEST_DOT_TILE = 16


def block_size(extent: int, preferred: int, minimum: int = SMALLEST_DOT_TILE) -> int:
    """The power-of-two tile for a dimension of `extent`: the smallest one covering it, capped
    at `preferred` (then the kernel loops), and at least `minimum`."""
    covering = 1 << max(int(extent) - 1, 0).bit_length()
    return max(minimum, min(preferred, covering))


def row_tile(count: int, width: int, elements: int = 4096) -> tuple[int, int]:
    """(rows, columns) of a tile for row-wise kernels over `count` rows of `width` elements.

    Columns cover the width up to 1024 (the kernel loops beyond); rows fill the tile up to about
    `elements` values, so a narrow row shares its program with others: fewer, fuller programs
    on a GPU, and far fewer Python-level program runs under the interpreter.
    """
    columns = block_size(width, 1024, minimum=1)
    return block_size(count, max(1, elements // columns), minimum=1), columns


def dot_in_float32(dtype: torch.dtype) -> bool:
    """Whether kernels take their dot products on float32 operands for inputs of `dtype`."""
    return dtype == torch.float32 or triton_interpreting()


def dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot`'s input precision: IEEE float32 when operands are float32 (TF32 would round
    them to 10 mantissa bits), the hardware's native path for half-precision operands."""
    return "ieee" if dot_in_float32(dtype) else "tf32"


def check_device(tensors: dict[str, torch.Tensor]) -> torch.device:
    """All tensors on one device, CUDA unless the interpreter runs; returns that device."""
    devices = {name: tensor.device for name, tensor in tensors.items()}
    first = next(iter(devices.values()))
    if any(device != first for device in devices.values()):
        listing = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"the kernel's tensors must share one device; got {listing}")
    if first.type != "cuda" and not triton_interpreting():
        raise ValueError(
            f"Triton kernels run on CUDA tensors, got tensors on {first}; move them to a GPU, "
            "use DYLLM_KERNELS=eager, or set TRITON_INTERPRET=1 to run Triton's interpreter"
        )
    return first


def check_float(name: str, tensor: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    """`tensor` is float32/float16/bfloat16 (exactly `dtype` when given)."""
    if dtype is not None and tensor.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {tensor.dtype}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{name} is {tensor.dtype}; the Triton kernels take float32, float16 or bfloat16"
        )


def check_shape(name: str, tensor: torch.Tensor, expected: Sequence[int]) -> None:
    """`tensor` has exactly the shape `expected`."""
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(tensor.shape)}")


def check_unit_stride(name: str, tensor: torch.Tensor) -> None:
    """The last dimension is contiguous: the kernels read rows as contiguous vectors."""
    if tensor.numel() and tensor.shape[-1] > 1 and tensor.stride(-1) != 1:
        raise ValueError(
            f"{name} must be contiguous in its last dimension (stride 1), got strides "
            f"{tensor.stride()}; pass {name}.contiguous()"
        )


def as_bytes(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor viewed as uint8 without a copy (Triton loads it as 0/1 bytes)."""
    if mask.dtype != torch.bool:
        raise ValueError(f"expected a bool mask, got {mask.dtype}")
    return mask.contiguous().view(torch.uint8)


def new_output(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised output, NaN-filled when DYLLM_POISON_OUTPUTS=1 (tests set it)."""
    if os.environ.get("DYLLM_POISON_OUTPUTS", "0") == "1":
        return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)
    return torch.empty(tuple(shape), dtype=dtype, device=device)
